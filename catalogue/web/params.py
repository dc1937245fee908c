"""The API's parameter types: the rules the server enforces, written once so the OpenAPI states them.

Each type here is both the validation FastAPI runs (a value outside it answers 422 naming the
parameter) and the schema the OpenAPI publishes, so a generated client or a fuzzer sees exactly
what the server takes. Patterns use only what JSON Schema (ECMA 262), Python's `re` and
pydantic's Rust engine read alike: character classes, `(?:...)`, quantifiers and anchors, and
no `\\d` or `\\s` (Unicode digits and spaces would widen them on one side only).
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated

from fastapi import Path as PathParam
from fastapi import Query
from pydantic import AfterValidator, BeforeValidator, Field, WithJsonSchema

from catalogue.export import TEMPLATE_FIELDS
from catalogue.models import NAME_LEN, REVIEW_STATUSES
from catalogue.schedules import NAME_RE as SCHEDULE_NAME_RE
from catalogue.search import CURSOR_PATTERN, SIZE_PATTERN, UNREVIEWED
from catalogue.web.actions import EXPORT_MAX, MAX_SIDE, MIN_SIDE

# ULIDs as catalogue.ids makes them: 26 Crockford base32 characters, the first at most 7 (48 bits of time).
ULID_PATTERN = r"^[0-7][0-9A-HJKMNP-TV-Z]{25}$"
# Job keys are the full hex sha256 of the job's key fields (manifests.jobs).
JOB_KEY_PATTERN = r"^[0-9a-f]{64}$"
TEXT_MAX = 200  # search words, tag names
# Free text may hold anything but NUL, which PostgreSQL refuses in text and JSON (a 500 there, not on SQLite).
NO_NUL = r"^[^\x00]*$"
NAME_MAX = NAME_LEN  # team, project, model names
DESTINATION_MAX = 1024
TEMPLATE_MAX = 200


class ReviewFilter(StrEnum):
    """The review states a search can ask for: a decision, or none yet."""

    approved = "approved"
    rejected = "rejected"
    changes_requested = "changes_requested"
    unreviewed = UNREVIEWED


assert {f.value for f in ReviewFilter} == {*REVIEW_STATUSES, UNREVIEWED}


def _side_pattern() -> str:
    """A decimal side length that parse_sizes takes: a multiple of 8 from MIN_SIDE (64) to MAX_SIDE (16384).

    A number is a multiple of 8 when its last three digits are (1000 is), and a three-digit ending
    is when its last two digits are a multiple of 8 after an even hundreds digit, or 4 more than one
    after an odd one (100 is 4 more than 96). tests/web/test_api_params.py checks it number by number.
    """
    even = "(?:" + "|".join(f"{n:02d}" for n in range(0, 100, 8)) + ")"  # 00, 08, ... 96
    odd = "(?:" + "|".join(f"{n:02d}" for n in range(4, 100, 8)) + ")"  # 04, 12, ... 92
    three = f"(?:[02468]{even}|[13579]{odd})"
    assert (MIN_SIDE, MAX_SIDE) == (64, 16384), "rebuild the pattern for the new bounds"
    return ("(?:64|72|80|88|96"
            f"|[2468]{even}|[13579]{odd}"
            f"|[1-9]{three}"
            f"|1[0-5]{three}|16(?:[02]{even}|1{odd}|3(?:04|12|20|28|36|44|52|60|68|76|84)))")


SIDE_PATTERN = _side_pattern()
RERENDER_SIZE_PATTERN = f"^{SIDE_PATTERN}x{SIDE_PATTERN}$"


def _rerender_size(value: str) -> str:
    """The pattern, refused in words: pydantic's own message would quote the whole pattern."""
    if not re.fullmatch(RERENDER_SIZE_PATTERN, value):
        raise ValueError(f"size {value[:40]!r}: expected WIDTHxHEIGHT, each side a multiple of 8 between "
                         f"{MIN_SIDE} and {MAX_SIDE}, e.g. 2048x2048")
    return value


# Published with its pattern, checked by _rerender_size (the same pattern).
RerenderSizeText = Annotated[str, AfterValidator(_rerender_size),
                             WithJsonSchema({"type": "string", "pattern": RERENDER_SIZE_PATTERN})]


def destination_pattern(roots: list[Path] | None) -> str:
    """The export destinations this gallery takes: an s3:// prefix, or a folder under one of `roots`
    (file:// optional) named without `.` or `..` segments and without control characters.

    Stated per server because the roots are its settings; a folder that matches yet leads out
    through a symbolic link is still refused (400), since no pattern can see links. `roots` None
    gives any absolute folder: the spec anonymous readers get, who may see no server path
    (catalogue.web.redact) and may not export anyway.
    """
    segment = r"(?:[^/\x00-\x1f.][^/\x00-\x1f]*|\.[^/\x00-\x1f.][^/\x00-\x1f]*|\.\.[^/\x00-\x1f]+)"
    bucket = r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"
    if roots is None:
        folder = rf"(?:/{segment})+/?"
    else:
        folders = "|".join(_escaped(str(root.resolve()).rstrip("/")) for root in roots)
        folder = rf"(?:{folders})(?:/{segment})*/?"
    return rf"^(?:s3://{bucket}(?:/[^\x00-\x1f]*)?|(?:file://)?{folder})$"


def _template_pattern() -> str:
    """Export naming templates catalogue.export.check_template takes: text without lone braces (`{{`
    and `}}` write one) or NUL, and fields among TEMPLATE_FIELDS with no format spec, at least one of them."""
    text = r"(?:[^{}\x00]|\{\{|\}\})"
    field = r"\{(?:" + "|".join(TEMPLATE_FIELDS) + r")\}"
    return f"^{text}*{field}(?:{text}|{field})*$"


TEMPLATE_PATTERN = _template_pattern()


def _escaped(text: str) -> str:
    """`text` as a literal in a pattern every engine reads: metacharacters escaped one by one."""
    return "".join("\\" + c if c in r"\.^$|?*+()[]{}" else c for c in text)


RenderId = Annotated[str, PathParam(pattern=ULID_PATTERN, description="A render id (ULID).")]
SubmissionId = Annotated[str, PathParam(pattern=ULID_PATTERN, description="A submission id (ULID).")]
ExportId = Annotated[str, PathParam(pattern=ULID_PATTERN, description="An export id (ULID).")]
JobKey = Annotated[str, PathParam(pattern=JOB_KEY_PATTERN, description="A job key (hex sha256).")]
# The catalogue's own rule for schedule names (catalogue.schedules.check_name), published as it is.
ScheduleName = Annotated[str, PathParam(pattern=SCHEDULE_NAME_RE.pattern, examples=["sunday-keyart"],
                                        description="A schedule's name (`linstudio schedules add NAME`).")]

SearchText = Annotated[str | None, Query(max_length=TEXT_MAX, pattern=NO_NUL, examples=["neon street"],
                                        description="Words that must all appear in the prompt or tags.")]
Name = Annotated[str | None, Query(max_length=NAME_MAX, pattern=NO_NUL)]
Tag = Annotated[str | None, Query(max_length=TEXT_MAX, pattern=NO_NUL)]
Size = Annotated[str | None, Query(pattern=SIZE_PATTERN, description="WIDTHxHEIGHT, e.g. 1024x1024.",
                                   examples=["1024x1024"])]
Status = Annotated[ReviewFilter | None, Query(description="A review decision, or `unreviewed`.",
                                              examples=["approved"])]
Cursor = Annotated[str | None, Query(pattern=CURSOR_PATTERN, description="`next` of the previous page of "
                                                                         "the same search.")]
Before = Annotated[str | None, Query(pattern=ULID_PATTERN, description="`next` of the previous page: "
                                                                       "submissions older than this id.")]

RenderIds = Annotated[list[Annotated[str, Field(pattern=ULID_PATTERN)]], Field(min_length=1, max_length=EXPORT_MAX)]


def _integral(value: object) -> object:
    """JSON Schema's `integer` takes 2048.0 (a number with no fraction); strict pydantic takes only 2048."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


SideLength = Annotated[int, Field(ge=MIN_SIDE, le=MAX_SIDE, multiple_of=8), BeforeValidator(_integral)]
