"""`catalogue check --repair`: fix what `catalogue check` finds, and say what was done.

Each problem `check` reports has one safe repair:
- an expired lease: the job goes back to `planned`, so the next run takes it (its worker stopped
  renewing; if it was only stalled, the ingest protocol already copes with a second worker);
- a lease not expired yet whose owner has gone silent — its run was killed, or ended while the
  database was down and could not record the job's failure: the repair watches it while the
  database answers, and if it stays exactly as it was for its silence window (`jobs.silence_seconds`,
  30 s for a 15-minute lease) its job goes back to `planned`. A live run renews its leases several
  times in that window, so its leases are never taken; this works from any host, because the
  heartbeat is in the job row itself (`release_silent_leases`, also run by every `linstudio run`
  and nightly run as it starts);
- an upload intent whose ingest is over (killed, failed, lease gone): the usual `sweep_intents`
  deletes the objects no row references and drops the intent;
- a render whose PNG is missing or corrupt: the render is unusable, so its row goes (its objects
  under a `forget` intent, as `forget_renders` does) and its job is marked `failed` with the reason
  `REMOVED_REASON`, which the next run of its manifest plans and renders again. What pointed at the
  render is reported, not silently dropped: its reviews (deleted with it by the schema's cascade —
  the image they judged is gone — and listed in full in the action), re-renders made from it (they
  keep their own images; their parent link is cleared, their record still names the source) and
  re-render jobs not yet rendered (they will fail naming the missing source);
- a render whose PNG is intact but whose thumbnail is missing or corrupt: the thumbnail is made
  again from the PNG; the render, its reviews and its children stay;
- an orphan object (no row, and no upload intent names it): deleted, unless it is younger than the
  grace window. An ingest records its intent before it uploads, so an object no intent names is not
  part of an ingest in flight; the window (`DEFAULT_ORPHAN_GRACE_SECONDS`, by the store's own
  modification time) is there for writers outside that protocol — an older linstudio, a person
  copying files in — and costs nothing but a second repair later. An orphan an unfinished upload
  intent names belongs to an ingest in flight (its sweep did not take it): it is never touched.

Every repair re-reads its problem just before acting, so a repair beside a live batch, or beside
another repair, does nothing it should not. Like the gallery's actions, this module composes units
of work with `Catalogue.transaction()`; store I/O and hashing happen outside them.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from contextlib import AbstractContextManager
from typing import Any, Protocol

from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from catalogue import intents, jobs, pyramids, tiles
from catalogue.check import CheckReport, PyramidProblem
from catalogue.jobs import REASON_LIMIT, LeaseSighting, expired_leases
from catalogue.errors import ObjectNotFoundError
from catalogue.models import DONE, FAILED, FORGET, PLANNED, RUNNING, Job, Render, Review
from catalogue.rerenders import RERENDER_PREFIX  # how a re-render job names its manifest_path
from catalogue.store import ObjectStore
from catalogue.thumbs import THUMB_CONTENT_TYPE, make_thumbnail



class Catalogue(Protocol):
    """What a repair needs of `catalogue.api.Catalogue` (which calls these functions): said here as a
    protocol, so this module does not import the one that imports it."""

    store: ObjectStore

    def transaction(self) -> AbstractContextManager[Session]: ...

    def clock(self) -> datetime: ...

    def check(self, verify_hashes: bool = True) -> CheckReport: ...

    def lease_sightings(self, job_keys: Iterable[str] | None = None) -> list[LeaseSighting]: ...

    def sweep_intents(self, grace_seconds: float | None = None) -> list[str]: ...

log = logging.getLogger(__name__)

DEFAULT_ORPHAN_GRACE_SECONDS = 300.0
REMOVED_REASON = "object {what}; repaired by catalogue check --repair"

# What an action did, as `kind` in the report (stable strings: scripts read the JSON).
RELEASE_LEASE = "release-lease"
RELEASE_SILENT_LEASE = "release-silent-lease"
SWEEP_INTENT = "sweep-intent"
REMOVE_RENDER = "remove-render"
REMAKE_THUMBNAIL = "remake-thumbnail"
DELETE_ORPHAN = "delete-orphan"
KEEP_ORPHAN = "keep-orphan"
BUILD_PYRAMID = "build-pyramid"
DELETE_PYRAMID = "delete-pyramid"


@dataclass(frozen=True)
class RepairAction:
    """One thing repair did (`done`), or a problem it left as it was, and why (`done` False)."""

    kind: str
    target: str
    detail: str
    done: bool = True
    data: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"  {'' if self.done else 'LEFT '}{self.kind} {self.target}: {self.detail}"


@dataclass
class RepairReport:
    """What a repair found (`before`), did (`actions`) and left (`after`); `ok` when `after` is clean."""

    before: CheckReport
    actions: list[RepairAction]
    after: CheckReport

    @property
    def ok(self) -> bool:
        return self.after.ok

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "actions": [asdict(action) for action in self.actions],
                "before": self.before.to_dict(), "after": self.after.to_dict()}

    def __str__(self) -> str:
        left = sum(not action.done for action in self.actions)
        lines = [f"catalogue repair: {len(self.actions) - left} action(s) done, {left} problem(s) left"]
        lines.extend(str(action) for action in self.actions)
        lines += ["after repair:", str(self.after)]
        return "\n".join(lines)


def repair(catalogue: Catalogue, verify_hashes: bool, orphan_grace_seconds: float) -> RepairReport:
    """Check, repair each problem found, check again (what `Catalogue.repair` runs)."""
    before = catalogue.check(verify_hashes)
    actions: list[RepairAction] = []
    # 1. Expired leases back to planned: a run takes them, and their workers' intents become sweepable.
    with catalogue.transaction() as session:
        actions += release_expired_leases(session, catalogue.clock())
    # 1b. Leases not expired yet whose owner has gone silent (killed, or ended with the database down).
    actions += release_silent_leases(catalogue)
    # 2. Intents whose ingest is over: the usual sweep deletes their unreferenced objects.
    for line in catalogue.sweep_intents():
        target, _, detail = line.partition(": ")
        actions.append(RepairAction(SWEEP_INTENT, target, detail))
    # 3. Renders whose PNG or thumbnail is missing or corrupt.
    for render_id in broken_render_ids(before):
        action = repair_render(catalogue, render_id, verify_hashes)
        if action is not None:
            actions.append(action)
    # 4. Orphan objects the sweep did not take.
    for problem in before.orphan_objects:
        action = repair_orphan(catalogue, problem.key, problem.uri, orphan_grace_seconds)
        if action is not None:
            actions.append(action)
    # 5. Deep-zoom pyramids: build the missing and partial ones, delete those of deleted renders.
    actions += repair_pyramids(catalogue, before.pyramid_problems)
    return RepairReport(before, actions, catalogue.check(verify_hashes))


def repair_pyramids(catalogue: Catalogue, problems: list[PyramidProblem]) -> list[RepairAction]:
    """Rebuild each missing or partial pyramid from its PNG; delete each orphan one whose render is
    still gone (checked again now: a render ingested since the check owns its pyramid)."""
    actions = []
    rebuild = [p.render_id for p in problems if p.render_id]
    built = set(pyramids.build_pending(catalogue, rebuild, rebuild=True)) if rebuild else set()
    for p in problems:
        if p.render_id:
            done = p.render_id in built
            actions.append(RepairAction(BUILD_PYRAMID, f"render {p.render_id}",
                                        f"{p.state} deep-zoom pyramid {'built again' if done else 'NOT built (see the log)'}",
                                        done=done, data={"render_id": p.render_id, "stem": p.stem}))
            continue
        object_key = f"renders/{p.stem.removeprefix(tiles.ROOT)}.png"
        with catalogue.transaction() as session:
            owner = session.scalar(select(Render.id).where(Render.object_key == object_key))
        if owner is not None:
            continue
        removed = tiles.delete_stem(catalogue.store, p.stem)
        actions.append(RepairAction(DELETE_PYRAMID, p.stem, f"orphan pyramid: {removed} tiles deleted",
                                    data={"stem": p.stem}))
    return actions


# -- leases ---------------------------------------------------------------------------------------------------


def release_expired_leases(session: Session, now: datetime) -> list[RepairAction]:
    """Send running jobs whose lease ran out back to `planned` (each UPDATE re-checks the expiry)."""
    actions = []
    # Read first: the ORM UPDATE below refreshes these objects in the session.
    leases = [(job.key, job.lease_owner, job.lease_expires_at) for job in expired_leases(session, now)]
    for job_key, worker, expired_at in leases:
        result = session.execute(
            update(Job)
            .where(Job.key == job_key, Job.state == RUNNING, Job.lease_owner == worker, Job.lease_expires_at < now)
            .values(state=PLANNED, lease_owner=None, lease_expires_at=None, updated_at=now)
        )
        if result.rowcount == 1:
            actions.append(RepairAction(RELEASE_LEASE, f"job {job_key}",
                                        f"lease of {worker} expired {expired_at.isoformat()}; job planned again",
                                        data={"job_key": job_key, "worker": worker}))
    return actions


# How often a silence watch reads the leases it watches, and how many silence windows it may spend
# restarting because the database stopped answering, before it leaves the leases to expire.
WATCH_POLL_SECONDS = 1.0
WATCH_MAX_WINDOWS = 5


def release_silent_leases(catalogue: Catalogue, keys: Iterable[str] | None = None, skip_owners: Collection[str] = (),
                          sleep: Callable[[float], None] = time.sleep, watch_fresh: bool = False) -> list[RepairAction]:
    """Send back to planned the unexpired leases (of `keys`, or all) whose owners have gone silent.

    1. Sightings: leases not renewed for longer than their silence window, by this host's clock (a
       prefilter: with none, this returns at once; a live run's leases never qualify). With
       `watch_fresh`, every unexpired lease of `keys` is watched, however recently renewed: what a run
       does before it reports jobs as running elsewhere — a live owner renews within one heartbeat,
       which ends the watch early, and a run that has just died is caught within one window.
    2. Watch them while the database answers, for one silence window (timed by this process's own
       waits, so no clock is compared across hosts): a lease that changes (renewed, released, done)
       is dropped. A read that fails (the database is down again) starts the window over, since the
       owner could not renew meanwhile either; after `WATCH_MAX_WINDOWS` windows the rest is left.
    3. Release what stayed unchanged with a compare-and-set on the very renewal observed.
    """
    now = catalogue.clock()
    watched = {s.key: s for s in catalogue.lease_sightings(keys)
               if s.owner not in skip_owners and (watch_fresh or s.looks_silent(now))}
    if not watched:
        return []
    window = max(s.silence_seconds for s in watched.values())
    log.info("watching %d lease(s) not renewed for a while (for %.0f s): are their runs still alive?",
             len(watched), window)
    # Time is the sum of the waits (never less than what passed), so no clock is compared across hosts.
    watched_for, spent = 0.0, 0.0
    while watched and watched_for < window:
        step = min(WATCH_POLL_SECONDS, window - watched_for)
        sleep(step)
        spent += step
        try:
            seen = {s.key: s for s in catalogue.lease_sightings(list(watched))}
        except SQLAlchemyError as exc:
            if spent > window * WATCH_MAX_WINDOWS:
                log.warning("left %d silent lease(s) to expire: the database kept failing (%s)", len(watched),
                            type(exc).__name__)
                return []
            watched_for = 0.0  # nobody could renew while the database was down: watch again
            continue
        watched_for += step
        watched = {key: s for key, s in watched.items() if seen.get(key) == s}
    actions = []
    for sighting in watched.values():
        with catalogue.transaction() as session:
            released = jobs.release_unrenewed(session, sighting, catalogue.clock())
        if released:
            actions.append(silent_lease_action(sighting, window))
    return actions


def silent_lease_action(sighting: LeaseSighting, watched_seconds: float) -> RepairAction:
    return RepairAction(
        RELEASE_SILENT_LEASE, f"job {sighting.key}",
        f"lease of {sighting.owner} (until {sighting.expires_at.isoformat()}) not renewed since "
        f"{sighting.renewed_at.isoformat()}, nor in {watched_seconds:.0f} s of watching while the database "
        "answered: its run is gone; job planned again",
        data={"job_key": sighting.key, "worker": sighting.owner})


# -- renders whose objects are missing or corrupt ------------------------------------------------------------------


def broken_render_ids(report: CheckReport) -> list[str]:
    """The renders `report` found a missing or corrupt object of, each once, in id order."""
    return sorted({p.render_id for p in [*report.missing_objects, *report.corrupt_objects] if p.render_id})


def repair_render(catalogue: Catalogue, render_id: str, verify_hashes: bool) -> RepairAction | None:
    """Remake a bad thumbnail from an intact PNG, or remove a render whose PNG is missing or corrupt.

    None when there is nothing to do any more (the render went, or its objects are fine now).
    """
    store = catalogue.store
    with catalogue.transaction() as session:
        render = session.get(Render, render_id)
        if render is None:
            return None
        object_key, sha256, thumb_key, thumb_sha256 = (render.object_key, render.sha256, render.thumb_key,
                                                       render.thumb_sha256)
    states = {"PNG": object_state(store, object_key, sha256, verify_hashes),
              "thumbnail": object_state(store, thumb_key, thumb_sha256, verify_hashes)}
    if states["PNG"] == "ok":
        if states["thumbnail"] == "ok":
            return None
        thumb = make_thumbnail(store.get(object_key))
        store.put(thumb_key, thumb, THUMB_CONTENT_TYPE)  # the key the row names: never an orphan
        with catalogue.transaction() as session:
            if not set_thumb_sha256(session, render_id, thumb_key, hashlib.sha256(thumb).hexdigest()):
                return None
        return RepairAction(REMAKE_THUMBNAIL, f"render {render_id}",
                            f"thumbnail {states['thumbnail']}; made again from the PNG at {store.uri(thumb_key)}",
                            data={"render_id": render_id})
    reason = REMOVED_REASON.format(what=states["PNG"])
    with catalogue.transaction() as session:
        render = session.get(Render, render_id)
        if render is None or render.sha256 != sha256:
            return None
        job_key = render.job_key
        refs = references(session, render)
        intent_id = remove_render(session, render, reason, catalogue.clock())
    deleted = delete_forgotten(catalogue, intent_id, [object_key, thumb_key])
    tiles.delete(store, object_key)  # nothing to delete for a small render; an orphan pyramid is found by check
    detail = describe_removal(render_id, job_key, states, refs, [store.uri(key) for key in deleted])
    return RepairAction(REMOVE_RENDER, f"render {render_id}", detail,
                        data={"render_id": render_id, "job_key": job_key, "reason": reason, **refs})


def object_state(store: ObjectStore, key: str, sha256: str, verify_hash: bool) -> str:
    """`ok`, `missing` or `corrupt` for the object at `key`, read now (not taken from an earlier check)."""
    if not store.exists(key):
        return "missing"
    if not verify_hash:
        return "ok"
    digest = hashlib.sha256()
    for chunk in store.stream(key):
        digest.update(chunk)
    return "ok" if digest.hexdigest() == sha256 else "corrupt"


def references(session: Session, render: Render) -> dict[str, Any]:
    """What points at `render`: its reviews, the re-renders made from it, re-render jobs waiting on it."""
    reviews = [{"status": r.status, "reviewer": r.reviewer, "note": r.note, "created_at": r.created_at.isoformat()}
               for r in session.scalars(select(Review).where(Review.render_id == render.id).order_by(Review.id))]
    children = list(session.scalars(select(Render.id).where(Render.parent_render_id == render.id).order_by(Render.id)))
    waiting = list(session.scalars(
        select(Job.key).where(Job.manifest_path == f"{RERENDER_PREFIX}{render.id}", Job.state != DONE).order_by(Job.key)
    ))
    return {"reviews": reviews, "child_renders": children, "waiting_rerender_jobs": waiting}


def remove_render(session: Session, render: Render, reason: str, now: datetime) -> int:
    """Delete `render`'s row under a `forget` intent naming its objects, and fail its job with `reason`.

    Returns the intent id: the objects are deleted after commit and then the intent dropped, so a
    crash in between leaves the intent for `sweep_intents`, never an orphan. Reviews and tags go
    with the row (ON DELETE CASCADE); re-renders' `parent_render_id` becomes NULL (SET NULL).
    """
    intent_id = intents.open_intent(session, render.job_key, FORGET, [render.object_key, render.thumb_key], None, now)
    job_key = render.job_key
    session.delete(render)
    session.flush()
    session.execute(
        update(Job)
        .where(Job.key == job_key)
        .values(state=FAILED, error=reason[:REASON_LIMIT], lease_owner=None, lease_expires_at=None,
                finished_at=now, updated_at=now)
    )
    return intent_id


def delete_forgotten(catalogue: Catalogue, intent_id: int, object_keys: list[str]) -> list[str]:
    """Delete a removed render's objects, then its intent; returns what was deleted. On a store error the
    intent stays and `sweep_intents` finishes the work (the check after the repair then says so)."""
    try:
        with catalogue.transaction() as session:
            keep = intents.referenced_keys(session, object_keys)
        deleted = intents.delete_objects(catalogue.store, object_keys, keep)
        with catalogue.transaction() as session:
            intents.drop_intent(session, intent_id)
    except Exception:
        log.warning("could not delete %s; sweep_intents will", ", ".join(object_keys), exc_info=True)
        return []
    return deleted


def describe_removal(render_id: str, job_key: str, states: dict[str, str], refs: dict[str, Any],
                     deleted: list[str]) -> str:
    """One line for a removed render: what was wrong, what was deleted, what pointed at it."""
    wrong = ", ".join(f"{what} {state}" for what, state in states.items() if state != "ok")
    parts = [f"{wrong}; row removed, job {job_key} failed (the next run of its manifest renders it again)"]
    if deleted:
        parts.append(f"deleted {', '.join(deleted)}")
    if refs["reviews"]:
        decisions = ", ".join(f"{r['status']} by {r['reviewer']} at {r['created_at'][:19]}" for r in refs["reviews"])
        parts.append(f"{len(refs['reviews'])} review(s) deleted with it ({decisions})")
    if refs["child_renders"]:
        parts.append(f"re-render(s) {', '.join(refs['child_renders'])} keep their images, parent link cleared "
                     f"(their records still name {render_id})")
    if refs["waiting_rerender_jobs"]:
        parts.append(f"re-render job(s) {', '.join(k[:12] for k in refs['waiting_rerender_jobs'])} will fail: "
                     "their source is gone (re-queue them from the new render)")
    return "; ".join(parts)


def set_thumb_sha256(session: Session, render_id: str, thumb_key: str, thumb_sha256: str) -> bool:
    """Record a remade thumbnail's hash; False when the render went meanwhile."""
    result = session.execute(update(Render).where(Render.id == render_id, Render.thumb_key == thumb_key)
                             .values(thumb_sha256=thumb_sha256))
    return result.rowcount == 1


# -- orphan objects ---------------------------------------------------------------------------------------------


def repair_orphan(catalogue: Catalogue, key: str, uri: str, grace_seconds: float) -> RepairAction | None:
    """Delete an orphan object unless a row or an unfinished intent names it now, or it is too new to judge.

    None when it is no longer an orphan (swept in step 2, deleted meanwhile, or an ingest committed).
    """
    if not catalogue.store.exists(key):
        return None
    with catalogue.transaction() as session:
        if intents.referenced_keys(session, [key]):
            return None
        hold = intent_hold(session, key)
    hold = hold or too_young(catalogue.store, key, catalogue.clock(), grace_seconds)
    if hold is not None:
        return RepairAction(KEEP_ORPHAN, uri, hold, done=False)
    catalogue.store.delete(key)
    return RepairAction(DELETE_ORPHAN, uri, "no render row and no upload intent")


def intent_hold(session: Session, key: str) -> str | None:
    """Why an orphan must stay because an unfinished upload intent names it (read now); None when none does."""
    for intent in intents.unfinished(session):
        if key in intent.object_keys:
            return (f"named by upload intent {intent.id} (job {intent.job_key}, {intent.worker}): "
                    "an ingest in flight; run the repair again once it is over")
    return None


def too_young(store: ObjectStore, key: str, now: datetime, grace_seconds: float) -> str | None:
    """Why an orphan is left for now (written inside the grace window), or None when it is old enough."""
    written = modified_at(store, key)
    if written is None:
        return None
    age = (now - written).total_seconds()
    if age >= grace_seconds:
        return None
    return f"written {max(age, 0):.0f} s ago, inside the {grace_seconds:.0f} s grace window; run the repair again later"


def modified_at(store: ObjectStore, key: str) -> datetime | None:
    """When the object at `key` was last written, by the store's clock; None when it is gone."""
    try:
        return store.modified(key)
    except ObjectNotFoundError:
        return None
