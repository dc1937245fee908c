"""Which renders need a deep-zoom pyramid, building them, and the thread that does it after ingest.

Ingest stays as fast as before: it writes no tiles. A pyramid is built afterwards by
`build_pending`, which finds the catalogued renders above 2048 px whose pyramid is not complete
(the store is the record: the descriptor is written last, see catalogue.tiles). Three callers:

- `PyramidWorker`, a thread `linstudio serve` starts beside the gallery: it polls the catalogue,
  so renders ingested by any worker of a production setup (Prefect workers, render hosts) get
  their pyramid within `POLL_SECONDS` of landing, off the GPU machines;
- the end of `linstudio run` on the embedded default, for the renders that run made;
- `linstudio catalogue tiles [--render ID ...] [--missing]`, for renders made before pyramids
  existed, and `catalogue check --repair`, for partial ones.

Two builders racing on one render write the same tiles from the same PNG; the last descriptor wins.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import or_, select

from catalogue import tiles
from catalogue.models import Render
from catalogue.queries import projection_of

log = logging.getLogger(__name__)
POLL_SECONDS = 10.0
FULL_PASS_EVERY = 30


@dataclass(frozen=True)
class BigRender:
    """A render large enough for a pyramid, as the builder needs it."""

    render_id: str
    object_key: str
    width: int
    height: int
    projection: str | None


def big_renders(catalogue: Any, render_ids: Sequence[str] | None = None, after: str | None = None) -> list[BigRender]:
    """Renders above DEEPZOOM_MIN_SIDE on a side (of `render_ids` when given; newer than `after`), oldest first."""
    limit = tiles.DEEPZOOM_MIN_SIDE
    query = (select(Render.id, Render.object_key, Render.width, Render.height, Render.record)
             .where(or_(Render.width > limit, Render.height > limit)).order_by(Render.id))
    if render_ids is not None:
        query = query.where(Render.id.in_(list(render_ids)))
    if after is not None:
        query = query.where(Render.id > after)
    with catalogue.transaction() as session:
        return [BigRender(rid, key, w, h, projection_of(record)) for rid, key, w, h, record in session.execute(query)]


def build_pending(catalogue: Any, render_ids: Sequence[str] | None = None, rebuild: bool = False,
                  on_built: Callable[[BigRender, int], None] | None = None) -> list[str]:
    """Build the pyramid of every big render (of `render_ids`) that lacks a complete one, or of every
    one with `rebuild`; returns the ids built. A failing build is logged and left for the next pass."""
    built = []
    for render in big_renders(catalogue, render_ids):
        found = None if rebuild else tiles.inspect(catalogue.store, render.object_key, render.width, render.height,
                                                   render.projection)
        if found is not None and found.state == "complete":
            continue
        try:
            if found is not None and found.only_cube_missing:
                count = tiles.build_cube(catalogue.store, render.object_key)
            else:
                count = tiles.build(catalogue.store, render.object_key, render.projection)
        except Exception as exc:  # the PNG deleted meanwhile, a store blink: the next pass retries
            log.warning("deep-zoom pyramid of render %s not built: %s: %s", render.render_id, type(exc).__name__, exc)
            continue
        built.append(render.render_id)
        if on_built is not None:
            on_built(render, count)
    return built


class PyramidWorker:
    """Builds pyramids in a thread beside the gallery (a BackgroundService of catalogue.web.create_app).

    Its first pass looks at every big render (a stopped server leaves some behind); later passes
    only at renders newer than the last one seen, so a poll costs one indexed query. Render ids are
    ULIDs from each ingesting machine's clock, so every `FULL_PASS_EVERY`-th pass looks at all of
    them again: a render from a machine whose clock lags is picked up then.
    """

    def __init__(self, catalogue: Any, poll_seconds: float = POLL_SECONDS) -> None:
        self.catalogue = catalogue
        self.poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen: str | None = None
        self._passes = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="deepzoom-pyramids", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def run_once(self) -> list[str]:
        """One pass: the renders newer than the last seen (all of them the first time)."""
        self._passes += 1
        since = None if self._passes % FULL_PASS_EVERY == 0 else self._seen
        fresh = big_renders(self.catalogue, after=since)
        if not fresh:
            return []
        built = build_pending(self.catalogue, [r.render_id for r in fresh])
        self._seen = max(fresh[-1].render_id, self._seen or "")
        return built

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                for render_id in self.run_once():
                    log.info("deep-zoom pyramid of render %s built", render_id)
            except Exception:
                log.warning("deep-zoom pass failed; trying again in %.0f s", self.poll_seconds, exc_info=True)
            self._stop.wait(self.poll_seconds)
