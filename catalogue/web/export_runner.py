"""Export workers: LINSTUDIO_EXPORT_WORKERS background threads per gallery process that run queued exports.

Threads, not the request: a route queues an export (catalogue.web.exports) and answers at once,
and these threads — outside the web server's worker pool — decode, convert and write the files.
The heavy parts (PNG/TIFF/JPEG codecs, zlib, numpy) release the GIL, so pages keep being served
while a 16K export runs. The number of threads bounds how many exports one gallery process runs
at once; the rest wait in the queue, in order.

Workers are woken when this process queues an export and otherwise look at the queue every
`poll_seconds`, which picks up exports queued by another gallery process and ones whose worker
died (its lease ran out). When the gallery stops, an export in progress is put back in the queue
between two files, so the next start (or another process) runs it again at once.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from typing import Any

from sqlalchemy import select

from catalogue import export as exporting
from catalogue.api import Catalogue
from catalogue.errors import CatalogueError
from catalogue.models import Render
from catalogue.queries import render_dict
from catalogue.web import exports

log = logging.getLogger(__name__)
POLL_SECONDS = 10.0
PROGRESS_SECONDS = 0.5  # progress is written at most this often (and always for the last file)


class _Stopping(Exception):
    """The gallery is stopping: put the export back in the queue."""


class _LeaseLost(Exception):
    """Another worker took the export over (this one was too slow to renew its lease)."""


class ExportRunner:
    """Runs queued exports of `catalogue` in `workers` daemon threads (started on first `start` or `wake`)."""

    def __init__(self, catalogue: Catalogue, workers: int, poll_seconds: float = POLL_SECONDS) -> None:
        if workers < 1:
            raise ValueError(f"export workers: {workers}; at least 1 (LINSTUDIO_EXPORT_WORKERS)")
        self.catalogue = catalogue
        self.workers = workers
        self.poll_seconds = poll_seconds
        self._wake = threading.Semaphore(0)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._name = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(2)}"

    def start(self) -> None:
        with self._lock:
            if self._threads or self._stop.is_set():
                return
            for index in range(self.workers):
                thread = threading.Thread(target=self._loop, args=(f"{self._name}:{index}",),
                                          name=f"linstudio-export-{index}", daemon=True)
                thread.start()
                self._threads.append(thread)

    def wake(self) -> None:
        """An export was queued here: let a free worker take it now rather than at its next look."""
        self.start()
        self._wake.release()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking exports; one in progress goes back to the queue after its current file."""
        self._stop.set()
        for _ in self._threads:
            self._wake.release()
        for thread in self._threads:
            thread.join(timeout)

    # -- one worker ---------------------------------------------------------------------------------

    def _loop(self, worker: str) -> None:
        while not self._stop.is_set():
            try:
                with self.catalogue.transaction() as session:
                    claimed = exports.claim(session, worker, self.catalogue.clock())
            except Exception as exc:  # the database is down: look again later, never die
                log.warning("export worker %s could not read the queue: %s: %s", worker, type(exc).__name__,
                            str(exc).partition("\n")[0])
                claimed = None
            if claimed is not None:
                self._run(claimed, worker)
                continue
            self._wake.acquire(timeout=self.poll_seconds)

    def _run(self, claimed: dict[str, Any], worker: str) -> None:
        export_id, cat = claimed["export_id"], self.catalogue
        log.info("export %s: %d render(s) to %s (%s), for %s", export_id, claimed["total"], claimed["destination"],
                 claimed["format"], claimed["requested_by"])
        last_write = [0.0]

        def on_progress(done: int, _uri: str) -> None:
            if self._stop.is_set():
                raise _Stopping
            if done < claimed["total"] and time.monotonic() - last_write[0] < PROGRESS_SECONDS:
                return
            last_write[0] = time.monotonic()
            with cat.transaction() as session:
                if not exports.progress(session, export_id, worker, done, cat.clock()):
                    raise _LeaseLost

        try:
            renders = self._renders(claimed["render_ids"])
            options = exporting.ExportOptions(destination=claimed["destination"], **claimed["options"])
            written = exporting.export_renders(cat.store, renders, options, on_progress)
        except _Stopping:
            self._record(exports.release, export_id, worker)
            log.info("export %s: put back in the queue (the gallery is stopping)", export_id)
        except _LeaseLost:
            log.warning("export %s: another worker took it over; this one stops", export_id)
        except (CatalogueError, OSError) as exc:  # the artist's to fix: a name clash, a full disk, a deleted render
            self._record(exports.fail, export_id, worker, f"{type(exc).__name__}: {exc}"
                         if isinstance(exc, OSError) else str(exc), cat.clock())
            log.warning("export %s failed: %s", export_id, exc)
        except Exception as exc:
            reference = secrets.token_hex(4)
            log.error("export %s failed (reference %s)", export_id, reference, exc_info=exc)
            self._record(exports.fail, export_id, worker,
                         f"internal error (reference {reference}; details are in the server log)", cat.clock())
        else:
            self._record(exports.finish, export_id, worker, written, cat.clock())
            log.info("export %s: %d file(s) written to %s", export_id, len(written), claimed["destination"])

    def _renders(self, render_ids: list[str]) -> list[dict[str, Any]]:
        """The renders to write, as export_renders wants them; one deleted since the export was queued fails it."""
        with self.catalogue.transaction() as session:
            found = {}
            for start in range(0, len(render_ids), 500):
                chunk = render_ids[start:start + 500]
                for row in session.scalars(select(Render).where(Render.id.in_(chunk))):
                    found[row.id] = render_dict(row, full=True) | {"review_status": row.review_status}
        missing = [render_id for render_id in render_ids if render_id not in found]
        if missing:
            raise exporting.ExportError(f"render {', '.join(missing[:5])} was deleted after this export was queued")
        return [found[render_id] for render_id in render_ids]

    def _record(self, change, export_id: str, *args) -> None:
        """Write an export's outcome; if the database is down the lease runs out and another worker redoes it."""
        try:
            with self.catalogue.transaction() as session:
                change(session, export_id, *args)
        except Exception as exc:
            log.warning("export %s: could not record its outcome (%s: %s); it will be run again once its lease "
                        "runs out", export_id, type(exc).__name__, str(exc).partition("\n")[0])
