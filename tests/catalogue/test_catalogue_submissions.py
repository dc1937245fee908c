"""Submissions: one manifest queued once (catalogue.queue_manifest), and settling one a run left `running`
from its jobs' states (catalogue.settle_submission). Both backends (`cat`)."""

from __future__ import annotations

import threading

from catalogue.submissions import SETTLED_NOTE

PATH = "/studio/manifests/film/night-city.yaml"


def queue(cat, sha: str = "a" * 64):
    return cat.queue_manifest("film", "night-city", PATH, sha, 3, "ana@host")


def statuses(cat) -> dict[str, str]:
    return {row["submission_id"]: row["status"] for row in cat.submissions()}


def test_an_unchanged_manifest_is_queued_once(cat):
    first, queued, superseded = queue(cat)
    assert queued and superseded == []
    again, queued_again, superseded_again = queue(cat)
    assert (again, queued_again, superseded_again) == (first, False, [])
    assert statuses(cat) == {first: "queued"}


def test_an_edited_manifest_replaces_its_queued_submission(cat):
    old, _, _ = queue(cat, "a" * 64)
    new, queued, superseded = queue(cat, "b" * 64)
    assert queued and new != old and superseded == [old]
    assert statuses(cat) == {old: "cancelled", new: "queued"}


def test_a_manifest_taken_by_a_run_is_queued_again(cat):
    first, _, _ = queue(cat)
    assert cat.start_submission(first)  # tonight's run has it: a new submit is for the next night
    second, queued, _ = queue(cat)
    assert queued and second != first


def test_two_submits_at_once_queue_it_once(cat):
    results: list = []
    barrier = threading.Barrier(4)

    def submit() -> None:
        barrier.wait()
        results.append(queue(cat))

    threads = [threading.Thread(target=submit) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(results) == 4 and sum(queued for _, queued, _ in results) == 1, results
    assert len({submission_id for submission_id, _, _ in results}) == 1
    assert list(statuses(cat).values()) == ["queued"]


def test_settling_follows_the_jobs(cat, plan, make_record, rendered, clock):
    (_, done_record), (_, also_done) = rendered(make_record(seed=1)), rendered(make_record(seed=2))
    submission = cat.create_submission("film", "night-city", PATH, "0" * 64, 3)
    failing, waiting = make_record(seed=3), make_record(seed=4)
    cat.plan_jobs(submission, [failing, waiting])
    assert cat.claim(failing["key"], "w1", 600) and cat.fail_leased(failing["key"], "w1", "ValueError: no")

    # A job still planned: a run may yet take it, so nothing is settled.
    assert cat.settle_submission(submission, [failing["key"], waiting["key"]]) is None
    # A job leased: the same.
    assert cat.claim(waiting["key"], "w2", 600)
    assert cat.settle_submission(submission, [failing["key"], waiting["key"]]) is None
    # A key never planned: not the catalogue's to judge.
    assert cat.settle_submission(submission, [failing["key"], "never-planned"]) is None
    assert statuses(cat)[submission] == "running"

    status, error = cat.settle_submission(submission, [failing["key"], done_record["key"]])
    assert (status, error) == ("failed", f"1 job(s) failed: ValueError: no ({SETTLED_NOTE})")
    assert cat.settle_submission(submission, [done_record["key"]]) is None  # settled once: no longer running

    clean = cat.create_submission("film", "night-city", PATH, "0" * 64, 2)
    assert cat.settle_submission(clean, [done_record["key"], also_done["key"]]) == ("done", None)
    assert statuses(cat)[clean] == "done"
