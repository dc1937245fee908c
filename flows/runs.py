"""The two ways a batch runs, start to end: from manifests, or from jobs already planned by key.

These are entry points (what `linstudio run`, `linstudio rerender`, the Prefect deployments and
the detached re-render worker call), so they read the process's settings when none are handed in;
the steps they put together (`flows.batch`, `flows.flow`) take them as arguments. Each run builds
its model registry once (`open_registry`) and hands it to every step: validation, job keys, memory
estimates and renders all see the same models.yaml, read once.

- `run_manifests`: validate, plan, render and catalogue manifests (see `flows.batch` for the steps).
- `render_planned_jobs`: render jobs a re-render or a shard dispatch planned in the catalogue.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Callable

from catalogue import Catalogue
from flows.batch import (
    ManifestsInvalid,
    finish_submissions,
    load_and_expand,
    open_registry,
    plan_run,
    release_abandoned_leases,
    sweep_after_run,
)
from flows.helping import BatchHelp
from flows.job_runner import job_label
from flows.leases import worker_id
from flows.outcomes import JobOutcome, RUNNING_ELSEWHERE, RunSummary, redact_url
from flows.prefect_env import configure_prefect_defaults
from catalogue.rerenders import RerenderError
from flows.waiting import resolve_elsewhere
from linstudio_settings import get_settings

log = logging.getLogger(__name__)


def run_manifests(paths: list[Path], *, force: bool = False, wait: bool = False, settings=None,
                  on_progress: Callable[[JobOutcome, int, int], None] | None = None) -> RunSummary:
    """Validate, plan, render and catalogue; returns the summary. Raises ManifestsInvalid first if any error.

    Jobs another run holds are confirmed first (taken back and rendered here if that run is gone);
    with `wait`, those a live run holds are waited for until they land, or rendered here once their
    lease comes free; without it they are reported `running_elsewhere` (flows/waiting.py).
    """
    settings = settings or get_settings()
    registry = open_registry(settings)
    expanded = load_and_expand([Path(p) for p in paths], settings, registry)

    configure_prefect_defaults()
    # lazy: importing flows.flow imports Prefect, which reads its settings once: after configure_prefect_defaults()
    from flows.flow import render_batch

    catalogue = Catalogue.from_settings(settings)
    try:
        catalogue.migrate()
        catalogue.sweep_intents()
        release_abandoned_leases(catalogue, settings)
        planned = plan_run(catalogue, expanded, force)
        summary = RunSummary(outcomes=list(planned.skipped), catalogue=redact_url(settings.resolved_database_url),
                             store=settings.resolved_store_url)
        total = len(planned.skipped) + len(planned.to_render)
        # The flow runs even when everything was already catalogued, so that every run leaves its
        # summary in Prefect, skipped jobs included.
        summary.outcomes.extend(render_batch(planned.to_render, catalogue=catalogue, settings=settings,
                                             registry=registry, skipped=planned.skipped, total=total,
                                             on_progress=on_progress))
        if summary.running_elsewhere:  # confirmed, taken back if their run is gone, or waited for
            by_key = {r["key"]: r for r in planned.to_render}
            summary.outcomes = resolve_elsewhere(
                catalogue, summary.outcomes, by_key, worker=worker_id(settings), wait=wait,
                render=lambda records: render_batch(records, catalogue=catalogue, settings=settings,
                                                    registry=registry, on_progress=on_progress))
        finish_submissions(catalogue, planned.submissions, summary)
        sweep_after_run(catalogue)
        return summary
    finally:
        catalogue.close()


def render_planned_jobs(job_keys: list[str], settings=None, on_progress=None, help_batch: bool = False,
                        help_max_gib: float | None = None):
    """Render jobs already planned in the catalogue (by key) through the batch flow; returns a RunSummary.

    With `help_batch` (a shard on a worker), the run goes on with its batch's unclaimed jobs of at
    most `help_max_gib` planned memory once its own are done (`flows.helping`); the summary then
    counts what it rendered for the others too.
    """
    settings = settings or get_settings()
    try:
        registry, unreadable = open_registry(settings), None
    except ManifestsInvalid as exc:
        registry, unreadable = None, str(exc.errors[0])
    configure_prefect_defaults()
    # lazy: importing flows.flow imports Prefect, which reads its settings once: after configure_prefect_defaults()
    from flows.flow import render_batch

    catalogue = Catalogue.from_settings(settings)
    try:
        catalogue.migrate()
        records, skipped = [], []
        done = catalogue.rendered_keys(job_keys)
        planned = catalogue.jobs(job_keys)
        if unreadable is not None:
            # Each job fails with why, so a batch waiting on them ends (a shard that failed before
            # recording anything would only be sent out again, to fail the same way).
            return _fail_unrendered(catalogue, settings, job_keys, done, planned, unreadable)
        for key in job_keys:
            job = planned.get(key)
            if job is None:
                raise RerenderError(f"job {key[:12]} is not planned in this catalogue")
            if key in done:
                skipped.append(JobOutcome(key, job_label(job["record"]), "skipped"))
            else:
                records.append({**job["record"], "key": key})
        summary = RunSummary(outcomes=list(skipped), catalogue=redact_url(settings.resolved_database_url),
                             store=settings.resolved_store_url)
        work = records
        if help_batch:
            work = BatchHelp(records, catalogue, [job["submission_id"] for job in planned.values()],
                             max_gib=help_max_gib, registry=registry)
        outcomes = render_batch(work, catalogue=catalogue, settings=settings, registry=registry, skipped=skipped,
                                total=len(job_keys), on_progress=on_progress)
        if help_batch and work.helped:
            # A job taken for the batch that another worker claimed first is not this run's to report.
            others = ("skipped", RUNNING_ELSEWHERE)
            outcomes = [o for o in outcomes if not (o.key in work.helped and o.status in others)]
            helped = sum(1 for o in outcomes if o.key in work.helped)
            if helped:
                log.info("helped the batch with %d job(s) of other shards", helped)
        summary.outcomes.extend(outcomes)
        return summary
    finally:
        catalogue.close()


def _fail_unrendered(catalogue, settings, job_keys: list[str], done: set[str], planned: dict, reason: str):
    """A run that cannot read its model registry: every job not yet catalogued is recorded failed with `reason`."""
    summary = RunSummary(outcomes=[], catalogue=redact_url(settings.resolved_database_url),
                         store=settings.resolved_store_url)
    for key in job_keys:
        job = planned.get(key)
        label = job_label(job["record"]) if job else key[:12]
        if key in done:
            summary.outcomes.append(JobOutcome(key, label, "skipped"))
        elif job is not None:
            catalogue.fail(key, reason)
            summary.outcomes.append(JobOutcome(key, label, "failed", reason=reason))
    return summary


if __name__ == "__main__":  # the detached local worker of flows.rerender.start_in_background
    summary = render_planned_jobs(sys.argv[1:])
    print(summary.to_text())
    sys.exit(0 if summary.ok else 1)
