"""The flows that Prefect deployments run (declared in prefect.yaml, registered by `linstudio deploy`).

- `linstudio-nightly` / deployment `nightly-batch`: takes every queued submission from the inbox,
  validates and plans it, spreads its jobs over the GPU workers in shards, waits for the catalogue
  to have them all, and records each submission's outcome.
- `linstudio-rerender` / deployment `rerender`: renders chosen catalogued renders at new sizes
  from their own images, on demand or on the schedules `linstudio schedules add` sets ("every
  Sunday, approved key art at 8K": one schedule of this deployment each, flows/schedules.py).
- `linstudio-render-jobs` / deployments `render-shard` and `render-shard-large`: renders one shard
  of planned jobs, by key, on one worker — one model load for the whole shard.

Without a Prefect server (or without the shard deployments registered) the first two render in
their own process, like `linstudio run`.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.prefect_env import configure_prefect_defaults

configure_prefect_defaults()

# After the Prefect defaults: flows.flow and what imports it set up Prefect's logging and settings.
from catalogue import Catalogue  # noqa: E402
from flows.batch import open_registry  # noqa: E402
from flows.flow import publish_summary  # noqa: E402
from flows.nightly import run_nightly  # noqa: E402
from flows.rerender import parse_size  # noqa: E402
from flows.runs import render_planned_jobs  # noqa: E402
from flows.schedules import run_rerender, selection_of  # noqa: E402
from linstudio_settings import get_settings  # noqa: E402


@flow(name="linstudio-render-jobs", validate_parameters=True)
def render_jobs(job_keys: list[str], help_batch: bool = False, help_max_gib: float | None = None) -> dict:
    """Render planned jobs by key (one shard) with this worker's settings; returns the summary.

    With `help_batch`, a shard done with its own jobs goes on with unclaimed jobs of its batch (of at
    most `help_max_gib` planned memory), flows/helping.py.
    """
    summary = render_planned_jobs(job_keys, help_batch=help_batch, help_max_gib=help_max_gib)
    publish_summary(summary)
    return summary.to_json()


@flow(name="linstudio-nightly")
def nightly_batch() -> dict:
    """Everything queued in the inbox, validated, planned, spread over the workers and catalogued."""
    return run_nightly(logger=get_run_logger())


@flow(name="linstudio-rerender")
def rerender(sizes: list[str], render_ids: list[str] | None = None, team: str | None = None,
             project: str | None = None, tag: str | None = None, status: str | None = None,
             schedule: str | None = None) -> dict:
    """Re-render catalogued renders (chosen by id, or team / project / tag / review status, evaluated
    now) at `sizes` (WxH strings); `schedule`: the catalogue schedule this run is for
    (flows/schedules.py), whose run is recorded there and named by every re-render it makes."""
    from prefect.runtime import flow_run

    settings = get_settings()
    registry = open_registry(settings)
    catalogue = Catalogue.from_settings(settings)
    try:
        catalogue.migrate()
        selection = selection_of({"render_ids": render_ids, "team": team, "project": project, "tag": tag,
                                  "status": status})
        return run_rerender(catalogue, registry, sizes=[parse_size(s) for s in sizes], selection=selection,
                            schedule=schedule, flow_run_id=flow_run.get_id(), logger=get_run_logger())
    finally:
        catalogue.close()
