"""A shard that has finished its own jobs helps with the rest of its batch.

Shards are cut before anyone knows when a worker will start each one or how fast it will go: a
worker that polls two seconds later, a slower GPU, or one that dies leaves its shard's jobs waiting
while the other workers sit idle. So once a shard has rendered its own jobs it goes on with planned
jobs of the same submissions and the same model (its render host has that model loaded) that nobody
has claimed yet, taking them from the end of the batch, which their own shard reaches last, until
none is left. The catalogue's lease keeps this exactly-once: whoever claims a job first renders it,
and the shard it was cut into finds it done and skips it.

A shard on the default pool leaves alone the jobs the planner sends to the large-GPU pool (when
there is one); a shard on the large pool may help with any job of its model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

HELP_PAGE = 8  # planned jobs read from the catalogue at a time: a window of renders and a few more


class BatchHelp:
    """Iterates a shard's own records, then the batch's unclaimed jobs it may render (see the module
    docstring), read a page at a time as the renders go, so what is offered is still unclaimed.
    `helped` holds the keys offered beyond the shard's own."""

    def __init__(self, own: list[dict], catalogue, submissions: list[str], *,
                 may_render: Callable[[dict], bool] = lambda record: True, page: int = HELP_PAGE) -> None:
        self.own, self.catalogue, self.submissions = own, catalogue, sorted(set(submissions))
        self.may_render, self.page = may_render, page
        self.helped: set[str] = set()

    def __iter__(self) -> Iterator[dict]:
        yield from self.own
        models = {r["model"] for r in self.own}
        own_keys = {r["key"] for r in self.own}
        before = None
        while self.own and (found := self.catalogue.planned_jobs(self.submissions, limit=self.page, before=before)):
            before = found[-1]["id"]
            for job in found:
                record = {**job["record"], "key": job["key"]}
                if job["key"] in own_keys or record.get("model") not in models or not self.may_render(record):
                    continue
                self.helped.add(job["key"])
                yield record


def may_render_here(settings) -> Callable[[dict], bool]:
    """Which of the batch's jobs this shard may help with: all of them, except on the default pool
    beside a large-GPU pool, where the jobs the planner sends to the large pool are left to it."""
    if settings.large_gpu_pool is None or _on_large_pool():
        return lambda record: True
    from flows.shards import needs_large_gpu

    return lambda record: not needs_large_gpu([record], settings.large_job_gib)


def _on_large_pool() -> bool:
    """True when this flow run is a shard of the large-GPU deployment."""
    from prefect.runtime import deployment

    from flows.shards import RENDER_SHARD_LARGE_DEPLOYMENT

    return deployment.name == RENDER_SHARD_LARGE_DEPLOYMENT.split("/", 1)[1]
