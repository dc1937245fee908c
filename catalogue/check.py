"""`catalogue check`: do the rows and the objects still agree?

Reports, without changing anything:
- orphan objects — in the store under renders/ or thumbs/ with no render row pointing at them
  (a failed or killed ingest; `sweep_intents` removes those its intents name);
- missing objects — a render row whose PNG or thumbnail is not in the store;
- corrupt objects — present, but their sha256 is not the one recorded;
- expired leases — running jobs whose worker stopped renewing (a run will take them again);
- deep-zoom pyramids (catalogue.tiles) missing or partial for a render above 2048 px, and
  orphan pyramids whose render row is gone.
Unfinished upload intents are listed too, as the likely cause of orphans.

The store is listed *before* the rows are read: an ingest that commits in between then shows up
as a row whose objects are referenced, never as an orphan, and a row whose object was uploaded
after the listing is confirmed with a direct `exists` before it is called missing.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from catalogue import intents, jobs, tiles
from catalogue.models import Render
from catalogue.queries import projection_of
from catalogue.store import ObjectStore

CHECKED_PREFIXES = ("renders/", "thumbs/")


@dataclass(frozen=True)
class ObjectProblem:
    """One object that disagrees with the rows."""

    key: str
    uri: str
    render_id: str | None
    detail: str


@dataclass(frozen=True)
class PyramidProblem:
    """A render's deep-zoom pyramid that is not whole (`missing`, `partial`), or one without a render (`orphan`)."""

    stem: str
    render_id: str | None
    state: str


@dataclass(frozen=True)
class LeaseProblem:
    """A running job whose lease ran out."""

    job_key: str
    worker: str | None
    expired_at: str


@dataclass(frozen=True)
class RowSnapshot:
    """What the database says, read in one short transaction (hashing happens after it ends)."""

    renders: list[tuple[str, str, str, str, str]]  # (render id, PNG key, PNG sha256, thumb key, thumb sha256)
    expired: list[LeaseProblem]
    intents: list[dict[str, Any]]
    # renders wanting a pyramid: id, object key, width, height, projection
    big: list[tuple[str, str, int, int, str | None]] = field(default_factory=list)


@dataclass
class CheckReport:
    """The result of `Catalogue.check()`; `ok` only when every list but `unfinished_intents` is empty."""

    store_url: str
    renders_checked: int = 0
    objects_listed: int = 0
    orphan_objects: list[ObjectProblem] = field(default_factory=list)
    missing_objects: list[ObjectProblem] = field(default_factory=list)
    corrupt_objects: list[ObjectProblem] = field(default_factory=list)
    expired_leases: list[LeaseProblem] = field(default_factory=list)
    unfinished_intents: list[dict[str, Any]] = field(default_factory=list)
    pyramid_problems: list[PyramidProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.orphan_objects or self.missing_objects or self.corrupt_objects or self.expired_leases
                    or self.pyramid_problems)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        return data

    def __str__(self) -> str:
        lines = [f"catalogue check: {self.renders_checked} renders, {self.objects_listed} objects in {self.store_url}"]
        sections = (
            ("orphan objects (no render row)", self.orphan_objects),
            ("missing objects (row without object)", self.missing_objects),
            ("corrupt objects (sha256 mismatch)", self.corrupt_objects),
        )
        for title, problems in sections:
            if problems:
                lines.append(f"{len(problems)} {title}:")
                lines.extend(f"  {p.uri}" + (f" [render {p.render_id}]" if p.render_id else "") + f": {p.detail}"
                             for p in problems)
        if self.expired_leases:
            lines.append(f"{len(self.expired_leases)} expired leases:")
            lines.extend(f"  job {p.job_key}: leased by {p.worker}, expired {p.expired_at}"
                         for p in self.expired_leases)
        if self.pyramid_problems:
            lines.append(f"{len(self.pyramid_problems)} deep-zoom pyramids not whole (--repair builds or deletes them):")
            lines.extend(f"  {p.state} {p.stem}" + (f" [render {p.render_id}]" if p.render_id else "")
                         for p in self.pyramid_problems)
        if self.unfinished_intents:
            lines.append(f"{len(self.unfinished_intents)} unfinished upload intents (sweep_intents clears them):")
            lines.extend(f"  intent {i['id']} ({i['purpose']}, {i['state']}) job {i['job_key']} by {i['worker']} "
                         f"at {i['created_at']}: {', '.join(i['object_keys'])}" for i in self.unfinished_intents)
        lines.append("consistent" if self.ok else "NOT consistent")
        return "\n".join(lines)


def list_objects(store: ObjectStore) -> set[str]:
    """Every key under the prefixes the catalogue writes (other tenants of the store are ignored)."""
    return {key for prefix in CHECKED_PREFIXES for key in store.list(prefix)}


def snapshot(session: Session, now: datetime) -> RowSnapshot:
    """Read the rows `inspect` compares against the store."""
    renders = [tuple(row) for row in session.execute(
        select(Render.id, Render.object_key, Render.sha256, Render.thumb_key, Render.thumb_sha256).order_by(Render.id)
    )]
    expired = [LeaseProblem(job.key, job.lease_owner, job.lease_expires_at.isoformat())
               for job in jobs.expired_leases(session, now)]
    pending = [{"id": i.id, "job_key": i.job_key, "purpose": i.purpose, "state": i.state, "worker": i.worker,
                "created_at": i.created_at.isoformat(), "object_keys": list(i.object_keys)}
               for i in intents.unfinished(session)]
    limit = tiles.DEEPZOOM_MIN_SIDE
    big = [(rid, key, width, height, projection_of(record)) for rid, key, width, height, record in session.execute(
        select(Render.id, Render.object_key, Render.width, Render.height, Render.record)
        .where((Render.width > limit) | (Render.height > limit)).order_by(Render.id)
    )]
    return RowSnapshot(renders=renders, expired=expired, intents=pending, big=big)


def inspect_pyramids(store: ObjectStore, big: list[tuple[str, str, int, int, str | None]]) -> list[PyramidProblem]:
    """Pyramids missing or partial for the renders in `big` (id, object key, width, height, projection),
    and pyramids in the store that none of them owns."""
    problems = []
    owned = set()
    for render_id, object_key, width, height, projection in big:
        stem = tiles.PyramidKeys.of(object_key).stem
        owned.add(stem)
        found = tiles.state(store, object_key, width, height, projection)
        if found in ("missing", "partial"):
            problems.append(PyramidProblem(stem, render_id, found))
    problems += [PyramidProblem(stem, None, "orphan") for stem in tiles.pyramid_stems(store) if stem not in owned]
    return problems


def inspect(store: ObjectStore, listed: set[str], rows: RowSnapshot, verify_hashes: bool = True) -> CheckReport:
    """Compare `rows` with the keys `listed` (taken before the rows were read) and the objects themselves."""
    report = CheckReport(store_url=store.url, renders_checked=len(rows.renders), objects_listed=len(listed),
                         expired_leases=list(rows.expired), unfinished_intents=list(rows.intents))
    referenced: set[str] = set()
    for render_id, object_key, sha256, thumb_key, thumb_sha256 in rows.renders:
        for key, expected in ((object_key, sha256), (thumb_key, thumb_sha256)):
            referenced.add(key)
            if key not in listed and not store.exists(key):
                report.missing_objects.append(ObjectProblem(key, store.uri(key), render_id, "no such object"))
                continue
            if verify_hashes:
                digest = hashlib.sha256()
                for chunk in store.stream(key):
                    digest.update(chunk)
                actual = digest.hexdigest()
                if actual != expected:
                    report.corrupt_objects.append(ObjectProblem(
                        key, store.uri(key), render_id, f"sha256 {actual[:16]}... != recorded {expected[:16]}..."))
    claimed_by = {key: intent for intent in rows.intents for key in intent["object_keys"]}
    for key in sorted(listed - referenced):
        intent = claimed_by.get(key)
        detail = (f"named by unfinished upload intent {intent['id']} (job {intent['job_key']}, {intent['worker']})"
                  if intent else "no render row and no upload intent")
        report.orphan_objects.append(ObjectProblem(key, store.uri(key), None, detail))
    report.pyramid_problems = inspect_pyramids(store, rows.big)
    return report
