"""Schemathesis as a library: every check and phase against a served gallery, failures as readable lines.

The engine is the one `st run` drives (examples, coverage, fuzzing, stateful), configured here
instead of by a schemathesis.toml so the test says exactly what it runs: a fixed seed and
deterministic generation, so a failure comes back on the next run, and `max_examples` per
operation as the knob between the suite's bound and `make test-api-deep`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PHASES = ("examples", "coverage", "fuzzing", "stateful")
ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]  # positive_data_acceptance's default


@dataclass
class ContractReport:
    """What one run found: each failed check as `METHOD /path [check]: message`, engine errors, requests sent."""

    failures: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    requests: int = 0
    phases_run: set[str] = field(default_factory=set)


def run_contract(base_url: str, *, token: str | None, seed: int, max_examples: int,
                 stateful_steps: int) -> ContractReport:
    """Run all checks and phases against the OpenAPI served at `base_url`/openapi.json, as `token`'s
    holder (None: anonymously)."""
    import schemathesis
    from schemathesis import engine
    from schemathesis.config import SchemathesisConfig
    from schemathesis.engine import Status, events

    settings = {
        "seed": seed,
        "base-url": base_url,
        "workers": 1,
        "suppress-health-check": ["all"],
        "generation": {"max-examples": max_examples, "deterministic": True, "database": "none", "allow-x00": True,
                       "mode": "all"},
        "checks": {"enabled": True},
        "phases": {"examples": {"enabled": True}, "coverage": {"enabled": True}, "fuzzing": {"enabled": True},
                   "stateful": {"enabled": True, "max-steps": stateful_steps}},
        "request-timeout": 30,
        # A cursor continues only the search that gave it: on SQLite a text search pages by full-text
        # rowid (`f...`) and any other by render id (`i...`), so a well-formed cursor of the other kind
        # is refused with the declared 400. The one status no pattern can rule out; only here.
        "operations": [{"include-path": "/api/renders", "include-method": "GET", "checks": {
            "positive_data_acceptance": {"expected-statuses": [*ACCEPTED, "400"]}}}],
    }
    if token is not None:
        settings["auth"] = {"openapi": {"bearerAuth": {"bearer": token}}}
    config = SchemathesisConfig.from_dict(settings)
    # The spec a token holder gets names this server's export folders; the anonymous one does not.
    signed_in = {"Authorization": f"Bearer {token}"} if token is not None else {}
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", config=config, headers=signed_in)
    report = ContractReport()
    for event in engine.from_schema(schema).execute():
        if isinstance(event, events.PhaseFinished) and event.status != Status.SKIP:
            report.phases_run.add(event.phase.name.value)
        if isinstance(event, (events.ScenarioFinished, events.FuzzScenarioFinished)):
            report.requests += len(event.recorder.interactions)
            report.failures.extend(_failures(event.recorder))
        elif isinstance(event, (events.NonFatalError, events.FatalError)):
            report.errors.append(f"{getattr(event, 'label', '')}: {getattr(event, 'value', event)!r}"[:2000])
    return report


def _failures(recorder) -> list[str]:
    from schemathesis.engine import Status

    found = []
    for checks in recorder.checks.values():
        for check in checks:
            if check.status == Status.FAILURE and check.failure_info is not None:
                failure = check.failure_info.failure
                found.append(f"{failure.operation} [{check.name}] {failure.title}: {failure.message}\n"
                             f"    {check.failure_info.code_sample}")
    return found
