"""What the nightly batch does, apart from being a flow (see flows/deployments.py).

0. Settle submissions a run left `running` whose jobs have all ended, from the catalogue
   (flows/settle.py): done, or failed with why.
1. Take each queued submission: the catalogue's queued -> running transition is the atomic guard
   (two nightly runs never take one submission; a cancelled one is never taken), then its ticket.
   Submissions an earlier nightly run took and left running with work still to do (it was killed
   mid-batch) are taken up again first.
2. Refuse it with the reason if its manifest changed since it was submitted or is now invalid.
3. Plan its jobs under that submission; skip what is already catalogued.
4. Spread what remains over the GPU workers in shards (or render here without shard deployments).
5. Record each submission done, or failed with the reasons of its failed jobs.
"""

from __future__ import annotations

import logging
from pathlib import Path

from catalogue import Catalogue
from flows.batch import (
    ManifestsInvalid,
    load_and_expand,
    open_registry,
    plan_run,
    release_abandoned_leases,
    sweep_after_run,
)
from flows.inbox import Inbox
from flows.settle import settle_running_submissions
from flows.shards import (
    DispatchedShard,
    NIGHTLY_QUEUE,
    RENDER_SHARD_DEPLOYMENT,
    dispatch,
    make_shards,
    needs_large_gpu,
    wait_for_shards,
)
from linstudio_settings import get_settings


def shard_deployments_available() -> bool:
    """True when a Prefect server is configured and knows the `render-shard` deployment."""
    import os

    if not os.environ.get("PREFECT_API_URL"):
        from prefect.settings import PREFECT_API_URL

        if not PREFECT_API_URL.value():
            return False
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            client.read_deployment_by_name(RENDER_SHARD_DEPLOYMENT)
        return True
    except Exception:
        return False


def render_keys_spread(catalogue, records: list[dict], *, queue: str, registry, logger=None) -> dict:
    """Render job records: in shards on the workers when deployed, else here. Returns counts by state.

    `registry` is the run's model registry: the memory estimates that route a shard to the
    large-GPU pool ask it, and so do the renders here (the workers have their own)."""
    logger = logger or logging.getLogger(__name__)
    settings = get_settings()
    done = catalogue.rendered_keys([r["key"] for r in records])
    todo = [r for r in records if r["key"] not in done]
    if todo and shard_deployments_available():
        by_key = {r["key"]: r for r in todo}
        large_pool = settings.large_gpu_pool is not None

        def send(keys: list[str]) -> DispatchedShard:
            shard_records = [by_key[k] for k in keys]
            large = large_pool and needs_large_gpu(shard_records, settings.large_job_gib, registry)
            # A default-pool shard beside a large-GPU pool leaves the jobs that need one to that pool.
            help_max_gib = settings.large_job_gib if large_pool and not large else None
            flow_run_id = dispatch(keys, large=large, queue=queue, help_max_gib=help_max_gib)
            logger.info("dispatched shard of %d job(s) to %s", len(keys), "large-GPU pool" if large else "pool")
            return DispatchedShard(keys=list(keys), flow_run_id=flow_run_id)

        shards = [send([r["key"] for r in shard]) for shard in make_shards(todo, settings.shard_size)]
        wait_for_shards(catalogue, shards, lease_seconds=settings.lease_seconds, redispatch=send, logger=logger)
    elif todo:
        # lazy: importing flows.flow imports Prefect, which must come after configure_prefect_defaults()
        # (flows/prefect_env.py); tests/flows/test_nightly_resume.py stands in for render_batch
        from flows.flow import render_batch

        render_batch(todo, catalogue=catalogue, settings=settings, registry=registry)

    sweep_after_run(catalogue)  # a worker killed mid-upload left an intent and its objects
    states = catalogue.job_states([r["key"] for r in records])
    counts: dict[str, int] = {}
    for state in states.values():
        counts[state] = counts.get(state, 0) + 1
    return counts


def orphaned_submissions(catalogue, inbox) -> list[tuple[str, object]]:
    """(submission id, ticket) of each submission a nightly run took (its ticket is in the inbox's
    taken/) but left running, oldest first.

    The `nightly-batch` deployment runs one nightly run at a time (`concurrency_limit: 1`; Prefect
    frees the slot of a run whose process died when its lease expires), so when a nightly run
    starts, a submission still running with a taken ticket belongs to a run that ended without
    recording its outcome. Submissions of `linstudio run` have no ticket and are never taken.
    """
    orphans = []
    for row in sorted(catalogue.submissions(status="running", limit=100_000), key=lambda r: r["submission_id"]):
        ticket = inbox.taken_ticket(row["submission_id"])
        if ticket is not None:
            orphans.append((row["submission_id"], ticket))
    return orphans


def run_nightly(logger=None) -> dict:
    """Take the inbox, render it, record each submission's outcome; returns {submission id: status}."""
    logger = logger or logging.getLogger(__name__)
    settings = get_settings()
    try:
        registry = open_registry(settings)  # the run's one registry: validation, keys, routing, renders
    except ManifestsInvalid:
        registry = None  # an unreadable models.yaml: each submission below is refused naming it
    inbox = Inbox.from_settings(settings)
    catalogue = Catalogue.from_settings(settings)
    outcomes: dict[str, str] = {}
    try:
        catalogue.migrate()
        catalogue.sweep_intents()
        release_abandoned_leases(catalogue, settings)
        for settled in settle_running_submissions(catalogue, settings, registry):
            logger.warning("submission %s was left running by a run that ended before recording it: settled %s "
                           "from the catalogue%s", settled.submission_id, settled.status,
                           f" ({settled.error})" if settled.error else "")
            outcomes[settled.submission_id] = settled.status
        tickets = []
        for submission_id, ticket in orphaned_submissions(catalogue, inbox):
            logger.warning("taking up submission %s again: the nightly run that took it ended before finishing it",
                           submission_id)
            tickets.append((submission_id, ticket))
        for submission_id in inbox.queued():
            if not catalogue.start_submission(submission_id):
                inbox.withdraw(submission_id)  # cancelled, or another run has it
                continue
            tickets.append((submission_id, inbox.take(submission_id)))
        taken: list[tuple[str, list[dict]]] = []
        for submission_id, ticket in tickets:
            reason = ticket.changed_since_submitted() if ticket else "its inbox ticket disappeared"
            if reason is None:
                try:
                    expanded = load_and_expand([Path(ticket.manifest_path)], settings, registry)
                    planned = plan_run(catalogue, expanded, force=False, submission_ids=[submission_id])
                    taken.append((submission_id, [r for r in planned.to_render] + [
                        {"key": o.key} for o in planned.skipped]))
                except ManifestsInvalid as exc:
                    reason = "; ".join(str(e) for e in exc.errors[:20])
            if reason is not None:
                catalogue.finish_submission(submission_id, "failed", reason)
                outcomes[submission_id] = "failed"
                logger.warning("submission %s refused: %s", submission_id, reason)
        records = [r for _, rs in taken for r in rs if "model" in r]
        if records:
            render_keys_spread(catalogue, records, queue=NIGHTLY_QUEUE, registry=registry, logger=logger)
        for submission_id, rs in taken:
            states = catalogue.job_states([r["key"] for r in rs])
            failed = [k for k, s in states.items() if s != "done"]
            if failed:
                jobs = catalogue.jobs(failed)
                reasons = sorted({(jobs.get(k) or {}).get("error") or "not rendered" for k in failed})
                catalogue.finish_submission(submission_id, "failed",
                                            f"{len(failed)} job(s) failed: " + "; ".join(reasons[:5]))
                outcomes[submission_id] = "failed"
            else:
                catalogue.finish_submission(submission_id, "done", None)
                outcomes[submission_id] = "done"
        return outcomes
    finally:
        catalogue.close()
