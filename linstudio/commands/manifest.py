"""`linstudio validate`, `linstudio plan` and `linstudio manifest schema`.

Validation must answer in about a second: the `manifests` package is imported inside the
commands, and nothing on this path imports torch or diffusers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from linfusion_engine.capabilities import features_used
from linfusion_engine.planner import plan_job
from linstudio_settings import get_settings
from manifests import expand_jobs, load_manifests, manifest_json_schema
from manifests.errors import display_path

PathsArg = Annotated[list[Path], typer.Argument(
    help="Manifest files, or folders searched recursively for *.yaml and *.yml.", metavar="PATH")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout, for machines.")]


def register(app: typer.Typer) -> None:
    """Attach this area's commands to the top-level app."""
    app.command("validate")(validate)
    app.command("plan")(plan)
    group = typer.Typer(name="manifest", help="The manifest format.", no_args_is_help=True)
    group.command("schema")(schema)
    app.add_typer(group, name="manifest")


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _summary(result) -> dict:
    files = set(result.files)
    invalid = {e.path for e in result.errors if e.path in files}
    return {"manifests": len(result.files), "invalid": len(invalid), "errors": len(result.errors)}


def _summary_line(summary: dict) -> str:
    if not summary["errors"]:
        return f"{_plural(summary['manifests'], 'manifest')}, all valid"
    return (f"{_plural(summary['manifests'], 'manifest')}, {summary['invalid']} invalid, "
            f"{_plural(summary['errors'], 'error')}")


def _report_errors(result) -> None:
    for error in result.errors:
        typer.echo(str(error), err=True)
    typer.echo(_summary_line(_summary(result)), err=True)


def validate(paths: PathsArg, json_output: JsonOpt = False) -> None:
    """Check manifests: every error in every file, with file, line and key; exit 0 only when all are valid."""
    result = load_manifests(paths, settings=get_settings())
    summary = _summary(result)
    if json_output:
        by_file = {path: [] for path in result.files}
        for error in result.errors:
            by_file.setdefault(error.path, []).append(error.to_dict())
        typer.echo(json.dumps({
            "valid": not result.errors,
            "manifests": [{"path": display_path(p), "valid": not errors, "errors": errors}
                          for p, errors in by_file.items()],
            "summary": summary,
        }, indent=2))
    elif result.errors:
        _report_errors(result)
    else:
        typer.echo(_summary_line(summary))
    if result.errors:
        raise typer.Exit(1)


def plan(paths: PathsArg, json_output: JsonOpt = False) -> None:
    """List the render jobs manifests expand to (asset x size x seed), with their keys.

    FEATURES lists what each job asks for beyond a plain text-to-image pass (its conditioning
    types, tiling, a multi-stage strategy), named as `linfusion_engine.capabilities` declares them.
    All of them render: the manifest schema accepts nothing the engine does not declare."""
    result = load_manifests(paths, settings=get_settings())
    if result.errors:
        if json_output:
            typer.echo(json.dumps({"valid": False, "errors": [e.to_dict() for e in result.errors],
                                   "summary": _summary(result)}, indent=2))
        else:
            _report_errors(result)
        raise typer.Exit(1)
    planned = [(loaded, expand_jobs(loaded)) for loaded in result.manifests]
    jobs = [job for _, manifest_jobs in planned for job in manifest_jobs]
    features = {job.key: features_used(job.conditioning, job.tileable, job.strategy) for job in jobs}
    render_plans = {job.key: _render_plan(job, loaded.registry)  # issue 5: stages, memory, time
                    for loaded, manifest_jobs in planned for job in manifest_jobs}
    totals = {"manifests": len(planned), "jobs": len(jobs),
              "megapixels": round(sum(j.width * j.height for j in jobs) / 1e6, 3),
              "jobs_with_features": sum(1 for j in jobs if features[j.key])}
    if json_output:
        typer.echo(json.dumps({
            "valid": True,
            "manifests": [{"path": display_path(loaded.path), "sha256": loaded.sha256,
                           "team": loaded.manifest.team, "project": loaded.manifest.project,
                           "jobs": [{**job.to_record(), "features": features[job.key], "plan": render_plans[job.key]}
                                    for job in manifest_jobs]}
                          for loaded, manifest_jobs in planned],
            "totals": totals,
        }, indent=2))
        return
    for loaded, manifest_jobs in planned:
        manifest = loaded.manifest
        typer.echo(f"{display_path(loaded.path)}  {manifest.team}/{manifest.project}  "
                   f"{_plural(len(manifest_jobs), 'job')}")
        _print_table([[j.key[:12], j.asset_id, f"{j.width}x{j.height}", str(j.seed), j.model,
                       *_plan_cells(render_plans[j.key]), ",".join(features[j.key]) or "-"] for j in manifest_jobs])
        typer.echo("")
    typer.echo(f"{_plural(totals['jobs'], 'job')} from {_plural(totals['manifests'], 'manifest')}, "
               f"{totals['megapixels']:g} megapixels in total")


def _print_table(rows: list[list[str]]) -> None:
    header = ["KEY", "ASSET", "SIZE", "SEED", "MODEL", "STRATEGY", "STAGES", "EST-PEAK", "EST-TIME", "FEATURES"]
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    for row in [header] + rows:
        typer.echo("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def _render_plan(job, registry) -> dict:
    """The job's strategy, stages, strengths and estimates (`linfusion_engine.planner`, torch-free).

    Estimated for the render device in the settings: a GPU in bf16 unless LINSTUDIO_DEVICE is cpu.
    """
    entry = registry.get(job.model)
    configured = (get_settings().device or "cuda").split(":")[0]
    on_cpu = configured == "cpu"
    return plan_job(strategy=job.strategy, width=job.width, height=job.height, steps=job.steps,
                    guidance=job.guidance, family=entry.family, native=entry.native_size, tiny=entry.is_toy_scale,
                    device_kind="cpu" if on_cpu else "cuda", dtype_bytes=4 if on_cpu else 2,
                    sdedit_strengths=entry.sdedit_strengths)


def _plan_cells(plan: dict) -> list[str]:
    """STRATEGY, STAGES, EST PEAK and EST TIME cells of the plan table."""
    strategy = plan["strategy"] if plan["strategy"] == plan["strategy_requested"] else (
        f"{plan['strategy_requested']}->{plan['strategy']}")
    estimate = plan["estimate"]
    return [strategy, plan["stages_label"], f"{estimate['peak_gib']:.2f}GiB", f"{estimate['seconds']:.1f}s"]


def schema() -> None:
    """Print the manifest JSON Schema (format version 1), for editors to validate YAML as it is typed."""
    json.dump(manifest_json_schema(), sys.stdout, indent=2)
    sys.stdout.write("\n")
