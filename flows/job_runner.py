"""Rendering one job: claim it, render it, catalogue it — with the retry policy in one place.

Retry policy:
- A job attempt that failed for a transient reason (`flows.transient.is_transient`: the database
  or the object store was unreachable) is attempted again, `JOB_RETRIES` more times after
  `JOB_RETRY_DELAYS`; then the job is recorded failed, "gave up after retries: ...". Anything else
  (bad input, a missing model, an engine error) fails the job at once with its reason, and the
  other jobs go on.
- The catalogue ingest inside an attempt is retried on its own (`INGEST_ATTEMPTS`) before giving
  up, so a blink of S3 after a long render does not throw the render away.
- Concurrency: one render per render slot (one per GPU, one on a CPU), held only around the
  engine call, so one job's claim and ingest overlap the next job's render; the model is loaded
  once per process per device (`flows.engines`), or kept by the worker's render host.

Why a job is not a Prefect task: a Prefect task run cost about 30 ms of CPU in the flow run and
20 ms in the server per job (measured, docs/benchmarks.md) — more than half of a tiny render, and
all of it on the cores that feed the GPU. Prefect runs the shards (one flow run each, with pools,
queues, priorities and retries); the catalogue, which is the source of truth anyway, holds each
job's state, and a shard's progress shows in the Prefect UI as a progress artifact.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

from flows.devices import SlotPool
from flows.outcomes import JobOutcome
from flows.rendering import render_png
from flows.transient import is_transient, one_line

log = logging.getLogger(__name__)

JOB_RETRIES = 2
JOB_RETRY_DELAYS = [2, 10]
INGEST_ATTEMPTS = 4
INGEST_BACKOFF_SECONDS = (1.0, 3.0, 8.0)


@dataclass
class RunContext:
    """What every task of one run shares: the catalogue, the render slots and who we are."""

    catalogue: object
    slots: SlotPool
    worker: str  # who holds leases: host/pid, so a dead local run's leases can be told apart
    lease_seconds: int
    worker_name: str = ""  # who made a render, as recorded in the catalogue (LINSTUDIO_WORKER_NAME)
    dtype: str | None = None
    # Renders elsewhere with render_png's contract (the worker's render host); None: in this process.
    renderer: Callable[..., tuple[bytes, dict]] | None = None


class LeaseHeartbeat:
    """Renews a job's lease while it renders, so a 16K render longer than the lease is not taken
    by another worker; a dead worker stops renewing and its lease expires on time."""

    def __init__(self, ctx: "RunContext", key: str) -> None:
        self.ctx, self.key = ctx, key
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{key[:8]}", daemon=True)

    def _beat(self) -> None:
        interval = max(self.ctx.lease_seconds / 3, 1.0)
        while not self._stop.wait(interval):
            try:
                self.ctx.catalogue.claim(self.key, self.ctx.worker, self.ctx.lease_seconds)
            except Exception:  # the database blinked: the next beat tries again
                pass

    def __enter__(self) -> "LeaseHeartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def job_label(record: dict) -> str:
    """`team/project/asset WxH seed N`: how a job is named to people."""
    return (f"{record['team']}/{record['project']}/{record['asset_id']} "
            f"{record['width']}x{record['height']} seed {record['seed']}")


def load_source_image(catalogue, record: dict):
    """The source render's image for a re-render (None for other jobs), checked against its sha256."""
    import hashlib

    from PIL import Image

    source = (record.get("conditioning") or {}).get("source_render")
    if not source:
        return None
    row = catalogue.render(source["render_id"])
    if row is None:
        raise ValueError(f"re-render source {source['render_id']} is no longer in the catalogue")
    data = catalogue.store.get(row["object_key"])
    if hashlib.sha256(data).hexdigest() != source["sha256"]:
        raise ValueError(f"re-render source {source['render_id']}: its object no longer matches the catalogued sha256")
    return Image.open(io.BytesIO(data)).convert("RGB")


def ingest_with_retries(ctx: RunContext, record: dict, png: bytes, engine_meta: dict, timings: dict) -> str:
    """Catalogue a finished render, retrying transient store/database failures with backoff."""
    full_record = {**record, "engine": engine_meta, "timings": timings}
    for attempt in range(INGEST_ATTEMPTS):
        try:
            return ctx.catalogue.ingest(record["key"], png, full_record, worker=ctx.worker,
                                        made_by=ctx.worker_name or ctx.worker)
        except Exception as exc:
            if not is_transient(exc) or attempt == INGEST_ATTEMPTS - 1:
                raise
            time.sleep(INGEST_BACKOFF_SECONDS[min(attempt, len(INGEST_BACKOFF_SECONDS) - 1)])
    raise AssertionError("unreachable")  # pragma: no cover


def failure_reason(exc: BaseException, record: dict) -> str:
    """A failed job's reason; a bad input file also names the manifest and line that asked for it,
    so whoever reads the failure knows which entry to fix."""
    from flows.conditioning_inputs import ConditioningInputError

    reason = one_line(exc)
    if isinstance(exc, ConditioningInputError) and record.get("manifest_path"):
        line = record.get("manifest_line")
        reason = f"{record['manifest_path']}{f':{line}' if line else ''}: {reason}"
    return reason


def run_job(ctx: RunContext, record: dict, sleep: Callable[[float], None] = time.sleep) -> JobOutcome:
    """Claim, render and catalogue one job, attempting it again after transient failures.

    Never raises for the job's own failures: a job that fails, or keeps failing transiently past
    its retries, is recorded `failed` in the catalogue with its reason and returned as such.
    """
    for attempt in range(JOB_RETRIES + 1):
        try:
            return attempt_job(ctx, record)
        except Exception as exc:  # transient (attempt_job handles the rest), or the claim itself failed
            transient = is_transient(exc)
            if transient and attempt < JOB_RETRIES:
                delay = JOB_RETRY_DELAYS[min(attempt, len(JOB_RETRY_DELAYS) - 1)]
                log.warning("%s: %s; attempting it again in %s s", job_label(record), one_line(exc), delay)
                sleep(delay)
                continue
            reason = f"gave up after retries: {one_line(exc)}" if transient else failure_reason(exc, record)
            try:
                ctx.catalogue.fail(record["key"], reason)
            except Exception:  # the catalogue itself is down: the lease expires and a re-run takes the job
                pass
            return JobOutcome(record["key"], job_label(record), "failed", reason=reason)
    raise AssertionError("unreachable")  # pragma: no cover


def attempt_job(ctx: RunContext, record: dict) -> JobOutcome:
    """One attempt at a job. Non-transient failures end the job `failed` with a reason; transient
    ones are raised, for `run_job` to attempt the job again (the lease is ours and is re-claimed)."""
    label = job_label(record)
    started = time.perf_counter()
    key = record["key"]
    # 1. Claim the job (a lease), or leave it to whoever holds it.
    if not ctx.catalogue.claim(key, ctx.worker, ctx.lease_seconds):
        existing = ctx.catalogue.rendered_keys([key])
        reason = None if existing else "running elsewhere (leased by another worker)"
        return JobOutcome(key, label, "skipped", reason=reason)
    try:
        # 2. Render on a free slot, keeping the lease alive meanwhile.
        source_image = load_source_image(ctx.catalogue, record)  # store I/O before taking a GPU slot
        with ctx.slots.slot() as device, LeaseHeartbeat(ctx, key):
            render_started = time.perf_counter()
            render = ctx.renderer or render_png
            png, engine_meta = (render(record, device, ctx.dtype, source_image=source_image)
                                if source_image is not None else render(record, device, ctx.dtype))
            render_s = time.perf_counter() - render_started
        # 3. Catalogue: object and row together or not at all.
        timings = {"render_s": round(render_s, 3), "queued_to_done_s": None}
        timings["job_s"] = round(time.perf_counter() - started, 3)
        render_id = ingest_with_retries(ctx, record, png, engine_meta, timings)
    except Exception as exc:
        if is_transient(exc):
            raise
        reason = failure_reason(exc, record)
        ctx.catalogue.fail(key, reason)
        return JobOutcome(key, label, "failed", reason=reason, seconds=time.perf_counter() - started)
    return JobOutcome(key, label, "rendered", render_id=render_id, seconds=time.perf_counter() - started)
