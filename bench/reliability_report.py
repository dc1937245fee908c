"""docs/reliability.md from one run of the fault suite: what each fault cost, measured rather than claimed.

    .venv/bin/python bench/reliability_report.py [PYTEST ARGS...]

Runs `python -m pytest tests/faults` (all of it, with real services) while LINSTUDIO_FAULT_REPORT
names a temporary JSON-lines file that the suite's `fault_log` fixture (tests/faults/conftest.py)
appends one record to per fault, then writes docs/reliability.md whole: a table of the faults
(jobs in flight, lost, time to recover, outcome), the fuzzing line, the suite's own result, the
command, the date and the machine. The doc is written even when tests fail — it then says which —
and the script exits with pytest's status, so a failing suite never passes for a report.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reliability.md"
COMMAND = ".venv/bin/python bench/reliability_report.py"
# Tests name their backend either way; the table uses one name for each.
BACKENDS = {"embedded": "sqlite+file", "services": "postgres+s3"}


@dataclass
class SuiteResult:
    """What pytest said: counts, the tests that did not pass, and how long the whole suite took."""

    returncode: int
    wall_seconds: float
    tests: int = 0
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def passed(self) -> int:
        return self.tests - len(self.failed) - len(self.skipped)


def run_suite(report: Path, junit: Path, pytest_args: list[str]) -> SuiteResult:
    """Run the fault suite with the fault log pointed at `report`; returns pytest's verdict."""
    env = {**os.environ, "LINSTUDIO_FAULT_REPORT": str(report)}
    command = [sys.executable, "-m", "pytest", "tests/faults", "-p", "no:cacheprovider", f"--junitxml={junit}",
               *pytest_args]
    started = time.monotonic()
    returncode = subprocess.run(command, cwd=ROOT, env=env).returncode
    result = SuiteResult(returncode, time.monotonic() - started)
    if junit.is_file():
        for case in ET.parse(junit).getroot().iter("testcase"):
            module = case.get("classname", "").replace(".", "/")  # junit's `tests.faults.test_x`
            name = f"{module}.py::{case.get('name', '')}"
            result.tests += 1
            if case.find("failure") is not None or case.find("error") is not None:
                result.failed.append(name)
            elif case.find("skipped") is not None:
                result.skipped.append(name)
    return result


def read_records(report: Path) -> list[dict]:
    if not report.is_file():
        return []
    return [json.loads(line) for line in report.read_text().splitlines() if line.strip()]


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} s"


def fault_table(records: list[dict]) -> list[str]:
    """One row per fault, in the order the suite ran them."""
    lines = ["| Fault | Backend | Jobs in flight | Lost | Time to recover | Outcome | Left for the next run |",
             "| --- | --- | ---: | ---: | ---: | --- | --- |"]
    for record in records:
        extra = record.get("extra") or {}
        fault = record["fault"]
        if extra.get("outage_seconds") is not None:
            fault += f" (down {extra['outage_seconds']:.0f} s)"
        lost = record["lost"]
        backend = extra.get("backend", "—")
        lines.append(f"| {_cell(fault)} | {_cell(BACKENDS.get(backend, backend))} | {record['jobs_in_flight']} | "
                     f"{'**' + str(lost) + '**' if lost else lost} | {_seconds(record['recovery_seconds'])} | "
                     f"{_cell(record['outcome'])} | {_cell(extra.get('left_for_the_next_run', '—'))} |")
    return lines


def fuzz_lines(records: list[dict]) -> list[str]:
    """The fuzzing records (those counting `examples`): how many manifests, how many findings."""
    lines = []
    for record in records:
        extra = record.get("extra") or {}
        by_door = "; ".join(f"{door}: {count}" for door, count in sorted((extra.get("by_door") or {}).items()))
        lines.append(f"- **{_cell(record['fault'])}**: {extra['examples']} fuzzed manifests, "
                     f"{extra.get('findings', 0)} finding(s)" + (f" ({by_door})" if by_door else "") + ".")
        lines.extend(f"  - finding: {_cell(finding)}" for finding in extra.get("finding_list") or [])
    return lines or ["- No fuzzing record in this run."]


def machine() -> str:
    """`N CPUs (nproc), model, OS, Python`: where the figures come from."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cpus = os.cpu_count()
    return ", ".join(part for part in (f"{cpus} CPUs (nproc)", model, f"{platform.system()} {platform.release()}",
                                       f"Python {platform.python_version()}") if part)


def render_doc(records: list[dict], suite: SuiteResult, pytest_args: list[str], when: datetime) -> str:
    faults = [r for r in records if "examples" not in (r.get("extra") or {})]
    fuzz = [r for r in records if "examples" in (r.get("extra") or {})]
    lost = sum(r["lost"] for r in faults)
    verdict = (f"all {suite.tests} tests passed" if suite.tests and not suite.failed and not suite.skipped
               else f"{suite.passed} of {suite.tests} tests passed")
    command = " ".join([COMMAND, *pytest_args])
    lines = [
        "# Reliability: faults injected, and what they cost",
        "",
        "A nightly batch runs unattended. The fault suite (`tests/faults/`) takes services away mid-batch, kills",
        "workers, feeds corrupt input and fuzzed manifests, and then asks the catalogue itself — `linstudio",
        "catalogue check`, every job catalogued exactly once — what was lost. This page is written by",
        f"`{command}` from one run of the whole suite; the figures are that run's, not targets.",
        "",
        f"**{len(faults)} faults recorded, {lost} job(s) lost in total. Suite: {verdict} "
        f"(pytest exit {suite.returncode}), in {suite.wall_seconds / 60:.1f} min.**",
        "",
    ]
    if suite.failed or suite.skipped:
        lines += ["Tests that did not pass in this run (their rows may be missing or show the failure):", ""]
        lines += [f"- failed: `{name}`" for name in suite.failed] + [f"- skipped: `{name}`" for name in suite.skipped]
        lines.append("")
    lines += ["## Faults", ""] + fault_table(faults) + [
        "",
        "- **Jobs in flight**: jobs of the batch not yet catalogued when the fault hit (planned or running).",
        "- **Lost**: jobs with no render after recovery (at most one re-run of the same manifests). The goal is 0.",
        "- **Time to recover**: from the service's return (or the kill) to the batch or its re-run finishing,",
        "  on this machine; an outage longer than the retry budget includes the re-run an operator starts.",
        "- **Left for the next run**: what `catalogue check` listed between the faulted run and its re-run:",
        "  upload intents of failed attempts (and any objects they name), which the next run's start-of-run",
        "  sweep removes. Never a row without its object: every test asserts that.",
        "- **Leases of a run that is gone**: a run renews every lease it holds three times per silence window",
        "  (a thirtieth of the lease, between 3 and 30 s: 30 s for the default 900 s lease); a lease left",
        "  unchanged for its silence window while the database answers is released by any host (`catalogue check --repair`, a run",
        "  starting, a run that meets its job), so a dead run's jobs come back in seconds rather than after",
        "  the lease (15 minutes by default; the tests that kill a run \"on another host\" give it 120 s).",
        "",
        "## Manifest fuzzing", "",
    ]
    lines += fuzz_lines(fuzz)
    lines += [
        "",
        "## How to run it",
        "",
        "- `make test-faults` runs the whole fault suite on its own (PostgreSQL and SeaweedFS are started by the",
        "  suite; it stops and restarts its own copies, never the ones other tests share).",
        f"- `{COMMAND}` runs the same suite and rewrites this page.",
        "",
        "## Where these figures come from",
        "",
        f"- Command: `{command}` (runs `python -m pytest tests/faults` with `LINSTUDIO_FAULT_REPORT` set)",
        f"- Date: {when.strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Machine: {machine()}",
        f"- Whole suite wall time: {suite.wall_seconds:.0f} s",
        "",
    ]
    return "\n".join(lines)


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=".reliability-")
    with os.fdopen(handle, "w") as out:
        out.write(text)
    os.replace(temp, path)


def main(pytest_args: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="linstudio-reliability-") as scratch:
        report, junit = Path(scratch) / "faults.jsonl", Path(scratch) / "junit.xml"
        suite = run_suite(report, junit, pytest_args)
        records = read_records(report)
    write_atomically(DOC, render_doc(records, suite, pytest_args, datetime.now(UTC)))
    print(f"wrote {DOC.relative_to(ROOT)}: {len(records)} records; suite {suite.wall_seconds:.0f} s, "
          f"pytest exit {suite.returncode}")
    return suite.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
