"""The Prefect flow that renders a batch of planned jobs.

Its parameters are plain data (job records and the catalogue's URLs) so that a Prefect server
can record, retry and, later, schedule it; everything live (the catalogue connection, render
slots, loaded engines) is built inside the flow run's process. A model loads once per flow run
(`flows.engines`), and jobs run at most one per render slot.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from flows.devices import SlotPool, render_devices
from flows.outcomes import JobOutcome, RunSummary, redact_url
from flows.tasks import RunContext, job_label, render_job
from flows.transient import one_line

# Live objects a caller in the same process hands to the flow run (not flow parameters, which
# must be JSON): the open catalogue and a progress callback. Keyed by a token parameter.
_handoff: dict[str, dict] = {}
_handoff_lock = threading.Lock()


@flow(name="linstudio-batch", validate_parameters=False, log_prints=False,
      task_runner=ThreadPoolTaskRunner(max_workers=4))
def batch_flow(records: list[dict], worker: str | None = None, handoff_token: str | None = None,
               skipped: list[dict] | None = None, total: int | None = None) -> list[dict]:
    """Render and catalogue `records` (RenderJob records); returns one outcome dict per job.

    The catalogue, store, device and dtype come from the settings of the process running the
    flow (a worker's environment), never from parameters: database passwords stay out of Prefect.
    """
    from linstudio.settings import get_settings

    from flows.batch import worker_id

    live = _handoff.get(handoff_token or "", {})
    settings = live.get("settings") or get_settings()
    worker = worker or worker_id(settings)
    catalogue = live.get("catalogue")
    owns_catalogue = catalogue is None
    if owns_catalogue:
        from catalogue import Catalogue

        catalogue = Catalogue.open(settings.resolved_database_url, settings.resolved_store_url)
        catalogue.migrate()
    on_progress: Callable | None = live.get("on_progress")
    devices, host = render_target(settings)
    ctx = RunContext(catalogue=catalogue, slots=SlotPool(devices), worker=worker,
                     lease_seconds=settings.lease_seconds, dtype=settings.dtype, worker_name=settings.worker_name,
                     renderer=host.render if host is not None else None)
    skipped_outcomes = [JobOutcome(**item) for item in skipped or []]
    done_before = len(skipped_outcomes)
    total = total or done_before + len(records)
    # Tasks beyond the slot count would only queue on the slot lock: submit in windows so a
    # 5000-job batch does not create 5000 threads and futures at once.
    window = max(2 * len(devices), 2)
    outcomes: list[JobOutcome] = []
    pending: dict = {}
    queue = list(records)
    try:
        while queue or pending:
            while queue and len(pending) < window:
                record = queue.pop(0)
                pending[render_job.submit(ctx, record)] = record
            for future in as_completed(list(pending)):
                record = pending.pop(future)
                outcomes.append(_outcome_of(future, record, catalogue))
                if on_progress:
                    on_progress(outcomes[-1], done_before + len(outcomes), total)
                break  # refill the window
    finally:
        if host is not None:
            host.close()
        if owns_catalogue:
            catalogue.close()
    summary = RunSummary(outcomes=skipped_outcomes + outcomes, catalogue=redact_url(settings.resolved_database_url),
                         store=settings.resolved_store_url)
    create_markdown_artifact(key="linstudio-batch-summary", markdown=summary.to_markdown(),
                             description=summary.headline())
    return [o.__dict__ for o in outcomes]


def render_target(settings) -> tuple[list[str | None], object]:
    """(devices, render host client): the worker's render host when one answers, else this process.

    A host that does not answer is logged and skipped: the flow run then loads the model itself,
    slower but correct.
    """
    from flows.render_host import RenderHostUnavailable, client_from_settings

    host = client_from_settings(settings)
    if host is not None:
        try:
            return host.ping()["devices"], host
        except RenderHostUnavailable as exc:
            logging.getLogger(__name__).warning("rendering in this process: %s", exc)
    return render_devices(settings.device), None


def _outcome_of(future, record: dict, catalogue) -> JobOutcome:
    """The job's outcome; a task that exhausted its retries is recorded failed in the catalogue."""
    try:
        return future.result()
    except Exception as exc:
        reason = f"gave up after retries: {one_line(exc)}"
        try:
            catalogue.fail(record["key"], reason)
        except Exception:  # the catalogue itself is down: the lease expires and a re-run takes it
            pass
        return JobOutcome(record["key"], job_label(record), "failed", reason=reason)


def render_batch(records: list[dict], *, catalogue, settings, skipped: list[JobOutcome] = (),
                 total: int | None = None, on_progress: Callable | None = None) -> list[JobOutcome]:
    """Run `batch_flow` in this process with the already-open catalogue; returns the rendered jobs' outcomes."""
    import uuid

    from flows.batch import worker_id

    token = uuid.uuid4().hex
    with _handoff_lock:
        _handoff[token] = {"catalogue": catalogue, "on_progress": on_progress, "settings": settings}
    try:
        raw = batch_flow(records, worker_id(settings), handoff_token=token,
                         skipped=[o.__dict__ for o in skipped], total=total)
    finally:
        with _handoff_lock:
            _handoff.pop(token, None)
    return [JobOutcome(**item) for item in raw]
