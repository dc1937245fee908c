"""The batch flow's steps: validated manifests in, catalogued renders out.

`flows.runs.run_manifests` (what `linstudio run` calls) puts these together:
1. validate every manifest (nothing renders if any is invalid; the schema accepts only what the
   engine declares it supports, `linfusion_engine.capabilities`);
2. plan the jobs in the catalogue (one submission per manifest), sweep unfinished ingests left
   by a crashed run, and free the leases of runs that are gone (`release_abandoned_leases`);
3. skip jobs whose key is already catalogued (unless forced);
4. render the rest in one Prefect flow run (`render_batch`), one render slot per GPU, each model
   loaded once, each result catalogued as it lands; jobs another run holds are taken back if that
   run is gone, else reported `running_elsewhere`, or with `wait` waited for (flows/waiting.py);
5. record each submission's outcome and summarise (printed, returned, and kept as a Prefect
   artifact).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from flows.job_runner import job_label
from flows.outcomes import JobOutcome, RunSummary
from flows.leases import worker_id
from flows.transient import is_disk_full, is_transient, one_line
from linfusion_engine.registry import ModelRegistry
from manifests import expand_jobs, load_manifests

log = logging.getLogger(__name__)

class ManifestsInvalid(Exception):
    """Validation failed: `errors` are `file:line key: message` lines. Nothing was rendered."""

    def __init__(self, errors: list) -> None:
        super().__init__(f"{len(errors)} manifest error(s)")
        self.errors = errors


@dataclass
class PlannedRun:
    """Jobs of a run after validation: what to render and what was already there."""

    to_render: list[dict] = field(default_factory=list)
    skipped: list[JobOutcome] = field(default_factory=list)
    submissions: list[str] = field(default_factory=list)


def release_leases_of_dead_local_runs(catalogue, settings) -> list[str]:
    """Free the leases held by earlier runs on this host whose process is gone (a kill -9, a crash).

    Their leases would otherwise block the jobs until they expire; a lease held by a live process
    here, or by another host, is left alone (it expires on its own if that host died).
    """
    prefix = f"{settings.worker_name}/"
    released = []
    for owner in catalogue.lease_owners():
        if not owner.startswith(prefix):
            continue
        pid = owner[len(prefix):]
        if pid.isdigit() and int(pid) != os.getpid() and not _process_alive(int(pid)):
            released.extend(catalogue.release_dead_leases(owner))
    return released


def release_abandoned_leases(catalogue, settings) -> list[str]:
    """Free the leases of runs that are gone, before this run plans: this host's dead processes at once
    (their process ids), any host's once their leases have stayed silent for their silence window while
    the database answered (`Catalogue.release_silent_leases`; it returns at once when no lease looks
    silent). Returns the released jobs' keys."""
    released = release_leases_of_dead_local_runs(catalogue, settings)
    for action in catalogue.release_silent_leases(skip_owners=[worker_id(settings)]):
        log.warning("released %s: %s", action.target, action.detail)
        released.append(action.data["job_key"])
    return released


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def open_registry(settings):
    """The run's model registry, built once from the settings and handed to every step that needs it:
    validation and the job keys (`load_and_expand`), the renders (`RunContext.registry`), the memory
    estimates. A models.yaml that cannot be read stops the run the way `linstudio validate` reports
    it: as a manifest error naming the file."""
    try:
        return ModelRegistry.from_settings(settings)
    except (ValueError, OSError) as exc:
        message = str(exc).removeprefix(f"{settings.registry_file}: ")
        raise ManifestsInvalid([f"{settings.registry_file}: model registry: {message}"]) from None


def load_and_expand(paths: list[Path], settings, registry=None) -> list[tuple[object, list]]:
    """Validate manifests and expand their jobs; raise ManifestsInvalid listing every error.

    `settings` (the studio's) name the shared roots and the job limit; `registry` is the run's model
    registry (None: `load_manifests` builds one from the settings)."""
    result = load_manifests(paths, settings=settings, registry=registry)
    if result.errors:
        raise ManifestsInvalid(list(result.errors))
    if not result.manifests:
        raise ManifestsInvalid([f"{', '.join(map(str, paths))}: no manifests found (*.yaml, *.yml)"])
    return [(loaded, expand_jobs(loaded)) for loaded in result.manifests]


def plan_run(catalogue, expanded: list[tuple[object, list]], force: bool,
             submission_ids: list[str] | None = None) -> PlannedRun:
    """Record jobs in the catalogue and split already-catalogued jobs off.

    Each manifest's jobs go under a new submission, or under `submission_ids[i]` when the
    submissions already exist (the nightly run's inbox tickets).
    """
    planned = PlannedRun()
    seen: set[str] = set()
    for index, (loaded, jobs) in enumerate(expanded):
        manifest = loaded.manifest
        records = [job.to_record() for job in jobs]
        if submission_ids is not None:
            submission = submission_ids[index]
        else:
            submission = catalogue.create_submission(manifest.team, manifest.project, str(loaded.path),
                                                     loaded.sha256, len(records))
        catalogue.plan_jobs(submission, records)
        planned.submissions.append(submission)
        done = catalogue.rendered_keys([r["key"] for r in records])
        for record in records:
            if record["key"] in seen:  # the same job asked twice across manifests: render once
                continue
            seen.add(record["key"])
            if record["key"] in done and not force:
                planned.skipped.append(JobOutcome(record["key"], job_label(record), "skipped"))
            else:
                planned.to_render.append(record)
    if force:
        catalogue.forget_renders([r["key"] for r in planned.to_render])
    return planned


def finish_submissions(catalogue, submission_ids: list[str], summary: RunSummary) -> None:
    """Record each submission of a run done, or failed with its failed jobs' reasons.

    A submission with jobs still rendering in another run is left `running` (that run, the next
    nightly or `linstudio submissions ls` settles it from the catalogue once they land). One whose
    outcome cannot be written (the database went down, or its disk is full) is listed in
    `summary.unrecorded_submissions`
    and settled the same way later: the renders are catalogued, only the submission's status waits.
    """
    failed_keys = {o.key: o.reason for o in summary.failed}
    elsewhere = {o.key for o in summary.running_elsewhere}
    for index, submission_id in enumerate(submission_ids):
        try:
            keys = [k for k in catalogue.submission_job_keys(submission_id)]
            reasons = sorted({failed_keys[k] or "failed" for k in keys if k in failed_keys})
            if reasons:
                catalogue.finish_submission(submission_id, "failed", f"{sum(k in failed_keys for k in keys)} "
                                            "job(s) failed: " + "; ".join(reasons[:5]))
            elif not elsewhere.intersection(keys):
                catalogue.finish_submission(submission_id, "done", None)
        except Exception as exc:
            if not (is_transient(exc) or is_disk_full(exc)):
                raise
            summary.unrecorded_submissions.extend(submission_ids[index:])
            log.warning("could not record the outcome of submission(s) %s: %s", ", ".join(submission_ids[index:]),
                        one_line(exc))
            return


def sweep_after_run(catalogue) -> None:
    """Clear the upload intents this run's failed attempts (a store outage leaves one per retry) or its
    dead workers left, so `catalogue check` is clean without waiting for the next run's start. Best effort: the sweep
    only takes intents whose worker holds no live lease, and the next run sweeps anyway."""
    import logging

    try:
        catalogue.sweep_intents()
    except Exception as exc:
        logging.getLogger(__name__).warning("could not sweep upload intents after the run: %s", one_line(exc))
