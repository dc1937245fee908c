"""Settling submissions a run left `running`, from the catalogue's truth.

A run records each submission's outcome at its very end. If it dies first, or the database goes
down as it writes them, the submission stays `running` although its jobs have all ended. The
next nightly run (at its start) and `linstudio submissions ls` settle every such submission from
its jobs' states in the catalogue: all done -> done; all ended, some failed -> failed with their
reasons (and a note that it was settled); a job still planned or leased -> left as it is (a run
may be working on it right now; the nightly takes its own submissions up again).

Which jobs are a submission's: those planned under it. A manifest whose jobs were all planned by
earlier submissions (a re-run of a finished manifest) has none of its own; its jobs are then read
from the manifest file itself, only while the file is still the one submitted (same sha256) — an
edited or vanished manifest no longer says what was asked, and such a submission is left running.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from flows.batch import ManifestsInvalid, load_and_expand

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settled:
    """One submission settled: its new status and why (for a failed one)."""

    submission_id: str
    status: str
    error: str | None


def manifest_keys(row: dict, settings, registry=None) -> list[str] | None:
    """The job keys of a submission's manifest, read from the file while it is unchanged; None otherwise.
    `registry`: the caller's model registry (None: built from the settings)."""
    path = Path(row["manifest_path"])
    try:
        if hashlib.sha256(path.read_bytes()).hexdigest() != row.get("manifest_sha256"):
            return None
        return [job.key for _, jobs in load_and_expand([path], settings, registry) for job in jobs]
    except (OSError, ManifestsInvalid):
        return None


def settle_running_submissions(catalogue, settings, registry=None) -> list[Settled]:
    """Settle every `running` submission whose jobs have all ended (see the module docstring); `registry`
    is the caller's run's model registry, for manifests read again (None: built when one is read)."""
    settled = []
    for row in catalogue.submissions(status="running", limit=100_000):
        keys = catalogue.submission_job_keys(row["submission_id"]) or manifest_keys(row, settings, registry)
        if not keys:
            continue
        verdict = catalogue.settle_submission(row["submission_id"], keys)
        if verdict is not None:
            settled.append(Settled(row["submission_id"], *verdict))
            log.info("settled submission %s from the catalogue: %s%s", row["submission_id"], verdict[0],
                     f" ({verdict[1]})" if verdict[1] else "")
    return settled
