"""The `linstudio` command line.

Each area registers its own commands from `linstudio.commands.<area>` so that modules stay small
and imports stay lazy: `linstudio validate` must answer without importing torch, so command
modules import the engine, the catalogue and Prefect inside the command functions only.
"""

from __future__ import annotations

import typer

from linstudio import __version__
from linstudio.commands import catalogue, distill, manifest, models, production, rerender, run, schedules, web

app = typer.Typer(
    name="linstudio",
    help="LinFusion Studio: YAML manifests in, catalogued renders out.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)



@app.callback()
def main() -> None:
    """LinFusion Studio: YAML manifests in, catalogued renders out."""


@app.command("version")
def version() -> None:
    """Print the version of LinFusion Studio."""
    typer.echo(__version__)


for area in (models, manifest, run, rerender, schedules, catalogue, production, web, distill):
    area.register(app)


if __name__ == "__main__":  # pragma: no cover
    app()
