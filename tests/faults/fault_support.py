"""The fault suite's one driver: a studio (home, catalogue, object store) run through the real `linstudio` CLI.

Every fault test gets a `Studio` (fixtures `studio` and `make_studio` in conftest.py): its own
LINSTUDIO_HOME (the session's tiny models linked in, so they are built once), a catalogue database
and store — SQLite + a folder, or the fault suite's own PostgreSQL + SeaweedFS, which a test may
stop — and the session's Prefect server for the `linstudio run` processes it starts (asked for
only when a command runs a flow, so tests that never render never start one).

Commands run as subprocesses, not in-process calls, because the faults under test kill processes
and take services away mid-run: each run must be a real process with its own connections, exactly
as the nightly batch runs. The catalogue itself is the oracle — `catalogued`, `renders_per_key`
and `check` say what was lost or duplicated, never a run's own summary.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from manifest_files import write_manifest  # noqa: F401  (shared with the other test folder)
from linstudio.settings import get_settings

LINSTUDIO = str(Path(sys.executable).parent / "linstudio")
# A hang guard for one `linstudio` command (a tiny batch takes seconds), not a speed target.
COMMAND_TIMEOUT_S = 300
# The commands that run a Prefect flow, so need the session's Prefect server.
FLOW_COMMANDS = ("run", "rerender")
# Both backends, for `@pytest.mark.parametrize("studio", BACKENDS, indirect=True)`.
BACKENDS = [pytest.param("embedded", id="sqlite+file"),
            pytest.param("services", id="postgres+s3", marks=pytest.mark.services)]
# One backend, the production one, for faults whose handling the backend does not change (bad or
# edited input files): both backends stay where it does (transactions, leases, object writes, outages).
PRODUCTION = [BACKENDS[1]]
# Both backends, the embedded one only in the `faults_slow` run that .ci/run adds: for the slowest
# tests whose handling the backend does change, so `make test` keeps its 12 minutes and CI still
# runs both (docs/testing.md).
BACKENDS_EMBEDDED_IN_CI = [pytest.param("embedded", id="sqlite+file", marks=pytest.mark.faults_slow), BACKENDS[1]]


def summary_of(returncode: int, stdout: str, stderr: str) -> dict:
    """The JSON summary `linstudio run --json` printed, or a failed assertion showing what it printed instead."""
    try:
        return json.loads(stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"`linstudio run` exit {returncode}, no JSON summary:\n{stdout[-2000:]}\n"
                             f"{stderr[-4000:]}") from None


@dataclass
class Recovery:
    """What a re-run after a fault did, and what the oracle said afterwards."""

    returncode: int
    seconds: float
    counts: dict[str, int]  # the re-run's rendered / skipped / failed
    copies: dict[str, int]  # {job key: render rows}
    lost: int  # jobs of the manifest with no render after the re-run
    check: dict[str, Any]  # `linstudio catalogue check --json`
    output: str

    @property
    def duplicates(self) -> int:
        return sum(count - 1 for count in self.copies.values())

    def assert_nothing_lost(self) -> None:
        """Every job catalogued exactly once, rows and objects agreeing, no ingest left unfinished."""
        assert self.returncode == 0 and self.counts["failed"] == 0, self.output[-3000:]
        assert self.lost == 0, f"{self.lost} job(s) never catalogued"
        assert self.duplicates == 0, self.copies
        assert self.check["ok"], self.check
        assert self.check["unfinished_intents"] == [], self.check["unfinished_intents"]


class Started:
    """A `linstudio` command running in the background; its stdout and stderr go to files beside each other."""

    def __init__(self, process: subprocess.Popen, stdout: Path, stderr: Path) -> None:
        self.process = process
        self.stdout_path, self.stderr_path = stdout, stderr

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def output(self) -> str:
        """Both streams (stderr first: progress and warnings come before the summary)."""
        return self.stderr() + self.stdout()

    def wait(self, timeout: float = COMMAND_TIMEOUT_S * 2) -> int:
        """Wait for the end (hang guard: killed after `timeout`); its exit status."""
        try:
            return self.process.wait(timeout=timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()

    def summary(self) -> dict:
        """The `--json` summary it printed (after `wait`)."""
        return summary_of(self.process.returncode, self.stdout(), self.stderr())

    def kill(self) -> None:
        """SIGKILL: no `finally`, no flushed buffers, no closed connections."""
        self.process.kill()
        self.process.wait()


class Studio:
    """One test's studio: its home, catalogue database and object store, driven through the real CLI.

    Args:
        kind: "embedded" (SQLite + a folder) or "services" (PostgreSQL + SeaweedFS S3).
        home: its LINSTUDIO_HOME.
        database_url: the catalogue database.
        store_url: the object store.
        logs: where each started command's output is kept (`cmd-N.out`, `cmd-N.err`).
        prefect_api: returns the Prefect API URL; called only when a command runs a flow.
        env: what every command's environment adds (the S3 endpoint and credentials, for instance).
    """

    def __init__(self, kind: str, home: Path, database_url: str, store_url: str, logs: Path,
                 prefect_api: Callable[[], str], env: dict[str, str] | None = None) -> None:
        self.kind, self.home, self.logs = kind, home, logs
        self.database_url, self.store_url = database_url, store_url
        self.prefect_api = prefect_api
        self.extra_env = dict(env or {})
        self._catalogue = None
        self._started = 0

    @property
    def backend(self) -> str:
        """The backend's name in docs/reliability.md."""
        return "sqlite+file" if self.kind == "embedded" else "postgres+s3"

    # -- commands ------------------------------------------------------------------------------------------

    def env(self, args: Sequence[str] = (), **extra: str) -> dict[str, str]:
        """The environment of `linstudio ARGS`: this process's, minus any catalogue, AWS or Prefect settings
        of its own, plus the studio's (and `extra`, e.g. LINSTUDIO_WORKER_NAME for a run "on another host")."""
        env = {name: value for name, value in os.environ.items()
               if not name.startswith(("LINSTUDIO_", "AWS_", "PREFECT_API_URL"))}
        env.update(LINSTUDIO_HOME=str(self.home), LINSTUDIO_DATABASE_URL=self.database_url,
                   LINSTUDIO_STORE_URL=self.store_url, **self.extra_env)
        if args[:1] and args[0] in FLOW_COMMANDS:
            env["PREFECT_API_URL"] = self.prefect_api()
        env.update(extra)
        return env

    def linstudio(self, *args: str, timeout: float = COMMAND_TIMEOUT_S, **env: str) -> subprocess.CompletedProcess:
        """Run `linstudio ARGS` to the end (hang guard: `timeout`); stdout and stderr as text, apart."""
        return subprocess.run([LINSTUDIO, *args], env=self.env(args, **env), capture_output=True, text=True,
                              timeout=timeout)

    def start(self, *args: str, launcher: Sequence[str] = (), **env: str) -> Started:
        """Start `linstudio ARGS` (or `python LAUNCHER... -- ARGS`) in the background."""
        self._started += 1
        out, err = self.logs / f"cmd-{self._started}.out", self.logs / f"cmd-{self._started}.err"
        command = [sys.executable, *launcher, "--", *args] if launcher else [LINSTUDIO, *args]
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            process = subprocess.Popen(command, env=self.env(args, **env), stdout=stdout, stderr=stderr,
                                       stdin=subprocess.DEVNULL)
        return Started(process, out, err)

    def run(self, *manifests: Path, options: Sequence[str] = (), **env: str) -> tuple[int, dict]:
        """`linstudio run --json OPTIONS MANIFESTS`: (exit status, summary); fails the test on a hang or no JSON."""
        done = self.linstudio("run", "--json", *options, *map(str, manifests), **env)
        return done.returncode, summary_of(done.returncode, done.stdout, done.stderr)

    def rerun(self, manifest: Path, jobs: int) -> Recovery:
        """Run the manifest again, as an operator would after a fault, then ask the oracle.

        The re-run's own start (sweep of unfinished ingests, release of dead runs' leases) is part of
        what is tested: `check` is read after it, never before.
        """
        started = time.monotonic()
        done = self.linstudio("run", "--json", str(manifest))
        seconds = time.monotonic() - started
        try:
            counts = json.loads(done.stdout)["counts"]
        except (json.JSONDecodeError, KeyError):
            raise AssertionError(f"the re-run printed no summary (exit {done.returncode}):\n"
                                 f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}") from None
        copies = self.catalogued()
        return Recovery(returncode=done.returncode, seconds=seconds, counts=counts, copies=copies,
                        lost=jobs - len(copies), check=self.check()[1], output=done.stdout + done.stderr)

    def check(self, *options: str) -> tuple[int, dict]:
        """`linstudio catalogue check --json OPTIONS`: (exit status, report). The suite's oracle: exit 0
        only when rows and objects agree (after the repair, with `--repair`)."""
        done = self.linstudio("catalogue", "check", "--json", *options)
        try:
            report = json.loads(done.stdout)
        except json.JSONDecodeError:
            raise AssertionError(f"`catalogue check {' '.join(options)}` exit {done.returncode}, no JSON:\n"
                                 f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}") from None
        assert (done.returncode == 0) == report["ok"], (done.returncode, report)
        return done.returncode, report

    def check_leftovers(self) -> dict[str, Any]:
        """`check` between a faulted run and its re-run: leftovers are allowed, untracked ones are not.

        A fault may leave objects without a row, but only ones an unfinished upload intent names (so
        the next run's sweep removes them); never a row without its object, never a corrupt one.
        """
        _, report = self.check()
        orphans = {problem["key"] for problem in report["orphan_objects"]}
        tracked = {key for intent in report["unfinished_intents"] for key in intent["object_keys"]}
        assert orphans <= tracked, f"objects no intent names, which nothing would clean up: {orphans - tracked}"
        assert not report["missing_objects"] and not report["corrupt_objects"], report
        return report

    # -- the catalogue, read by the test -------------------------------------------------------------------

    @property
    def catalogue(self):
        """The test's own connection to the catalogue (opened once, migrated; closed by the fixture)."""
        if self._catalogue is None:
            from catalogue import Catalogue

            self._catalogue = Catalogue.open(self.database_url, self.store_url)
            self._catalogue.migrate()
        return self._catalogue

    def close(self) -> None:
        if self._catalogue is not None:
            self._catalogue.close()
            self._catalogue = None

    def job_states(self) -> Counter:
        """How many jobs of this catalogue are planned, running, done or failed."""
        from sqlalchemy import func, select

        from catalogue.models import Job

        with self.catalogue.transaction() as session:
            return Counter(dict(session.execute(select(Job.state, func.count()).group_by(Job.state)).all()))

    def catalogued(self) -> dict[str, int]:
        """{job key: number of render rows}, for the exactly-once assertions."""
        from sqlalchemy import func, select

        from catalogue.models import Render

        with self.catalogue.transaction() as session:
            return dict(session.execute(select(Render.job_key, func.count()).group_by(Render.job_key)).all())

    def job_errors(self) -> dict[str, str]:
        """{job key: failure reason} of the failed jobs."""
        from sqlalchemy import select

        from catalogue.models import Job

        with self.catalogue.transaction() as session:
            return dict(session.execute(select(Job.key, Job.error).where(Job.state == "failed")).all())


def wait_until(condition: Callable[[], bool], what: str, started: Started | None = None,
               timeout: float = COMMAND_TIMEOUT_S) -> None:
    """Poll `condition`; fail (with the command's output) if `started` ends first or nothing happens in time."""
    deadline = time.monotonic() + timeout
    while not condition():
        if started is not None and not started.alive():
            raise AssertionError(f"the command ended (exit {started.process.returncode}) before {what}:\n"
                                 f"{started.output()[-3000:]}")
        if time.monotonic() > deadline:
            if started is not None:
                started.kill()
            raise AssertionError(f"no {what} after {timeout:.0f} s" +
                                 (f":\n{started.output()[-3000:]}" if started is not None else ""))
        time.sleep(0.05)


def noise_png(seed: int = 0, size: int = 64) -> bytes:
    """A PNG of random pixels (so it compresses poorly and cutting it leaves a real hole)."""
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def png_with_short_pixel_data(seed: int = 0) -> bytes:
    """A PNG whose every chunk is well formed (lengths and CRCs right) but whose compressed pixels stop
    half-way: the header and chunk structure pass validation, decoding fails."""
    data = noise_png(seed)
    out, position = data[:8], 8
    while position < len(data):
        (length,) = struct.unpack(">I", data[position:position + 4])
        kind, body = data[position + 4:position + 8], data[position + 8:position + 8 + length]
        if kind == b"IDAT":
            body = body[: len(body) // 2]
        out += struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        position += 12 + length
    return out


def keys_by_status(summary: dict) -> dict[str, set[str]]:
    """{status: job keys} from a run summary."""
    found: dict[str, set[str]] = {}
    for job in summary["jobs"]:
        found.setdefault(job["status"], set()).add(job["key"])
    return found


def renders_per_key(catalogue) -> Counter:
    """How many render rows each job key has (the oracle for "exactly once")."""
    return Counter(r["job_key"] for r in catalogue.renders(limit=1000))


def lost_jobs(catalogue, keys) -> list[str]:
    """The job keys among `keys` that have no render in the catalogue."""
    return sorted(set(keys) - catalogue.rendered_keys(keys))


def job_records(manifests: list[Path]) -> list[dict]:
    """The job records `manifests` expand to, as `linstudio run` plans them."""
    from flows.batch import load_and_expand

    return [job.to_record() for _, jobs in load_and_expand(manifests, get_settings()) for job in jobs]


def plan(catalogue, records: list[dict]) -> str:
    """Record `records` under a new submission, as a run's planning step does; returns the submission id."""
    first = records[0]
    submission = catalogue.create_submission(first["team"], first["project"], str(first.get("manifest_path")),
                                             "0" * 64, len(records))
    catalogue.plan_jobs(submission, records)
    return submission
