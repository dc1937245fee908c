"""Gallery queries: full-text search and filters over renders, keyset-paged, newest first.

Every query is "filters, then `id < cursor` ORDER BY id DESC LIMIT n" where each filter has an
index ending in `id` (migration 0002), so a page costs the same at a thousand renders as at a
million. Render ids are ULIDs whose first ten characters are the creation millisecond, so a date
filter becomes an id range and needs no index of its own.

Full text is FTS5 on SQLite and a GIN-indexed tsvector on PostgreSQL; both stem English words
(porter / 'english'), and both get the same query: the words of what the artist typed, all
required. Artist input never reaches either query language as syntax (quotes, NEAR, `:*`...):
words are extracted and bound as parameters, so a stray quote cannot break or widen a search.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import Select, column, select, table, text
from sqlalchemy.orm import Session

from catalogue.errors import CatalogueError
from catalogue.ids import ULID_LENGTH
from catalogue.models import REVIEW_STATUSES, Render, RenderTag
from catalogue.queries import render_dict

PAGE_DEFAULT = 60
PAGE_MAX = 500
UNREVIEWED = "unreviewed"
# Schema objects the migrations create outside the ORM models; schema comparisons skip them.
SEARCH_TABLE_PREFIX = "renders_fts"
SEARCH_INDEX = "ix_renders_search"
# The PostgreSQL document; must match the expression of ix_renders_search (migration 0002) exactly.
PG_DOCUMENT = "to_tsvector('english'::regconfig, renders.prompt || ' ' || renders.tags::text)"
_WORD = re.compile(r"\w+", re.UNICODE)
# The size filter and cursors as the API's OpenAPI states them (catalogue.web.params): these
# patterns are the whole rule, so the spec cannot be looser or tighter than the server.
SIZE_PATTERN = r"^([0-9]{1,5})x([0-9]{1,5})$"
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
MAX_QUERY_WORDS = 16
ID_CURSOR, FTS_CURSOR = "i", "f"
# `i` + the render id after which the page starts, or `f` + a full-text rowid (SQLite), at most 18
# digits so it stays inside SQLite's 64-bit integers.
CURSOR_PATTERN = r"^(?:i[0-7][0-9A-HJKMNP-TV-Z]{25}|f[1-9][0-9]{0,17})$"
FACET_MAX = 500  # values per filter menu


class SearchError(CatalogueError, ValueError):
    """A filter or cursor the gallery cannot use; the message names the parameter."""


def include_name(name: str | None, type_: str, _parent_names: Mapping) -> bool:
    """Alembic `include_name` hook: leave the search objects the models do not describe out of comparisons."""
    if type_ == "table" and name and name.startswith(SEARCH_TABLE_PREFIX):
        return False
    return not (type_ == "index" and name == SEARCH_INDEX)


@dataclass(frozen=True)
class Filters:
    """What the gallery asks for; every field optional. `size` is `WxH`, dates are inclusive UTC days."""

    q: str | None = None
    team: str | None = None
    project: str | None = None
    tag: str | None = None
    model: str | None = None
    size: str | None = None
    status: str | None = None
    date_from: date | None = None
    date_to: date | None = None
    asset_pk: int | None = field(default=None, repr=False)

    def active(self) -> dict[str, str]:
        """The filters that are set, as query parameters (for links that keep them)."""
        shown = {name: getattr(self, name) for name in ("q", "team", "project", "tag", "model", "size", "status",
                                                        "date_from", "date_to")}
        return {name: str(value) for name, value in shown.items() if value not in (None, "")}


@dataclass
class Page:
    """One page of renders and the cursor of the next (None on the last page)."""

    items: list[dict[str, Any]]
    next: str | None


def words(query: str | None) -> list[str]:
    """The searchable words of an artist's query, lower-cased, at most MAX_QUERY_WORDS."""
    return [w.lower() for w in _WORD.findall(query or "")][:MAX_QUERY_WORDS]


def ulid_floor(moment: datetime) -> str:
    """The smallest ULID of the millisecond `moment`: ids >= it were made at or after `moment`.

    A moment before 1970 gives the smallest ULID of all (ULIDs start there); the API takes any date
    its OpenAPI calls a date, year 1 included, and a negative time would wrap to a large id."""
    millis = max(0, int(moment.timestamp() * 1000))
    chars = []
    for _ in range(10):
        millis, digit = divmod(millis, 32)
        chars.append(_CROCKFORD[digit])
    return "".join(reversed(chars)) + "0" * (ULID_LENGTH - 10)


def encode_cursor(position: str, kind: str = "i") -> str:
    """A cursor: `kind` i = after this render id, f = after this full-text rowid (SQLite).

    Scripts pass `next` back rather than build cursors; the form is plain (not base64) so that one
    pattern, CURSOR_PATTERN, says exactly which cursors the server takes.
    """
    return f"{kind}{position}"


def decode_cursor(cursor: str, kind: str = "i") -> Any:
    """The position inside a cursor of `kind`; SearchError when it is not one of ours (or of another kind)."""
    if not re.fullmatch(CURSOR_PATTERN, cursor):
        raise SearchError(f"cursor {cursor[:40]!r}: not a gallery cursor")
    if cursor[0] != kind:
        raise SearchError(f"cursor {cursor[:40]!r}: not a cursor of this search (start again from the first page)")
    return int(cursor[1:]) if kind == FTS_CURSOR else cursor[1:]


def parse_size(size: str) -> tuple[int, int]:
    """`1024x768` -> (1024, 768); SearchError naming the parameter otherwise (the gallery's form
    strips and lower-cases what the artist typed first)."""
    match = re.fullmatch(SIZE_PATTERN, size)
    if not match:
        raise SearchError(f"size {size!r}: expected WIDTHxHEIGHT, e.g. 1024x1024")
    return int(match.group(1)), int(match.group(2))


def _text_match(session: Session, terms: list[str]):
    """A WHERE clause keeping renders whose prompt or tags contain every word of `terms`."""
    if session.get_bind().dialect.name == "postgresql":
        # plainto_tsquery ANDs the words and ignores any operator characters left in them.
        return text(f"{PG_DOCUMENT} @@ plainto_tsquery('english'::regconfig, :fts_query)").bindparams(
            fts_query=" ".join(terms))
    return Render.id.in_(text("SELECT render_id FROM renders_fts WHERE renders_fts MATCH :fts_query")
                         .bindparams(fts_query=_fts5_query(terms)).columns(render_id=Render.id.type))


def filtered(session: Session, filters: Filters) -> Select:
    """SELECT renders matching `filters` (no ordering or paging yet)."""
    query = select(Render)
    if filters.team:
        query = query.where(Render.team == filters.team)
    if filters.project:
        query = query.where(Render.project == filters.project)
    if filters.model:
        query = query.where(Render.model == filters.model)
    if filters.asset_pk is not None:
        query = query.where(Render.asset_pk == filters.asset_pk)
    if filters.size:
        width, height = parse_size(filters.size)
        query = query.where(Render.width == width, Render.height == height)
    if filters.status:
        if filters.status == UNREVIEWED:
            query = query.where(Render.review_status.is_(None))
        elif filters.status in REVIEW_STATUSES:
            query = query.where(Render.review_status == filters.status)
        else:
            raise SearchError(f"status {filters.status!r}: expected one of {', '.join((UNREVIEWED,) + REVIEW_STATUSES)}")
    if filters.tag:
        # A join on the (tag, render_id) primary key, not `id IN (...)`: that index hands back a tag's
        # renders newest first, so a page stops after `limit` rows instead of collecting every tagged one.
        query = query.join(RenderTag, RenderTag.render_id == Render.id).where(RenderTag.tag == filters.tag)
    if filters.date_from:
        query = query.where(Render.id >= ulid_floor(datetime.combine(filters.date_from, time(), UTC)))
    if filters.date_to and filters.date_to < date.max:  # up to 9999-12-31 is no upper bound (no day after it)
        query = query.where(Render.id < ulid_floor(datetime.combine(filters.date_to + timedelta(days=1), time(), UTC)))
    terms = words(filters.q)
    if terms:
        query = query.where(_text_match(session, terms))
    return query


def _sqlite_text_search(session: Session, filters: Filters, terms: list[str], limit: int,
                        cursor: str | None) -> tuple[list[Render], str | None]:
    """Full-text page on SQLite, walking the FTS index newest-first instead of collecting every match.

    `IN (SELECT ... MATCH)` would gather all matches before taking the newest 60: a word in half the
    prompts costs half the catalogue. FTS5 can instead stream matches in its rowid order — the order
    renders were catalogued — and stop after a page, so a page costs about `limit / share of matches
    passing the other filters`, whatever the catalogue size. The cursor is then that FTS rowid.
    """
    fts = table("renders_fts", column("rowid"), column("render_id"))
    query = (filtered(session, replace(filters, q=None)).add_columns(fts.c.rowid)
             .join(fts, fts.c.render_id == Render.id)
             .where(text("renders_fts MATCH :fts_query").bindparams(fts_query=_fts5_query(terms))))
    if cursor:
        query = query.where(fts.c.rowid < decode_cursor(cursor, FTS_CURSOR))
    rows = session.execute(query.order_by(fts.c.rowid.desc()).limit(limit + 1)).all()
    more = len(rows) > limit
    return [row[0] for row in rows[:limit]], encode_cursor(str(rows[limit - 1][1]), FTS_CURSOR) if more else None


def _fts5_query(terms: list[str]) -> str:
    """Each word double-quoted (a phrase of one token): FTS5 syntax characters lose their meaning."""
    return " ".join('"' + term.replace('"', '""') + '"' for term in terms)


def search(session: Session, filters: Filters, limit: int = PAGE_DEFAULT, cursor: str | None = None) -> Page:
    """One page of renders matching `filters`, newest first, after `cursor` (from a previous Page.next)."""
    if not 1 <= limit <= PAGE_MAX:
        raise SearchError(f"limit {limit}: must be between 1 and {PAGE_MAX}")
    terms = words(filters.q)
    if terms and session.get_bind().dialect.name == "sqlite":
        renders, next_cursor = _sqlite_text_search(session, filters, terms, limit, cursor)
    else:
        query = filtered(session, filters)
        # The same id, from the table the planner walks: the tag index when filtering by tag.
        order = RenderTag.render_id if filters.tag else Render.id
        if cursor:
            query = query.where(order < decode_cursor(cursor, ID_CURSOR))
        # One row more than asked tells whether a next page exists without a COUNT over the catalogue.
        fetched = list(session.scalars(query.order_by(order.desc()).limit(limit + 1)))
        renders = fetched[:limit]
        next_cursor = encode_cursor(renders[-1].id, ID_CURSOR) if len(fetched) > limit else None
    items = [render_dict(render) | {"review_status": render.review_status} for render in renders]
    return Page(items=items, next=next_cursor)


def facets(session: Session) -> dict[str, list[str]]:
    """The values the gallery's filter menus offer: teams, projects, models (distinct, sorted).

    A "loose index scan" (a recursive CTE that jumps from one value to the next through the index)
    costs one index probe per distinct value, where a plain DISTINCT reads the whole index and so
    grows with the catalogue. Column names come from the fixed list below, never from a request.
    """
    menus = {}
    for name in ("team", "project", "model"):
        menus[name] = list(session.scalars(text(
            f"WITH RECURSIVE walk(value) AS ("
            f" SELECT min({name}) FROM renders"
            f" UNION ALL SELECT (SELECT min({name}) FROM renders WHERE {name} > walk.value) FROM walk"
            f" WHERE walk.value IS NOT NULL)"
            f" SELECT value FROM walk WHERE value IS NOT NULL LIMIT {FACET_MAX}")))
    return menus
