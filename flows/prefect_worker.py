"""`python -m flows.prefect_worker`: Prefect's process worker, except that a busy worker stops asking for work.

Prefect's worker asks the server for scheduled flow runs every PREFECT_WORKER_QUERY_SECONDS, even
while every one of its slots (`--limit`, one per GPU) is taken and it could not start what it was
given. Each such poll cost the server about 50 ms of CPU on this machine (bench: a server with three
idle workers polling every 2 s used 9% of a core against 2% alone), so a farm of busy GPU workers
loaded the server in proportion to its size for nothing, during exactly the hours it also had to
record the nightly batch. `ShardWorker` asks only while it has a free slot, and once every
`BUSY_POLL_SECONDS` while full: Prefect shows a work queue as ready only if it was polled within the
last 60 s, so a pool whose workers are all busy still reads as ready in the UI.

Everything else is Prefect's process worker: the same pool type ("process"), job template,
heartbeats, cancellation and crash handling. `linstudio worker` runs this module instead of
`prefect worker start --type process`.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import time
import warnings

from prefect.workers.process import ProcessWorker

BUSY_POLL_SECONDS = 30.0
say = functools.partial(print, flush=True)  # "Worker ... started!" reaches a log file or journald at once

# Prefect registers every worker class under its `type`; this one keeps "process" on purpose (it is
# Prefect's process worker, for pools of that type) and Prefect warns that it takes that key over.
warnings.filterwarnings("ignore", message=r"Type 'ShardWorker' at .* has key 'process'")


class ShardWorker(ProcessWorker):
    """A process worker that does not poll its pool while all its slots are taken (see the module docstring)."""

    _last_query: float | None = None

    def is_full(self) -> bool:
        """True when every slot (`limit`) holds a flow run, so nothing the server offers could start."""
        return self._limiter is not None and self._limiter.available_tokens < 1

    async def get_and_submit_flow_runs(self):
        now = time.monotonic()
        if self.is_full() and self._last_query is not None and now - self._last_query < BUSY_POLL_SECONDS:
            return []
        self._last_query = now
        return await super().get_and_submit_flow_runs()


async def serve(pool: str, name: str, limit: int) -> None:
    """Run a ShardWorker on `pool` until interrupted, as `prefect worker start` runs its process worker."""
    from prefect.settings import PREFECT_WORKER_HEARTBEAT_SECONDS, PREFECT_WORKER_PREFETCH_SECONDS
    from prefect.utilities.processutils import setup_signal_handlers_worker

    # First SIGTERM or SIGINT: stop taking runs and let the running ones finish; a second one kills.
    setup_signal_handlers_worker(os.getpid(), "the process worker", say)
    worker = ShardWorker(name=name, work_pool_name=pool, limit=limit,
                         prefetch_seconds=PREFECT_WORKER_PREFETCH_SECONDS.value(),
                         heartbeat_interval_seconds=int(PREFECT_WORKER_HEARTBEAT_SECONDS.value()))
    await worker.start(printer=say)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", required=True, help="the work pool to take flow runs from")
    parser.add_argument("--name", required=True, help="the worker's name")
    parser.add_argument("--limit", type=int, default=1, help="flow runs at once (one per GPU)")
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(args.pool, args.name, args.limit))
    except KeyboardInterrupt:  # the graceful stop above
        pass


if __name__ == "__main__":
    main()
