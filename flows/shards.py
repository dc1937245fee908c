"""Spreading planned jobs over GPU workers: shards, dispatch, and waiting with the catalogue as truth.

A shard is a list of job keys of one model, rendered by one flow run of the `render-shard`
deployment on one worker (so the model loads once per shard, not once per job). Shards go to
the large-GPU pool when any of their jobs' planned memory needs it, and to the `interactive`
work queue for re-renders artists are waiting for (the `nightly` queue has lower priority).

Waiting trusts the catalogue, not Prefect: a shard is finished when its jobs are done or failed
there. A shard whose flow run ended (crashed, cancelled, failed) or whose jobs' leases expired
without progress has its unfinished jobs sent out again as a new shard, and its stale flow run is
marked crashed so it stops holding a concurrency slot — a dead worker blocks nothing for long.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone

from catalogue.jobs import claimable
from linfusion_engine.planner import estimate_peak_gib

RENDER_SHARD_DEPLOYMENT = "linstudio-render-jobs/render-shard"
RENDER_SHARD_LARGE_DEPLOYMENT = "linstudio-render-jobs/render-shard-large"
NIGHTLY_QUEUE = "nightly"
INTERACTIVE_QUEUE = "interactive"


def make_shards(records: list[dict], shard_size: int) -> list[list[dict]]:
    """Group records by model (one load per shard) and cut each group into shards of `shard_size`."""
    by_model: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        by_model[record["model"]].append(record)
    shards = []
    for model in sorted(by_model):
        group = by_model[model]
        shards.extend(group[i:i + shard_size] for i in range(0, len(group), shard_size))
    return shards


def needs_large_gpu(shard: list[dict], large_job_gib: float, registry) -> bool:
    """True when the planner estimates any job of the shard above `large_job_gib` of device memory
    (`registry`, the studio's model registry, says what each job's model is)."""
    return any(estimate_peak_gib(r, registry) > large_job_gib for r in shard)


@dataclass
class DispatchedShard:
    keys: list[str]
    flow_run_id: object = None
    last_progress: float = field(default_factory=time.monotonic)
    finished_count: int = 0
    started: object = None  # when its flow run started running (None while scheduled or pending)
    ended: bool = False  # its flow run reached a final state (completed, crashed, cancelled, failed)
    checked: float = 0.0  # when its flow run's state was last read from Prefect (monotonic)
    dispatched: float = field(default_factory=time.monotonic)
    warned: bool = False  # told the log that no worker has taken it yet


def dispatch(shard_keys: list[str], *, large: bool, queue: str, help_max_gib: float | None = None) -> object:
    """Start one `render-shard` flow run for `shard_keys`; returns its flow run id. The shard helps with
    the rest of its batch once done with its own jobs (flows/helping.py), with jobs of at most
    `help_max_gib` planned memory (None: any)."""
    from prefect.deployments import run_deployment

    name = RENDER_SHARD_LARGE_DEPLOYMENT if large else RENDER_SHARD_DEPLOYMENT
    parameters = {"job_keys": shard_keys, "help_batch": True, "help_max_gib": help_max_gib}
    flow_run = run_deployment(name, parameters=parameters, timeout=0, work_queue_name=queue, as_subflow=False)
    return flow_run.id


FLOW_RUN_CHECK_SECONDS = 5.0  # how often a shard's flow run state is read from the Prefect server
NO_WORKER_WARNING_SECONDS = 600.0  # a shard no worker has started after this long is worth a warning


def wait_for_shards(catalogue, shards: list[DispatchedShard], *, lease_seconds: int, poll_seconds: float = 1.0,
                    redispatch=None, deadline_seconds: float | None = None,
                    flow_run_check_seconds: float = FLOW_RUN_CHECK_SECONDS,
                    no_worker_warning_seconds: float = NO_WORKER_WARNING_SECONDS, logger=None) -> None:
    """Block until every job of every shard is done or failed in the catalogue.

    `redispatch(keys) -> DispatchedShard` sends unfinished jobs of a dead shard out again. The
    catalogue is read every `poll_seconds`; Prefect, which only tells a shard that died from one
    that is slow, every `flow_run_check_seconds`, so a long batch does not keep the server busy.
    A shard that no worker has started within `no_worker_warning_seconds` is logged once (it keeps
    waiting: a worker may yet come), so a nightly run that seems stuck says why.
    """
    logger = logger or logging.getLogger(__name__)
    started = time.monotonic()
    active = list(shards)
    while active:
        time.sleep(poll_seconds)
        still = []
        for shard in active:
            states = catalogue.job_states(shard.keys)
            unfinished = [k for k in shard.keys if states.get(k) not in ("done", "failed")]
            if not unfinished:
                if shard.started is None and not shard.ended and cancel_if_waiting(shard.flow_run_id):
                    logger.info("cancelled a shard of %d job(s) no worker had started: other shards of the "
                                "batch rendered its jobs", len(shard.keys))
                continue
            finished = len(shard.keys) - len(unfinished)
            if finished != shard.finished_count:
                shard.finished_count, shard.last_progress = finished, time.monotonic()
            if time.monotonic() - shard.checked >= flow_run_check_seconds:
                shard.checked = time.monotonic()
                shard.ended, started_at = _flow_run_progress(shard.flow_run_id)
                if started_at is not None and shard.started is None:
                    shard.started, shard.last_progress = started_at, time.monotonic()
            ended = shard.ended
            waiting = time.monotonic() - shard.dispatched
            if shard.started is None and not ended and not shard.warned and waiting > no_worker_warning_seconds:
                shard.warned = True
                logger.warning("a shard of %d job(s) has waited %.0f s and no worker has started it: is a GPU "
                               "worker running on its pool (`linstudio worker --pool NAME`)?", len(shard.keys), waiting)
            # Only a shard whose flow run is running can stall; one still waiting for a worker is queued.
            stalled = shard.started is not None and time.monotonic() - shard.last_progress > lease_seconds * 1.5
            jobs = catalogue.jobs(unfinished) if (ended or stalled) else {}
            now = datetime.now(timezone.utc)
            ready = [k for k in unfinished if claimable(jobs.get(k), now)]
            if ready and redispatch is not None:
                if not ended:
                    _mark_crashed(shard.flow_run_id, "no progress within the lease: worker presumed dead")
                still.append(redispatch(ready))
                rest = [k for k in unfinished if k not in ready]
                if rest:  # leased by a process that may still be alive: keep waiting on them
                    shard.keys = rest
                    still.append(shard)
            else:
                still.append(shard)
        active = still
        if deadline_seconds is not None and time.monotonic() - started > deadline_seconds:
            raise TimeoutError(f"{sum(len(s.keys) for s in active)} job(s) unfinished after {deadline_seconds:.0f} s")


def _flow_run_progress(flow_run_id) -> tuple[bool, object]:
    """(ended, started time) of a flow run: ended once final; started once it left scheduled/pending."""
    if flow_run_id is None:
        return False, None
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
    state = flow_run.state
    ended = state is not None and state.is_final()
    started = flow_run.start_time if (ended or (state is not None and state.is_running())) else None
    return ended, started


def cancel_if_waiting(flow_run_id) -> bool:
    """Cancel a shard's flow run that is still waiting for a worker (its jobs were all rendered by
    shards helping their batch, flows/helping.py), so no worker starts it for nothing; True if done.
    A run a worker has already taken is left to find its jobs done and end at once."""
    if flow_run_id is None:
        return False
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.responses import SetStateStatus
    from prefect.states import Cancelled

    try:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(flow_run_id).state
            if state is None or not state.is_scheduled():
                return False
            result = client.set_flow_run_state(flow_run_id, Cancelled(
                message="not needed: other shards of the batch rendered its jobs"))
            return result.status == SetStateStatus.ACCEPT
    except Exception:  # best effort: a worker that starts it finds its jobs done
        return False


def _mark_crashed(flow_run_id, message: str) -> None:
    """Free a zombie Running flow run (its concurrency slot) after its worker died."""
    if flow_run_id is None:
        return
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    try:
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(flow_run_id, Crashed(message=message), force=True)
    except Exception:  # best effort: the catalogue already has what matters
        pass
