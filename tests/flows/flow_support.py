"""Helpers shared by the flow tests."""

from __future__ import annotations

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
