"""What a batch run reports: one outcome per job, and the summary printed and kept as an artifact."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True)
class JobOutcome:
    """How one render job ended in this run.

    Args:
        key: the job key.
        label: `team/project/asset_id WxH seed N`, for people.
        status: `rendered`, `skipped` (already catalogued) or `failed`.
        render_id: the catalogue render, when there is one.
        reason: why it failed (one line), when it failed.
        seconds: wall time spent on the job in this run.
    """

    key: str
    label: str
    status: str
    render_id: str | None = None
    reason: str | None = None
    seconds: float = 0.0


@dataclass
class RunSummary:
    """All outcomes of a run; `ok` is what the exit status reports."""

    outcomes: list[JobOutcome] = field(default_factory=list)
    catalogue: str = ""
    store: str = ""

    @property
    def counts(self) -> Counter:
        return Counter(o.status for o in self.outcomes)

    @property
    def failed(self) -> list[JobOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failed

    def headline(self) -> str:
        c = self.counts
        return f"{c['rendered']} rendered, {c['skipped']} skipped (already catalogued), {c['failed']} failed"

    def to_text(self) -> str:
        lines = [self.headline()]
        for outcome in self.failed:
            lines.append(f"  FAILED {outcome.label} [{outcome.key[:12]}]: {outcome.reason}")
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
            "counts": {k: self.counts[k] for k in ("rendered", "skipped", "failed")},
            "jobs": [o.__dict__ for o in self.outcomes],
        }


def redact_url(url: str) -> str:
    """A database URL without its password, for printing."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]
