"""`linstudio schedules ...` and `linstudio scheduler`: re-renders on a cron or at a time, run by Prefect.

A schedule is recorded in the catalogue (what it selects, sizes, when) and set on the `rerender`
deployment as a Prefect schedule (flows/schedules.py). With a Prefect server configured
(PREFECT_API_URL) every command here changes Prefect at once. On the embedded default there is no
server to run schedules, so `linstudio scheduler` starts a local one and serves the `rerender`
flow with Prefect's Runner until stopped; schedules set meanwhile reach it within seconds.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
from datetime import UTC, datetime
from typing import Annotated, Optional

import typer

schedules_app = typer.Typer(help="Scheduled re-renders: set, list, pause, resume, remove, run now.",
                            no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Attach `schedules` and `scheduler` to the top-level app."""
    app.add_typer(schedules_app, name="schedules")
    app.command("scheduler")(scheduler)


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _open():
    # lazy: linstudio.cli imports every command module; `linstudio validate` loads no catalogue, Prefect or torch (test_validate_answers_quickly)
    from flows.prefect_env import configure_prefect_defaults

    configure_prefect_defaults()
    # lazy: linstudio.cli imports every command module; `linstudio validate` loads no catalogue, Prefect or torch (test_validate_answers_quickly)
    from linstudio.commands.catalogue import open_catalogue

    return open_catalogue()


def _sync(catalogue) -> bool:
    """Tell Prefect now when a server is configured; False on the embedded default (the scheduler will)."""
    # lazy: linstudio.cli imports every command module; `linstudio validate` loads no catalogue, Prefect or torch (test_validate_answers_quickly)
    from flows.schedules import DeploymentMissing, prefect_configured, reconcile

    if not prefect_configured():
        return False
    try:
        reconcile(catalogue)
    except DeploymentMissing as exc:
        _fail(str(exc))
    return True


@schedules_app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="A name for the schedule (lower-case letters, digits, . _ -).")],
    size: Annotated[list[str], typer.Option("--size", help="Target size WxH; repeat for several.")],
    render: Annotated[Optional[list[str]], typer.Option("--render", help="A render id; repeat for several.")] = None,
    team: Annotated[Optional[str], typer.Option("--team", help="Renders of this team.")] = None,
    project: Annotated[Optional[str], typer.Option("--project", help="Renders of this project.")] = None,
    tag: Annotated[Optional[str], typer.Option("--tag", help="Renders carrying this tag.")] = None,
    status: Annotated[Optional[str], typer.Option("--status", help="Renders with this review status (approved...).")] = None,
    cron: Annotated[Optional[str], typer.Option("--cron", help='A cron expression, e.g. "0 2 * * 0" (Sundays 02:00).')] = None,
    at: Annotated[Optional[str], typer.Option("--at", help="Once, at this date and time, e.g. 2026-12-07T02:00.")] = None,
    timezone: Annotated[str, typer.Option("--timezone", help="IANA time zone of --cron and --at.")] = "UTC",
) -> None:
    """Re-render a selection at new sizes on a cron or once at a time.

    The selection is evaluated at each run, so renders added (or approved) later are included;
    sizes already re-rendered from a source are skipped. Filters combine (--project P --status
    approved); --render names renders itself. Nothing is created when an option is wrong.
    """
    # lazy: linstudio.cli imports every command module; `linstudio validate` loads no catalogue, Prefect or torch (test_validate_answers_quickly)
    import getpass

    # lazy: as above (the CLI's import budget)
    from catalogue.rerenders import RerenderError, parse_size
    from catalogue.schedules import ScheduleError, ScheduleRecord, Selection, check_name
    from flows.schedules import checked_when, next_run

    try:
        check_name(name)
        try:
            sizes = tuple(f"{w}x{h}" for w, h in (parse_size(text) for text in size))
        except RerenderError as exc:
            raise ScheduleError(f"--size: {exc}") from None
        selection = Selection(tuple(render or ()), team, project, tag, status)
        when_cron, when_at = checked_when(cron, at, timezone, datetime.now(UTC))
    except ScheduleError as exc:
        _fail(str(exc))
    catalogue = _open()
    try:
        # lazy: linstudio.cli imports every command module; `linstudio validate` loads no catalogue, Prefect or torch (test_validate_answers_quickly)
        from linstudio_settings import get_settings

        record = ScheduleRecord(name, selection, sizes, timezone, when_cron, when_at,
                                created_by=f"{getpass.getuser()}@{get_settings().worker_name}")
        record = dataclasses.replace(record, next_run_at=next_run(record, datetime.now(UTC)))
        try:
            catalogue.add_schedule(record)
        except ScheduleError as exc:
            _fail(str(exc))
        try:
            synced = _sync(catalogue)
        except BaseException:
            catalogue.remove_schedule(name)  # Prefect refused it: nothing created
            raise
        matching = len(catalogue.schedule_sources(name, selection))
    finally:
        catalogue.close()
    if matching == 0:
        typer.echo(f"warning: {selection.describe()} matches no render today; the schedule keeps it for renders "
                   "made later", err=True)
    where = "on the Prefect server" if synced else "runs while `linstudio scheduler` runs (no Prefect server set)"
    typer.echo(f"schedule {name}: {selection.describe()} at {', '.join(sizes)}, {record.when} ({timezone}); "
               f"{matching} render(s) today; {where}")


def _cell_time(moment: datetime | None, timezone: str) -> str:
    from zoneinfo import ZoneInfo

    return "-" if moment is None else moment.astimezone(ZoneInfo(timezone)).strftime("%Y-%m-%d %H:%M")


@schedules_app.command("ls")
def ls(as_json: Annotated[bool, typer.Option("--json", help="Print JSON, for machines.")] = False) -> None:
    """Schedules with their selection, sizes, cron or time, next run and last run's outcome."""
    catalogue = _open()
    try:
        records = catalogue.schedules()
    finally:
        catalogue.close()
    if as_json:
        typer.echo(json.dumps([r.to_json() for r in records], indent=2))
        return
    if not records:
        typer.echo("no schedules; add one with `linstudio schedules add`")
        return
    header = ("NAME", "SELECTION", "SIZES", "WHEN", "TIMEZONE", "STATE", "NEXT RUN", "LAST RUN")
    rows = [header]
    for r in records:
        last = r.last_run
        last_cell = "-" if last is None else (f"{_cell_time(last.at, r.timezone)} {last.state}"
                                              + ("" if last.made is None else
                                                 f" made {last.made} skipped {last.skipped} failed {last.failed}"))
        state = ("active" if r.active else "paused") + (" (pending)" if r.sync_pending else "")
        rows.append((r.name, r.selection.describe(), ",".join(r.sizes), r.cron or f"at {_cell_time(r.run_at, r.timezone)}",
                     r.timezone, state, _cell_time(r.next_run_at if r.active else None, r.timezone), last_cell))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def _set_active(name: str, active: bool) -> None:
    # lazy: linstudio.cli imports every command module; `linstudio validate` loads no catalogue, Prefect or torch (test_validate_answers_quickly)
    from catalogue.schedules import UnknownSchedule

    catalogue = _open()
    try:
        try:
            catalogue.set_schedule_active(name, active, synced=False)
        except UnknownSchedule as exc:
            _fail(str(exc))
        synced = _sync(catalogue)
    finally:
        catalogue.close()
    typer.echo(f"schedule {name} {'resumed' if active else 'paused'}"
               + ("" if synced else " (the scheduler applies it on its next look)"))


@schedules_app.command("pause")
def pause(name: Annotated[str, typer.Argument(help="The schedule's name.")]) -> None:
    """Stop a schedule's runs until it is resumed (a run already going finishes)."""
    _set_active(name, False)


@schedules_app.command("resume")
def resume(name: Annotated[str, typer.Argument(help="The schedule's name.")]) -> None:
    """Let a paused schedule run again at its next time."""
    _set_active(name, True)


@schedules_app.command("rm")
def rm(name: Annotated[str, typer.Argument(help="The schedule's name.")]) -> None:
    """Remove a schedule; the re-renders it made stay in the catalogue."""
    # lazy: linstudio.cli imports every command module; `linstudio validate` loads no catalogue, Prefect or torch (test_validate_answers_quickly)
    from catalogue.schedules import UnknownSchedule

    catalogue = _open()
    try:
        try:
            catalogue.remove_schedule(name)
        except UnknownSchedule as exc:
            _fail(str(exc))
        _sync(catalogue)
    finally:
        catalogue.close()
    typer.echo(f"schedule {name} removed; its re-renders stay in the catalogue")


@schedules_app.command("run")
def run(name: Annotated[str, typer.Argument(help="The schedule's name.")],
        as_json: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON.")] = False) -> None:
    """Run a schedule once now: through Prefect when a server is set, else here, waiting for it."""
    # lazy: linstudio.cli imports every command module; `linstudio validate` loads no catalogue, Prefect or torch (test_validate_answers_quickly)
    from flows.schedules import prefect_configured, start_run

    catalogue = _open()
    try:
        record = catalogue.schedule(name)
        if record is None:
            _fail(f"schedule {name!r} does not exist")
        if prefect_configured():
            flow_run_id = start_run(record)
            typer.echo(f"schedule {name}: run {flow_run_id} started on the Prefect server")
            return
    finally:
        catalogue.close()
    # lazy: linstudio.cli imports every command module; `linstudio validate` loads no catalogue, Prefect or torch (test_validate_answers_quickly)
    from flows.deployments import rerender
    from flows.schedules import parameters

    counts = rerender.fn(**parameters(record))  # the flow's own code, here and now
    catalogue = _open()
    try:
        last = catalogue.schedule(name).last_run
    finally:
        catalogue.close()
    outcome = {"made": last.made, "skipped": last.skipped, "failed": last.failed, "jobs": counts}
    typer.echo(json.dumps(outcome, indent=2) if as_json else
               f"schedule {name}: made {last.made}, skipped {last.skipped}, failed {last.failed}")
    raise typer.Exit(1 if last.failed else 0)


def scheduler(
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port of the local Prefect server it starts.")] = 4210,
) -> None:
    """Run due schedules on the embedded default: a local Prefect server and Prefect's Runner.

    With PREFECT_API_URL set it serves the `rerender` flow against that server instead of
    starting one. Stop it with Ctrl-C; schedules set with `linstudio schedules` reach it within seconds.
    """
    # lazy: linstudio.cli imports every command module; `linstudio validate` loads no catalogue, Prefect or torch (test_validate_answers_quickly)
    import os

    # lazy: as above (the CLI's import budget)
    from linstudio_settings import get_settings

    # Prefect reads PREFECT_API_URL once, when it is first imported: the local server's address is
    # set before anything here imports it, so this process, its threads and its flow runs use it.
    # lazy: linstudio.cli imports every command module; `linstudio validate` loads no catalogue, Prefect or torch (test_validate_answers_quickly)
    from flows.local_prefect import start_local_server

    catalogue = _open()
    server = None
    try:
        api_url = os.environ.get("PREFECT_API_URL")
        if not api_url:
            home = get_settings().home / "prefect"
            typer.echo(f"starting a local Prefect server on 127.0.0.1:{port} (its database in {home})", err=True)
            server = start_local_server(home, port)
            api_url = os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
        # lazy: linstudio.cli imports every command module; `linstudio validate` loads no catalogue, Prefect or torch (test_validate_answers_quickly)
        from flows.deployments import rerender
        from flows.schedules import serve_schedules

        typer.echo(f"serving schedules through {api_url}; Ctrl-C stops", err=True)
        serve_schedules(catalogue, rerender, api_url)
    except KeyboardInterrupt:
        pass
    finally:
        catalogue.close()
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:  # never leave a server behind
                server.kill()
                server.wait(timeout=10)
