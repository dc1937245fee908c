"""Orchestration: manifests -> render jobs -> Prefect fan-out -> engine -> catalogue.

Flows only orchestrate; they hold no model maths (that is `linfusion_engine`) and no storage
logic (that is `catalogue`). The retry and concurrency policy of a job is in
`flows.job_runner`, so it is visible in one place.
"""
