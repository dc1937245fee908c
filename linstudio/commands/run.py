"""`linstudio run`: the main job — manifests in, catalogued renders out.

Exit status: 0 every job is catalogued; 1 a job failed (or the manifests are invalid, or the
catalogue cannot be written); 3 (`EXIT_RUNNING_ELSEWHERE`) no job failed but some are being
rendered by another live run, so the batch is not finished yet — `--wait` waits for them instead.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from flows.prefect_env import configure_prefect_defaults
from linstudio_settings import get_settings

EXIT_RUNNING_ELSEWHERE = 3


def register(app: typer.Typer) -> None:
    """Attach `run` to the top-level app."""
    app.command("run")(run)


def run(
    paths: Annotated[list[Path], typer.Argument(help="Manifest files or folders (searched for *.yaml, *.yml).")],
    force: Annotated[bool, typer.Option("--force", help="Render again even jobs already in the catalogue.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
    wait: Annotated[bool, typer.Option(
        "--wait", help="Wait for jobs another run is rendering (or render them here if that run dies) "
                       "instead of exiting 3.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect's own logs.")] = False,
) -> None:
    """Validate manifests, render every job not yet catalogued, and catalogue each result.

    Nothing renders if any manifest is invalid. Running the same manifests again renders nothing
    new; a run that was killed picks up where it stopped. Exit status 0 only when every job
    rendered or was already catalogued; 1 when a job failed; 3 when no job failed but some are
    being rendered by another run (listed as running elsewhere) — with --wait the run waits for
    them to land, or renders them itself once their lease comes free.
    """
    configure_prefect_defaults(verbose=verbose)
    # lazy: the catalogue (SQLAlchemy, Pillow, Alembic) stays out of linstudio validate
    # (tests/manifests/test_manifest_cli.py::test_validate_answers_quickly)
    from catalogue.errors import DatabaseFullError
    from flows.batch import ManifestsInvalid
    from flows.runs import run_manifests

    settings = get_settings()
    progress = _Progress(enabled=not as_json)
    try:
        summary = run_manifests(paths, force=force, wait=wait, settings=settings, on_progress=progress.update)
    except ManifestsInvalid as exc:
        for error in exc.errors:
            typer.echo(str(error), err=True)
        typer.echo(f"nothing rendered: {len(exc.errors)} error(s) in the manifests", err=True)
        raise typer.Exit(1)
    except DatabaseFullError as exc:  # before any job ran (migrating, planning): said in one line, no traceback
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1)
    finally:
        progress.close()
    build_pyramids(settings, summary, quiet=as_json)
    if as_json:
        typer.echo(json.dumps(summary.to_json(), indent=2))
    else:
        typer.echo(summary.to_text())
        typer.echo(where_to_look(settings, summary))
    raise typer.Exit(exit_status(summary))


def build_pyramids(settings, summary, quiet: bool) -> None:
    """Build the deep-zoom pyramids of the renders this run made above 2048 px (catalogue.pyramids), after
    the GPU work is done: ingest stays as fast as before. A failure is said and left to `linstudio serve`
    or `linstudio catalogue tiles --missing`; it never changes the run's exit status."""
    made = [o.render_id for o in summary.outcomes if o.render_id and o.status == "rendered"]
    if not made:
        return
    # lazy: the catalogue (SQLAlchemy, Pillow, Alembic) stays out of linstudio validate
    # (tests/manifests/test_manifest_cli.py::test_validate_answers_quickly)
    from catalogue import Catalogue
    from catalogue.pyramids import big_renders, build_pending

    try:
        with Catalogue.from_settings(settings) as catalogue:
            if not big_renders(catalogue, made):
                return
            built = build_pending(catalogue, made)
    except Exception as exc:  # the database or store went away after the run: the pyramids can wait
        typer.echo(f"deep-zoom pyramids not built ({type(exc).__name__}: {exc}); "
                   "`linstudio catalogue tiles --missing` builds them", err=True)
        return
    if not quiet:
        typer.echo(f"deep zoom: {len(built)} pyramid(s) built for the gallery's viewer")


def exit_status(summary) -> int:
    """0 all catalogued, 1 a job failed, 3 jobs still rendering in another run (see the module docstring)."""
    if not summary.ok:
        return 1
    return EXIT_RUNNING_ELSEWHERE if summary.running_elsewhere else 0


class _Progress:
    """A progress bar on a terminal; one line per finished job elsewhere (CI logs, pipes)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = None
        self.task = None

    def update(self, outcome, done: int, total: int) -> None:
        if not self.enabled:
            return
        if sys.stderr.isatty():
            if self.bar is None:
                from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

                self.bar = Progress(TextColumn("rendering"), BarColumn(), MofNCompleteColumn(),
                                    TimeRemainingColumn(), TextColumn("{task.description}"), transient=True)
                self.bar.start()
                self.task = self.bar.add_task("", total=total)
            self.bar.update(self.task, completed=done, description=f"{outcome.status} {outcome.label}")
        else:
            reason = f": {outcome.reason}" if outcome.reason else ""
            typer.echo(f"[{done}/{total}] {outcome.status} {outcome.label}{reason}", err=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _projects(summary) -> dict[str, int]:
    """`team/project` -> how many of this run's jobs it had (rendered or already catalogued)."""
    counts: dict[str, int] = {}
    for outcome in summary.outcomes:
        if outcome.status in ("rendered", "skipped"):
            project = "/".join(outcome.label.split("/")[:2])
            counts[project] = counts.get(project, 0) + 1
    return counts


def where_to_look(settings, summary) -> str:
    """The lines printed after a run: where the catalogue and images are, and the commands to look at them."""
    store = settings.resolved_store_url
    lines = ["", "Where the results are:", f"  catalogue: {settings.resolved_database_url}", f"  images:    {store}"]
    if store.startswith("file://"):
        lines.append(f"             (PNG files under {store[len('file://'):]}/renders/<team>/<project>/<asset>/)")
    lines += ["How to look at them:",
              "  linstudio serve                    # the gallery, at http://127.0.0.1:8400",
              "  linstudio catalogue ls             # every render, newest first",
              "  linstudio catalogue show RENDER_ID # one render's settings and files"]
    for project, count in _projects(summary).items():
        team, name = project.split("/")
        command = f"linstudio catalogue ls --team {team} --project {name}"
        lines.append(f"  {command:<34} # {count} render(s) in this run")
    return "\n".join(lines)
