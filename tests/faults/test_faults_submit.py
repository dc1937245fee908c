"""`linstudio submit` of one manifest twice (at once, and again later), then the file edited before the nightly.

The same unchanged manifest is queued once — two submits racing on PostgreSQL included — and the
second says so. Edited after it was submitted, it is flagged by `linstudio submissions ls` before
the night ("will be refused tonight", and why), the nightly run refuses it naming the file, and
`submissions ls` then shows it failed with that reason. The nightly logic runs as its own process
(`flows.nightly.run_nightly`, what the `nightly-batch` deployment runs), with nothing to render.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from fault_support import write_manifest

MANIFEST = """
version: 1
team: film
project: submit
defaults: {model: tiny-sd15, steps: 2, sizes: [64x64]}
assets:
  - id: street
    prompt: "a plain street"
    seeds: [1, 2]
"""
NIGHTLY = "import json; from flows.nightly import run_nightly; print(json.dumps(run_nightly()))"


def submissions(studio) -> list[dict]:
    listed = studio.linstudio("submissions", "ls", "--json")
    assert listed.returncode == 0, listed.stderr
    return json.loads(listed.stdout)


def test_a_manifest_submitted_twice_is_queued_once_and_an_edit_is_refused_by_name(studio, tmp_path, fault_log):
    manifest = write_manifest(tmp_path / "film", "street.yaml", MANIFEST)
    started = time.perf_counter()

    # 1. Two submits at once: one queues it, the other says it is already queued.
    racing = [studio.start("submit", "--json", str(manifest)) for _ in range(2)]
    assert [run.wait() for run in racing] == [0, 0], [run.output() for run in racing]
    answers = [json.loads(run.stdout())[0] for run in racing]
    assert sorted(answer["status"] for answer in answers) == ["already queued", "queued"], answers
    (submission_id,) = {answer["submission_id"] for answer in answers}
    # ... and so does a third, later one, in words.
    third = studio.linstudio("submit", str(manifest))
    assert third.returncode == 0, third.stderr
    assert third.stdout.strip() == (f"already queued {submission_id}  {manifest}  (2 jobs): unchanged since it was "
                                    "submitted, not queued again")
    assert [(row["submission_id"], row["status"], row["warning"]) for row in submissions(studio)] == [
        (submission_id, "queued", None)]
    assert len(list((studio.home / "inbox" / "queued").glob("*.json"))) == 1  # one ticket for tonight

    # 2. Edited before the night: `submissions ls` says it will be refused, and why.
    manifest.write_text(MANIFEST.replace("a plain street", "a busy street"))
    changed = f"{manifest}: the manifest changed after it was submitted; submit it again"
    (row,) = submissions(studio)
    assert (row["status"], row["warning"]) == ("queued", f"will be refused tonight: {changed}")
    listed = studio.linstudio("submissions", "ls")
    assert f"why: will be refused tonight: {changed}" in listed.stdout, listed.stdout

    # 3. The nightly refuses it by name; the submitter sees why.
    nightly = subprocess.run([sys.executable, "-c", NIGHTLY], env=studio.env(), capture_output=True, text=True,
                             timeout=300)
    assert nightly.returncode == 0, nightly.stderr[-3000:]
    assert json.loads(nightly.stdout.strip().splitlines()[-1]) == {submission_id: "failed"}
    (row,) = submissions(studio)
    assert (row["status"], row["error"], row["warning"]) == ("failed", changed, None)
    assert f"why: {changed}" in studio.linstudio("submissions", "ls").stdout
    assert studio.catalogue.renders() == []
    fault_log.record("one manifest submitted twice at once and again, then edited before the nightly", jobs_in_flight=2,
                     lost=0, recovery_seconds=None,
                     outcome="queued once (the others said 'already queued'); `submissions ls` warned of the edit "
                             "before the night; the nightly refused it naming the file, and `submissions ls` says why",
                     backend=studio.kind, seconds=round(time.perf_counter() - started, 1))
