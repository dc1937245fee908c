"""Test-session wiring shared by every test.

Isolation first: each test session gets its own LINSTUDIO_HOME, Prefect home and Hugging Face
cache under a temp folder, and the hub is forced offline — a test must never download, nor see a
developer's own catalogue. The tiny models are built once per session into that home.
Real services (PostgreSQL, SeaweedFS, a Prefect server) are started at most once per session by
the fixtures in `services.py`, and only when a test asks for them.
"""

from __future__ import annotations

import collections
import os
import tempfile
from pathlib import Path

import pytest

from services import *  # noqa: F401,F403  (real-service fixtures)

_SESSION_ROOT = Path(tempfile.mkdtemp(prefix="linstudio-tests-"))
os.environ["LINSTUDIO_HOME"] = str(_SESSION_ROOT / "home")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = str(_SESSION_ROOT / "hf")
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["PREFECT_HOME"] = str(_SESSION_ROOT / "prefect")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_LOGGING_TO_API_ENABLED"] = "false"  # no log shipping to a server torn down at session end
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
for _var in ("LINSTUDIO_DATABASE_URL", "LINSTUDIO_STORE_URL", "PREFECT_API_URL"):
    os.environ.pop(_var, None)


@pytest.fixture(scope="session")
def session_root() -> Path:
    """A temp folder that lives for the whole test session."""
    return _SESSION_ROOT


@pytest.fixture
def isolated_home(tmp_path, monkeypatch) -> Path:
    """A fresh LINSTUDIO_HOME for one test (the settings cache is cleared around it)."""
    from linstudio.settings import get_settings

    home = tmp_path / "home"
    monkeypatch.setenv("LINSTUDIO_HOME", str(home))
    get_settings.cache_clear()
    yield home
    get_settings.cache_clear()


def pytest_collection_modifyitems(config, items):
    """GPU-only tests are skipped where no CUDA device is present."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return  # do not pay torch's import for a run without GPU tests
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch always installed here
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in gpu_items:
        item.add_marker(skip)


_SUBPROCESSES = {"linstudio": 0, "other": 0}
_CLI_RUNS_PER_TEST: "collections.Counter[str]" = collections.Counter()
_RUNNING_TEST = ["(collection)"]


def _count_subprocesses() -> None:
    """Count the processes the tests start: `linstudio` CLI runs (each pays for importing torch,
    diffusers and Prefect) and everything else (services, helper scripts). Printed at the end."""
    import subprocess

    original = subprocess.Popen.__init__

    def counting_init(self, args, *rest, **kwargs):
        words = [str(a) for a in (args if isinstance(args, (list, tuple)) else [args])]
        cli = any(w.endswith("linstudio") or w == "linstudio.cli" for w in words)  # the script, or -m
        _SUBPROCESSES["linstudio" if cli else "other"] += 1
        if cli:
            _CLI_RUNS_PER_TEST[_RUNNING_TEST[0]] += 1
        original(self, args, *rest, **kwargs)

    subprocess.Popen.__init__ = counting_init


_count_subprocesses()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Name the running test, so the subprocess counter can say which tests start the CLI most."""
    _RUNNING_TEST[0] = item.nodeid
    yield


def pytest_sessionfinish(session):
    """Under pytest-xdist each worker counts its own processes: hand them to the controller."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["linstudio_subprocesses"] = dict(_SUBPROCESSES)
        workeroutput["linstudio_cli_runs_per_test"] = dict(_CLI_RUNS_PER_TEST)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """The controller's side of `pytest_sessionfinish`: add a finished worker's counts to the total."""
    output = getattr(node, "workeroutput", {})
    for kind, count in output.get("linstudio_subprocesses", {}).items():
        _SUBPROCESSES[kind] += count
    _CLI_RUNS_PER_TEST.update(output.get("linstudio_cli_runs_per_test", {}))


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(f"subprocesses started by this session: {_SUBPROCESSES['linstudio']} `linstudio` "
                                f"CLI runs, {_SUBPROCESSES['other']} others (services, git, helper scripts)")
    most = _CLI_RUNS_PER_TEST.most_common(10)
    if most:
        terminalreporter.write_line("tests that start the most `linstudio` processes: "
                                    + ", ".join(f"{nodeid} ({count})" for nodeid, count in most))


def pytest_unconfigure(config):
    """Remove the session's temp folder (homes, tiny models, Prefect home) once everything is torn down."""
    import shutil

    shutil.rmtree(_SESSION_ROOT, ignore_errors=True)
