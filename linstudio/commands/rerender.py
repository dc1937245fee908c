"""`linstudio rerender`: catalogued renders again at new sizes, starting from the source image."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from flows.prefect_env import configure_prefect_defaults
from linstudio_settings import get_settings


def register(app: typer.Typer) -> None:
    """Attach `rerender` to the top-level app."""
    app.command("rerender")(rerender)


def rerender(
    size: Annotated[list[str], typer.Option("--size", help="Target size WxH; repeat for several.")],
    render: Annotated[Optional[list[str]], typer.Option("--render", help="A render id; repeat for several.")] = None,
    team: Annotated[Optional[str], typer.Option("--team", help="Every render of this team.")] = None,
    project: Annotated[Optional[str], typer.Option("--project", help="Every render of this project.")] = None,
    tag: Annotated[Optional[str], typer.Option("--tag", help="Only renders carrying this tag.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Re-render chosen renders at new sizes from their own images; each new render points to its source.

    Idempotent like `linstudio run`: a size already re-rendered from the same source is skipped.
    Runs locally (no Prefect server needed).
    """
    configure_prefect_defaults()
    # lazy: the catalogue (SQLAlchemy, Pillow, Alembic) stays out of linstudio validate
    # (tests/manifests/test_manifest_cli.py::test_validate_answers_quickly)
    from catalogue import Catalogue
    from flows.rerender import RerenderError, parse_size, plan_rerenders, select_renders
    from flows.runs import render_planned_jobs

    if not (render or team or project or tag):
        typer.echo("error: choose renders with --render ID, --team, --project or --tag", err=True)
        raise typer.Exit(2)
    settings = get_settings()
    try:
        sizes = [parse_size(s) for s in size]
        catalogue = Catalogue.open(settings.resolved_database_url, settings.resolved_store_url)
        try:
            catalogue.migrate()
            ids = select_renders(catalogue, team=team, project=project, tag=tag, render_ids=render)
            if not ids:
                typer.echo("no render matches; nothing to do", err=True)
                raise typer.Exit(1)
            records = plan_rerenders(catalogue, ids, sizes, requested_by=settings.worker_name)
        finally:
            catalogue.close()
    except RerenderError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    summary = render_planned_jobs([r["key"] for r in records], settings=settings)
    typer.echo(json.dumps(summary.to_json(), indent=2) if as_json else summary.to_text())
    raise typer.Exit(0 if summary.ok else 1)
