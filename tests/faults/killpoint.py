"""Run the `linstudio` CLI with a SIGKILL (or a stall) armed at one point of a batch, for the fault suite.

    python tests/faults/killpoint.py --at upload --nth 5 -- run manifest.yaml
    python tests/faults/killpoint.py --at render --stall DIR -- run manifest.yaml

The process kills itself with SIGKILL on the N-th call of the chosen point: no `finally`, no
`atexit`, no flushed buffers, no closed connections — what `kill -9` or the OOM killer does to a
worker. With `--stall DIR` it does not die: from the N-th call on, call k writes `DIR/reached-k` and
waits until the test creates `DIR/go-k` — a slow render, held exactly as long as the test needs
(the run stays alive meanwhile: its other threads, lease heartbeat included, go on), and the test
may SIGKILL it while it waits. The patches exist only in this test-only launcher process; the
product has no failpoints.

Points:
    render     inside the engine's render (`linfusion_engine.Engine.render`), before it returns:
               the job is leased and nothing is uploaded.
    upload     in the object store's `put`, just after an object is written: the ingest's intent
               is open and its row never written (an odd N, one ingest at a time: a PNG stored,
               its thumbnail not).
    catalogue  inside the ingest's final database transaction, after the render row is flushed and
               before the commit: both objects are stored, the transaction dies uncommitted.
    finish     as `linstudio run` starts recording its submissions' outcomes (every job has ended):
               with `--stall`, the test can take the database away right there.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

POINTS = ("render", "upload", "catalogue", "finish")


STALL_GUARD_S = 600  # a stalled call goes on by itself after this long: a test that forgot it must not hang CI


class KillSwitch:
    """Counts calls from every thread; the N-th one kills the process (or, with `stall`, each call from the
    N-th on waits for the test's go-file)."""

    def __init__(self, nth: int, stall: Path | None = None) -> None:
        self.nth = nth
        self.stall = stall
        self.calls = 0
        self._lock = threading.Lock()

    def tick(self) -> None:
        with self._lock:
            self.calls += 1
            call = self.calls
            if call == self.nth and self.stall is None:
                sys.stderr.write(f"killpoint: SIGKILL at call {call}\n")
                sys.stderr.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        if self.stall is not None and call >= self.nth:
            sys.stderr.write(f"killpoint: stalled at call {call}\n")
            sys.stderr.flush()
            (self.stall / f"reached-{call}").touch()
            deadline = time.monotonic() + STALL_GUARD_S
            while not (self.stall / f"go-{call}").exists() and time.monotonic() < deadline:
                time.sleep(0.05)


def _before(original: Callable, switch: KillSwitch) -> Callable:
    def patched(*args, **kwargs):
        switch.tick()
        return original(*args, **kwargs)

    return patched


def _after(original: Callable, switch: KillSwitch) -> Callable:
    def patched(*args, **kwargs):
        result = original(*args, **kwargs)
        switch.tick()
        return result

    return patched


def arm(point: str, nth: int, stall: Path | None = None) -> None:
    """Patch the named point of this process so that its N-th call is the last thing the process does (or,
    with `stall`, so that its calls from the N-th on wait for the test)."""
    switch = KillSwitch(nth, stall)
    if point == "render":
        from linfusion_engine import engine

        engine.Engine.render = _before(engine.Engine.render, switch)
    elif point == "upload":
        from catalogue import store

        for backend in (store.FileStore, store.S3Store):  # whichever the run's store URL names
            backend.put = _after(backend.put, switch)
    elif point == "catalogue":
        from catalogue import ingest

        ingest.insert_render = _after(ingest.insert_render, switch)
    elif point == "finish":
        from flows import batch

        batch.finish_submissions = _before(batch.finish_submissions, switch)
    else:
        raise SystemExit(f"killpoint: unknown point {point!r} (one of {', '.join(POINTS)})")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--at", required=True, choices=POINTS, help="where to kill the process")
    parser.add_argument("--nth", type=int, default=1, help="kill on this call of the point (1 = the first)")
    parser.add_argument("--stall", type=Path, default=None, metavar="DIR",
                        help="instead of killing: from the N-th call on, call k waits for DIR/go-k")
    parser.add_argument("cli", nargs=argparse.REMAINDER, help="-- then the linstudio arguments")
    options = parser.parse_args(argv)
    cli = options.cli[1:] if options.cli[:1] == ["--"] else options.cli
    arm(options.at, options.nth, options.stall)
    from linstudio.cli import app

    app(args=cli, prog_name="linstudio")


if __name__ == "__main__":
    main(sys.argv[1:])
