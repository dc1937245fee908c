"""`linstudio serve`, `users add|ls|disable|remove`, `tokens create|ls|revoke`, `export`: the gallery and its people.

The catalogue, FastAPI and uvicorn are imported inside the commands only (see linstudio.cli).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from linstudio.commands.catalogue import open_catalogue  # imports only typer until called

users_app = typer.Typer(name="users", help="People who sign in to the gallery.", no_args_is_help=True)
tokens_app = typer.Typer(name="tokens", help="API tokens for scripts.", no_args_is_help=True)


def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on (0.0.0.0 for the studio network).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8400,
) -> None:
    """Serve the gallery (pages and the JSON API under /api/) over the settings' catalogue."""
    # lazy: linstudio.cli imports every command module; `linstudio validate` loads no catalogue, Prefect or torch (test_validate_answers_quickly)
    import uvicorn

    # lazy: as above (the CLI's import budget)
    from catalogue.web import create_app
    from flows.requests import RerenderDispatcher
    from linstudio_settings import get_settings

    catalogue = open_catalogue()
    # The gallery records re-render and retry requests in the catalogue; this starts them. With a
    # Prefect server, a signed-in user's pause, resume or "run now" of a schedule reaches it through
    # the keeper (on the embedded default, `linstudio scheduler` applies them).
    # ...and the pyramid worker builds the deep-zoom tiles of big renders after their ingest (catalogue.pyramids).
    from catalogue.pyramids import PyramidWorker  # lazy: as the imports above, out of the CLI's import time

    background = [RerenderDispatcher(catalogue), PyramidWorker(catalogue)]
    if os.environ.get("PREFECT_API_URL"):
        # lazy: linstudio.cli imports every command module; `linstudio validate` loads no catalogue, Prefect or torch (test_validate_answers_quickly)
        from flows.schedules import ScheduleKeeper

        background.append(ScheduleKeeper(catalogue))
    app = create_app(catalogue, get_settings(), background=background)
    where = catalogue.engine.url.render_as_string(hide_password=True)
    typer.echo(f"gallery of {where} at http://{host}:{port}/", err=True)
    try:
        # proxy_headers: behind the studio's proxy, trust its X-Forwarded-Proto (secure cookies on https).
        # h11_max_incomplete_event_size: the parser buffers a long URL or header block instead of
        # dropping the connection, so the gallery can answer it 414 / 431 (catalogue.web.limits).
        # lazy: linstudio.cli imports every command module; `linstudio validate` loads no catalogue, Prefect or torch (test_validate_answers_quickly)
        from catalogue.web.limits import server_options

        uvicorn.run(app, host=host, port=port, log_level="info", proxy_headers=True, **server_options())
    finally:
        catalogue.close()


@users_app.command("add")
def users_add(
    name: Annotated[str, typer.Argument(help="Sign-in name (letters, digits, . _ @ -).")],
    password: Annotated[str, typer.Option(prompt=True, hide_input=True, confirmation_prompt=True,
                                          help="Prompted for when left out.")],
) -> None:
    """Add a gallery user, or set a new password for an existing one."""
    # lazy: linstudio.cli imports every command module; `linstudio validate` loads no catalogue, Prefect or torch (test_validate_answers_quickly)
    from catalogue.auth import AuthError, add_user

    catalogue = open_catalogue()
    try:
        with catalogue.transaction() as session:
            add_user(session, name, password, catalogue.clock())
    except AuthError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    finally:
        catalogue.close()
    typer.echo(f"user {name} can sign in")


def _auth_change(change, done: str) -> None:
    """Run `change(session, now)` in one transaction; a refused change is `error: ...` and exit 2."""
    # lazy: linstudio.cli imports every command module; `linstudio validate` loads no catalogue, Prefect or torch (test_validate_answers_quickly)
    from catalogue.auth import AuthError

    catalogue = open_catalogue()
    try:
        with catalogue.transaction() as session:
            change(session, catalogue.clock())
    except AuthError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    finally:
        catalogue.close()
    typer.echo(done)


def _listing(read, columns: tuple[str, ...], as_json: bool) -> None:
    import json

    catalogue = open_catalogue()
    try:
        with catalogue.transaction() as session:
            rows = read(session)
    finally:
        catalogue.close()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo("(none)")
        return
    typer.echo("  ".join(columns))
    for row in rows:
        name, created, ended = (row[c] for c in columns)
        typer.echo(f"{name}  {created}  {ended or '-'}")


@users_app.command("ls")
def users_ls(as_json: Annotated[bool, typer.Option("--json", help="JSON list instead of lines.")] = False) -> None:
    """Gallery users: name, when added, when disabled (- when not)."""
    # lazy: linstudio.cli imports every command module; `linstudio validate` loads no catalogue, Prefect or torch (test_validate_answers_quickly)
    from catalogue.auth import list_users

    _listing(list_users, ("name", "created_at", "disabled_at"), as_json)


@users_app.command("disable")
def users_disable(name: Annotated[str, typer.Argument(help="The user to refuse from now on.")]) -> None:
    """Refuse a user's sign-ins and end their sessions on their next request; `users add NAME` enables them again."""
    # lazy: linstudio.cli imports every command module; `linstudio validate` loads no catalogue, Prefect or torch (test_validate_answers_quickly)
    from catalogue.auth import disable_user

    _auth_change(lambda session, now: disable_user(session, name, now),
                 f"user {name} disabled: signed-in sessions end on their next request; their reviews keep their name")


@users_app.command("remove")
def users_remove(name: Annotated[str, typer.Argument(help="The user to delete.")]) -> None:
    """Delete a user; their sessions end on their next request and their reviews stay attributed to them."""
    # lazy: linstudio.cli imports every command module; `linstudio validate` loads no catalogue, Prefect or torch (test_validate_answers_quickly)
    from catalogue.auth import remove_user

    _auth_change(lambda session, _now: remove_user(session, name),
                 f"user {name} removed: signed-in sessions end on their next request; their reviews keep their name")


@tokens_app.command("ls")
def tokens_ls(as_json: Annotated[bool, typer.Option("--json", help="JSON list instead of lines.")] = False) -> None:
    """API tokens: name, when created, when revoked (- when live). Tokens themselves are never shown."""
    # lazy: linstudio.cli imports every command module; `linstudio validate` loads no catalogue, Prefect or torch (test_validate_answers_quickly)
    from catalogue.auth import list_tokens

    _listing(list_tokens, ("name", "created_at", "revoked_at"), as_json)


@tokens_app.command("revoke")
def tokens_revoke(name: Annotated[str, typer.Argument(help="The token's name (see `linstudio tokens ls`).")]) -> None:
    """Refuse an API token from its next request on (its name stays taken; reviews keep token:NAME)."""
    # lazy: linstudio.cli imports every command module; `linstudio validate` loads no catalogue, Prefect or torch (test_validate_answers_quickly)
    from catalogue.auth import revoke_token

    _auth_change(lambda session, now: revoke_token(session, name, now),
                 f"token {name} revoked: refused from its next request; reviews keep token:{name}")


@tokens_app.command("create")
def tokens_create(name: Annotated[str, typer.Argument(help="What the token is for; review history shows token:NAME.")]) -> None:
    """Create an API token; prints it alone on the last line (it is not shown again)."""
    # lazy: linstudio.cli imports every command module; `linstudio validate` loads no catalogue, Prefect or torch (test_validate_answers_quickly)
    from catalogue.auth import AuthError, create_token

    catalogue = open_catalogue()
    try:
        with catalogue.transaction() as session:
            token = create_token(session, name, catalogue.clock())
    except AuthError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    finally:
        catalogue.close()
    typer.echo(f"token {name} (send as 'Authorization: Bearer TOKEN'; it is stored hashed and not shown again):")
    typer.echo(token)


def export(
    destination: Annotated[str, typer.Argument(help="A folder, or s3://bucket/prefix.")],
    render: Annotated[list[str] | None, typer.Option("--render", help="A render id (repeat for more).")] = None,
    project: Annotated[str | None, typer.Option(help="Every approved render of this project.")] = None,
    team: Annotated[str | None, typer.Option(help="With --project: only this team's renders.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="png8, png16, tiff, jpeg or webp.")] = "png8",
    template: Annotated[str | None, typer.Option(help="Naming template, e.g. {asset_id}_{seed}.")] = None,
    strip_metadata: Annotated[bool, typer.Option("--strip-metadata", help="Pixels only, no generation settings.")] = False,
) -> None:
    """Deliver renders (chosen ones, or everything approved in a project) in a format, named by a template."""
    # lazy: linstudio.cli imports every command module; `linstudio validate` loads no catalogue, Prefect or torch (test_validate_answers_quickly)
    from catalogue import CatalogueError
    from catalogue import export as exporting
    from catalogue.web.actions import export_selection

    if "://" not in destination:
        destination = str(Path(destination).expanduser().resolve())
    catalogue = open_catalogue()
    try:
        options = exporting.ExportOptions(destination=destination, format=fmt,
                                          template=template or exporting.DEFAULT_TEMPLATE,
                                          keep_metadata=not strip_metadata)
        written = export_selection(catalogue, options, render or None, project, team)
    except CatalogueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    finally:
        catalogue.close()
    for uri in written:
        typer.echo(uri)
    typer.echo(f"exported {len(written)} render(s) to {destination}", err=True)


def register(app: typer.Typer) -> None:
    """Attach this area's commands to the top-level app."""
    app.command("serve")(serve)
    app.command("export")(export)
    app.add_typer(users_app, name="users")
    app.add_typer(tokens_app, name="tokens")
