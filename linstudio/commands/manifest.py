"""`linstudio` commands for the manifest area (filled in by the area's work)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Attach this area's commands to the top-level app."""
