"""What `linstudio run` prints after a batch: where the results are and how to look at them.

Unit level (no flow runs): `where_to_look` is a pure function of the settings and the summary.
The end-to-end runs of `linstudio run` are in tests/faults (subprocesses) and tests/flows.
"""

from __future__ import annotations

from types import SimpleNamespace

from flows.outcomes import JobOutcome, RunSummary
from linstudio.commands.run import where_to_look


def test_the_summary_points_at_each_team_project_it_rendered():
    settings = SimpleNamespace(resolved_database_url="sqlite:///x.db", resolved_store_url="file:///tmp/store")
    summary = RunSummary(outcomes=[
        JobOutcome("k1", "concept/shapes-world/red-circle 128x128 seed 1", "rendered", render_id="r1"),
        JobOutcome("k2", "concept/shapes-world/white-square 128x128 seed 2", "skipped", render_id="r2"),
        JobOutcome("k3", "game/dungeon-kit/stone-floor 64x64 seed 5", "rendered", render_id="r3"),
        JobOutcome("k4", "ad/launch/banner 64x64 seed 1", "failed", reason="boom"),
    ])
    text = where_to_look(settings, summary)
    assert "  linstudio catalogue ls --team concept --project shapes-world # 2 render(s) in this run" in text
    assert "  linstudio catalogue ls --team game --project dungeon-kit # 1 render(s) in this run" in text
    assert "ad/launch" not in text  # nothing of it was catalogued
    assert "PNG files under /tmp/store/renders/<team>/<project>/<asset>/" in text
