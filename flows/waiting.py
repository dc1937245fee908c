"""Jobs another run holds: confirmed before they are reported, and with `linstudio run --wait` waited for.

A run that could not claim a job because another run leases it does not take that for granted:
1. Confirm: it watches those leases for one silence window while the database answers
   (`Catalogue.release_silent_leases(watch_fresh=True)`). A live run renews within one heartbeat,
   which ends the watch early; a run that died (on any host) leaves its lease unchanged, so the
   lease is released and this run renders the job itself — a run started just after another died
   finishes the batch instead of reporting the dead run's jobs as running elsewhere.
2. What is still held by a live run is reported `running_elsewhere` (the CLI exits 3), or, with
   `--wait`, watched in the catalogue until each job
   - lands: catalogued by the other run — reported `skipped`, "rendered by another run while this
     one waited";
   - comes free: its lease expired, went silent (its run died), went back to planned, or the other
     run failed it — this run then claims and renders it itself, as if it had been free at the
     start (a failure elsewhere gets one more attempt here, and its own reason if it fails again).
There is no deadline: a live run renews its leases only while it works on the jobs, so the wait
ends when that run finishes them or stops renewing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone

from catalogue.jobs import claimable
from flows.outcomes import RUNNING_ELSEWHERE, JobOutcome

log = logging.getLogger(__name__)

POLL_SECONDS = 2.0
LANDED_ELSEWHERE = "rendered by another run while this one waited"


def resolve_elsewhere(catalogue, outcomes: list[JobOutcome], records: dict[str, dict], *, worker: str,
                      render: Callable[[list[dict]], list[JobOutcome]], wait: bool,
                      poll_seconds: float = POLL_SECONDS,
                      sleep: Callable[[float], None] = time.sleep) -> list[JobOutcome]:
    """`outcomes` with the `running_elsewhere` ones confirmed, taken back, or (with `wait`) waited for.

    `records` are the run's job records by key; `render(records)` renders some in this run (a new
    batch) and returns their outcomes; `worker` is this run's lease owner id.
    """
    final = {o.key: o for o in outcomes}
    waiting = [o.key for o in outcomes if o.status == RUNNING_ELSEWHERE]
    first, said = True, 0
    while waiting:
        if not first:
            if len(waiting) != said:
                said = len(waiting)
                log.warning("waiting for %d job(s) running elsewhere: %s", said, ", ".join(k[:12] for k in waiting))
            sleep(poll_seconds)
        for action in catalogue.release_silent_leases(waiting, skip_owners=[worker], watch_fresh=first):
            log.warning("took back %s: %s", action.target, action.detail)
        landed = catalogue.rendered_keys(waiting)
        for key in landed:
            final[key] = JobOutcome(key, final[key].label, "skipped", reason=LANDED_ELSEWHERE)
        jobs, now = catalogue.jobs([k for k in waiting if k not in landed]), datetime.now(timezone.utc)
        free = [k for k in waiting if k not in landed and claimable(jobs.get(k), now)]
        if free:
            for outcome in render([records[k] for k in free]):
                final[outcome.key] = outcome
        waiting = [k for k in waiting if k not in landed and final[k].status == RUNNING_ELSEWHERE]
        if not wait:
            break
        first = False
    return [final[o.key] for o in outcomes]
