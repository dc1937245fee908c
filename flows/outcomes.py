"""What a batch run reports: one outcome per job, and the summary printed and kept as an artifact."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

# A job this run did not render because another live run holds its lease (`linstudio run --wait` waits).
RUNNING_ELSEWHERE = "running_elsewhere"
STATUSES = ("rendered", "skipped", RUNNING_ELSEWHERE, "failed")


@dataclass(frozen=True)
class JobOutcome:
    """How one render job ended in this run.

    Args:
        key: the job key.
        label: `team/project/asset_id WxH seed N`, for people.
        status: `rendered`, `skipped` (already catalogued), `running_elsewhere` (leased by another
            live run) or `failed`.
        render_id: the catalogue render, when there is one.
        reason: why it failed (one line), who holds it (running elsewhere), or why it was skipped.
        seconds: wall time spent on the job in this run.
        recorded: False for a failure the catalogue never took (database down, disk full): the job
            stays leased to this run until the next run or `catalogue check --repair` releases it.
    """

    key: str
    label: str
    status: str
    render_id: str | None = None
    reason: str | None = None
    seconds: float = 0.0
    recorded: bool = True


@dataclass
class RunSummary:
    """All outcomes of a run; `ok` is what the exit status reports."""

    outcomes: list[JobOutcome] = field(default_factory=list)
    catalogue: str = ""
    store: str = ""
    # Submissions whose outcome could not be recorded (the database was down as the run finished them):
    # `linstudio submissions ls` or the next nightly run settles them from the catalogue.
    unrecorded_submissions: list[str] = field(default_factory=list)

    @property
    def counts(self) -> Counter:
        return Counter(o.status for o in self.outcomes)

    @property
    def failed(self) -> list[JobOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def running_elsewhere(self) -> list[JobOutcome]:
        return [o for o in self.outcomes if o.status == RUNNING_ELSEWHERE]

    @property
    def ok(self) -> bool:
        return not self.failed

    def headline(self) -> str:
        c = self.counts
        elsewhere = f"{c[RUNNING_ELSEWHERE]} running elsewhere, " if c[RUNNING_ELSEWHERE] else ""
        return (f"{c['rendered']} rendered, {c['skipped']} skipped (already catalogued), {elsewhere}"
                f"{c['failed']} failed")

    def to_text(self) -> str:
        lines = [self.headline()]
        for outcome in self.failed:
            unrecorded = "" if outcome.recorded else " (NOT recorded in the catalogue, which did not answer)"
            lines.append(f"  FAILED {outcome.label} [{outcome.key[:12]}]: {outcome.reason}{unrecorded}")
        for outcome in self.running_elsewhere:
            lines.append(f"  RUNNING ELSEWHERE {outcome.label} [{outcome.key}]: {outcome.reason}")
        if self.running_elsewhere:
            lines.append(f"{len(self.running_elsewhere)} job(s) are being rendered by another run: "
                         "`linstudio run --wait` waits for them (and renders them if that run dies)")
        for submission_id in self.unrecorded_submissions:
            lines.append(f"  the outcome of submission {submission_id} could not be recorded (the database did not "
                         "answer): `linstudio submissions ls` settles it once it does")
        return "\n".join(lines)

    def to_markdown(self) -> str:
        rows = ["| job | asset | status | render | seconds | reason |", "| --- | --- | --- | --- | --- | --- |"]
        for o in self.outcomes:
            reason = (o.reason or "").replace("|", "\\|")
            rows.append(f"| `{o.key[:12]}` | {o.label} | {o.status} | {o.render_id or ''} | {o.seconds:.1f} | {reason} |")
        return f"# LinFusion Studio batch\n\n**{self.headline()}**\n\nCatalogue: `{self.catalogue}`  \nStore: `{self.store}`\n\n" + "\n".join(rows)

    def to_json(self) -> dict:
        return {
            "ok": self.ok,
            "counts": {k: self.counts[k] for k in STATUSES},
            "running_elsewhere": [o.key for o in self.running_elsewhere],
            "unrecorded_failures": [o.key for o in self.failed if not o.recorded],
            "unrecorded_submissions": list(self.unrecorded_submissions),
            "jobs": [o.__dict__ for o in self.outcomes],
        }


def redact_url(url: str) -> str:
    """A database URL without its password, for printing."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]
