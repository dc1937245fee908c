"""No object without its row, no row without its object: failures injected mid-ingest, and `check`."""

from __future__ import annotations

import pytest
from sqlalchemy import event, func, select

from catalogue import IntentSweptError
from catalogue import ingest as ingest_module
from catalogue.models import Render, UploadIntent


class InjectedFault(RuntimeError):
    """The failure a test injects (a store or database error)."""


class ProcessDied(BaseException):
    """Stands for SIGKILL: not an Exception, so no `except Exception` clean-up runs."""


class FaultyStore:
    """Wraps a store; `put` fails on the N-th call (after writing, when `partial`), `delete` fails if `down`."""

    def __init__(self, inner, fail_put_number: int | None = None, partial: bool = False, down: bool = False) -> None:
        self.inner = inner
        self.url = inner.url
        self.fail_put_number = fail_put_number
        self.partial = partial
        self.down = down
        self.puts = 0

    def put(self, key, data, content_type):
        self.puts += 1
        if self.puts == self.fail_put_number:
            if self.partial:  # e.g. S3 stored the object but the response was lost
                self.inner.put(key, data, content_type)
            raise InjectedFault(f"injected store failure on put #{self.puts} ({key})")
        self.inner.put(key, data, content_type)

    def delete(self, key):
        if self.down:
            raise InjectedFault(f"injected store failure on delete ({key})")
        self.inner.delete(key)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _fail_statements(cat, starting: str, then_all: bool = False):
    """Make SQL statements starting with `starting` raise; with `then_all`, every later statement too."""
    state = {"tripped": False}

    def before_execute(conn, cursor, statement, parameters, context, executemany):
        if (state["tripped"] and then_all) or statement.lstrip().upper().startswith(starting):
            state["tripped"] = True
            raise InjectedFault(f"injected database failure on: {statement.split()[0:3]}")

    event.listen(cat.engine, "before_cursor_execute", before_execute)
    return lambda: event.remove(cat.engine, "before_cursor_execute", before_execute)


def _count(cat, model) -> int:
    with cat.transaction() as session:
        return session.scalar(select(func.count()).select_from(model))


def _objects(cat) -> list[str]:
    return sorted([*cat.store.list("renders/"), *cat.store.list("thumbs/")])


def _claimed(plan, cat, make_record, seed: int = 1) -> dict:
    (record,) = plan(make_record(seed=seed))
    assert cat.claim(record["key"], "w1", 600)
    return record


# -- failures in the object store -------------------------------------------------------------------------


def test_store_failure_mid_upload_is_undone_at_once(cat, plan, make_record, make_png):
    """The thumbnail put fails after the PNG landed: the PNG is deleted, the intent dropped, no row."""
    record = _claimed(plan, cat, make_record)
    real = cat.store
    cat.store = FaultyStore(real, fail_put_number=2)
    with pytest.raises(InjectedFault):
        cat.ingest(record["key"], make_png(), record, "w1")
    cat.store = real
    assert _count(cat, Render) == 0
    assert _count(cat, UploadIntent) == 0
    assert _objects(cat) == []
    assert cat.job_states([record["key"]]) == {record["key"]: "running"}  # the flow retries or fails it
    assert cat.check().ok


def test_store_down_mid_upload_leaves_an_intent_that_the_sweep_finishes(cat, plan, make_record, make_png, clock):
    """The store stored half an ingest and then went away (deletes fail too): the intent stays, sweep cleans."""
    record = _claimed(plan, cat, make_record)
    real = cat.store
    cat.store = FaultyStore(real, fail_put_number=2, partial=True, down=True)
    with pytest.raises(InjectedFault) as failure:
        cat.ingest(record["key"], make_png(), record, "w1")
    cat.store = real
    assert _count(cat, Render) == 0
    assert _count(cat, UploadIntent) == 1
    assert len(_objects(cat)) == 2  # the PNG and the (partially acknowledged) thumbnail

    report = cat.check()
    assert not report.ok and len(report.orphan_objects) == 2
    assert "unfinished upload intent" in report.orphan_objects[0].detail

    # While w1 still holds the lease, the ingest might be retried: a run starting elsewhere leaves it be.
    assert cat.sweep_intents() == []
    cat.fail(record["key"], str(failure.value))  # what the flow does with a failure it gives up on
    actions = cat.sweep_intents()
    assert len(actions) == 1 and "deleted renders/" in actions[0]
    assert _objects(cat) == [] and _count(cat, UploadIntent) == 0
    assert cat.check().ok


# -- failures in the database ------------------------------------------------------------------------------


def test_database_failure_after_upload_deletes_the_objects(cat, plan, make_record, make_png):
    """INSERT INTO renders fails after both objects were uploaded: they are removed, nothing is recorded."""
    record = _claimed(plan, cat, make_record)
    restore = _fail_statements(cat, "INSERT INTO RENDERS")
    try:
        with pytest.raises(InjectedFault):
            cat.ingest(record["key"], make_png(), record, "w1")
    finally:
        restore()
    assert _count(cat, Render) == 0
    assert _count(cat, UploadIntent) == 0
    assert _objects(cat) == []
    assert cat.check().ok


def test_database_lost_after_upload_leaves_orphans_that_sweep_removes(cat, plan, make_record, make_png):
    """The database goes away at the final transaction and stays away during clean-up: the intent
    survives (it was committed before the upload), `check` names the orphans, the sweep removes them."""
    record = _claimed(plan, cat, make_record)
    restore = _fail_statements(cat, "INSERT INTO RENDERS", then_all=True)
    try:
        with pytest.raises(InjectedFault):
            cat.ingest(record["key"], make_png(), record, "w1")
    finally:
        restore()
    assert _count(cat, Render) == 0
    assert _count(cat, UploadIntent) == 1
    report = cat.check()
    assert sorted(p.key for p in report.orphan_objects) == _objects(cat) and len(_objects(cat)) == 2
    assert not report.ok

    assert len(cat.sweep_intents(grace_seconds=0)) == 1
    assert _objects(cat) == []
    assert cat.check().ok
    assert cat.claim(record["key"], "w1", 600)  # and the job can be rendered again
    assert cat.ingest(record["key"], make_png(), record, "w1")
    assert cat.check().ok


def test_process_killed_between_upload_and_row(cat, plan, make_record, make_png, monkeypatch):
    """The process dies after uploading, before the row: intent + objects, no row -> check, then sweep."""
    record = _claimed(plan, cat, make_record)
    _die_before_the_row(cat, record, make_png, monkeypatch)

    assert _count(cat, Render) == 0
    assert _count(cat, UploadIntent) == 1
    report = cat.check()
    assert not report.ok
    assert sorted(p.key for p in report.orphan_objects) == _objects(cat)
    assert len(report.unfinished_intents) == 1 and report.unfinished_intents[0]["job_key"] == record["key"]
    assert "orphan objects" in str(report) and "NOT consistent" in str(report)

    cat.sweep_intents(grace_seconds=0)
    assert _objects(cat) == [] and _count(cat, UploadIntent) == 0
    assert cat.check().ok


def _die_before_the_row(cat, record, make_png, monkeypatch) -> None:
    def die(*args, **kwargs):
        raise ProcessDied()

    monkeypatch.setattr(ingest_module, "insert_render", die)
    with pytest.raises(ProcessDied):
        cat.ingest(record["key"], make_png(), record, "w1")
    monkeypatch.undo()
    assert _count(cat, UploadIntent) == 1 and len(_objects(cat)) == 2


def test_intents_of_a_worker_declared_dead_are_swept_at_once(cat, plan, make_record, make_png, monkeypatch):
    """A run restarting under the same worker name releases the dead process's leases and its intents."""
    record = _claimed(plan, cat, make_record)
    _die_before_the_row(cat, record, make_png, monkeypatch)
    assert cat.sweep_intents() == []  # young, and w1's lease looks alive
    assert cat.release_dead_leases("w1") == [record["key"]]
    assert _objects(cat) == [] and _count(cat, UploadIntent) == 0
    assert cat.check().ok


def test_intents_whose_lease_expired_are_swept_before_the_grace_period(cat, plan, make_record, make_png,
                                                                     monkeypatch, clock):
    record = _claimed(plan, cat, make_record)  # a 600 s lease
    _die_before_the_row(cat, record, make_png, monkeypatch)
    clock.advance(599)
    assert cat.sweep_intents(grace_seconds=3600) == []
    clock.advance(2)
    assert len(cat.sweep_intents(grace_seconds=3600)) == 1
    assert _objects(cat) == []


def test_old_intents_are_swept_even_under_a_live_lease(cat, plan, make_record, make_png, monkeypatch, clock):
    record = _claimed(plan, cat, make_record)
    _die_before_the_row(cat, record, make_png, monkeypatch)
    assert cat.claim(record["key"], "w1", 100_000)  # renewed far ahead
    clock.advance(901)
    assert len(cat.sweep_intents()) == 1
    assert _objects(cat) == []


def test_sweep_during_a_slow_ingest_wins_and_the_ingest_backs_off(cat, plan, make_record, make_png):
    """A sweep takes the intent while the thumbnail is uploading: the ingest must not record a row
    pointing at objects the sweep deleted, and must clean what it uploaded after the sweep."""
    record = _claimed(plan, cat, make_record)
    real = cat.store
    swept: list[str] = []

    class SweepMidUpload(FaultyStore):
        def put(self, key, data, content_type):
            if key.startswith("thumbs/"):
                swept.extend(cat.sweep_intents(grace_seconds=0))  # runs between the PNG and the thumbnail
            self.inner.put(key, data, content_type)

    cat.store = SweepMidUpload(real)
    with pytest.raises(IntentSweptError, match="was swept while its objects were uploading"):
        cat.ingest(record["key"], make_png(), record, "w1")
    cat.store = real
    assert len(swept) == 1
    assert _count(cat, Render) == 0
    assert _objects(cat) == []
    assert _count(cat, UploadIntent) == 0
    assert cat.check().ok


def test_a_sweep_never_touches_objects_a_row_references(cat, rendered, make_record):
    """An intent naming committed objects (e.g. a crash after commit in a future code path) only goes away."""
    render_id, record = rendered(make_record())
    render = cat.render(render_id)
    with cat.transaction() as session:
        session.add(UploadIntent(job_key=record["key"], purpose="ingest", state="open",
                                 object_keys=[render["object_key"], render["thumb_key"]], worker="w1",
                                 created_at=cat.clock()))
    assert cat.sweep_intents(grace_seconds=0)[0].endswith("no objects to delete")
    assert cat.store.exists(render["object_key"]) and cat.check().ok


# -- check ------------------------------------------------------------------------------------------------


def test_check_is_clean_on_a_consistent_catalogue(cat, rendered, make_record):
    for seed in range(3):
        rendered(make_record(seed=seed))
    report = cat.check()
    assert report.ok, str(report)
    assert (report.renders_checked, report.objects_listed) == (3, 6)
    assert str(report).endswith("consistent")


def test_check_reports_a_missing_object(cat, rendered):
    render_id, _ = rendered()
    key = cat.render(render_id)["object_key"]
    cat.store.delete(key)
    report = cat.check()
    assert not report.ok
    assert [(p.key, p.render_id) for p in report.missing_objects] == [(key, render_id)]
    assert report.orphan_objects == [] and report.corrupt_objects == []


def test_check_reports_a_sha256_mismatch(cat, rendered, make_png):
    render_id, _ = rendered()
    key = cat.render(render_id)["object_key"]
    cat.store.put(key, make_png(color=(9, 9, 9)), "image/png")
    report = cat.check()
    assert [(p.key, p.render_id) for p in report.corrupt_objects] == [(key, render_id)]
    assert "sha256" in report.corrupt_objects[0].detail
    assert not report.ok


def test_check_reports_an_orphan_without_intent(cat, rendered, make_png):
    rendered()
    cat.store.put("renders/film/night-city/stray/abc.png", make_png(), "image/png")
    cat.store.put("elsewhere/not-ours.txt", b"x", "text/plain")  # outside renders/ and thumbs/: ignored
    report = cat.check()
    assert [p.key for p in report.orphan_objects] == ["renders/film/night-city/stray/abc.png"]
    assert report.orphan_objects[0].detail == "no render row and no upload intent"


def test_check_reports_expired_leases(cat, plan, make_record, clock):
    (record,) = plan(make_record())
    assert cat.claim(record["key"], "w1", 60)
    assert cat.check().ok
    clock.advance(61)
    report = cat.check()
    assert [(p.job_key, p.worker) for p in report.expired_leases] == [(record["key"], "w1")]
    assert not report.ok
    assert cat.claim(record["key"], "w2", 60)
    assert cat.check().ok


def test_check_can_skip_hashing(cat, rendered, make_png):
    render_id, _ = rendered()
    cat.store.put(cat.render(render_id)["object_key"], make_png(color=(9, 9, 9)), "image/png")
    assert cat.check(verify_hashes=False).ok
    assert not cat.check().ok

