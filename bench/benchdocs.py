"""Writing one benchmark's section of docs/benchmarks.md without touching the others.

Each bench script owns the text between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`. Scripts
may run at the same time (several engineers, or CI and a person), so the read-modify-write holds
an exclusive lock and replaces the file atomically: no section is lost and no reader sees half a file.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
INTRO = ("# Benchmarks\n\nMeasured numbers, each section written by the script named in it (re-run the "
         "command to update it). CPU numbers come from shared development machines: read them as ratios, "
         "not absolutes.\n")


def update_section(name: str, text: str, doc: Path = DOC, heading: str | None = None) -> None:
    """Replace the `bench:NAME` section of `doc` with `text` (appending it, after `heading`, if absent)."""
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{begin}\n{text.rstrip()}\n{end}"
    doc.parent.mkdir(parents=True, exist_ok=True)
    with open(doc.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        current = doc.read_text() if doc.is_file() else INTRO
        if begin in current and end in current:
            current = current[:current.index(begin)] + block + current[current.index(end) + len(end):]
        else:
            current = current.rstrip("\n") + "\n\n" + (f"{heading}\n\n" if heading else "") + block + "\n"
        handle, temp = tempfile.mkstemp(dir=doc.parent, prefix=".benchmarks-")
        with os.fdopen(handle, "w") as out:
            out.write(current)
        os.replace(temp, doc)
