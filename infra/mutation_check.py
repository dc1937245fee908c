"""Does the suite still catch real bugs in its three core modules? A hand-made mutation check.

    .venv/bin/python infra/mutation_check.py

Each mutant is one deliberate bug in the job runner, catalogue ingest or the manifest loader. The
script writes it into the file, runs the tests that should catch it (stopping at the first
failure), prints what caught it, and puts the file back (also when interrupted). A mutant that
survives (its tests pass) exits 1: a test was lost or weakened. Run it after merging, moving or
dropping tests (docs/testing.md lists what each change moved).
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    path: str  # the file, from the repository root
    original: str  # text that occurs exactly once in it
    mutated: str  # the bug
    tests: tuple[str, ...]  # where it must be caught
    what: str


MUTANTS = (
    Mutant("catalogue/ingest.py", '"sha256": artifacts.sha256,', '"sha256": artifacts.thumb_sha256,',
           ("tests/catalogue/test_catalogue_ingest.py",), "a render row records the thumbnail's checksum"),
    Mutant("catalogue/ingest.py", "    store.put(artifacts.thumb_key, artifacts.thumb, THUMB_CONTENT_TYPE)\n", "",
           ("tests/catalogue/test_catalogue_ingest.py",), "ingest uploads no thumbnail"),
    Mutant("flows/job_runner.py", "if transient and attempt < JOB_RETRIES:", "if transient and attempt < 0:",
           ("tests/flows/test_job_runner.py",), "a transient failure is never attempted again"),
    Mutant("flows/job_runner.py", "        ctx.let_go(record[\"key\"])", "        pass",
           ("tests/flows/test_job_runner.py",), "a finished job's lease is never let go"),
    Mutant("manifests/load.py", "        path = parent_key(path)\n    return None", "        path = None\n    return None",
           ("tests/manifests",), "a missing key's error has no line"),
    Mutant("manifests/load.py", "errors.sort(key=lambda e: e.line or 0)", "errors.sort(key=lambda e: -(e.line or 0))",
           ("tests/manifests",), "errors come out last line first"),
)


def run(mutant: Mutant) -> bool:
    """True when the tests catch the mutant."""
    file = REPO / mutant.path
    source = file.read_text()
    if source.count(mutant.original) != 1:
        sys.exit(f"{mutant.path}: the text to mutate is not there exactly once: {mutant.original!r}")
    file.write_text(source.replace(mutant.original, mutant.mutated))
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *mutant.tests],
                              cwd=REPO, capture_output=True, text=True)
    finally:
        file.write_text(source)
    caught = [line.split(" ", 1)[1].split(" - ")[0] for line in done.stdout.splitlines() if line.startswith("FAILED")]
    verdict = f"caught by {caught[0]}" if done.returncode != 0 and caught else f"SURVIVED (pytest exit {done.returncode})"
    print(f"{mutant.path}: {mutant.what}: {verdict}", flush=True)
    return done.returncode != 0 and bool(caught)


def main() -> None:
    survivors = [m for m in MUTANTS if not run(m)]
    print(f"{len(MUTANTS) - len(survivors)} of {len(MUTANTS)} mutants caught")
    sys.exit(1 if survivors else 0)


if __name__ == "__main__":
    main()
