"""A run's leases: renewed while it holds them, and failures it could not write kept until it can.

One `LeaseKeeper` per run, one thread: every `catalogue.jobs.heartbeat_seconds(lease)` (10 s for the
default 15-minute lease) it
1. writes the failures the catalogue could not take when they happened (the database was down, or
   its disk full), each only while this run still holds the job's lease (`Catalogue.fail_leased`);
2. renews, in one statement, the lease of every job the run holds, from its claim to its end —
   waiting for a render slot, rendering, uploading — so a lease's last renewal says whether its run
   is alive (see `catalogue.jobs`: another host releases a lease that stays silent).

So a job whose failure could not be written does not sit leased until the lease expires: the run
writes it on the first heartbeat after the database answers again. A run that ends first waits for
the database up to `DRAIN_SECONDS` (bounded: it must end), then says which failures stayed
unwritten; their leases go silent and `linstudio catalogue check --repair` or the next run, on any
host, sends the jobs back to planned.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from catalogue.jobs import heartbeat_seconds
from flows.transient import is_transient, one_line


def worker_id(settings) -> str:
    """Who holds a lease: host name and process id, so a crashed local run's leases can be told apart."""
    return f"{settings.worker_name}/{os.getpid()}"

log = logging.getLogger(__name__)

DRAIN_SECONDS = 30.0  # how long a finished run waits for the database to take its pending failures
DRAIN_POLL_SECONDS = 1.0


class LeaseKeeper:
    """Heartbeat and pending failures of one run (see the module docstring).

    Args:
        catalogue: the run's open catalogue.
        worker: the run's lease owner id (host/pid).
        lease_seconds: the lease length the run claims with.
        drain_seconds: how long `close` waits for the database to take the failures still pending.
    """

    def __init__(self, catalogue, worker: str, lease_seconds: int, drain_seconds: float = DRAIN_SECONDS) -> None:
        self.catalogue, self.worker, self.lease_seconds = catalogue, worker, lease_seconds
        self.interval = heartbeat_seconds(lease_seconds)
        self.drain_seconds = drain_seconds
        self._held: set[str] = set()
        self._pending: dict[str, str] = {}  # job key -> failure reason not written yet
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned: set[str] = set()

    # -- what the job threads call ------------------------------------------------------------------------

    def hold(self, key: str) -> None:
        """The run claimed `key`: keep its lease alive until `let_go`."""
        with self._lock:
            self._held.add(key)
            if self._thread is None:
                self._thread = threading.Thread(target=self._beat, name="lease-keeper", daemon=True)
                self._thread.start()

    def let_go(self, key: str) -> None:
        """The job ended (done, or its failure written): stop renewing its lease."""
        with self._lock:
            if key not in self._pending:
                self._held.discard(key)

    def record_failure(self, key: str, reason: str) -> bool:
        """Write the job's failure now; if the catalogue cannot take it, keep it pending (the lease held
        and renewed) for the next heartbeat. True when written now."""
        try:
            self._write(key, reason)
            return True
        except Exception as exc:
            log.warning("could not record the failure of job %s now (%s); keeping it, and its lease, until the "
                        "catalogue takes it", key[:12], one_line(exc))
            with self._lock:
                self._pending[key] = reason
                self._held.add(key)
            return False

    # -- the heartbeat ----------------------------------------------------------------------------------------

    def _write(self, key: str, reason: str) -> None:
        if not self.catalogue.fail_leased(key, self.worker, reason):
            log.warning("job %s failed here (%s), but this run does not hold its lease (never claimed, or released "
                        "meanwhile): not recorded", key[:12], reason)

    def flush(self) -> BaseException | None:
        """Write the pending failures the catalogue takes now; returns the last error (None when all went)."""
        with self._lock:
            pending = dict(self._pending)
        error = None
        for key, reason in pending.items():
            try:
                self._write(key, reason)
            except Exception as exc:
                error = exc
                continue
            log.info("recorded the failure of job %s now that the catalogue takes it", key[:12])
            with self._lock:
                self._pending.pop(key, None)
                self._held.discard(key)
        return error

    def _renew(self) -> None:
        with self._lock:
            held = sorted(self._held)
        if not held:
            return
        try:
            kept = self.catalogue.renew_leases(held, self.worker, self.lease_seconds)
        except Exception:  # the database blinked: the next beat tries again
            return
        with self._lock:
            lost = (set(held) & self._held) - kept - self._warned
            self._warned |= lost
        for key in sorted(lost):
            log.warning("the lease of job %s is no longer this run's (released as silent, or taken after it "
                        "expired)", key[:12])

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            self.flush()
            self._renew()

    # -- the end of the run ---------------------------------------------------------------------------------

    def close(self) -> dict[str, str]:
        """Stop the heartbeat and write what is pending, waiting up to `drain_seconds` for a database that
        is unreachable (not for a full disk, which does not empty itself); returns {key: reason} of the
        failures still unwritten."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(self.interval, 5.0) + 5.0)
        deadline = time.monotonic() + self.drain_seconds
        while True:
            error = self.flush()
            with self._lock:
                left = dict(self._pending)
            if not left or error is None or not is_transient(error) or time.monotonic() >= deadline:
                break
            time.sleep(DRAIN_POLL_SECONDS)
        if left:
            log.warning("%d job failure(s) could not be recorded (%s): their leases are released by the next run "
                        "or `linstudio catalogue check --repair` once the database answers", len(left),
                        one_line(error) if error else "the catalogue did not take them")
        return left
