"""Schedules in the catalogue: the record, its wanted state, its sources, and what a run reports."""

from __future__ import annotations

import pytest

from catalogue import review
from catalogue.rerenders import plan_rerenders
from catalogue.schedules import (
    DuplicateSchedule,
    LastRun,
    ScheduleError,
    ScheduleRecord,
    Selection,
    UnknownSchedule,
)


def _schedule(name="sunday-keyart", selection=None, sizes=("128x128",), **changes) -> ScheduleRecord:
    return ScheduleRecord(name, selection or Selection(team="film"), sizes, "Europe/Paris",
                          **({"cron": "0 2 * * 0"} | changes), created_by="td")


def test_a_schedule_is_recorded_once_and_listed_with_its_selection(cat):
    cat.add_schedule(_schedule(selection=Selection(team="film", status="approved")))
    with pytest.raises(DuplicateSchedule, match="name: a schedule named 'sunday-keyart' exists already"):
        cat.add_schedule(_schedule(selection=Selection(tag="hero")))
    (listed,) = cat.schedules()
    assert listed.to_json()["selection_text"] == "team film, status approved"
    assert (listed.active, listed.when, listed.last_run) == (True, "cron 0 2 * * 0", None)


@pytest.mark.parametrize("selection, message", [
    (dict(), "choose renders with --render, --team"),
    (dict(render_ids=("01J",), team="film"), "does not combine with filters"),
    (dict(status="great"), "selection.status: 'great' is not a review status"),
])
def test_a_selection_that_cannot_select_names_the_field(selection, message):
    with pytest.raises(ScheduleError, match=message):
        Selection(**selection)


def test_bad_names_and_whens_are_refused(cat):
    with pytest.raises(ScheduleError, match="name 'Key Art'"):
        cat.add_schedule(_schedule(name="Key Art"))
    with pytest.raises(ScheduleError, match="exactly one of --cron and --at"):
        cat.add_schedule(_schedule(cron=None))
    assert cat.schedules() == []


def test_a_gallery_pause_waits_for_flows_and_a_cli_pause_does_not(cat):
    cat.add_schedule(_schedule())
    cat.set_schedule_active("sunday-keyart", False, synced=True)
    assert cat.pending_schedules() == []
    cat.set_schedule_active("sunday-keyart", True, synced=False)  # a signed-in user's click
    assert [s.name for s in cat.pending_schedules()] == ["sunday-keyart"]
    cat.mark_schedule_synced("sunday-keyart", active=True, run_requested_at=None, next_run_at=None)
    assert cat.pending_schedules() == []
    asked = cat.request_schedule_run("sunday-keyart").run_requested_at
    assert [s.name for s in cat.pending_schedules()] == ["sunday-keyart"]
    cat.mark_schedule_synced("sunday-keyart", active=True, run_requested_at=asked, next_run_at=None)
    assert cat.pending_schedules() == []
    with pytest.raises(UnknownSchedule):
        cat.set_schedule_active("nope", False, synced=True)


def test_sources_are_the_selection_at_each_run_less_the_schedules_own_re_renders(cat, rendered, make_record,
                                                                                   make_png):
    cat.add_schedule(_schedule(selection=Selection(team="film", status="approved")))
    first, _ = rendered(make_record("hero"))
    second, _ = rendered(make_record("villain"))
    assert cat.schedule_sources("sunday-keyart", Selection(team="film", status="approved")) == []
    with cat.transaction() as session:
        review.record_review(session, first, "approved", "", "artist", cat.clock())
    selection = cat.schedule("sunday-keyart").selection
    assert cat.schedule_sources("sunday-keyart", selection) == [first]
    assert cat.schedules_selecting(first) == ["sunday-keyart"]
    assert cat.schedules_selecting(second) == []

    (record,) = plan_rerenders(cat, [first], [(128, 128)], requested_by="schedule", schedule="sunday-keyart")
    assert record["schedule"] == "sunday-keyart" and record["parent_render_id"] == first
    assert cat.claim(record["key"], "w1", 600)
    # A child the schedule made carries its name and is never its source, even when it matches.
    child = cat.ingest(record["key"], make_png(size=(128, 128)), {**record, "engine": {}, "timings": {}}, "w1")
    with cat.transaction() as session:
        review.record_review(session, child, "approved", "", "artist", cat.clock())
    assert cat.schedule_sources("sunday-keyart", selection) == [first]
    assert cat.schedules_selecting(child) == []
    # A source already at a target size is not re-rendered at it by a schedule.
    assert plan_rerenders(cat, [first], [(64, 64)], requested_by="schedule", schedule="sunday-keyart") == []


def test_a_run_reports_and_removing_the_schedule_keeps_its_renders(cat, rendered, make_record):
    cat.add_schedule(_schedule())
    source, _ = rendered(make_record("hero"))
    (record,) = plan_rerenders(cat, [source], [(128, 128)], requested_by="schedule", schedule="sunday-keyart")
    cat.record_schedule_run("sunday-keyart", LastRun(cat.clock(), "completed", made=1, skipped=0, failed=0,
                                                     flow_run_id="f-1"))
    last = cat.schedule("sunday-keyart").last_run
    assert (last.state, last.made, last.skipped, last.failed) == ("completed", 1, 0, 0)
    cat.remove_schedule("sunday-keyart")
    assert cat.schedules() == [] and cat.job(record["key"]) is not None
    cat.record_schedule_run("sunday-keyart", LastRun(cat.clock(), "completed"))  # a run that outlived it: ignored
