"""A shard that has finished its own jobs helps with the rest of its batch.

Shards are cut before anyone knows when a worker will start each one or how fast it will go: a
worker that polls two seconds later, a slower GPU, or one that dies leaves its shard's jobs waiting
while the other workers sit idle. So once a shard has rendered its own jobs it goes on with planned
jobs of the same submissions and the same model (its render host has that model loaded) that nobody
has claimed yet, taking them from the end of the batch, which their own shard reaches last. The
catalogue's lease keeps this exactly-once: whoever claims a job first renders it, and the shard it
was cut into finds it done and skips it.

Bounds, set by whoever dispatches the shard (flows/nightly.py):
- at most as many jobs again as the shard's own, so a worker comes back to its pool about as often
  as before and an artist's re-render on the interactive queue does not wait for the whole night;
- no job whose planned peak memory is above `max_gib` (a default-pool shard beside a large-GPU
  pool leaves those to that pool).
Helping is best effort: if the catalogue cannot be read, the shard stops helping and ends normally.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from flows import shards
from flows.transient import one_line

log = logging.getLogger(__name__)

HELP_PAGE = 8  # planned jobs read from the catalogue at a time: a window of renders and a few more


class BatchHelp:
    """Iterates a shard's own records, then up to `limit` of the batch's unclaimed jobs it may render
    (see the module docstring; `limit` defaults to the shard's size), read a page at a time as the
    renders go, so what is offered is still unclaimed. `helped` holds the keys offered beyond its own."""

    def __init__(self, own: list[dict], catalogue, submissions: list[str], *, max_gib: float | None = None,
                 registry=None, limit: int | None = None, page: int = HELP_PAGE) -> None:
        self.own, self.catalogue, self.submissions = own, catalogue, sorted(set(submissions))
        self.max_gib, self.page = max_gib, page
        self.registry = registry  # the model registry the memory estimates ask; needed with `max_gib`
        self.limit = len(own) if limit is None else limit
        self.helped: set[str] = set()

    def __iter__(self) -> Iterator[dict]:
        yield from self.own
        for record in self._unclaimed():
            if len(self.helped) >= self.limit:
                return
            self.helped.add(record["key"])
            yield record

    def _unclaimed(self) -> Iterator[dict]:
        """Planned jobs of the batch this shard may render, newest planned first."""
        models = {r["model"] for r in self.own}
        own_keys = {r["key"] for r in self.own}
        before = None
        while self.own:
            try:
                found = self.catalogue.planned_jobs(self.submissions, limit=self.page, before=before)
            except Exception as exc:  # the catalogue blinked: helping is a bonus, the shard's own work is done
                log.warning("stopped helping the batch: %s", one_line(exc))
                return
            if not found:
                return
            before = found[-1]["id"]
            for job in found:
                record = {**job["record"], "key": job["key"]}
                if job["key"] not in own_keys and record.get("model") in models and self._fits(record):
                    yield record

    def _fits(self, record: dict) -> bool:
        if self.max_gib is None:
            return True
        # shards.needs_large_gpu, looked up at the call: tests/flows/test_helping.py stands in for it
        return not shards.needs_large_gpu([record], self.max_gib, self.registry)
