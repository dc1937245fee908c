"""The dispatcher that starts what the gallery asks for: rerender requests in the catalogue -> render runs.

The gallery plans re-renders and retries in the catalogue and records a request
(catalogue.rerender_requests); it never starts a render itself. `RerenderDispatcher` runs beside
the gallery (`linstudio serve` hands it to the web app) and looks at the requests every
`poll_seconds`: it claims each waiting one, starts its jobs with `start` (by default
flows.rerender.start_in_background: the `rerender` deployment where one is registered, else a
detached local process), and marks it started. Requests left by a gallery that stopped — or by a
dispatcher that died between claiming and starting — are picked up on the next look.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable

from catalogue import rerender_requests
from flows.rerender import start_in_background

log = logging.getLogger(__name__)
POLL_SECONDS = 2.0


class RerenderDispatcher:
    """Starts the jobs of `catalogue`'s rerender requests, in one daemon thread (see the module docstring)."""

    def __init__(self, catalogue, start: Callable[[list[str]], None] = start_in_background,
                 poll_seconds: float = POLL_SECONDS,
                 stale_seconds: float = rerender_requests.STALE_SECONDS) -> None:
        self.catalogue = catalogue
        self.start_jobs = start
        self.poll_seconds = poll_seconds
        self.stale_seconds = stale_seconds
        self.name = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(2)}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def dispatch_waiting(self) -> list[str]:
        """Claim and start every waiting request now; returns the ids of those started.

        A request whose start fails stays claimed and is tried again once its claim is stale, so a
        Prefect server that is down for a minute delays a re-render rather than losing it.
        """
        started = []
        while not self._stop.is_set():
            cat = self.catalogue
            with cat.transaction() as session:
                claimed = rerender_requests.claim(session, self.name, cat.clock(), self.stale_seconds)
            if claimed is None:
                break
            try:
                self.start_jobs(claimed["job_keys"])
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

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.dispatch_waiting()
            except Exception as exc:  # noqa: BLE001 - the database is down: look again later, never die
                log.warning("rerender dispatcher could not read the requests: %s: %s", type(exc).__name__,
                            str(exc).partition("\n")[0])
            self._stop.wait(self.poll_seconds)
