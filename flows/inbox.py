"""The submissions inbox: manifests waiting for tonight's batch.

`linstudio submit` validates manifests and drops one small JSON ticket per manifest into the
inbox — a folder or an S3 prefix (`LINSTUDIO_INBOX_URL`), so submitters and GPU hosts need not
share a disk with each other, only with the manifests' own folder (a studio NAS). A ticket holds
the manifest's path, its sha256 and its text at submission time; the nightly run checks that the
file is still the one that was submitted and refuses it (with the reason) if it changed.

The catalogue records each submission and its status (queued, running, done, failed,
cancelled); the ticket is how a GPU host finds the work. Tickets move `queued/` -> `taken/`
when a run picks them up, so two nightly runs never both take one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from catalogue.store import open_store

QUEUED = "queued/"
TAKEN = "taken/"


@dataclass(frozen=True)
class Ticket:
    """One submitted manifest, as stored in the inbox."""

    submission_id: str
    manifest_path: str
    manifest_sha256: str
    manifest_text: str
    team: str
    project: str
    submitted_by: str

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), indent=1).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Ticket":
        return cls(**json.loads(data))

    def changed_since_submitted(self) -> str | None:
        """Why the manifest on disk is no longer what was submitted, or None when it is the same."""
        return changed_since_submitted(self.manifest_path, self.manifest_sha256)


def changed_since_submitted(manifest_path: str, manifest_sha256: str) -> str | None:
    """Why the manifest at `manifest_path` is no longer the one submitted (sha256), or None when it is: what the
    nightly refuses a submission for, and what `linstudio submissions ls` warns of before it does."""
    path = Path(manifest_path)
    if not path.is_file():
        return f"{manifest_path}: the submitted manifest no longer exists"
    if hashlib.sha256(path.read_bytes()).hexdigest() != manifest_sha256:
        return f"{manifest_path}: the manifest changed after it was submitted; submit it again"
    return None


class Inbox:
    """Tickets in an object store (file:// or s3://), addressed by submission id."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.store = open_store(url)

    @classmethod
    def from_settings(cls, settings) -> "Inbox":
        """The inbox the settings name (LINSTUDIO_INBOX_URL, or beside the embedded store)."""
        return cls(settings.resolved_inbox_url)

    def put(self, ticket: Ticket) -> None:
        self.store.put(f"{QUEUED}{ticket.submission_id}.json", ticket.to_bytes(), "application/json")

    def queued(self) -> list[str]:
        """Submission ids waiting, oldest first (ids sort by time)."""
        return sorted(key[len(QUEUED):-len(".json")] for key in self.store.list(QUEUED) if key.endswith(".json"))

    def take(self, submission_id: str) -> Ticket | None:
        """Move a queued ticket to taken/ and return it; None if it was not queued (taken or cancelled)."""
        source = f"{QUEUED}{submission_id}.json"
        try:
            data = self.store.get(source)
        except Exception:
            return None
        self.store.put(f"{TAKEN}{submission_id}.json", data, "application/json")
        self.store.delete(source)
        return Ticket.from_bytes(data)

    def taken_ticket(self, submission_id: str) -> Ticket | None:
        """The ticket a run took for `submission_id`, or None when no run took it from this inbox."""
        key = f"{TAKEN}{submission_id}.json"
        if not self.store.exists(key):
            return None
        return Ticket.from_bytes(self.store.get(key))

    def withdraw(self, submission_id: str) -> bool:
        """Remove a queued ticket (cancel); False when it was no longer queued."""
        key = f"{QUEUED}{submission_id}.json"
        if not self.store.exists(key):
            return False
        self.store.delete(key)
        return True
