"""Shared pieces of the fault suite (`tests/faults/`, run on its own with `make test-faults`).

`fault_log` records what each fault test observed — how many jobs were in flight when the fault
hit, how many were lost, how long recovery took — so `bench/reliability_report.py` can turn a run
of the suite into the table of docs/reliability.md. Records are appended as JSON lines to the file
named by LINSTUDIO_FAULT_REPORT; without it they are only kept in memory (and asserted on by the
tests themselves), so a plain `pytest tests/faults` writes nothing.

The service faults need services a test may stop: `fault_postgres` and `fault_seaweed` are the
suite's own PostgreSQL and SeaweedFS (started once per session, restarted on the same port and
data), never the shared ones of tests/services.py. `studio` gives a test a fresh catalogue on them
(or on the embedded SQLite + folder; `make_studio` on URLs the test chose), driven through the real
`linstudio` CLI by the suite's one driver, `fault_support.Studio`.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fault_support import Studio
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


def _home(tmp_path: Path, session_root: Path) -> Path:
    """A LINSTUDIO_HOME under the test's tmp_path that shares the session's tiny models (built once)."""
    home = tmp_path / "home"
    home.mkdir(parents=True, exist_ok=True)
    models = session_root / "home" / "models"
    models.mkdir(parents=True, exist_ok=True)
    if not (home / "models").exists():
        os.symlink(models, home / "models")
    return home


@pytest.fixture
def make_studio(request, tmp_path, session_root) -> Iterator[Callable[..., Studio]]:
    """`make_studio(database_url, store_url, kind=..., env=...)`: a studio on a catalogue the test chose (a
    database on a small tmpfs, say); its commands report to the session's Prefect server when they run a flow."""
    made: list[Studio] = []

    def make(database_url: str, store_url: str, kind: str = "embedded", env: dict[str, str] | None = None) -> Studio:
        logs = tmp_path / f"logs-{len(made)}"
        logs.mkdir()
        studio = Studio(kind, _home(tmp_path, session_root), database_url, store_url, logs,
                        prefect_api=lambda: request.getfixturevalue("prefect_api"), env=env)
        made.append(studio)
        return studio

    try:
        yield make
    finally:
        for studio in made:
            studio.close()


@pytest.fixture
def studio(request, tmp_path, make_studio, monkeypatch) -> Iterator[Studio]:
    """A fresh catalogue for one test: `services` (default: the fault suite's own PostgreSQL + SeaweedFS, which
    the test may stop) or `embedded` (SQLite + folder), chosen with
    `@pytest.mark.parametrize("studio", BACKENDS, indirect=True)`.

    The services are (re)started first, so a test that failed while one was down does not break the next.
    """
    kind = getattr(request, "param", "services")
    if kind == "embedded":
        home = tmp_path / "home"
        yield make_studio(f"sqlite:///{home / 'catalogue.db'}", (home / "store").as_uri(), kind="embedded")
        return
    pg, s3 = request.getfixturevalue("fault_postgres"), request.getfixturevalue("fault_seaweed")
    pg.start()
    s3.start()
    database = f"fault_{uuid.uuid4().hex[:16]}"
    pg.admin(f'CREATE DATABASE "{database}"')
    bucket = f"fault-{uuid.uuid4().hex[:16]}"
    s3.endpoint.client().create_bucket(Bucket=bucket)
    aws = {"AWS_ENDPOINT_URL": s3.endpoint.endpoint_url, "AWS_ACCESS_KEY_ID": s3.endpoint.access_key,
           "AWS_SECRET_ACCESS_KEY": s3.endpoint.secret_key, "AWS_DEFAULT_REGION": s3.endpoint.region,
           "AWS_EC2_METADATA_DISABLED": "true",
           "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
           "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-config")}
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in aws.items():  # the test's own catalogue connection reads the same
        monkeypatch.setenv(name, value)
    try:
        yield make_studio(pg.url(database), f"s3://{bucket}/catalogue", kind="services", env=aws)
    finally:
        if pg.running:
            pg.admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
