"""`linstudio catalogue ...`: list, show and check what the catalogue holds.

The catalogue is opened from the settings (LINSTUDIO_DATABASE_URL / LINSTUDIO_STORE_URL, or the
embedded default under LINSTUDIO_HOME). The `catalogue` package is imported inside the commands
only, so that `linstudio validate` and friends start without it.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from linstudio_settings import get_settings

catalogue_app = typer.Typer(
    name="catalogue",
    help="What has been rendered: list, show and check the catalogue.",
    no_args_is_help=True,
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
DEFAULT_ORPHAN_GRACE = 300.0  # catalogue.repair.DEFAULT_ORPHAN_GRACE_SECONDS, without importing the catalogue here


def open_catalogue():
    """The settings' catalogue, migrated; a configuration error exits 2 with its message."""
    from sqlalchemy.exc import OperationalError

    # lazy: the catalogue (SQLAlchemy, Pillow, Alembic) stays out of linstudio validate
    # (tests/manifests/test_manifest_cli.py::test_validate_answers_quickly)
    from catalogue import Catalogue, CatalogueError

    try:
        catalogue = Catalogue.from_settings(get_settings())
    except CatalogueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        catalogue.migrate()
    except OperationalError as exc:
        catalogue.close()
        where = catalogue.engine.url.render_as_string(hide_password=True)
        typer.echo(f"error: cannot open the catalogue database {where}: {str(exc.orig).strip()}", err=True)
        raise typer.Exit(2) from None
    return catalogue


@catalogue_app.command("ls")
def ls(
    team: Annotated[str | None, typer.Option(help="Only this team's renders.")] = None,
    project: Annotated[str | None, typer.Option(help="Only this project's renders.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many, newest first.")] = 50,
    after: Annotated[str | None, typer.Option(help="Continue after this render id (the last one shown).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Catalogued renders, newest first."""
    catalogue = open_catalogue()
    try:
        renders = catalogue.renders(team=team, project=project, limit=limit, after=after)
    finally:
        catalogue.close()
    if as_json:
        typer.echo(json.dumps(renders, indent=2))
        return
    if not renders:
        typer.echo("no renders")
        return
    for r in renders:
        typer.echo(f"{r['render_id']}  {r['team']}/{r['project']}/{r['asset_id']}  seed {r['seed']}  "
                   f"{r['width']}x{r['height']}  {r['model']}  {r['created_at'][:19]}  {r['prompt'][:60]}")


@catalogue_app.command("show")
def show(
    render_id: Annotated[str, typer.Argument(help="A render id, as `catalogue ls` prints it.")],
    as_json: JsonFlag = False,
) -> None:
    """One render: its settings, engine metadata, worker, timings and objects."""
    catalogue = open_catalogue()
    try:
        render = catalogue.render(render_id)
    finally:
        catalogue.close()
    if render is None:
        typer.echo(f"error: no render {render_id!r} in the catalogue", err=True)
        raise typer.Exit(1)
    if as_json:
        typer.echo(json.dumps(render, indent=2))
        return
    for field, value in render.items():
        if field == "record":
            continue
        shown = json.dumps(value) if isinstance(value, (dict, list)) else value
        typer.echo(f"{field:17} {shown}")


@catalogue_app.command("check")
def check(
    no_hashes: Annotated[bool, typer.Option("--no-hashes", help="Skip re-hashing every object (faster).")] = False,
    repair: Annotated[bool, typer.Option(
        "--repair", help="Repair what the check finds (orphans, missing or corrupt objects, expired leases, "
                         "leases of runs that are gone) and report each action; exit 0 only when consistent "
                         "afterwards.")] = False,
    orphan_grace: Annotated[float, typer.Option(
        "--orphan-grace", min=0, metavar="SECONDS",
        help="With --repair: leave orphan objects written less than this long ago.")] = DEFAULT_ORPHAN_GRACE,
    as_json: JsonFlag = False,
) -> None:
    """Orphan objects, missing or corrupt objects, expired leases; exit 0 only when consistent.

    Read-only unless --repair is given. --repair deletes orphan objects (never one an unfinished
    upload intent names), removes renders whose PNG is missing or corrupt and marks their jobs
    failed so the next run renders them again, remakes bad thumbnails from intact PNGs, and sends
    jobs with expired leases back to planned — and those whose lease its run stopped renewing (the
    run is gone: killed, or ended with the database down), after watching them for their silence
    window (30 s for the default lease) while the database answers; then it checks again.
    """
    catalogue = open_catalogue()
    try:
        if repair:
            report = catalogue.repair(verify_hashes=not no_hashes, orphan_grace_seconds=orphan_grace)
        else:
            report = catalogue.check(verify_hashes=not no_hashes)
    finally:
        catalogue.close()
    typer.echo(json.dumps(report.to_dict(), indent=2) if as_json else str(report))
    if not report.ok:
        raise typer.Exit(1)


@catalogue_app.command("tiles")
def tiles_command(
    render: Annotated[list[str] | None, typer.Option(
        "--render", metavar="ID", help="Only this render (repeat for more). Default: every render above 2048 px.")] = None,
    missing: Annotated[bool, typer.Option(
        "--missing", help="Only renders whose pyramid is missing or partial (else every one is built again).")] = False,
) -> None:
    """Build the deep-zoom pyramids the gallery's viewer reads, for renders above 2048 px on a side.

    A server (`linstudio serve`) and `linstudio run` build them after ingest; this is for renders
    made before, or to rebuild after a change of tile settings. Exit 1 when a build failed.
    """
    # lazy: the catalogue (SQLAlchemy, Pillow, Alembic) stays out of linstudio validate
    # (tests/manifests/test_manifest_cli.py::test_validate_answers_quickly)
    from catalogue import pyramids, tiles

    catalogue = open_catalogue()
    try:
        wanted = pyramids.big_renders(catalogue, render)
        if render:
            unknown = sorted(set(render) - {r.render_id for r in wanted})
            for render_id in unknown:
                typer.echo(f"{render_id}: not a render above 2048 px in the catalogue; skipped", err=True)
        built = pyramids.build_pending(catalogue, [r.render_id for r in wanted], rebuild=not missing,
                                       on_built=lambda r, n: typer.echo(f"{r.render_id}  {r.width}x{r.height}  "
                                                                        f"{n} tiles"))
        whole = [r for r in wanted if tiles.state(catalogue.store, r.object_key, r.width, r.height, r.projection) == "complete"]
    finally:
        catalogue.close()
    typer.echo(f"{len(built)} pyramid(s) built; {len(whole)} of {len(wanted)} render(s) above 2048 px have a whole one")
    if len(whole) < len(wanted):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Attach this area's commands to the top-level app."""
    app.add_typer(catalogue_app, name="catalogue")
