"""Rendering a batch of planned jobs in one Prefect flow run.

`render_batch` renders job records inside the current flow run (a `render-shard` run on a GPU
worker, or the nightly run rendering here) or, outside any flow run (`linstudio run` and the
local `linstudio rerender`), inside a new run of the `linstudio-batch` flow, so every render is
part of a Prefect flow run either way. The jobs themselves are plain threads, not Prefect tasks
(see `flows.job_runner` for why): at most one render per render slot, the next job's claim and
ingest overlapping the current render. The shard's progress is a Prefect progress artifact.

Everything live (the catalogue connection, the model registry, render slots, loaded engines) is
built inside the process that renders; flow parameters stay plain data, and database passwords
stay out of Prefect. How the live objects of a caller in this process reach the flow run it starts
is `LiveObjects`'s docstring.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Callable, Iterable

from prefect import flow

from catalogue import Catalogue
from flows.devices import SlotPool, render_devices
from flows.job_runner import RunContext, run_job
from flows.leases import LeaseKeeper, worker_id
from flows.outcomes import JobOutcome, RunSummary, redact_url
from flows.render_host import RenderHostUnavailable, client_from_settings
from linfusion_engine.registry import ModelRegistry
from linstudio_settings import get_settings

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class LiveObjects:
    """What a caller in this process hands the `batch_flow` run it starts: its open catalogue, its
    settings, the run's model registry and a progress callback.

    None of these can be flow parameters: Prefect records parameters as JSON (and a catalogue URL
    carries the database password). They travel in `_live`, a context variable that `render_batch`
    sets around its one call of the flow and resets after. Prefect runs a sync flow in the calling
    thread and context, so the flow's function sees them; nothing else does — not a later call, not
    a call from another thread — and there is no process-wide table keyed by a token to clean up. A
    run of the flow started from elsewhere (were `batch_flow` served or deployed) finds the variable
    unset and builds its own from the worker's settings. Calling `batch_flow.fn` directly was the other way, but it would render outside any
    flow run: no run in the Prefect UI, and no place for the summary and progress artifacts.
    """

    catalogue: object
    settings: object
    registry: object
    on_progress: Callable | None = None


_live: ContextVar[LiveObjects | None] = ContextVar("linstudio_batch_live", default=None)
PROGRESS_EVERY_SECONDS = 5.0  # how often a flow run's progress artifact is updated (one API call each)


@flow(name="linstudio-batch", validate_parameters=False, log_prints=False)
def batch_flow(records: list[dict], worker: str | None = None, skipped: list[dict] | None = None,
               total: int | None = None) -> list[dict]:
    """Render and catalogue `records` (`JobSpec.to_record()` records); returns one outcome dict per job.

    The catalogue, store, model registry, device and dtype are the caller's (`LiveObjects`), or
    come from the settings of the process running the flow (a worker's environment), never from
    parameters.
    """
    live = _live.get() or _own_live_objects()
    settings, catalogue = live.settings, live.catalogue
    owns_catalogue = catalogue is None
    if owns_catalogue:
        catalogue = Catalogue.open(settings.resolved_database_url, settings.resolved_store_url)
        catalogue.migrate()
    skipped_outcomes = [JobOutcome(**item) for item in skipped or []]
    try:
        outcomes = render_records(records, catalogue=catalogue, settings=settings, registry=live.registry,
                                  worker=worker, on_progress=live.on_progress, done_before=len(skipped_outcomes),
                                  total=total)
    finally:
        if owns_catalogue:
            catalogue.close()
    publish_summary(RunSummary(outcomes=skipped_outcomes + outcomes,
                               catalogue=redact_url(settings.resolved_database_url),
                               store=settings.resolved_store_url))
    return [o.__dict__ for o in outcomes]


def _own_live_objects() -> LiveObjects:
    """A served or deployed run's own: the worker's settings and registry; the catalogue is opened
    (and closed) by the flow."""
    settings = get_settings()
    return LiveObjects(catalogue=None, settings=settings, registry=ModelRegistry.from_settings(settings))


def render_records(records: Iterable[dict], *, catalogue, settings, registry, worker: str | None = None,
                   on_progress: Callable | None = None, done_before: int = 0,
                   total: int | None = None) -> list[JobOutcome]:
    """Render and catalogue `records` in this process (or on the worker's render host); one outcome each.

    Jobs run in `2 x slots` threads: each holds a render slot only around its render, so while one
    job renders the next is claimed and the previous one ingested. `records` is read as jobs start,
    so it may be a lazy iterable (`flows.helping.BatchHelp`); pass `total` then. `registry` is the
    run's model registry (in-process renders load from it; the render host has its own).
    """
    devices, host = render_target(settings)
    owner = worker or worker_id(settings)
    keeper = LeaseKeeper(catalogue, owner, settings.lease_seconds)
    ctx = RunContext(catalogue=catalogue, slots=SlotPool(devices), worker=owner,
                     lease_seconds=settings.lease_seconds, dtype=settings.dtype, worker_name=settings.worker_name,
                     renderer=host.render if host is not None else None, keeper=keeper, registry=registry)
    total = done_before + len(records) if total is None else total
    progress = ProgressArtifact(total, done_before)
    outcomes: list[JobOutcome] = []
    window = max(2 * len(devices), 2)
    upcoming = iter(records)  # in manifest order
    try:
        with ThreadPoolExecutor(max_workers=window, thread_name_prefix="linstudio-job") as pool:
            pending: set[Future] = set()
            # Submitted a window at a time, so a 5000-job batch does not hold 5000 futures at once
            # and a cancelled run stops after the jobs in flight.
            while True:
                while len(pending) < window and (record := next(upcoming, None)) is not None:
                    pending.add(pool.submit(run_job, ctx, record))
                    # A shard that helps its batch (flows/helping.py) renders more than it was given.
                    progress.total = max(progress.total, done_before + len(outcomes) + len(pending))
                if not pending:
                    break
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    outcomes.append(future.result())
                    log.info("%s: %s%s", outcomes[-1].label, outcomes[-1].status,
                             f" ({outcomes[-1].reason})" if outcomes[-1].reason else "")
                    progress.advance(done_before + len(outcomes))
                    if on_progress:
                        on_progress(outcomes[-1], done_before + len(outcomes), total)
    finally:
        unrecorded = keeper.close()  # failures the catalogue could not take: written now, or reported
        progress.finish(done_before + len(outcomes))
        if host is not None:
            host.close()
    return [replace(o, recorded=o.key not in unrecorded) if o.status == "failed" else o for o in outcomes]


class ProgressArtifact:
    """A Prefect progress artifact for the current flow run, updated at most every few seconds.

    Best effort: progress that cannot be reported (no flow run, the server blinked) is skipped, never
    a reason to stop rendering; the catalogue has each job's state regardless.
    """

    def __init__(self, total: int, done: int) -> None:
        self.total, self.artifact_id, self.last = max(total, 1), None, 0.0
        from prefect.context import FlowRunContext

        if FlowRunContext.get() is None:
            return
        try:
            from prefect.artifacts import create_progress_artifact

            self.artifact_id = create_progress_artifact(progress=self._percent(done),
                                                        description=f"{total} job(s) to render")
            self.last = time.monotonic()
        except Exception as exc:
            log.debug("no progress artifact: %s", exc)

    def _percent(self, done: int) -> float:
        return round(100.0 * done / self.total, 1)

    def advance(self, done: int) -> None:
        if self.artifact_id is not None and time.monotonic() - self.last >= PROGRESS_EVERY_SECONDS:
            self._update(done)

    def finish(self, done: int) -> None:
        if self.artifact_id is not None:
            self._update(done)

    def _update(self, done: int) -> None:
        self.last = time.monotonic()
        try:
            from prefect.artifacts import update_progress_artifact

            update_progress_artifact(self.artifact_id, progress=self._percent(done))
        except Exception as exc:
            log.debug("progress not reported: %s", exc)


def publish_summary(summary: RunSummary) -> None:
    """Keep the run's summary as a markdown artifact of the current flow run (when there is one)."""
    from prefect.artifacts import create_markdown_artifact
    from prefect.context import FlowRunContext

    if FlowRunContext.get() is None:
        return
    create_markdown_artifact(key="linstudio-batch-summary", markdown=summary.to_markdown(),
                             description=summary.headline())


def render_target(settings) -> tuple[list[str | None], object]:
    """(devices, render host client): the worker's render host when one answers, else this process.

    A host that does not answer is logged and skipped: the flow run then loads the model itself,
    slower but correct.
    """
    host = client_from_settings(settings)
    if host is not None:
        try:
            return host.ping()["devices"], host
        except RenderHostUnavailable as exc:
            log.warning("rendering in this process: %s", exc)
    return render_devices(settings.device), None


def render_batch(records: Iterable[dict], *, catalogue, settings, registry, skipped: list[JobOutcome] = (),
                 total: int | None = None, on_progress: Callable | None = None) -> list[JobOutcome]:
    """Render `records` with the already-open catalogue and the run's model registry; returns the
    rendered jobs' outcomes.

    Inside a flow run (a shard, the nightly run) the jobs render in that run; outside one, in a new
    run of `batch_flow`, which finds the live objects in `_live` (see `LiveObjects`).
    """
    from prefect.context import FlowRunContext

    if FlowRunContext.get() is not None:
        return render_records(records, catalogue=catalogue, settings=settings, registry=registry,
                              on_progress=on_progress, done_before=len(skipped), total=total)
    token = _live.set(LiveObjects(catalogue=catalogue, settings=settings, registry=registry, on_progress=on_progress))
    try:
        raw = batch_flow(list(records), worker_id(settings), skipped=[o.__dict__ for o in skipped], total=total)
    finally:
        _live.reset(token)
    return [JobOutcome(**item) for item in raw]
