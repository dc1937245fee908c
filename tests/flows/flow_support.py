"""Helpers shared by the flow tests."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from manifest_files import write_manifest  # noqa: F401  (shared with the other test folder)

from linstudio.settings import get_settings


def open_catalogue():
    """The catalogue the test's settings name (the `backend` fixture), migrated."""
    from catalogue import Catalogue

    catalogue = Catalogue.from_settings(get_settings())
    catalogue.migrate()
    return catalogue

SMALL_MANIFEST = """
version: 1
team: game
project: test-props
defaults:
  model: tiny-sd15
  steps: 2
  guidance: 5.0
  scheduler: euler
  sizes: [64x64]
assets:
  - id: crate
    prompt: "a wooden crate"
    seeds: [1, 2]
  - id: barrel
    prompt: "a rusty barrel"
    seeds: [7]
    sizes: [64x128]
"""


def start_logged(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    """A long-lived process (a worker, a scheduler) in its own session, its output in `log`."""
    return subprocess.Popen(args, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_for(predicate, timeout: float, what, logs: list[Path]):
    """`predicate()`'s first truthy value within `timeout` s, else an AssertionError naming `what`
    (a string, or a callable for a message worth computing only on failure) with the logs' tails."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    tails = "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}" for log in logs if log.exists())
    what = what() if callable(what) else what
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{tails}")
