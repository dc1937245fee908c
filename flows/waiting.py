"""`linstudio run --wait`: wait for the jobs another live run is rendering, instead of leaving them to it.

Without `--wait`, a job leased by a live run elsewhere is reported `running_elsewhere` and the run
exits 3 (linstudio/commands/run.py): its jobs are not all catalogued yet, and a script must not
take the batch for finished. With `--wait` the run watches those jobs in the catalogue, which is the
truth, until each one
- lands: catalogued by the other run — reported `skipped`, "rendered by another run while this one
  waited";
- comes free: its lease expired, its owner went silent (released here after the silence window,
  `Catalogue.release_silent_leases`: the other run died), it went back to planned, or the other
  run failed it — this run then claims and renders it itself, exactly as if it had been free at
  the start (so a failure elsewhere gets one more attempt here, and its own reason if it fails).
There is no deadline: a live run renews its leases only while it works on the jobs, so the wait
ends when that run finishes them or stops renewing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone

from flows.outcomes import RUNNING_ELSEWHERE, JobOutcome

log = logging.getLogger(__name__)

POLL_SECONDS = 2.0
LANDED_ELSEWHERE = "rendered by another run while this one waited"


def claimable(job: dict | None, now: datetime) -> bool:
    """A job this run may take now: planned, failed, or running under a lease that has expired."""
    if job is None:
        return False
    if job["state"] in ("planned", "failed"):
        return True
    if job["state"] != "running" or not job["lease_expires_at"]:
        return False
    expires = datetime.fromisoformat(job["lease_expires_at"])
    if expires.tzinfo is None:  # stored as UTC
        expires = expires.replace(tzinfo=timezone.utc)
    return expires < now


def wait_for_elsewhere(catalogue, outcomes: list[JobOutcome], records: dict[str, dict], *, worker: str,
                       render: Callable[[list[dict]], list[JobOutcome]], poll_seconds: float = POLL_SECONDS,
                       sleep: Callable[[float], None] = time.sleep) -> list[JobOutcome]:
    """`outcomes` with every `running_elsewhere` one replaced by how its job ended (see the module docstring).

    `records` are the run's job records by key; `render(records)` renders some again in this run (a
    new batch) and returns their outcomes; `worker` is this run's lease owner id.
    """
    final = {o.key: o for o in outcomes}
    waiting = [o.key for o in outcomes if o.status == RUNNING_ELSEWHERE]
    said = 0
    while waiting:
        if len(waiting) != said:
            said = len(waiting)
            log.warning("waiting for %d job(s) running elsewhere: %s", said, ", ".join(k[:12] for k in waiting))
        sleep(poll_seconds)
        for action in catalogue.release_silent_leases(waiting, skip_owners=[worker]):
            log.warning("%s %s", action.target, action.detail)
        landed = catalogue.rendered_keys(waiting)
        for key in landed:
            final[key] = JobOutcome(key, final[key].label, "skipped", reason=LANDED_ELSEWHERE)
        jobs, now = catalogue.jobs([k for k in waiting if k not in landed]), datetime.now(timezone.utc)
        free = [k for k in waiting if k not in landed and claimable(jobs.get(k), now)]
        if free:
            for outcome in render([records[k] for k in free]):
                final[outcome.key] = outcome
        waiting = [k for k in waiting if final[k].status == RUNNING_ELSEWHERE and k not in landed]
    return [final[o.key] for o in outcomes]
