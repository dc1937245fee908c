"""The GPU worker's long-lived render host: same renders as in-process, errors that read the same,
transient when it is gone, restarted by the supervisor, and used by flow runs instead of loading
the model themselves."""

from __future__ import annotations

import io
import os
import secrets
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from flow_support import wait_for
from PIL import Image

from flows.render_host import RenderHost, RenderHostClient, RenderHostUnavailable
from flows.transient import is_transient, one_line

RECORD = {"team": "game", "project": "props", "asset_id": "crate", "model_identity": "tiny-sd15",
          "model": "tiny-sd15", "prompt": "a wooden crate", "negative_prompt": "", "seed": 3, "width": 64,
          "height": 64, "steps": 2, "guidance": 5.0, "scheduler": "euler", "attention": "linear",
          "strategy": "auto", "tileable": False, "conditioning": {}}


def _registry():
    """The studio's registry, as the host's `main` builds it at its start."""
    from linfusion_engine.registry import ModelRegistry
    from linstudio.settings import get_settings

    return ModelRegistry.from_settings(get_settings())


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


@pytest.fixture
def host_in_thread(tmp_path):
    """A render host serving from a thread of this process (its engines are this process's)."""
    address = str(Path("/tmp") / f"lsh-test-{secrets.token_hex(4)}.sock")
    key = secrets.token_bytes(16)
    host = RenderHost(address, key, registry=_registry(), device="cpu")
    host.start()
    thread = threading.Thread(target=host.serve_forever, daemon=True)
    thread.start()
    yield address, key
    host.stop()


def test_the_host_renders_what_the_flow_run_would_render_itself(host_in_thread):
    from flows.rendering import render_png

    client = RenderHostClient(*host_in_thread)
    info = client.ping()
    assert info["pid"] == os.getpid() and info["devices"] == ["cpu"]
    png, metadata = client.render(RECORD, "cpu", None)
    local_png, local_metadata = render_png(RECORD, "cpu", None, registry=_registry())
    assert np.array_equal(_pixels(png), _pixels(local_png))  # same seed, same pixels
    assert metadata["model"] == local_metadata["model"]
    assert "tiny-sd15" in client.ping()["models"]
    client.close()


def test_a_failed_render_reads_the_same_as_in_process_and_is_not_retried(host_in_thread):
    from flows.rendering import render_png

    bad = {**RECORD, "model": "no-such-model"}
    with pytest.raises(Exception) as local:
        render_png(bad, "cpu", None, registry=_registry())
    with pytest.raises(Exception) as remote:
        RenderHostClient(*host_in_thread).render(bad, "cpu", None)
    assert one_line(remote.value) == one_line(local.value)
    assert not is_transient(remote.value)


def test_a_wrong_key_is_refused_and_the_host_keeps_serving(host_in_thread):
    address, key = host_in_thread
    with pytest.raises(Exception):
        RenderHostClient(address, b"not-the-key").ping()
    assert RenderHostClient(address, key).ping()["devices"] == ["cpu"]


def test_a_missing_host_is_a_transient_failure(tmp_path):
    client = RenderHostClient(str(tmp_path / "nobody.sock"), b"k")
    with pytest.raises(RenderHostUnavailable) as failure:
        client.ping()
    assert is_transient(failure.value)


def _host_env(tmp_path) -> dict:
    return {**os.environ, "LINSTUDIO_RENDER_HOST": f"/tmp/lsh-test-{secrets.token_hex(4)}.sock",
            "LINSTUDIO_RENDER_HOST_KEY": secrets.token_hex(16), "LINSTUDIO_DEVICE": "cpu"}


def _client(env: dict) -> RenderHostClient:
    return RenderHostClient(env["LINSTUDIO_RENDER_HOST"], env["LINSTUDIO_RENDER_HOST_KEY"].encode())


def _ping_or_none(client: RenderHostClient):
    try:
        return client.ping()
    except (RenderHostUnavailable, EOFError):
        return None


@pytest.mark.slow
def test_the_supervisor_restarts_a_dead_host_and_stops_everything_on_sigterm(tmp_path):
    """A Supervisor process around a stand-in worker command: kill its host, a new one answers;
    SIGTERM the supervisor, and the worker, the host and the socket are gone."""
    env = _host_env(tmp_path)
    script = tmp_path / "supervise.py"
    script.write_text(
        "import sys\n"
        "from flows.worker_process import Supervisor\n"
        "import os\n"
        "sys.exit(Supervisor([sys.executable, '-c', 'import time; time.sleep(600)'], dict(os.environ), []).run())\n")
    supervisor = subprocess.Popen([sys.executable, str(script)], env=env)
    client = _client(env)
    try:
        first = wait_for(lambda: _ping_or_none(client), 120, "the render host to answer", [])
        os.kill(first["pid"], signal.SIGKILL)  # a CUDA crash or an out-of-memory kill
        second = wait_for(lambda: (p := _ping_or_none(client)) and p["pid"] != first["pid"] and p, 120,
                          "a new render host", [])
        assert second["pid"] != first["pid"]
        import psutil

        family = [p.pid for p in psutil.Process(supervisor.pid).children(recursive=True)]
        assert second["pid"] in family and len(family) == 2  # the stand-in worker and the new host
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=60) == 0
        assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                       for pid in family)
        assert not os.path.exists(env["LINSTUDIO_RENDER_HOST"])
    finally:
        if supervisor.poll() is None:
            supervisor.kill()


@pytest.mark.services
def test_a_flow_run_renders_on_its_workers_host_without_loading_the_model(prefect_api, backend, small_manifest,
                                                                          monkeypatch):
    from flows import engines
    from flows.runs import run_manifests
    from linstudio.settings import get_settings

    env = _host_env(small_manifest.parent)
    host = subprocess.Popen([sys.executable, "-m", "flows.render_host", "--preload", "tiny-sd15"], env=env)
    try:
        client = _client(env)
        wait_for(lambda: (p := _ping_or_none(client)) and "tiny-sd15" in p["models"], 120, "the preloaded host", [])
        monkeypatch.setenv("LINSTUDIO_RENDER_HOST", env["LINSTUDIO_RENDER_HOST"])
        monkeypatch.setenv("LINSTUDIO_RENDER_HOST_KEY", env["LINSTUDIO_RENDER_HOST_KEY"])
        get_settings.cache_clear()
        engines.close_all()
        summary = run_manifests([small_manifest])
        assert summary.ok and summary.counts["rendered"] == 3, summary.to_text()
        assert engines.loaded_models() == []  # the flow run loaded nothing itself
        assert client.ping()["pid"] == host.pid
    finally:
        host.kill()
        get_settings.cache_clear()


def test_a_bad_input_file_from_the_host_is_still_an_input_error_naming_the_manifest_line(host_in_thread, tmp_path):
    from flows.conditioning_inputs import ConditioningInputError
    from flows.job_runner import failure_reason

    broken = tmp_path / "map.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)  # a PNG header, then nothing readable
    record = {**RECORD, "manifest_path": "game/props.yaml", "manifest_line": 12,
              "conditioning": {"init_image": {"image": {"path": str(broken)}, "strength": 0.5}}}
    with pytest.raises(ConditioningInputError) as failure:
        RenderHostClient(*host_in_thread).render(record, "cpu", None)
    assert failure_reason(failure.value, record).startswith("game/props.yaml:12: ConditioningInputError: ")
