"""The test-suite helpers in infra/: `make test-changed`'s file-to-test map and the durations table.

Pure functions over file names and log lines, imported in-process (no git, no pytest run).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

INFRA = Path(__file__).resolve().parents[1] / "infra"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, INFRA / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


changed = load("changed_tests")
durations = load("durations_table")


def test_a_change_runs_its_room_and_every_room_above_it():
    picked = changed.selection(["catalogue/ingest.py"])
    assert {"tests/catalogue", "tests/web", "tests/flows", "tests/faults"} <= set(picked)
    assert "tests/engine" not in picked and "tests/test_architecture.py" in picked


def test_a_changed_test_runs_itself_and_a_changed_fixture_its_folder():
    assert changed.selection(["tests/toy/test_analyzer.py"]) == ["tests/test_architecture.py",
                                                                 "tests/toy/test_analyzer.py"]
    assert "tests/flows" in changed.selection(["tests/flows/flow_support.py"])
    # a folder absorbs the files beneath it
    assert changed.selection(["tests/flows/flow_support.py", "tests/flows/test_batch.py"]) == [
        "tests/flows", "tests/test_architecture.py"]


def test_what_the_map_does_not_know_runs_everything():
    assert changed.selection(["Makefile"]) == ["tests"]
    assert changed.selection(["tests/conftest.py"]) == ["tests"]
    assert changed.selection([]) == []


def test_docs_changes_run_the_docs_and_architecture_tests():
    assert changed.selection(["docs/quality.md"]) == ["tests/test_architecture.py", "tests/test_docs.py"]
    assert "tests/manifests" in changed.selection(["manifests/examples/shapes.yaml"])


LOG = """\
============================= slowest durations ==============================
30.50s setup    tests/flows/test_batch.py::test_run[postgres]
12.00s call     tests/flows/test_batch.py::test_run[postgres]
2.25s call     tests/flows/test_batch.py::test_run[sqlite]
0.50s teardown tests/flows/test_batch.py::test_run[postgres]
4.00s call     tests/test_docs.py::test_readme
1.00s setup    tests/engine/test_tiny.py::test_tiny_renders
(12 durations < 0.005s hidden.  Use -vv to show these durations.)
"""


def test_durations_are_grouped_by_folder_and_phase():
    folders, per_test = durations.parse(LOG.splitlines())
    flows = folders["tests/flows"]
    assert flows.seconds == {"setup": 30.5, "call": 14.25, "teardown": 0.5} and len(flows.tests) == 2
    assert folders["tests/test_docs.py"].seconds["call"] == 4.0
    assert per_test["tests/flows/test_batch.py::test_run[postgres]"] == 43.0
    table = durations.tables(folders, per_test, slowest=2)
    lines = table.splitlines()
    assert lines[2] == "| `tests/flows` | 2 | 30 | 14 | 0 | 45 |"  # the costliest folder first
    assert "| all | 4 | 32 | 18 | 0 | 50 |" in lines
    assert lines[-2:] == ["| `tests/flows/test_batch.py::test_run[postgres]` | 43.0 |",
                          "| `tests/test_docs.py::test_readme` | 4.0 |"]
