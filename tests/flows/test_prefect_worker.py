"""ShardWorker (flows/prefect_worker.py) as a unit: when a busy worker asks its pool for work.

The worker's whole life against a real server (taking shards, dying mid-batch) is in
test_distributed.py, which starts workers through `linstudio worker` and so through this class.
"""

from __future__ import annotations

import asyncio

import anyio
import pytest
from prefect.workers.process import ProcessWorker

from flows import prefect_worker
from flows.prefect_worker import BUSY_POLL_SECONDS, ShardWorker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def worker(monkeypatch):
    """A ShardWorker with one slot whose pool queries are counted, not sent."""
    clock = Clock()
    monkeypatch.setattr(prefect_worker.time, "monotonic", clock)
    queries = []

    async def query(self):
        queries.append(clock.now)
        return []

    monkeypatch.setattr(ProcessWorker, "get_and_submit_flow_runs", query)
    shard_worker = ShardWorker(name="gpu-a", work_pool_name="gpu", limit=1)

    async def make_limiter():  # anyio's limiter belongs to an event loop, as in the running worker
        return anyio.CapacityLimiter(1)

    assert hasattr(shard_worker, "_limiter"), "ShardWorker reads Prefect's private _limiter: check it after an upgrade"
    shard_worker._limiter = asyncio.run(make_limiter())
    return shard_worker, clock, queries


def poll(shard_worker) -> None:
    asyncio.run(shard_worker.get_and_submit_flow_runs())


def test_a_worker_with_a_free_slot_asks_at_every_poll(worker):
    shard_worker, clock, queries = worker
    for _ in range(3):
        poll(shard_worker)
        clock.now += 2
    assert queries == [1000.0, 1002.0, 1004.0]


def test_a_full_worker_asks_only_every_busy_poll_interval_and_at_once_when_a_slot_frees(worker):
    shard_worker, clock, queries = worker
    poll(shard_worker)  # free: asks, and is given a shard
    shard_worker._limiter.acquire_on_behalf_of_nowait("flow-run-1")
    assert shard_worker.is_full()
    for _ in range(14):  # 28 s busy, a poll every 2 s
        clock.now += 2
        poll(shard_worker)
    assert queries == [1000.0], "a full worker must not ask for runs it cannot start"
    clock.now += 2  # 30 s since its last question: asks once, so its queue still reads as ready
    poll(shard_worker)
    assert queries == [1000.0, 1000.0 + BUSY_POLL_SECONDS]
    shard_worker._limiter.release_on_behalf_of("flow-run-1")
    clock.now += 2
    poll(shard_worker)
    assert queries[-1] == clock.now, "a freed slot asks at the next poll"
