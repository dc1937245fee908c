"""Prefect defaults for the embedded mode, applied before Prefect is imported.

With no `PREFECT_API_URL`, Prefect starts a local ephemeral server on the first flow call. On a
fresh machine that takes 20-30 s, longer than Prefect's default 20 s startup timeout, and it would
try to send analytics out of a studio network. These defaults fix both and keep Prefect's INFO
chatter out of the CLI; anything the user sets explicitly wins.
"""

from __future__ import annotations

import os

DEFAULTS = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "100",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_READ_BATCH_SIZE": "100",
}


def configure_prefect_defaults(verbose: bool = False) -> None:
    """Set Prefect's environment defaults unless already set (call before `import prefect`)."""
    for name, value in DEFAULTS.items():
        if name == "PREFECT_LOGGING_LEVEL" and verbose:
            value = "INFO"
        os.environ.setdefault(name, value)
