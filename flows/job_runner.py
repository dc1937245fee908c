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
- Leases: from its claim to its end a job's lease is renewed by the run's `LeaseKeeper`
  (flows/leases.py), and a failure the catalogue cannot take when it happens (database down, disk
  full) is kept there and written as soon as it can be, so the job does not stay leased for the
  whole lease.

Why a job is not a Prefect task: a Prefect task run cost about 30 ms of CPU in the flow run and
20 ms in the server per job (measured, docs/benchmarks.md) — more than half of a tiny render, and
all of it on the cores that feed the GPU. Prefect runs the shards (one flow run each, with pools,
queues, priorities and retries); the catalogue, which is the source of truth anyway, holds each
job's state, and a shard's progress shows in the Prefect UI as a progress artifact.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass
from functools import partial
from typing import Callable

from flows.conditioning_inputs import ConditioningInputError
from flows.devices import SlotPool
from flows.leases import LeaseKeeper
from flows.outcomes import RUNNING_ELSEWHERE, JobOutcome
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
    # The run's model registry (built once per run, flows/runs.py): what in-process renders load models from.
    registry: object = None
    # Renews the leases this run holds and keeps failures the catalogue could not take (flows/leases.py);
    # None: failures are written at once or not at all, and leases are not renewed (unit tests).
    keeper: LeaseKeeper | None = None

    def hold(self, key: str) -> None:
        if self.keeper is not None:
            self.keeper.hold(key)

    def let_go(self, key: str) -> None:
        if self.keeper is not None:
            self.keeper.let_go(key)

    def record_failure(self, key: str, reason: str) -> bool:
        """Write a job's failure (only while this run holds its lease); False when the catalogue could not
        take it now (the keeper then writes it once it can)."""
        if self.keeper is not None:
            return self.keeper.record_failure(key, reason)
        try:
            self.catalogue.fail_leased(key, self.worker, reason)
        except Exception:  # no keeper: the lease expires and a later run takes the job
            return False
        return True


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
    reason = one_line(exc)
    if isinstance(exc, ConditioningInputError) and record.get("manifest_path"):
        line = record.get("manifest_line")
        reason = f"{record['manifest_path']}{f':{line}' if line else ''}: {reason}"
    return reason


def run_job(ctx: RunContext, record: dict, sleep: Callable[[float], None] = time.sleep) -> JobOutcome:
    """Claim, render and catalogue one job, attempting it again after transient failures.

    Never raises for the job's own failures: a job that fails, or keeps failing transiently past
    its retries, is recorded `failed` in the catalogue with its reason (now, or by the run's keeper
    once the catalogue takes it) and returned as such. The lease, once claimed, is renewed through
    the retries' delays too, so a live run's job never looks abandoned.
    """
    try:
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
                recorded = ctx.record_failure(record["key"], reason)
                return JobOutcome(record["key"], job_label(record), "failed", reason=reason, recorded=recorded)
        raise AssertionError("unreachable")  # pragma: no cover
    finally:
        ctx.let_go(record["key"])  # a failure still pending keeps its lease held until it is written


def elsewhere_reason(ctx: RunContext, key: str) -> str:
    """Who holds the lease of a job this run could not claim, and until when (best effort)."""
    try:
        job = ctx.catalogue.job(key) or {}
    except Exception:
        job = {}
    if job.get("state") == "running" and job.get("lease_owner"):
        return f"leased by {job['lease_owner']} until {job['lease_expires_at']}"
    return "leased by another run"


def attempt_job(ctx: RunContext, record: dict) -> JobOutcome:
    """One attempt at a job. Non-transient failures end the job `failed` with a reason; transient
    ones are raised, for `run_job` to attempt the job again (the lease is ours and is re-claimed)."""
    label = job_label(record)
    started = time.perf_counter()
    key = record["key"]
    # 1. Claim the job (a lease), or leave it to whoever holds it.
    if not ctx.catalogue.claim(key, ctx.worker, ctx.lease_seconds):
        if ctx.catalogue.rendered_keys([key]):
            return JobOutcome(key, label, "skipped")
        return JobOutcome(key, label, RUNNING_ELSEWHERE, reason=elsewhere_reason(ctx, key))
    ctx.hold(key)  # renewed from here to the job's end (run_job lets go): slot, render, upload, retries
    return render_claimed(ctx, record, label, started)


def render_claimed(ctx: RunContext, record: dict, label: str, started: float) -> JobOutcome:
    """Render and catalogue a job this run holds the lease of (see `attempt_job`)."""
    key = record["key"]
    try:
        # 2. Render on a free slot.
        source_image = load_source_image(ctx.catalogue, record)  # store I/O before taking a GPU slot
        with ctx.slots.slot() as device:
            render_started = time.perf_counter()
            render = ctx.renderer or partial(render_png, registry=ctx.registry)
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
        recorded = ctx.record_failure(key, reason)
        return JobOutcome(key, label, "failed", reason=reason, seconds=time.perf_counter() - started,
                          recorded=recorded)
    return JobOutcome(key, label, "rendered", render_id=render_id, seconds=time.perf_counter() - started)
