"""The test paths a working tree's changes can affect: what `make test-changed` runs.

How it decides: the files that differ from `HEAD` (staged, unstaged and untracked, from `git
status --porcelain`) are mapped to test paths by the room they live in, following the import
directions of docs/architecture.md upwards: a change in a room can break the tests of that room
and of every room that stands on it. A changed test file runs itself (a changed `conftest.py`,
support module or fixture data runs its whole folder). Documentation-only changes run the docs
test. Anything the map does not know (the Makefile, pyproject.toml, `.ci/`) runs everything: a
wrong guess must cost time, never a missed failure.

    .venv/bin/python infra/changed_tests.py [--base REF]   # prints the pytest arguments, one per line
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EVERYTHING = ["tests"]

# A room's own tests, and the tests of the rooms that import it (docs/architecture.md, upwards).
ROOM_TESTS: dict[str, list[str]] = {
    "linstudio_settings": EVERYTHING,
    "linstudio_jobs": ["tests/jobs", "tests/manifests", "tests/catalogue", "tests/flows", "tests/web", "tests/faults"],
    "linfusion_engine": ["tests/engine", "tests/fullsize", "tests/manifests", "tests/flows", "tests/toy",
                         "tests/test_cli_models.py", "tests/test_cli_distill.py", "tests/test_quality_bench.py"],
    "manifests": ["tests/manifests", "tests/flows", "tests/faults"],
    "catalogue": ["tests/catalogue", "tests/web", "tests/flows", "tests/faults"],
    "flows": ["tests/flows", "tests/faults", "tests/web/test_web_rerender_requests.py"],
    "linstudio": ["tests/test_cli_models.py", "tests/test_cli_distill.py", "tests/test_docs.py", "tests/manifests",
                  "tests/catalogue/test_catalogue_cli.py", "tests/flows", "tests/faults"],
    "toy": ["tests/toy", "tests/engine/test_shapes_content.py", "tests/flows/test_flow_rerender_content.py",
            "tests/test_quality_bench.py"],
    "bench": ["tests/test_quality_bench.py", "tests/web/test_web_bench.py", "tests/web/test_web_load_bench.py",
              "tests/engine/test_strategy_gpu_bench.py"],
    "manifests/examples": ["tests/manifests", "tests/test_docs.py"],
    "docs": ["tests/test_docs.py", "tests/test_architecture.py"],
    "infra": ["tests/test_infra.py", "tests/test_infra_scripts.py"],
}
ALWAYS = ["tests/test_architecture.py"]  # cheap, and any moved import can break it


def changed_files(base: str | None) -> list[str]:
    """Paths that differ from `base` (default HEAD), untracked ones included."""
    if base:
        out = subprocess.run(["git", "diff", "--name-only", base], cwd=REPO, capture_output=True, text=True, check=True)
        names = out.stdout.split()
    else:
        names = []
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=REPO,
                            capture_output=True, text=True, check=True)
    for line in status.stdout.splitlines():
        path = line[3:].split(" -> ")[-1].strip('"')
        names.append(path)
    return sorted(set(names))


def tests_for(path: str) -> list[str]:
    """The test paths one changed file can affect (see the module docstring)."""
    if path.startswith("tests/"):
        file = REPO / path
        if path.endswith(".py") and Path(path).name.startswith("test_"):
            return [path] if file.exists() else []
        return [str(Path(path).parent)] if Path(path).parent != Path("tests") else EVERYTHING
    if path.endswith(".md") and not path.startswith("manifests/"):
        return ROOM_TESTS["docs"]
    for room in sorted(ROOM_TESTS, key=len, reverse=True):  # manifests/examples before manifests
        if path.startswith(room + "/"):
            return ROOM_TESTS[room]
    return EVERYTHING


def selection(paths: list[str]) -> list[str]:
    """The smallest set of pytest paths covering every changed file (a folder absorbs its files)."""
    chosen: set[str] = set()
    for path in paths:
        chosen.update(tests_for(path))
    if not paths:
        return []
    if "tests" in chosen:
        return EVERYTHING
    chosen.update(ALWAYS)
    folders = {c for c in chosen if not c.endswith(".py")}
    return sorted(c for c in chosen if not any(c != f and c.startswith(f + "/") for f in folders))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default=None, help="also count changes since this commit (e.g. origin/main)")
    args = parser.parse_args(argv)
    print("\n".join(selection(changed_files(args.base))))


if __name__ == "__main__":
    sys.exit(main())
