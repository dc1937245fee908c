"""The dispatcher that starts what the gallery asks for: rerender requests in the catalogue -> render runs.

The gallery plans re-renders and retries in the catalogue and records a request
(catalogue.rerender_requests); it never starts a render itself. `RerenderDispatcher` runs beside
the gallery (`linstudio serve` hands it to the web app) and looks at the requests every
`poll_seconds`: it claims each waiting one, starts its jobs with `start` (by default
flows.rerender.start_in_background: the `render-shard` deployment where one is registered, else a
detached local process), and marks it started. Requests left by a gallery that stopped — or by a
dispatcher that died between claiming and starting — are picked up on the next look.

The same re-render asked for twice (two clicks, two scripts) starts one process: a request's jobs
that a process this dispatcher started is still rendering, or that are done, are not started
again. The local processes it starts are reaped on every look, so none lingers as a zombie under
the server.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import subprocess
import threading
from collections.abc import Callable

from catalogue import rerender_requests
from catalogue.models import DONE
from flows.rerender import start_in_background

log = logging.getLogger(__name__)
POLL_SECONDS = 2.0


class RerenderDispatcher:
    """Starts the jobs of `catalogue`'s rerender requests, in one daemon thread (see the module docstring)."""

    def __init__(self, catalogue, start: Callable[[list[str]], subprocess.Popen | None] = start_in_background,
                 poll_seconds: float = POLL_SECONDS,
                 stale_seconds: float = rerender_requests.STALE_SECONDS) -> None:
        self.catalogue = catalogue
        self.start_jobs = start
        self.poll_seconds = poll_seconds
        self.stale_seconds = stale_seconds
        self.name = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(2)}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._children: list[tuple[subprocess.Popen, frozenset[str]]] = []  # local runs and their job keys

    def dispatch_waiting(self) -> list[str]:
        """Claim and start every waiting request now; returns the ids of those started.

        A request whose start fails stays claimed and is tried again once its claim is stale, so a
        Prefect server that is down for a minute delays a re-render rather than losing it.
        """
        started = []
        self.reap()
        while not self._stop.is_set():
            cat = self.catalogue
            with cat.transaction() as session:
                claimed = rerender_requests.claim(session, self.name, cat.clock(), self.stale_seconds)
            if claimed is None:
                break
            try:
                keys = self._still_to_start(claimed["job_keys"])
                child = self.start_jobs(keys) if keys else None
                if isinstance(child, subprocess.Popen):
                    self._children.append((child, frozenset(keys)))
            except Exception as exc:  # noqa: BLE001 - logged; the request is tried again when its claim goes stale
                log.warning("%s request %s (%d job(s)) for %s could not start: %s: %s", claimed["kind"],
                            claimed["request_id"], len(claimed["job_keys"]), claimed["requested_by"],
                            type(exc).__name__, str(exc).partition("\n")[0])
                continue
            with cat.transaction() as session:
                if rerender_requests.mark_started(session, claimed["request_id"], self.name, cat.clock()):
                    started.append(claimed["request_id"])
            log.info("%s request %s: started %d job(s) for %s", claimed["kind"], claimed["request_id"],
                     len(claimed["job_keys"]), claimed["requested_by"])
        return started

    def _still_to_start(self, job_keys: list[str]) -> list[str]:
        """The request's jobs that need a process: not done, and not in a run this dispatcher started
        that is still going (a second request for the same re-render)."""
        in_flight = {key for child, keys in self._children if child.poll() is None for key in keys}
        states = self.catalogue.job_states(job_keys)
        return [key for key in job_keys if key not in in_flight and states.get(key) != DONE]

    def reap(self) -> int:
        """Collect the exit status of the local runs that ended (no zombies); returns how many still run."""
        self._children = [(child, keys) for child, keys in self._children if child.poll() is None]
        return len(self._children)

    @property
    def running(self) -> bool:
        """Whether its thread is looking at the requests (between `start` and `stop`)."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="linstudio-rerender-dispatcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.reap()  # runs still going carry on (they are detached); finished ones are collected

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.dispatch_waiting()
            except Exception as exc:  # noqa: BLE001 - the database is down: look again later, never die
                log.warning("rerender dispatcher could not read the requests: %s: %s", type(exc).__name__,
                            str(exc).partition("\n")[0])
            self._stop.wait(self.poll_seconds)
