"""The search page's query: filters parsed from (and written back to) a URL query, and one
page of recordings with its total, the actor's scope applied in SQL.

- :class:`SearchFilters` is what a search is: ``SearchFilters.from_query(request.query_params)``
  (a clear :class:`SearchParameterError` naming the parameter for anything wrong) and
  ``filters.to_query()`` (the bookmarkable query string; ``from_query`` of it gives the
  same filters back).
- :func:`search_page` asks the gate once (``search``, logged with the query as detail:
  the gate decides whether this actor may search at all), then runs ONE SELECT for the
  page and ONE COUNT for the total, both with ``?`` placeholders only. The actor's scope
  is a WHERE clause of its own (:func:`scope_clause`), so the rows are exactly those of
  ``index.search(...)`` that ``gate.may(Action.VIEW_METADATA, r)`` lets through.

A filter is one small function in :data:`FILTERS`: ``(filters, sites) -> Clause | None``,
adding one WHERE clause. The review filters (``has_notes``, ``reviewed``, ``on_hold``,
``min_score``/``max_score``) are ``EXISTS`` sub-queries on the review tables, each
served by an index on ``recording_id``; :func:`row_marks` then reads those tables for
the rows of the page only (at most one page, never every match).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Self
from urllib.parse import urlencode

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from headoffice.access import Gate
from headoffice.authz import GRANTS, Action, Principal, Reach, Scope
from headoffice.index import Index
from headoffice.index.records import Query, _like, utc_iso
from sealedrec.manifest import ManifestError

PAGE_SIZES = (25, 50, 100)
MAX_PAGE = 1_000_000
MAX_TEXT = 200
SortKey = Literal["started", "duration", "device", "caller"]
SortOrder = Literal["asc", "desc"]
Direction = Literal["inbound", "outbound", "unknown"]

#: A WHERE clause and its parameters (``?`` placeholders; never user text in the SQL).
Clause = tuple[str, tuple[Any, ...]]
SiteMap = Mapping[str, frozenset[str]]
NOTHING: Clause = ("1 = 0", ())


class SearchParameterError(ValueError):
    """A search parameter is missing its form, out of range or unknown; ``parameter``
    names it (the web answers 400 with the message)."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"search parameter {parameter!r}: {message}")
        self.parameter = parameter


# --------------------------------------------------------------------------- the filters


class SearchFilters(BaseModel):
    """One search (the defaults: everything, newest first, 50 a page). ``since`` is
    inclusive and ``until`` exclusive (``until=2026-11-26`` keeps all of the 25th); a time
    without an offset is UTC. ``caller`` matches the number or the name and ``digits``
    the dialled digits, as substrings ignoring case. Durations are whole seconds,
    both bounds inclusive. ``has_notes``/``reviewed``/``on_hold``: true keeps only
    recordings with a note or bookmark / a reviewed mark / a legal hold in force, false
    only those without. ``announced``: true keeps recordings where the device played a
    recording announcement (tone or prompt), false those where none played (none set up
    on the line, or every one failed: consent evidence). ``min_score``/``max_score`` (percent, inclusive) keep recordings
    with at least one QA evaluation whose total is in the range."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    since: datetime | None = None
    until: datetime | None = None
    site: str | None = Field(None, max_length=MAX_TEXT)
    device: str | None = Field(None, max_length=MAX_TEXT)
    line: str | None = Field(None, max_length=MAX_TEXT)
    direction: Direction | None = None
    caller: str | None = Field(None, max_length=MAX_TEXT)
    digits: str | None = Field(None, max_length=MAX_TEXT)
    min_duration: int | None = Field(None, ge=0, le=10**7)
    max_duration: int | None = Field(None, ge=0, le=10**7)
    recovered: bool | None = None
    has_notes: bool | None = None
    reviewed: bool | None = None
    on_hold: bool | None = None
    announced: bool | None = None
    min_score: int | None = Field(None, ge=0, le=100)
    max_score: int | None = Field(None, ge=0, le=100)
    page: int = Field(1, ge=1, le=MAX_PAGE)
    page_size: int = 50
    sort: SortKey = "started"
    order: SortOrder = "desc"

    @field_validator("since", "until", mode="before")
    @classmethod
    def _utc(cls, value: object) -> object:
        if isinstance(value, str | datetime):
            try:
                return datetime.fromisoformat(utc_iso(value, "time"))
            except ManifestError as exc:
                raise ValueError(str(exc).removeprefix("time ")) from None
        return value

    @field_validator("site", "device", "line", "caller", "digits")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        if value is not None and any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise ValueError("must not contain control characters")
        return value

    @field_validator("page_size")
    @classmethod
    def _page_size(cls, value: int) -> int:
        if value not in PAGE_SIZES:
            raise ValueError(f"must be one of {', '.join(map(str, PAGE_SIZES))}")
        return value

    @model_validator(mode="after")
    def _ranges(self) -> Self:
        if self.since and self.until and self.since >= self.until:
            raise ValueError("until: must be later than since")
        if (
            self.min_duration is not None
            and self.max_duration is not None
            and self.min_duration > self.max_duration
        ):
            raise ValueError("max_duration: must not be below min_duration")
        low, high = self.min_score, self.max_score
        if low is not None and high is not None and low > high:
            raise ValueError("max_score: must not be below min_score")
        return self

    @classmethod
    def from_query(cls, params: Mapping[str, str]) -> SearchFilters:
        """The filters of a URL query (e.g. Starlette's ``request.query_params``). Empty
        values count as not given (an HTML form sends every field); an unknown name or a
        bad value raises :class:`SearchParameterError` naming the parameter."""
        known = cls.model_fields
        data: dict[str, str] = {}
        for name, value in params.items():
            if name not in known:
                raise SearchParameterError(name, f"unknown; the parameters are {', '.join(known)}")
            text = value.strip()
            if text:
                data[name] = text
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise _parameter_error(exc, data) from None

    def to_query(self) -> str:
        """The URL query of these filters (only what differs from the defaults, in a fixed
        order): ``SearchFilters.from_query(dict(parse_qsl(f.to_query()))) == f``."""
        pairs: list[tuple[str, str]] = []
        for name, field in type(self).model_fields.items():
            value = getattr(self, name)
            if value is None or value == field.default:
                continue
            if isinstance(value, datetime):
                text = value.isoformat(timespec="milliseconds")
            elif isinstance(value, bool):
                text = "true" if value else "false"
            else:
                text = str(value)
            pairs.append((name, text))
        return urlencode(pairs)

    def replace(self, **changes: Any) -> SearchFilters:
        """These filters with ``changes`` (validated), e.g. ``f.replace(page=2)`` for a link."""
        return type(self).model_validate({**self.model_dump(), **changes})


def _parameter_error(exc: ValidationError, data: Mapping[str, str]) -> SearchParameterError:
    error = exc.errors()[0]
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["loc"]:
        name = str(error["loc"][0])
    else:  # a model-level check names its parameter first ("until: ...")
        name, _, message = message.partition(": ")
    if name in data:
        message += f" (got {data[name][:60]!r})"
    return SearchParameterError(name, message)


# --------------------------------------------------------------------------- WHERE clauses

FilterFn = Callable[[SearchFilters, SiteMap], Clause | None]


def _in(column: str, values: Iterable[str]) -> Clause:
    items = tuple(sorted(values))
    if not items:
        return NOTHING
    return f"{column} IN ({', '.join('?' for _ in items)})", items


def _since(f: SearchFilters, sites: SiteMap) -> Clause | None:
    return ("started_utc >= ?", (utc_iso(f.since),)) if f.since else None


def _until(f: SearchFilters, sites: SiteMap) -> Clause | None:
    return ("started_utc < ?", (utc_iso(f.until),)) if f.until else None


def _site(f: SearchFilters, sites: SiteMap) -> Clause | None:
    # A site missing from [sites] covers no device (fail closed, as in the scope).
    return _in("device_id", sites.get(f.site, frozenset())) if f.site is not None else None


def _device(f: SearchFilters, sites: SiteMap) -> Clause | None:
    return ("device_id = ?", (f.device,)) if f.device is not None else None


def _line(f: SearchFilters, sites: SiteMap) -> Clause | None:
    return ("line = ?", (f.line,)) if f.line is not None else None


def _direction(f: SearchFilters, sites: SiteMap) -> Clause | None:
    return ("direction = ?", (f.direction,)) if f.direction is not None else None


def _caller(f: SearchFilters, sites: SiteMap) -> Clause | None:
    if not f.caller:
        return None
    pattern = _like(f.caller)
    return (
        "(LOWER(COALESCE(caller_number, '')) LIKE ? ESCAPE '\\' "
        "OR LOWER(COALESCE(caller_name, '')) LIKE ? ESCAPE '\\')",
        (pattern, pattern),
    )


def _digits(f: SearchFilters, sites: SiteMap) -> Clause | None:
    return ("LOWER(dialled_digits) LIKE ? ESCAPE '\\'", (_like(f.digits),)) if f.digits else None


def _min_duration(f: SearchFilters, sites: SiteMap) -> Clause | None:
    return ("duration_ms >= ?", (f.min_duration * 1000,)) if f.min_duration is not None else None


def _max_duration(f: SearchFilters, sites: SiteMap) -> Clause | None:
    return ("duration_ms <= ?", (f.max_duration * 1000,)) if f.max_duration is not None else None


def _recovered(f: SearchFilters, sites: SiteMap) -> Clause | None:
    return ("recovered = ?", (f.recovered,)) if f.recovered is not None else None


def _exists(table: str, condition: str = "") -> str:
    return (
        f"EXISTS (SELECT 1 FROM {table} x WHERE x.recording_id = recordings.recording_id"
        f"{condition})"
    )


def _flag(flag: bool | None, table: str, condition: str = "") -> Clause | None:
    if flag is None:
        return None
    sql = _exists(table, condition)
    return (sql if flag else f"NOT {sql}"), ()


def _has_notes(f: SearchFilters, sites: SiteMap) -> Clause | None:
    return _flag(f.has_notes, "notes")


def _reviewed(f: SearchFilters, sites: SiteMap) -> Clause | None:
    return _flag(f.reviewed, "reviews")


def _on_hold(f: SearchFilters, sites: SiteMap) -> Clause | None:
    return _flag(f.on_hold, "holds", " AND x.released_at IS NULL")


def _announced(f: SearchFilters, sites: SiteMap) -> Clause | None:
    return _flag(f.announced, "announcements", " AND x.played")


def _score(f: SearchFilters, sites: SiteMap) -> Clause | None:
    if f.min_score is None and f.max_score is None:
        return None
    low = 0 if f.min_score is None else f.min_score * 100
    high = 10_000 if f.max_score is None else f.max_score * 100
    return _exists("qa_evaluations", " AND x.score_bp >= ? AND x.score_bp <= ?"), (low, high)


#: Every filter, each adding at most one WHERE clause.
FILTERS: tuple[FilterFn, ...] = (
    _since,
    _until,
    _site,
    _device,
    _line,
    _direction,
    _caller,
    _digits,
    _min_duration,
    _max_duration,
    _recovered,
    _has_notes,
    _reviewed,
    _on_hold,
    _announced,
    _score,
)


def scope_clause(principal: Principal, sites: SiteMap) -> Clause | None:
    """The recordings ``principal`` may see the metadata of, as a WHERE clause (``None``:
    every recording), mirroring :func:`headoffice.authz.authorize` for ``view_metadata``:
    an ``all`` grant (the auditor's) or ``Scope.everything`` sees all; a ``scope`` grant
    sees the devices named, the devices of the sites named and the device/line pairs;
    no grant sees nothing."""
    reaches = {GRANTS[role].get(Action.VIEW_METADATA) for role in principal.roles}
    if Reach.ALL in reaches:
        return None
    if Reach.SCOPE not in reaches:
        return NOTHING
    scope: Scope = principal.scope
    if scope.everything:
        return None
    devices = set(scope.devices)
    for site in scope.sites:
        devices |= sites.get(site, frozenset())
    parts: list[str] = []
    params: list[Any] = []
    if devices:
        sql, values = _in("device_id", devices)
        parts.append(sql)
        params += values
    for pair in sorted(scope.lines):
        if pair.device_id not in devices:
            parts.append("(device_id = ? AND line = ?)")
            params += [pair.device_id, pair.line]
    if not parts:
        return NOTHING
    return "(" + " OR ".join(parts) + ")", tuple(params)


#: A caller substring found at most this often is looked up first (see :func:`where_clause`).
RARE_CALLER_MATCHES = 2000
#: The rare caller's matches, found first (the page query's prefix, with _caller's params).
CALLER_HITS = "WITH caller_hits AS MATERIALIZED (SELECT recording_id FROM recordings WHERE {}) "


def _in_caller_hits(f: SearchFilters, sites: SiteMap) -> Clause | None:
    return ("recording_id IN (SELECT recording_id FROM caller_hits)", ()) if f.caller else None


def page_prefix(filters: SearchFilters, sites: SiteMap, total: int) -> Clause:
    """The page query's :data:`CALLER_HITS` prefix when the caller substring is rare
    (``total`` matches at most :data:`RARE_CALLER_MATCHES`), else ``("", ())``."""
    caller = _caller(filters, sites)
    if caller is None or total > RARE_CALLER_MATCHES:
        return "", ()
    return CALLER_HITS.format(caller[0]), caller[1]


def where_clause(
    filters: SearchFilters, principal: Principal, sites: SiteMap, *, rare_caller: bool = False
) -> Clause:
    """The whole WHERE (scope and filters) of a search, ``""`` when nothing limits it.

    ``rare_caller``: the caller substring matches few recordings (the COUNT said so), so
    the clause becomes ``recording_id IN (SELECT recording_id FROM caller_hits)``, the
    matches found first by the query's :data:`CALLER_HITS` prefix (one scan of the narrow
    covering caller index; MATERIALIZED so that neither planner folds it back in, as
    PostgreSQL would on its 100-fold overestimate of a LIKE's matches), then sorted.
    Otherwise a page in start order walks the start-order index and tests each row until
    it has a page: fast when matches are common, but for a rare one a walk of the whole
    table with a random row read each (bench/search_page.py: 260 ms at 10^5 rows)."""
    caller = _in_caller_hits if rare_caller else _caller
    filter_fns = [caller if fn is _caller else fn for fn in FILTERS]
    clauses = [scope_clause(principal, sites), *(fn(filters, sites) for fn in filter_fns)]
    given = [c for c in clauses if c is not None]
    if not given:
        return "", ()
    return (
        " WHERE " + " AND ".join(sql for sql, _ in given),
        tuple(p for _, params in given for p in params),
    )


#: ORDER BY per sort key (all in the same direction, so one index can be walked backward).
_ORDER: Mapping[str, tuple[str, ...]] = {
    "started": ("started_utc", "device_id", "seq", "recording_id"),
    "duration": ("duration_ms", "started_utc", "recording_id"),
    "device": ("device_id", "line", "started_utc", "recording_id"),
    "caller": ("COALESCE(caller_number, '')", "started_utc", "recording_id"),
}


def order_by(filters: SearchFilters) -> str:
    way = "DESC" if filters.order == "desc" else "ASC"
    return " ORDER BY " + ", ".join(f"{col} {way}" for col in _ORDER[filters.sort])


# --------------------------------------------------------------------------- the page


@dataclass(frozen=True, slots=True)
class SearchRow:
    """A recording as the search page lists it (a StoredRecord without its manifest)."""

    recording_id: str
    device_id: str
    line: str
    seq: int
    started_utc: str
    ended_utc: str | None
    duration_ms: int
    caller_number: str | None
    caller_name: str | None
    dialled_digits: str
    direction: str | None
    recovered: bool
    discarded: bool
    codec: str | None
    blob_bytes: int


_ROW_COLUMNS = ", ".join(SearchRow.__slots__)


def _row(values: tuple[Any, ...]) -> SearchRow:
    data = dict(zip(SearchRow.__slots__, values, strict=True))
    data["recovered"] = bool(data["recovered"])
    data["discarded"] = bool(data["discarded"])
    return SearchRow(**data)


@dataclass(frozen=True, slots=True)
class RowMarks:
    """What the review has said about a listed recording (badges of its row)."""

    notes: int = 0
    reviewed: bool = False
    on_hold: bool = False
    score_bp: int | None = None  # the latest evaluation's total
    failed: bool = False  # the latest evaluation failed a critical question

    @property
    def score(self) -> str:
        return "" if self.score_bp is None else f"{self.score_bp / 100:.0f} %"


def row_marks(q: Query, ids: list[str]) -> dict[str, RowMarks]:
    """The marks of the recordings ``ids`` (one page's), by recording id, read with one
    query per review table inside the caller's transaction ``q``."""
    if not ids:
        return {}
    holes = ", ".join("?" for _ in ids)
    params = tuple(ids)
    notes: dict[str, int] = dict(
        q(
            f"SELECT recording_id, COUNT(*) FROM notes WHERE recording_id IN ({holes}) "
            "GROUP BY recording_id",
            params,
        )
    )
    reviewed = {
        r for (r,) in q(f"SELECT recording_id FROM reviews WHERE recording_id IN ({holes})", params)
    }
    held = {
        r
        for (r,) in q(
            f"SELECT recording_id FROM holds WHERE released_at IS NULL AND recording_id IN ({holes})",
            params,
        )
    }
    latest: dict[str, tuple[int, bool]] = {}
    for rid, score_bp, failed in q(
        f"SELECT recording_id, score_bp, failed FROM qa_evaluations "
        f"WHERE recording_id IN ({holes}) ORDER BY id",
        params,
    ):
        latest[rid] = (int(score_bp), bool(failed))  # ordered by id: the newest wins
    return {
        rid: RowMarks(
            notes=int(notes.get(rid, 0)),
            reviewed=rid in reviewed,
            on_hold=rid in held,
            score_bp=latest[rid][0] if rid in latest else None,
            failed=latest.get(rid, (0, False))[1],
        )
        for rid in ids
    }


@dataclass(frozen=True, slots=True)
class SearchPage:
    rows: list[SearchRow]
    total: int  # matching recordings in scope, over all pages
    page: int  # 1-based, as asked (may lie past ``pages``: then ``rows`` is empty)
    pages: int  # at least 1
    page_size: int
    filters: SearchFilters
    marks: Mapping[str, RowMarks]  # by recording id, for the rows of this page


def search_page(
    index: Index, gate: Gate, filters: SearchFilters, sites: Mapping[str, Iterable[str]]
) -> SearchPage:
    """One page of the search ``filters`` for the gate's actor; ``sites`` is office.toml's
    ``[sites]`` (the gate's own). Logs a ``search`` access with the query as detail and
    raises :class:`~headoffice.access.AccessDenied` when the actor may not search."""
    gate.allow(Action.SEARCH, detail=filters.to_query())
    site_map = {name: frozenset(devices) for name, devices in sites.items()}
    where, params = where_clause(filters, gate.actor.principal, site_map)
    offset = (filters.page - 1) * filters.page_size
    with index.transaction(False) as q:
        [(total,)] = q(f"SELECT COUNT(*) FROM recordings{where}", params)
        prefix, prefix_params = page_prefix(filters, site_map, int(total))
        if prefix:
            where, params = where_clause(filters, gate.actor.principal, site_map, rare_caller=True)
        rows = (
            q(
                f"{prefix}SELECT {_ROW_COLUMNS} FROM recordings{where}{order_by(filters)} "
                "LIMIT ? OFFSET ?",
                (*prefix_params, *params, filters.page_size, offset),
            )
            if offset < int(total)
            else []
        )
        found = [_row(r) for r in rows]
        marks = row_marks(q, [r.recording_id for r in found])
    return SearchPage(
        rows=found,
        marks=marks,
        total=int(total),
        page=filters.page,
        pages=max(1, math.ceil(int(total) / filters.page_size)),
        page_size=filters.page_size,
        filters=filters,
    )
