"""Orchestration: manifests -> render jobs -> Prefect fan-out -> engine -> catalogue.

Flows only orchestrate; they hold no model maths (that is `linfusion_engine`) and no storage
logic (that is `catalogue`). Retries, concurrency and caching decisions are declared on the
tasks in `flows.tasks`, so they are visible in one place.
"""
