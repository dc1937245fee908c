"""Scheduled re-renders run by Prefect: each catalogue schedule is a schedule of the `rerender` deployment.

The catalogue holds what the studio asked for (catalogue.schedules); Prefect holds the time, the
retries and the run history. `reconcile` makes the deployment's schedules what the catalogue says
(one per schedule, its slug the schedule's name, its parameters the selection, the sizes and the
name), starts the runs someone asked for now, and copies each schedule's next run back into the
catalogue for the gallery. It runs:
- in `linstudio schedules add/pause/resume/rm/run`, at once, when a Prefect server is configured;
- beside the gallery (`linstudio serve`, `ScheduleKeeper`), so a signed-in user's pause reaches Prefect;
- in `linstudio scheduler`, the embedded default's way to run schedules: Prefect's ephemeral mode
  runs no scheduler service, so it starts a local Prefect server (its database under the studio
  home) and serves the `rerender` flow with Prefect's own Runner. No cron is evaluated here:
  Prefect's schedule classes validate the cron and the time zone and say when the next run is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from catalogue.rerenders import plan_rerenders
from catalogue.schedules import LastRun, ScheduleError, ScheduleRecord, Selection
from flows.nightly import render_keys_spread
from flows.shards import INTERACTIVE_QUEUE

log = logging.getLogger(__name__)

FLOW_NAME = "linstudio-rerender"
DEPLOYMENT_NAME = "rerender"
DEPLOYMENT = f"{FLOW_NAME}/{DEPLOYMENT_NAME}"
KEEPER_POLL_SECONDS = 5.0


# -- when: checked by Prefect's own schedule classes ----------------------------------------------
def checked_when(cron: str | None, at: str | None, timezone: str, now: datetime) -> tuple[str | None, datetime | None]:
    """(cron, run_at in UTC) for `schedules add`, or ScheduleError naming the field.

    `at` is an ISO date-time; without an offset it is read in `timezone`. It must be in the future.
    """
    from pydantic import ValidationError

    if (cron is None) == (at is None):
        raise ScheduleError("when: give exactly one of --cron and --at")
    try:
        ZoneInfo(timezone)
    except (KeyError, ValueError):
        raise ScheduleError(f"timezone: {timezone!r} is not a time zone (IANA names, e.g. Europe/Paris)") from None
    if cron is not None:
        from prefect.client.schemas.schedules import CronSchedule

        try:
            CronSchedule(cron=cron, timezone=timezone)
        except ValidationError as exc:
            raise ScheduleError(f"cron: {cron!r} is not a cron expression "
                                f"(five fields: minute hour day month weekday): {_first_error(exc)}") from None
        return cron, None
    try:
        moment = datetime.fromisoformat(at)
    except ValueError:
        raise ScheduleError(f"at: {at!r} is not a date and time (e.g. 2026-12-07T02:00)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=ZoneInfo(timezone))
    moment = moment.astimezone(UTC)
    if moment <= now:
        raise ScheduleError(f"at: {at} is in the past (now is {now.astimezone(ZoneInfo(timezone)):%Y-%m-%d %H:%M} "
                            f"{timezone})")
    return None, moment


def _first_error(exc) -> str:
    errors = exc.errors()
    return str(errors[0].get("msg", exc)).removeprefix("Value error, ") if errors else str(exc)


def prefect_schedule(record: ScheduleRecord):
    """The Prefect schedule object of a record: a cron, or a one-time RRULE at `run_at`."""
    from prefect.client.schemas.schedules import CronSchedule, RRuleSchedule

    if record.cron is not None:
        return CronSchedule(cron=record.cron, timezone=record.timezone)
    local = record.run_at.astimezone(ZoneInfo(record.timezone))
    return RRuleSchedule(rrule=f"DTSTART:{local:%Y%m%dT%H%M%S}\nRRULE:FREQ=DAILY;COUNT=1", timezone=record.timezone)


def next_run(record: ScheduleRecord, now: datetime) -> datetime | None:
    """When Prefect's schedule class says the record runs next after `now` (None: never again)."""
    from prefect.server.schemas import schedules as server_schedules

    kind = server_schedules.CronSchedule if record.cron else server_schedules.RRuleSchedule
    data = prefect_schedule(record).model_dump(exclude_none=True)
    dates = asyncio.run(kind(**data).get_dates(n=1, start=now))
    return dates[0].astimezone(UTC) if dates else None


def parameters(record: ScheduleRecord) -> dict:
    """The `rerender` flow's parameters for a run of `record` (the selection is read at each run)."""
    selection = record.selection
    return {"sizes": list(record.sizes), "render_ids": list(selection.render_ids) or None, "team": selection.team,
            "project": selection.project, "tag": selection.tag, "status": selection.status,
            "schedule": record.name}


def selection_of(params: dict) -> Selection:
    return Selection(tuple(params.get("render_ids") or ()), params.get("team"), params.get("project"),
                     params.get("tag"), params.get("status"))


# -- keeping Prefect in step with the catalogue ---------------------------------------------------
@dataclass
class ReconcileReport:
    """What one `reconcile` changed on the Prefect server."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    started: list[str] = field(default_factory=list)


class DeploymentMissing(RuntimeError):
    """The `rerender` deployment is not registered on the Prefect server."""


def reconcile(catalogue, client=None, now: datetime | None = None) -> ReconcileReport:
    """Make the `rerender` deployment's schedules the catalogue's; start runs asked for now.

    `client`: a synchronous Prefect client (default: one for the configured API). Schedules on the
    deployment that no catalogue schedule names are removed: the catalogue is the list.
    """
    from prefect import get_client
    from prefect.client.schemas.actions import DeploymentScheduleCreate, DeploymentUpdate
    from prefect.exceptions import ObjectNotFound

    report = ReconcileReport()
    with contextlib.nullcontext(client) if client is not None else get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(DEPLOYMENT)
        except ObjectNotFound:
            raise DeploymentMissing(f"Prefect has no deployment {DEPLOYMENT!r}: register it with `linstudio deploy` "
                                    "(or run `linstudio scheduler` on the embedded default)") from None
        wanted = {record.name: record for record in catalogue.schedules()}
        existing = {s.slug: s for s in client.read_deployment_schedules(deployment.id) if s.slug}
        for name, record in wanted.items():
            schedule, params = prefect_schedule(record), parameters(record)
            current = existing.get(name)
            if current is None:
                client.create_deployment_schedules(deployment.id, [DeploymentScheduleCreate(
                    schedule=schedule, active=record.active, parameters=params, slug=name)])
                report.created.append(name)
            elif (current.active != record.active or current.parameters != params
                  or current.schedule.model_dump() != schedule.model_dump()):
                client.update_deployment_schedule(deployment.id, current.id, active=record.active, schedule=schedule,
                                                  parameters=params)
                report.updated.append(name)
        for slug, current in existing.items():
            if slug not in wanted:
                client.delete_deployment_schedule(deployment.id, current.id)
                report.removed.append(slug)
        if report.created or report.updated:
            # Prefect schedules a deployment's runs within seconds only when the deployment itself was
            # updated (its recent-deployments loop); a new schedule alone waits for the main loop, up
            # to a minute, and a one-time schedule due sooner would be missed. Touch it.
            client.update_deployment(deployment.id, DeploymentUpdate(description=deployment.description))
        moment = now or datetime.now(UTC)
        for name, record in wanted.items():
            asked = record.run_requested_at
            if asked is not None:
                start_run(record)
                report.started.append(name)
            upcoming = next_run(record, moment) if record.active else None
            catalogue.mark_schedule_synced(name, active=record.active, run_requested_at=asked, next_run_at=upcoming)
    return report


def start_run(record: ScheduleRecord) -> str:
    """Start one run of `record` now through the deployment; returns the flow run id."""
    from prefect.deployments import run_deployment

    flow_run = run_deployment(DEPLOYMENT, parameters=parameters(record), timeout=0)
    return str(flow_run.id)


def configured_api_url() -> str | None:
    """The Prefect server configured (PREFECT_API_URL, or Prefect's profile), None on the embedded default."""
    from prefect.settings import PREFECT_API_URL

    return os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value() or None


def prefect_configured() -> bool:
    """Whether a Prefect server is configured: production, or `linstudio scheduler`."""
    return configured_api_url() is not None


class ScheduleKeeper:
    """Beside the gallery: reconciles the catalogue's schedules with Prefect every `poll_seconds`
    while some are pending (a signed-in user paused one, or asked for a run now)."""

    def __init__(self, catalogue, poll_seconds: float = KEEPER_POLL_SECONDS) -> None:
        self.catalogue = catalogue
        self.poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def look(self) -> ReconcileReport | None:
        """Reconcile once if something is pending; None when nothing was."""
        if not self.catalogue.pending_schedules():
            return None
        return reconcile(self.catalogue)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="linstudio-schedule-keeper", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.look()
            except Exception as exc:  # noqa: BLE001 - Prefect or the database is down: look again later
                log.warning("schedule keeper could not reconcile: %s: %s", type(exc).__name__,
                            str(exc).partition("\n")[0])
            self._stop.wait(self.poll_seconds)


# -- a scheduled run: what the `rerender` flow does with `schedule` ----------------------------------
@dataclass(frozen=True)
class RunOutcome:
    """What one run of a schedule did to its selection."""

    made: int
    skipped: int
    failed: int


def run_rerender(catalogue, registry, *, sizes: list[tuple[int, int]], selection: Selection, schedule: str | None,
                 flow_run_id: str | None, logger=None) -> dict:
    """Re-render `selection` at `sizes` now (the `rerender` flow's work); with `schedule`, as that
    schedule's run: its own re-renders are not sources, every new record names it, and the run's
    start and outcome are recorded on the schedule. Returns the job counts by state."""
    if schedule is not None:
        catalogue.record_schedule_run(schedule, LastRun(catalogue.clock(), "running", flow_run_id=flow_run_id))
    try:
        ids = catalogue.schedule_sources(schedule, selection)
        requested_by = f"schedule {schedule}" if schedule else "rerender deployment"
        records = plan_rerenders(catalogue, ids, sizes, requested_by=requested_by, schedule=schedule)
        keys = [r["key"] for r in records]
        before = catalogue.rendered_keys(keys)
        counts = render_keys_spread(catalogue, records, queue=INTERACTIVE_QUEUE, registry=registry, logger=logger)
        outcome = outcome_of(before, catalogue.job_states(keys))
    except Exception:
        if schedule is not None:
            catalogue.record_schedule_run(schedule, LastRun(catalogue.clock(), "failed", flow_run_id=flow_run_id))
        raise
    if schedule is not None:
        catalogue.record_schedule_run(schedule, LastRun(catalogue.clock(), "failed" if outcome.failed else "completed",
                                                        outcome.made, outcome.skipped, outcome.failed, flow_run_id))
        record = catalogue.schedule(schedule)
        if record is not None:  # the next run the gallery shows moves on with this one
            catalogue.set_schedule_next_run(schedule, next_run(record, catalogue.clock()) if record.active else None)
    return counts


def outcome_of(before_done: set[str], states: dict[str, str]) -> RunOutcome:
    """Renders made (done now, not before), skipped (done before) and failed, from the job states."""
    made = sum(1 for key, state in states.items() if state == "done" and key not in before_done)
    skipped = sum(1 for key in states if key in before_done)
    failed = sum(1 for state in states.values() if state == "failed")
    return RunOutcome(made, skipped, failed)


# -- the embedded default: Prefect's Runner against a local server (flows/local_prefect.py) ----------
def serve_schedules(catalogue, rerender_flow, api_url: str, *, poll_seconds: float = KEEPER_POLL_SECONDS) -> None:
    """Serve `rerender_flow` (flows.deployments.rerender, handed in: that module imports this one)
    with Prefect's Runner against the server at `api_url`, keeping its schedules the catalogue's
    (`reconcile` every `poll_seconds`). Blocks until interrupted."""
    from prefect.runner import Runner
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def main() -> None:
        runner = Runner(name="linstudio-scheduler", query_seconds=2, pause_on_shutdown=False)
        await runner.add_flow(rerender_flow, name=DEPLOYMENT_NAME, parameters={"sizes": ["2048x2048"]})
        stop = threading.Event()

        def keep() -> None:
            while not stop.is_set():
                try:
                    reconcile(catalogue)
                except Exception as exc:  # noqa: BLE001 - try again on the next look
                    log.warning("scheduler could not reconcile: %s: %s", type(exc).__name__, exc)
                stop.wait(poll_seconds)

        # The keeper reconciles in its own thread, from the first look on: `reconcile` runs Prefect's
        # schedule classes' own event loop, which may not nest in the Runner's.
        keeper = threading.Thread(target=keep, name="linstudio-schedule-keeper", daemon=True)
        keeper.start()
        try:
            await runner.start()
        finally:
            stop.set()

    # Prefect reads its settings once: the server this process talks to is set for the whole serve.
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        asyncio.run(main())
