"""A local Prefect server for the embedded default's scheduler: `prefect server start` under the studio home.

Prefect's ephemeral mode (no PREFECT_API_URL) runs no scheduler service, so schedules would never
fire; `linstudio scheduler` starts this instead. Imports nothing of Prefect: the caller sets
PREFECT_API_URL from its answer before Prefect is first imported (it reads the setting once).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


def _own_group_but_dies_with_parent():
    """What the server's child runs before exec: a process group of its own, so a Ctrl-C or a SIGTERM
    sent to the scheduler's group reaches the scheduler alone, which stops its runner while the
    server still answers and then stops the server (both at once left the runner retrying a dead
    server for ~30 s); and the kernel's SIGTERM should the scheduler die without that (Linux's
    PR_SET_PDEATHSIG). `prctl` is looked up here, in the parent: the child, between fork and exec,
    only calls it."""
    import ctypes
    import signal

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def in_child() -> None:
        os.setpgid(0, 0)
        prctl(pr_set_pdeathsig, signal.SIGTERM)
        if os.getppid() != parent:  # the scheduler died before the line above: nobody would signal
            os.kill(os.getpid(), signal.SIGTERM)

    return in_child


def start_local_server(home: Path, port: int, timeout: float = 180.0) -> subprocess.Popen:
    """`prefect server start` on 127.0.0.1:`port` with its database under `home` (a studio's
    embedded default has no Prefect server of its own); returns once /api/health answers."""
    import urllib.request

    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    prefect = str(Path(sys.executable).parent / "prefect")
    log_file = open(home / "server.log", "ab")  # noqa: SIM115 - the server keeps writing it
    process = subprocess.Popen([prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env,
                               stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               preexec_fn=_own_group_but_dies_with_parent())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the local Prefect server exited with {process.returncode}; see {home / 'server.log'}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as response:
                if response.status == 200:
                    return process
        except OSError:
            pass
        time.sleep(0.5)
    process.terminate()
    raise RuntimeError(f"the local Prefect server did not answer within {timeout:.0f} s; see {home / 'server.log'}")
