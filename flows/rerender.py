"""Re-renders started in the background: catalogued renders produced again at new sizes.

Planning a re-render needs only the catalogue and lives there (catalogue.rerenders, re-exported
here for the command line); this module starts planned jobs without waiting for them —
through a Prefect deployment named `rerender` where one is configured (PREFECT_API_URL set and the
deployment registered), else in a detached local process. `linstudio rerender` calls it directly;
the gallery asks for it through a rerender request that flows.requests picks up.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from catalogue.rerenders import (  # noqa: F401 (re-exported: flows.rerender was their home)
    DEFAULT_STRENGTH,
    RERENDER_PREFIX,
    RerenderError,
    parse_size,
    plan_rerenders,
    rerender_records,
    select_renders,
)
from flows.prefect_env import configure_prefect_defaults
from flows.shards import INTERACTIVE_QUEUE, dispatch
from linstudio_settings import get_settings

log = logging.getLogger(__name__)


def start_in_background(job_keys: list[str]) -> subprocess.Popen | None:
    """Render planned jobs without waiting: the `render-shard` deployment if configured, else a local
    process, which is returned so that its starter can reap it when it ends (None for a deployment)."""
    if os.environ.get("PREFECT_API_URL") and _run_deployment(job_keys):
        return None
    log_dir = _log_dir()
    with open(log_dir / f"rerender-{job_keys[0][:12]}.log", "ab") as log_file:  # the child keeps its own copy
        return subprocess.Popen([sys.executable, "-m", "flows.runs", *job_keys], stdout=log_file,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                env=os.environ.copy())


def _log_dir() -> Path:
    folder = get_settings().home / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _run_deployment(job_keys: list[str]) -> bool:
    """Hand the planned re-render jobs to the `render-shard` deployment (the GPU work pool's flow that
    renders jobs by key) on its `interactive` queue, ahead of nightly shards; False when it is not
    registered (the caller renders locally)."""
    configure_prefect_defaults()
    try:
        settings = get_settings()
        # Beside a large-GPU pool, the shard helps its batch only with jobs that fit the default pool.
        help_max_gib = settings.large_job_gib if settings.large_gpu_pool is not None else None
        dispatch(job_keys, large=False, queue=INTERACTIVE_QUEUE, help_max_gib=help_max_gib)
        return True
    except Exception:  # no such deployment, or the server is unreachable: render locally instead
        return False
