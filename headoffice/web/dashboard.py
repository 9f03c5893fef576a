"""The KPI dashboard's figures: calls per day, call durations, the share of calls
evaluated, the average score per form section, and this period against the one before.

- :class:`DashboardFilters` is what a dashboard shows: a period ``[start, end)`` of UTC
  days (default: the last 30 days, today included; at most :data:`MAX_DAYS`) and an
  optional site, device and line, parsed from a URL query by
  :meth:`DashboardFilters.from_query` (a :class:`DashboardParameterError` naming the
  parameter for anything wrong).
- :func:`dashboard` asks the gate once (``search``, target ``None``: logged with the period
  as detail, before anything is read) and answers a :class:`Dashboard`.

Everything is counted in SQL (GROUP BY; Python only adds up the grouped rows: at most a
row per day and duration bucket), on both backends, with ``?`` placeholders only. What
the viewer may see is the search page's own WHERE clause
(:func:`headoffice.web.search.where_clause`: the viewer's scope plus the site, device,
line and period filters), so a reviewer scoped to one site never counts another's calls.
A call belongs to the UTC day it started on; its evaluations (``qa_evaluations``, any
time) count for the period of the call, not of the evaluation. The scores are filtered
by the evaluations' copies of their call's ``device_id``, ``line`` and start
(``call_started_utc``, the recording's ``started_utc`` as the index writes it), the same
WHERE clause applied to them.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from headoffice.access import Gate
from headoffice.authz import Action, Principal
from headoffice.index import Index, utc_iso
from headoffice.web.search import (
    NOTHING,
    Clause,
    SearchFilters,
    SiteMap,
    scope_clause,
    where_clause,
)

__all__ = [
    "BUCKETS",
    "DEFAULT_DAYS",
    "MAX_DAYS",
    "MOVING_DAYS",
    "Bucket",
    "Dashboard",
    "DashboardFilters",
    "DashboardParameterError",
    "DayCount",
    "PeriodTotals",
    "SectionScore",
    "dashboard",
    "visible_sites",
]

DEFAULT_DAYS = 30
MAX_DAYS = 366
MOVING_DAYS = 7
MAX_TEXT = 200
PARAMETERS = ("from", "to", "site", "device", "line")
# Far enough from date.min/max that the previous period and the moving average's lead-in
# (up to MAX_DAYS + MOVING_DAYS days before) stay real dates.
FIRST_DAY = date(1970, 1, 1)
LAST_DAY = date(9999, 12, 1)

#: The duration buckets: label, lower bound (ms, inclusive), upper bound (exclusive; None: open).
BUCKETS: tuple[tuple[str, int, int | None], ...] = (
    ("under 30 s", 0, 30_000),
    ("30 s–1 min", 30_000, 60_000),
    ("1–2 min", 60_000, 120_000),
    ("2–5 min", 120_000, 300_000),
    ("5–10 min", 300_000, 600_000),
    ("10–30 min", 600_000, 1_800_000),
    ("30 min and over", 1_800_000, None),
)


class DashboardParameterError(ValueError):
    """A dashboard parameter is malformed, out of range or unknown; ``parameter`` names
    it (the page shows the message)."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"{parameter}: {message}")
        self.parameter = parameter


# --------------------------------------------------------------------------- the filters


def _day(name: str, text: str) -> date:
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise DashboardParameterError(
            name, f"{text[:40]!r} is not a date; write YYYY-MM-DD, e.g. 2026-11-25"
        ) from None
    if not FIRST_DAY <= day <= LAST_DAY:
        raise DashboardParameterError(name, f"{text} is out of range ({FIRST_DAY} to {LAST_DAY})")
    return day


def _text(name: str, text: str) -> str:
    if len(text) > MAX_TEXT:
        raise DashboardParameterError(name, f"at most {MAX_TEXT} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise DashboardParameterError(name, "must not contain control characters")
    return text


@dataclass(frozen=True, slots=True)
class DashboardFilters:
    """The period ``[start, end)`` (UTC days: ``end`` is the first day not shown) and
    the optional site, device and line."""

    start: date
    end: date
    site: str | None = None
    device: str | None = None
    line: str | None = None

    @property
    def days(self) -> int:
        return (self.end - self.start).days

    @property
    def last_day(self) -> date:
        return self.end - timedelta(days=1)

    @property
    def previous(self) -> tuple[date, date]:
        """The period of equal length just before this one."""
        return self.start - timedelta(days=self.days), self.start

    @classmethod
    def last_days(cls, today: date, days: int = DEFAULT_DAYS) -> DashboardFilters:
        """The ``days`` days up to and including ``today``."""
        end = today + timedelta(days=1)
        return cls(end - timedelta(days=days), end)

    @classmethod
    def from_query(
        cls, params: Mapping[str, str], *, today: date, sites: Collection[str]
    ) -> DashboardFilters:
        """The filters of a URL query; ``sites``: those the viewer may pick. Empty values
        count as not given (a form sends every field); without ``to`` the period ends
        with ``today``, without ``from`` it is :data:`DEFAULT_DAYS` days long."""
        given: dict[str, str] = {}
        for name, value in params.items():
            if name not in PARAMETERS:
                raise DashboardParameterError(
                    name, f"unknown; the parameters are {', '.join(PARAMETERS)}"
                )
            if value.strip():
                given[name] = value.strip()
        end = _day("to", given["to"]) if "to" in given else today + timedelta(days=1)
        if "from" in given:
            start = _day("from", given["from"])
        else:
            start = max(FIRST_DAY, end - timedelta(days=DEFAULT_DAYS))
        if start >= end:
            raise DashboardParameterError("to", f"{end} must be later than from ({start})")
        if (end - start).days > MAX_DAYS:
            raise DashboardParameterError(
                "from", f"the period is {(end - start).days} days; at most {MAX_DAYS}"
            )
        site = _text("site", given["site"]) if "site" in given else None
        if site is not None and site not in sites:
            known = ", ".join(sorted(sites)) or "none"
            raise DashboardParameterError(
                "site", f"{site[:60]!r} is not one of your sites ({known})"
            )
        device = _text("device", given["device"]) if "device" in given else None
        line = _text("line", given["line"]) if "line" in given else None
        return cls(start, end, site, device, line)

    def query(self) -> dict[str, str]:
        """The URL query of these filters (``from_query`` of it gives them back)."""
        out = {"from": self.start.isoformat(), "to": self.end.isoformat()}
        for name in ("site", "device", "line"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    def describe(self) -> str:
        """``FROM..TO`` and the filters given, for the ledger (``TO`` excluded)."""
        return " ".join(
            [f"{self.start}..{self.end}"]
            + [f"{k}={v}" for k, v in self.query().items() if k not in {"from", "to"}]
        )

    def where(self, principal: Principal, sites: SiteMap, start: date, end: date) -> Clause:
        """The search page's WHERE (scope and filters) for calls started in ``[start, end)``."""
        return where_clause(
            SearchFilters(
                since=_midnight(start),
                until=_midnight(end),
                site=self.site,
                device=self.device,
                line=self.line,
            ),
            principal,
            sites,
        )


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=UTC)


def visible_sites(principal: Principal, sites: SiteMap) -> list[str]:
    """The sites of office.toml's ``[sites]`` that ``principal`` sees any call of (by
    scope: a site named, or one with a device or line named), sorted."""
    clause = scope_clause(principal, sites)
    if clause is None:
        return sorted(sites)
    if clause == NOTHING:
        return []
    scope = principal.scope
    reach = set(scope.devices) | {pair.device_id for pair in scope.lines}
    return sorted(name for name, devices in sites.items() if name in scope.sites or devices & reach)


# --------------------------------------------------------------------------- the figures


@dataclass(frozen=True, slots=True)
class DayCount:
    day: date
    calls: int
    moving_average: float  # calls per day over this day and the MOVING_DAYS - 1 before


@dataclass(frozen=True, slots=True)
class Bucket:
    label: str
    low_ms: int
    high_ms: int | None  # exclusive; None: no upper bound
    calls: int


@dataclass(frozen=True, slots=True)
class SectionScore:
    form: str  # the form's name (all its versions together)
    section: str
    evaluations: int
    score_bp_total: int

    @property
    def average_percent(self) -> float:
        return self.score_bp_total / self.evaluations / 100


@dataclass(frozen=True, slots=True)
class PeriodTotals:
    """One period's calls and evaluations (the averages are None when nothing counted)."""

    start: date
    end: date
    calls: int
    duration_ms_total: int
    evaluated_calls: int  # calls with at least one evaluation
    evaluations: int
    score_bp_total: int  # of the evaluations' overall scores

    @property
    def last_day(self) -> date:
        return self.end - timedelta(days=1)

    @property
    def average_duration_ms(self) -> float | None:
        return self.duration_ms_total / self.calls if self.calls else None

    @property
    def share_evaluated(self) -> float | None:
        """Evaluated calls / calls, 0..1."""
        return self.evaluated_calls / self.calls if self.calls else None

    @property
    def average_score_percent(self) -> float | None:
        return self.score_bp_total / self.evaluations / 100 if self.evaluations else None


@dataclass(frozen=True, slots=True)
class Dashboard:
    filters: DashboardFilters
    days: tuple[DayCount, ...]  # every day of the period, in order (0 for no call)
    buckets: tuple[Bucket, ...]  # every bucket of BUCKETS, in order
    sections: tuple[SectionScore, ...]  # by form, then section
    current: PeriodTotals
    previous: PeriodTotals  # the period of equal length before


# --------------------------------------------------------------------------- the queries

_BUCKET_SQL = (
    "CASE "
    + " ".join(
        f"WHEN duration_ms < {high} THEN {i}"
        for i, (_, _, high) in enumerate(BUCKETS)
        if high is not None
    )
    + f" ELSE {len(BUCKETS) - 1} END"
)

# Calls per (day, bucket): count and total duration.
_CALLS_SQL = (
    "SELECT day, bucket, COUNT(*), SUM(duration_ms) FROM ("
    f"SELECT SUBSTR(started_utc, 1, 10) AS day, {_BUCKET_SQL} AS bucket, duration_ms "
    "FROM recordings{where}) t GROUP BY day, bucket"
)

# Calls per day with at least one evaluation: a semi-join both backends drive from the
# (few) evaluations, instead of asking of every call whether it has one.
_EVALUATED_SQL = (
    "SELECT day, COUNT(*) FROM ("
    "SELECT recording_id, SUBSTR(started_utc, 1, 10) AS day FROM recordings{where}) t "
    "WHERE recording_id IN (SELECT recording_id FROM qa_evaluations) GROUP BY day"
)

# The evaluations under the column names of the recordings they copied (device_id, line,
# call_started_utc), so the search page's WHERE applies to them as it is: the scores are
# filtered without reading the recordings (what the copies are for).
_EVALUATIONS = (
    "(SELECT id, form_id, score_bp, device_id, line, call_started_utc AS started_utc "
    "FROM qa_evaluations) ev"
)

# Average score per (form name, section) of the evaluations of the calls counted.
_SECTIONS_SQL = (
    "SELECT f.name, s.section, COUNT(*), SUM(s.score_bp) "
    f"FROM (SELECT id, form_id FROM {_EVALUATIONS}{{where}}) e "
    "JOIN qa_section_scores s ON s.evaluation_id = e.id "
    "JOIN qa_forms f ON f.id = e.form_id "
    "GROUP BY f.name, s.section"
)

# Evaluations and their overall score, per period (1: this one, 0: the one before).
_SCORES_SQL = (
    "SELECT in_period, COUNT(*), SUM(score_bp) FROM ("
    "SELECT CASE WHEN started_utc >= ? THEN 1 ELSE 0 END AS in_period, score_bp "
    f"FROM {_EVALUATIONS}{{where}}) t GROUP BY in_period"
)


@dataclass(frozen=True, slots=True)
class _DayRow:
    day: date
    bucket: int
    calls: int
    duration_ms: int


def _moving_average(counts: Mapping[date, int], day: date) -> float:
    window = [counts.get(day - timedelta(days=k), 0) for k in range(MOVING_DAYS)]
    return sum(window) / MOVING_DAYS


def _totals(
    rows: Sequence[_DayRow],
    evaluated: Mapping[date, int],
    start: date,
    end: date,
    scores: tuple[int, int],
) -> PeriodTotals:
    inside = [r for r in rows if start <= r.day < end]
    return PeriodTotals(
        start=start,
        end=end,
        calls=sum(r.calls for r in inside),
        duration_ms_total=sum(r.duration_ms for r in inside),
        evaluated_calls=sum(n for day, n in evaluated.items() if start <= day < end),
        evaluations=scores[0],
        score_bp_total=scores[1],
    )


def _int(value: Any) -> int:
    # PostgreSQL's SUM of a BIGINT is NUMERIC (a Decimal), SQLite's an int; NULL: nothing.
    return int(value) if value is not None else 0


def dashboard(index: Index, gate: Gate, filters: DashboardFilters) -> Dashboard:
    """The dashboard of ``filters`` for the gate's actor. Logs a ``search`` access
    (detail ``web: dashboard FROM..TO ...``) first and raises
    :class:`~headoffice.access.AccessDenied` when the actor may not search."""
    gate.allow(Action.SEARCH, detail=f"web: dashboard {filters.describe()}")
    principal, sites = gate.actor.principal, gate.sites
    before = filters.previous[0]
    # The day rows reach back far enough for the previous period and for the moving
    # average of the first days shown.
    lead_in = min(before, filters.start - timedelta(days=MOVING_DAYS - 1))
    all_where, all_params = filters.where(principal, sites, lead_in, filters.end)
    cur_where, cur_params = filters.where(principal, sites, filters.start, filters.end)
    both_where, both_params = filters.where(principal, sites, before, filters.end)
    with index.transaction(False) as q:
        day_rows = q(_CALLS_SQL.format(where=all_where), all_params)
        evaluated_rows = q(_EVALUATED_SQL.format(where=both_where), both_params)
        section_rows = q(_SECTIONS_SQL.format(where=cur_where), cur_params)
        score_rows = q(
            _SCORES_SQL.format(where=both_where),
            (utc_iso(_midnight(filters.start)), *both_params),
        )
    rows = [
        _DayRow(date.fromisoformat(str(d)), int(b), int(n), _int(ms)) for d, b, n, ms in day_rows
    ]
    evaluated = {date.fromisoformat(str(d)): int(n) for d, n in evaluated_rows}
    scores = {int(cur): (int(n), _int(total)) for cur, n, total in score_rows}
    return Dashboard(
        filters=filters,
        days=_days(rows, filters),
        buckets=_buckets(rows, filters),
        sections=tuple(
            sorted(
                (
                    SectionScore(str(form), str(section), int(n), _int(total))
                    for form, section, n, total in section_rows
                ),
                key=lambda s: (s.form, s.section),
            )
        ),
        current=_totals(rows, evaluated, filters.start, filters.end, scores.get(1, (0, 0))),
        previous=_totals(rows, evaluated, before, filters.start, scores.get(0, (0, 0))),
    )


def _days(rows: Sequence[_DayRow], filters: DashboardFilters) -> tuple[DayCount, ...]:
    counts: dict[date, int] = {}
    for r in rows:
        counts[r.day] = counts.get(r.day, 0) + r.calls
    days = (filters.start + timedelta(days=k) for k in range(filters.days))
    return tuple(DayCount(d, counts.get(d, 0), _moving_average(counts, d)) for d in days)


def _buckets(rows: Sequence[_DayRow], filters: DashboardFilters) -> tuple[Bucket, ...]:
    calls = [0] * len(BUCKETS)
    for r in rows:
        if filters.start <= r.day < filters.end:
            calls[r.bucket] += r.calls
    return tuple(Bucket(label, low, high, calls[i]) for i, (label, low, high) in enumerate(BUCKETS))
