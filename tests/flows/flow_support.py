"""Helpers shared by the flow tests."""

from __future__ import annotations

import textwrap
from pathlib import Path


def write_manifest(folder: Path, name: str, body: str) -> Path:
    """Write a manifest file from an indented literal."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(body).lstrip())
    return path


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
