"""`linstudio worker`: a Prefect worker and its GPU's render host, supervised as one unit.

The Prefect worker takes flow runs from the pool and starts each as a fresh process; the render
host (flows/render_host.py) keeps the models loaded between those runs. This supervisor starts
both with the same environment (plus the host's socket and key, which the worker's flow runs
inherit), restarts the host if it dies (a CUDA error or an out-of-memory kill must not take the
worker's GPU out of service), and stops both when the worker ends or when it is told to stop.
Both children die with the supervisor (PR_SET_PDEATHSIG), so a SIGKILLed supervisor leaves no
render host holding GPU memory behind.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time

log = logging.getLogger("linstudio.worker")

RESTART_BACKOFF_SECONDS = (1.0, 5.0, 30.0)  # after 1, 2, 3+ host deaths in a row
HEALTHY_AFTER_SECONDS = 120.0  # a host that lived this long resets the backoff
STOP_GRACE_SECONDS = 30.0


def socket_path(worker_name: str) -> str:
    """A short Unix socket path (sockets allow ~107 bytes) unique to this worker and process."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "-", worker_name)[:40]
    return os.path.join(tempfile.gettempdir(), f"linstudio-{safe}-{os.getpid()}.sock")


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the supervisor dies, however it dies (Linux)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:  # not Linux: the children outlive a SIGKILLed supervisor
        pass


def host_environment(env: dict, worker_name: str) -> dict:
    """`env` plus the render host's address and a fresh key, for the host and for the flow runs."""
    return {**env, "LINSTUDIO_RENDER_HOST": socket_path(worker_name),
            "LINSTUDIO_RENDER_HOST_KEY": secrets.token_hex(32)}


class Supervisor:
    """Runs the Prefect worker command and a render host; see the module docstring."""

    def __init__(self, worker_command: list[str], env: dict, host_args: list[str]) -> None:
        self.worker_command, self.env, self.host_args = worker_command, env, host_args
        self.worker: subprocess.Popen | None = None
        self.host: subprocess.Popen | None = None
        self.host_started = 0.0
        self.host_deaths = 0
        self.stopping = False

    def _start_host(self) -> None:
        self.host = subprocess.Popen([sys.executable, "-m", "flows.render_host", *self.host_args], env=self.env,
                                     preexec_fn=_die_with_parent)
        self.host_started = time.monotonic()
        log.info("render host started (pid %d) at %s", self.host.pid, self.env["LINSTUDIO_RENDER_HOST"])

    def _on_signal(self, signum, frame) -> None:
        self.stopping = True

    def run(self) -> int:
        """Supervise until the worker exits or a stop signal arrives; returns the worker's exit code."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self._start_host()
        self.worker = subprocess.Popen(self.worker_command, env=self.env, preexec_fn=_die_with_parent)
        try:
            while not self.stopping:
                code = self.worker.poll()
                if code is not None:
                    log.info("Prefect worker exited with %d", code)
                    return code
                if self.host.poll() is not None:
                    self._restart_host()
                time.sleep(0.5)
            return 0
        finally:
            self._stop_all()

    def _restart_host(self) -> None:
        lived = time.monotonic() - self.host_started
        self.host_deaths = 1 if lived > HEALTHY_AFTER_SECONDS else self.host_deaths + 1
        delay = RESTART_BACKOFF_SECONDS[min(self.host_deaths, len(RESTART_BACKOFF_SECONDS)) - 1]
        log.warning("render host exited with %s after %.0f s; restarting in %.0f s",
                    self.host.returncode, lived, delay)
        time.sleep(delay)
        self._start_host()

    def _stop_all(self) -> None:
        children = [p for p in (self.worker, self.host) if p is not None and p.poll() is None]
        for proc in children:
            proc.terminate()
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for proc in children:
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
        try:
            os.unlink(self.env["LINSTUDIO_RENDER_HOST"])
        except OSError:
            pass
