"""Where a test run's time goes: pytest's `--durations=0` report, grouped by folder and phase.

    .venv/bin/python -m pytest ... --durations=0 -vv | tee run.log   # -vv: pytest then lists
    .venv/bin/python infra/durations_table.py run.log [--slowest 10]  # phases under 5 ms too

Prints two markdown tables: per test folder (`tests/flows`, `tests/web`, ...), the seconds spent
in fixture set-up, in the tests' own calls and in teardown, and how many tests ran; then the
slowest tests. Set-up is where shared services, models and catalogues are built, so a folder
whose set-up dwarfs its calls is paying for fixtures, not for what it proves. docs/testing.md
holds the tables this printed.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

# "12.34s call     tests/flows/test_batch.py::test_run[sqlite]" (pytest's --durations lines)
LINE = re.compile(r"^\s*(?P<seconds>\d+(?:\.\d+)?)s (?P<phase>setup|call|teardown)\s+(?P<test>\S+)")


@dataclass
class Folder:
    """Seconds per phase in one test folder, and the tests that ran there."""

    seconds: dict[str, float] = field(default_factory=lambda: {"setup": 0.0, "call": 0.0, "teardown": 0.0})
    tests: set[str] = field(default_factory=set)

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


def folder_of(test_id: str) -> str:
    """`tests/flows/test_batch.py::t` -> `tests/flows`; a test file at the top -> that file."""
    path = test_id.split("::")[0]
    parts = path.split("/")
    return "/".join(parts[:2]) if len(parts) > 2 else path


def parse(lines) -> tuple[dict[str, Folder], dict[str, float]]:
    """(folder -> its phases, test id -> its whole time) from a pytest log's durations lines."""
    folders: dict[str, Folder] = defaultdict(Folder)
    per_test: dict[str, float] = defaultdict(float)
    for line in lines:
        found = LINE.match(line)
        if not found:
            continue
        seconds, test = float(found["seconds"]), found["test"]
        folder = folders[folder_of(test)]
        folder.seconds[found["phase"]] += seconds
        folder.tests.add(test)
        per_test[test] += seconds
    return folders, per_test


def tables(folders: dict[str, Folder], per_test: dict[str, float], slowest: int) -> str:
    rows = ["| folder | tests | set-up s | call s | teardown s | total s |", "| --- | --- | --- | --- | --- | --- |"]
    for name, folder in sorted(folders.items(), key=lambda item: -item[1].total):
        s = folder.seconds
        rows.append(f"| `{name}` | {len(folder.tests)} | {s['setup']:.0f} | {s['call']:.0f} | {s['teardown']:.0f} "
                    f"| {folder.total:.0f} |")
    total = {phase: sum(f.seconds[phase] for f in folders.values()) for phase in ("setup", "call", "teardown")}
    rows.append(f"| all | {sum(len(f.tests) for f in folders.values())} | {total['setup']:.0f} | {total['call']:.0f} "
                f"| {total['teardown']:.0f} | {sum(total.values()):.0f} |")
    rows += ["", "| slowest tests (set-up + call + teardown) | s |", "| --- | --- |"]
    rows += [f"| `{test}` | {seconds:.1f} |" for test, seconds in sorted(per_test.items(), key=lambda i: -i[1])[:slowest]]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("log", type=Path, nargs="?", help="a pytest log with --durations=0 (default: stdin)")
    parser.add_argument("--slowest", type=int, default=10)
    args = parser.parse_args(argv)
    lines = args.log.read_text().splitlines() if args.log else sys.stdin.read().splitlines()
    folders, per_test = parse(lines)
    if not folders:
        sys.exit("no durations lines found: run pytest with --durations=0 (and -vv to list the short phases)")
    print(tables(folders, per_test, args.slowest))


if __name__ == "__main__":
    main()
