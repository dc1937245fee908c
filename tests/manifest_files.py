"""Manifest files for tests that run the pipeline (flow tests, fault suite): one writer for both."""

from __future__ import annotations

import textwrap
from pathlib import Path


def write_manifest(folder: Path, name: str, body: str) -> Path:
    """Write a manifest file from an indented literal."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(body).lstrip())
    return path
