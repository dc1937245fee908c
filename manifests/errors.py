"""The one error type of manifest validation: a place (file, line, key path) and a sentence.

Every problem — bad YAML, a wrong value, a missing file, a feature the engine cannot run yet —
ends up as a `ManifestError`, so that `linstudio validate`, `linstudio plan` and the runner all
print the same `film/night-city.yaml:14 assets[2].sizes[0]: ...` lines (style item 11).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class ManifestError:
    """One problem in one manifest.

    Args:
        path: the manifest file (or the path given on the command line when it is not a file).
        line: 1-based line of the offending key, or None when the problem has no line (file missing).
        key_path: where in the document, e.g. `assets[2].sizes[0]`; empty for the whole file.
        message: one specific sentence saying what is wrong and, where it helps, what to write.
    """

    path: Path
    line: int | None
    key_path: str
    message: str

    def __str__(self) -> str:
        place = display_path(self.path)
        if self.line is not None:
            place += f":{self.line}"
        text = f"{place} {self.key_path}: {self.message}" if self.key_path else f"{place}: {self.message}"
        return _one_line(text)

    def to_dict(self) -> dict:
        """JSON-serialisable form for `--json` output."""
        return {"path": display_path(self.path), "line": self.line, "key_path": self.key_path,
                "message": self.message, "text": str(self)}


def display_path(path: Path | str) -> str:
    """The path relative to the working directory when it lies below it, else as it is.

    Errors are read by people in a terminal opened in the project: `film/night-city.yaml` says
    more than `/home/ci/builds/4711/manifests/film/night-city.yaml`.
    """
    path = Path(path)
    try:
        return str(Path(os.path.abspath(path)).relative_to(Path.cwd()))
    except (ValueError, OSError):
        return str(path)


def _one_line(text: str) -> str:
    """Control characters (a newline in a quoted YAML key or a file name) escaped: one error, one line."""
    return "".join(ch if ch >= " " and ch != "\x7f" else repr(ch)[1:-1] for ch in text)


def join_key(parent: str, part: str | int) -> str:
    """Extend a key path: `assets` + 2 -> `assets[2]`, `assets[2]` + `sizes` -> `assets[2].sizes`.

    Keys other than letters, digits, `-` and `_` (possible in YAML: `"a.b"`, `"x y"`) are written
    as JSON strings in brackets, `assets[0]["a.b"]`, so that a path always splits back unambiguously.
    """
    if isinstance(part, int):
        return f"{parent}[{part}]"
    if not _PLAIN_KEY.match(part):
        return f"{parent}[{json.dumps(part, ensure_ascii=False)}]"
    return f"{parent}.{part}" if parent else part


def parent_key(key_path: str) -> str | None:
    """The enclosing key path (`assets[2].sizes[0]` -> `assets[2].sizes` -> `assets[2]` -> `assets` -> ``)."""
    if not key_path:
        return None
    if key_path.endswith('"]'):
        # Inside a JSON string every `"` is escaped, so the last unescaped `["` opens the last key.
        return key_path[: key_path.rindex('["')]
    if key_path.endswith("]"):
        return key_path[: key_path.rindex("[")]
    dot = key_path.rfind(".")
    bracket = key_path.rfind("]")
    return key_path[:dot] if dot > bracket else ""
