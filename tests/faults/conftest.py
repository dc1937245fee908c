"""Shared pieces of the fault suite (`tests/faults/`, run on its own with `make test-faults`).

`fault_log` records what each fault test observed — how many jobs were in flight when the fault
hit, how many were lost, how long recovery took — so `bench/reliability_report.py` can turn a run
of the suite into the table of docs/reliability.md. Records are appended as JSON lines to the file
named by LINSTUDIO_FAULT_REPORT; without it they are only kept in memory (and asserted on by the
tests themselves), so a plain `pytest tests/faults` writes nothing.

The service faults need services a test may stop: `fault_postgres` and `fault_seaweed` are the
suite's own PostgreSQL and SeaweedFS (started once per session, restarted on the same port and
data), never the shared ones of tests/services.py. `studio` gives a test a fresh catalogue on them
(or on the embedded SQLite + folder) and runs `linstudio` against it as subprocesses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest
from services import PostgresCluster, SeaweedServer


@dataclass
class FaultRecord:
    """One fault and its outcome, as a row of docs/reliability.md."""

    fault: str
    jobs_in_flight: int
    lost: int
    recovery_seconds: float | None
    outcome: str
    extra: dict[str, Any] = field(default_factory=dict)


class FaultLog:
    """Collects FaultRecords for the report; appends each to $LINSTUDIO_FAULT_REPORT when set."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.records: list[FaultRecord] = []

    def record(self, fault: str, *, jobs_in_flight: int, lost: int, recovery_seconds: float | None,
               outcome: str, **extra: Any) -> FaultRecord:
        row = FaultRecord(fault, jobs_in_flight, lost, recovery_seconds, outcome, dict(extra))
        self.records.append(row)
        if self.path:
            with open(self.path, "a", encoding="utf-8") as out:
                out.write(json.dumps(asdict(row)) + "\n")
        return row


@pytest.fixture(scope="session")
def fault_log() -> FaultLog:
    return FaultLog(os.environ.get("LINSTUDIO_FAULT_REPORT"))


# -- services a fault test may stop, and one test's studio on them -----------------------------------------


@pytest.fixture(scope="session")
def fault_postgres() -> Iterator[PostgresCluster]:
    """The fault suite's own PostgreSQL cluster: tests stop and restart it (the suite's shared one is never touched)."""
    cluster = PostgresCluster(prefix="linstudio-fault-pg-")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture(scope="session")
def fault_seaweed() -> Iterator[SeaweedServer]:
    """The fault suite's own SeaweedFS S3 server: tests stop and restart it, its buckets survive."""
    server = SeaweedServer(prefix="linstudio-fault-s3-")
    try:
        server.start()
        yield server
    finally:
        server.remove()


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


class Studio:
    """One test's catalogue, and the `linstudio` commands a studio runs against it, as subprocesses.

    Subprocesses, not in-process calls, because the faults under test kill processes and take
    services away mid-run: each run must be a real process with its own connections, exactly as
    the nightly batch runs. The test reads the catalogue through `catalogue` meanwhile.

    Args:
        kind: "embedded" (SQLite + a folder under the test's home) or "services" (the fault suite's
            own PostgreSQL and SeaweedFS, which the test may stop).
        env: the environment every subprocess gets (home, catalogue URLs, Prefect server, AWS).
        database_url: the catalogue database.
        store_url: the object store.
        logs: where each started run's output is kept (`run-N.log`).
    """

    def __init__(self, kind: str, env: dict[str, str], database_url: str, store_url: str, logs: Path) -> None:
        self.kind = kind
        self.env = env
        self.database_url = database_url
        self.store_url = store_url
        self.logs = logs
        self._catalogue = None
        self._runs = 0

    @property
    def catalogue(self):
        """The test's own connection to the catalogue (opened once, migrated), for watching a run."""
        if self._catalogue is None:
            from catalogue import Catalogue

            self._catalogue = Catalogue.open(self.database_url, self.store_url)
            self._catalogue.migrate()
        return self._catalogue

    def close(self) -> None:
        if self._catalogue is not None:
            self._catalogue.close()

    def start(self, *args: str, launcher: Sequence[str] = ()) -> tuple[subprocess.Popen, Path]:
        """Start `linstudio ARGS` (or `python LAUNCHER... -- ARGS`) in the background; returns it and its log."""
        self._runs += 1
        log = self.logs / f"run-{self._runs}.log"
        command = [sys.executable, *launcher, "--", *args] if launcher else [str(LINSTUDIO), *args]
        with open(log, "wb") as out:
            process = subprocess.Popen(command, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL)
        return process, log

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """Run `linstudio ARGS` to the end (hang guard: `timeout`); stdout and stderr captured apart."""
        return subprocess.run([str(LINSTUDIO), *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def rerun(self, manifest: Path, jobs: int) -> Recovery:
        """Run the manifest again, as an operator would after a fault, then ask the oracle.

        The re-run's own start (sweep of unfinished ingests, release of dead local runs' leases)
        is part of what is tested: `check` is read after it, never before.
        """
        started = time.monotonic()
        result = self.run("run", "--json", str(manifest))
        seconds = time.monotonic() - started
        try:
            counts = json.loads(result.stdout)["counts"]
        except (json.JSONDecodeError, KeyError):
            raise AssertionError(f"the re-run printed no summary (exit {result.returncode}):\n"
                                 f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}") from None
        copies = self.catalogued()
        return Recovery(returncode=result.returncode, seconds=seconds, counts=counts, copies=copies,
                        lost=jobs - len(copies), check=self.check(), output=result.stdout + result.stderr)

    def check(self) -> dict[str, Any]:
        """`linstudio catalogue check --json`: the suite's oracle (exit 0 only when rows and objects agree)."""
        result = subprocess.run([str(LINSTUDIO), "catalogue", "check", "--json"], env=self.env,
                                capture_output=True, text=True, timeout=300)
        try:
            report = json.loads(result.stdout)
        except json.JSONDecodeError:
            raise AssertionError(f"catalogue check printed no report (exit {result.returncode}):\n"
                                 f"{result.stdout}\n{result.stderr}") from None
        assert (result.returncode == 0) == report["ok"], (result.returncode, report)
        return report

    def check_leftovers(self) -> dict[str, Any]:
        """`check` between a faulted run and its re-run: leftovers are allowed, untracked ones are not.

        A fault may leave objects without a row, but only ones an unfinished upload intent names (so
        the next run's sweep removes them); never a row without its object, never a corrupt one.
        """
        report = self.check()
        orphans = {problem["key"] for problem in report["orphan_objects"]}
        tracked = {key for intent in report["unfinished_intents"] for key in intent["object_keys"]}
        assert orphans <= tracked, f"objects no intent names, which nothing would clean up: {orphans - tracked}"
        assert not report["missing_objects"] and not report["corrupt_objects"], report
        return report

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


LINSTUDIO = Path(sys.executable).parent / "linstudio"


def _studio_env(home: Path, prefect_api: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("LINSTUDIO_", "AWS_", "PREFECT_API_URL"))}
    env.update(LINSTUDIO_HOME=str(home), PREFECT_API_URL=prefect_api)
    return env


@pytest.fixture
def studio(request, tmp_path, session_root, prefect_api, monkeypatch) -> Iterator[Studio]:
    """A fresh catalogue for one test: `services` (default: the fault suite's PostgreSQL + SeaweedFS) or
    `embedded` (SQLite + folder), chosen with `@pytest.mark.parametrize("studio", [...], indirect=True)`.

    The services are (re)started first, so a test that failed while one was down does not break the next.
    """
    kind = getattr(request, "param", "services")
    home = tmp_path / "home"
    home.mkdir()
    models = session_root / "home" / "models"  # the tiny models are built once per session
    models.mkdir(parents=True, exist_ok=True)
    os.symlink(models, home / "models")
    logs = tmp_path / "logs"
    logs.mkdir()
    env = _studio_env(home, prefect_api)
    database = None
    if kind == "embedded":
        database_url, store_url = f"sqlite:///{home / 'catalogue.db'}", (home / "store").as_uri()
    else:
        pg, s3 = request.getfixturevalue("fault_postgres"), request.getfixturevalue("fault_seaweed")
        pg.start()
        s3.start()
        database = f"fault_{uuid.uuid4().hex[:16]}"
        pg.admin(f'CREATE DATABASE "{database}"')
        bucket = f"fault-{uuid.uuid4().hex[:16]}"
        s3.endpoint.client().create_bucket(Bucket=bucket)
        database_url, store_url = pg.url(database), f"s3://{bucket}/catalogue"
        aws = {"AWS_ENDPOINT_URL": s3.endpoint.endpoint_url, "AWS_ACCESS_KEY_ID": s3.endpoint.access_key,
               "AWS_SECRET_ACCESS_KEY": s3.endpoint.secret_key, "AWS_DEFAULT_REGION": s3.endpoint.region,
               "AWS_EC2_METADATA_DISABLED": "true",
               "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
               "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-config")}
        env.update(aws)
        for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_DEFAULT_PROFILE"):
            monkeypatch.delenv(name, raising=False)
        for name, value in aws.items():  # the test's own catalogue connection reads the same
            monkeypatch.setenv(name, value)
    env.update(LINSTUDIO_DATABASE_URL=database_url, LINSTUDIO_STORE_URL=store_url)
    studio = Studio(kind, env, database_url, store_url, logs)
    try:
        yield studio
    finally:
        studio.close()
        if database is not None:
            pg = request.getfixturevalue("fault_postgres")
            if pg.running:
                pg.admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
