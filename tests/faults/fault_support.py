"""What the repair, input, overlap and disk-full fault tests share: `linstudio` run as an operator would.

Each test gets a `CliStudio` (fixture `cli` in each module): its own LINSTUDIO_HOME (the session's
tiny models linked in, so they are built once), a catalogue database and store — the session's
shared services or the embedded SQLite + folder, never the stoppable ones of conftest's `studio`,
which the service-fault tests take away — and the session's Prefect server for the `linstudio run`
processes it starts. The catalogue itself is the oracle: `renders_per_key` and `check` say what was
lost or duplicated, never the run's own summary.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from manifest_files import write_manifest  # noqa: F401  (shared with the other test folder)

LINSTUDIO = str(Path(sys.executable).parent / "linstudio")
# A hang guard for one `linstudio` command (a tiny batch takes seconds), not a speed target.
COMMAND_TIMEOUT_S = 300


@dataclass
class CliStudio:
    """One test's studio: home, catalogue URLs and Prefect API, driven through the real CLI.

    Args:
        prefect_api: returns the Prefect API URL; called only when a batch runs, so tests that never
            run one never start a Prefect server.
    """

    home: Path
    database_url: str
    store_url: str
    prefect_api: Callable[[], str]

    def env(self, args: tuple[str, ...] = ()) -> dict[str, str]:
        """The environment of `linstudio ARGS` (the test's AWS settings included, for an s3:// store)."""
        env = {**os.environ, "LINSTUDIO_HOME": str(self.home), "LINSTUDIO_DATABASE_URL": self.database_url,
               "LINSTUDIO_STORE_URL": self.store_url}
        if args[:1] == ("run",):
            env["PREFECT_API_URL"] = self.prefect_api()
        return env

    def linstudio(self, *args: str, timeout: float = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess:
        """Run `linstudio ARGS` to the end; stdout and stderr as text."""
        return subprocess.run([LINSTUDIO, *args], env=self.env(args), capture_output=True, text=True,
                              timeout=timeout)

    def start(self, *args: str) -> subprocess.Popen:
        """Start `linstudio ARGS` in the background (stdout and stderr piped)."""
        return subprocess.Popen([LINSTUDIO, *args], env=self.env(args), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def run(self, *manifests: Path) -> tuple[int, dict]:
        """`linstudio run --json MANIFESTS`: (exit status, summary); fails the test on a hang or no JSON."""
        done = self.linstudio("run", "--json", *map(str, manifests))
        return done.returncode, summary_of(done.returncode, done.stdout, done.stderr)

    def check(self, *options: str) -> tuple[int, dict]:
        """`linstudio catalogue check --json OPTIONS`: (exit status, report)."""
        done = self.linstudio("catalogue", "check", "--json", *options)
        try:
            return done.returncode, json.loads(done.stdout)
        except json.JSONDecodeError:
            raise AssertionError(f"`catalogue check {' '.join(options)}` exit {done.returncode}, no JSON:\n"
                                 f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}") from None

    def catalogue(self):
        """The studio's catalogue, opened and migrated (close it when done)."""
        from catalogue import Catalogue

        catalogue = Catalogue.open(self.database_url, self.store_url)
        catalogue.migrate()
        return catalogue


def summary_of(returncode: int, stdout: str, stderr: str) -> dict:
    """The JSON summary `linstudio run --json` printed, or a failed assertion showing what it printed instead."""
    try:
        return json.loads(stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"`linstudio run` exit {returncode}, no JSON summary:\n{stdout[-2000:]}\n"
                             f"{stderr[-4000:]}") from None


def make_cli_studio(request, database_url: str, store_url: str) -> CliStudio:
    """A studio for the test of `request`, its home under the test's tmp_path sharing the session's tiny
    models, on the given catalogue; its batches report to the session's Prefect server (`prefect_api`)."""
    tmp_path, session_root = request.getfixturevalue("tmp_path"), request.getfixturevalue("session_root")
    home = tmp_path / "home"
    home.mkdir(parents=True, exist_ok=True)
    models = session_root / "home" / "models"
    models.mkdir(parents=True, exist_ok=True)
    os.symlink(models, home / "models")
    return CliStudio(home, database_url, store_url, lambda: request.getfixturevalue("prefect_api"))


def keys_by_status(summary: dict) -> dict[str, set[str]]:
    """{status: job keys} from a run summary."""
    found: dict[str, set[str]] = {}
    for job in summary["jobs"]:
        found.setdefault(job["status"], set()).add(job["key"])
    return found


def renders_per_key(catalogue) -> Counter:
    """How many render rows each job key has (the oracle for "exactly once")."""
    return Counter(r["job_key"] for r in catalogue.renders(limit=1000))


def lost_jobs(catalogue, keys) -> list[str]:
    """The job keys among `keys` that have no render in the catalogue."""
    return sorted(set(keys) - catalogue.rendered_keys(keys))


def job_records(manifests: list[Path]) -> list[dict]:
    """The job records `manifests` expand to, as `linstudio run` plans them."""
    from flows.batch import load_and_expand

    return [job.to_record() for _, jobs in load_and_expand(manifests) for job in jobs]


def plan(catalogue, records: list[dict]) -> str:
    """Record `records` under a new submission, as a run's planning step does; returns the submission id."""
    first = records[0]
    submission = catalogue.create_submission(first["team"], first["project"], str(first.get("manifest_path")),
                                             "0" * 64, len(records))
    catalogue.plan_jobs(submission, records)
    return submission
