"""The KPI dashboard (issue 16): the figures on SQLite and PostgreSQL against an
independent Python count of a generated index, the viewer's scope, the SVG charts, and
the page (ledger leaf first, parameters not understood, roles without ``search``)."""

from __future__ import annotations

import bisect
import getpass
import json
import random
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from headoffice.access import AccessDenied, Actor, Gate
from headoffice.accounts import Accounts
from headoffice.authz import DeviceLine, Principal, Role, Scope
from headoffice.config import OfficeConfig
from headoffice.index import Index, open_index
from headoffice.index.records import Query
from headoffice.ledger.store import Ledger, LedgerError
from headoffice.store import FileBlobStore
from headoffice.web.app import create_app
from headoffice.web.charts import Bar, bar_chart, column_chart, histogram, nice_ticks
from headoffice.web.dashboard import (
    Dashboard,
    DashboardFilters,
    DashboardParameterError,
    PeriodTotals,
    dashboard,
    visible_sites,
)
from headoffice.web.routes_dashboard import dashboard_charts, figures
from tests.office_accounts import CHEAP, Login, SteppingClock, add_account, leaves
from tests.test_office_index import Device, index_url, pg_dsn  # noqa: F401 - fixtures
from tests.test_web import sign_in

SVG = "{http://www.w3.org/2000/svg}"
SITES = {"north": ("dev-a", "dev-b"), "south": ("dev-c",), "empty": ()}
# dev-d belongs to no site
LINES = {"dev-a": ("line1", "line2"), "dev-b": ("line1",), "dev-c": ("line1", "line2"),
         "dev-d": ("line1",)}  # fmt: skip
#: Forms: (name, version) -> its sections. Two versions of one name count together.
FORMS = {
    ("Greeting", 1): ("Opening", "Needs", "Close"),
    ("Greeting", 2): ("Opening", "Close"),
    ("Compliance & <Privacy>", 1): ("Identity check", "Disclosure"),
}
#: Durations on and around every bucket bound (ms), then random ones.
EDGES = (0, 29_999, 30_000, 59_999, 60_000, 119_999, 120_000, 299_999, 300_000, 599_999,
         600_000, 1_799_999, 1_800_000, 5_000_000)  # fmt: skip
BOUNDS = [30_000, 60_000, 120_000, 300_000, 600_000, 1_800_000]
FIRST = datetime(2026, 9, 10, tzinfo=UTC)
SPAN_DAYS = 90
NOVEMBER = (date(2026, 11, 1), date(2026, 12, 1))
PLUS_2 = timezone(timedelta(hours=2))

EVERYONE = Principal("sup", frozenset({Role.SUPERVISOR}), Scope.all())
NORTH = Principal("nora", frozenset({Role.REVIEWER}), Scope(sites=frozenset({"north"})))
ONE_LINE = Principal(
    "lina", frozenset({Role.REVIEWER}), Scope(lines=frozenset({DeviceLine("dev-c", "line2")}))
)
AUDITOR = Principal("aud", frozenset({Role.AUDITOR}), Scope())
ADMIN = Principal("adm", frozenset({Role.ADMIN}), Scope.all())


@dataclass(frozen=True)
class Rec:
    id: str
    device: str
    line: str
    started: datetime
    duration_ms: int
    started_utc: str  # as the index stores it (what an evaluation copies)


@dataclass(frozen=True)
class Evaluation:
    recording_id: str
    form: str
    score_bp: int
    sections: dict[str, int]


@dataclass
class Data:
    recs: list[Rec]
    evals: list[Evaluation]


def gate(index: Index, principal: Principal) -> Gate:
    return Gate(
        index, OfficeConfig(sites=SITES), Actor(principal, "t", f"test:{getpass.getuser()}")
    )


# --------------------------------------------------------------------------- the data


def add_forms(q: Query) -> dict[tuple[str, int], int]:
    ids = {}
    for (name, version), sections in FORMS.items():
        [(form_id,)] = q(
            "INSERT INTO qa_forms (name, version, definition, created_by, created_at) "
            "VALUES (?, ?, ?, ?, ?) RETURNING id",
            (name, version, json.dumps({"sections": sections}), "qa", "2026-09-01T00:00:00Z"),
        )
        ids[(name, version)] = int(form_id)
    return ids


def add_evaluation(
    q: Query, rec: Rec, form_id: int, score_bp: int, sections: dict[str, int]
) -> None:
    [(eval_id,)] = q(
        "INSERT INTO qa_evaluations (recording_id, form_id, evaluator, agent, device_id, line, "
        "call_started_utc, raw_bp, score_bp, failed, answers, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        (rec.id, form_id, "eve", rec.line, rec.device, rec.line, rec.started_utc,
         score_bp, score_bp, score_bp < 5000, "{}", "2026-12-10T00:00:00Z"),
    )  # fmt: skip
    for section, bp in sections.items():
        q(
            "INSERT INTO qa_section_scores (evaluation_id, section, score_bp) VALUES (?, ?, ?)",
            (int(eval_id), section, bp),
        )


def generate(index: Index, n: int = 240, seed: int = 16) -> Data:
    """``n`` recordings over SPAN_DAYS days from FIRST on four devices (a few exactly on
    day and period bounds), about half of them evaluated once or twice."""
    rnd = random.Random(seed)
    devices = {d: Device(d) for d in LINES}
    starts = [
        datetime(2026, 11, 1, tzinfo=UTC),  # the first instant of November
        datetime(2026, 10, 31, 23, 59, 59, 999_000, tzinfo=UTC),  # the last of October
        datetime(2026, 11, 30, 23, 59, 59, 999_000, tzinfo=UTC),
        datetime(2026, 12, 1, tzinfo=UTC),
    ]
    starts += [
        FIRST + timedelta(milliseconds=rnd.randrange(SPAN_DAYS * 86_400_000))
        for _ in range(n - len(starts))
    ]
    recs: list[Rec] = []
    for i, started in enumerate(starts):
        device = rnd.choice(sorted(LINES))
        line = rnd.choice(LINES[device])
        ms = EDGES[i] if i < len(EDGES) else int(min(4e6, rnd.lognormvariate(11, 1.2)))
        # A start written with an offset: the index keeps UTC, so is the day counted.
        written = started.astimezone(UTC if i % 3 else PLUS_2)
        m = devices[device].manifest(
            line=line,
            started_utc=written.isoformat(timespec="milliseconds"),
            ended_utc=(written + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds"),
            duration_ms=ms,
        )
        stored = index.add(m, "p").record
        recs.append(Rec(stored.recording_id, device, line, started, ms, stored.started_utc))
    evals: list[Evaluation] = []
    with index.transaction(True) as q:
        form_ids = add_forms(q)
        for rec in recs:
            for _ in range(rnd.choice([0, 0, 0, 1, 1, 2])):
                name, version = rnd.choice(sorted(FORMS))
                sections = {s: rnd.randrange(0, 10_001, 25) for s in FORMS[(name, version)]}
                score = rnd.randrange(0, 10_001)
                add_evaluation(q, rec, form_ids[(name, version)], score, sections)
                evals.append(Evaluation(rec.id, name, score, sections))
    return Data(recs, evals)


@pytest.fixture
def filled(index_url: str) -> Iterator[tuple[Index, Data]]:  # noqa: F811 - the fixture
    with open_index(index_url) as idx:
        with idx.transaction(True) as q:  # PostgreSQL's test database outlives a test
            for table in ("qa_section_scores", "qa_evaluations", "qa_forms"):
                q(f"DELETE FROM {table}", ())
        yield idx, generate(idx)


# --------------------------------------------------------------------------- the Python count


@dataclass
class Expected:
    days: list[tuple[date, int, float]]
    buckets: list[int]
    calls: int
    duration: int
    evaluated: int
    sections: dict[tuple[str, str], tuple[int, int]]
    prev: tuple[int, int, int]  # calls, duration, evaluated
    scores: tuple[int, int]  # evaluations, total bp (this period)
    prev_scores: tuple[int, int]


def expect(data: Data, seen: Callable[[Rec], bool], start: date, end: date) -> Expected:
    """The figures counted row by row in Python, by other means than the SQL."""
    n = (end - start).days
    prev_start = start - timedelta(days=n)
    visible = [r for r in data.recs if seen(r)]
    per_day = Counter(r.started.date() for r in visible)
    cur = [r for r in visible if start <= r.started.date() < end]
    prev = [r for r in visible if prev_start <= r.started.date() < start]
    evaluated_ids = {e.recording_id for e in data.evals}
    days = []
    for k in range(n):
        d = start + timedelta(days=k)
        window = sum(per_day[d - timedelta(days=j)] for j in range(7))
        days.append((d, per_day[d], window / 7))
    buckets = [0] * 7
    for r in cur:
        buckets[bisect.bisect_right(BOUNDS, r.duration_ms)] += 1
    cur_ids, prev_ids = {r.id for r in cur}, {r.id for r in prev}
    sections: dict[tuple[str, str], tuple[int, int]] = {}
    for e in data.evals:
        if e.recording_id in cur_ids:
            for s, bp in e.sections.items():
                count, total = sections.get((e.form, s), (0, 0))
                sections[(e.form, s)] = (count + 1, total + bp)

    def scores(ids: set[str]) -> tuple[int, int]:
        chosen = [e.score_bp for e in data.evals if e.recording_id in ids]
        return len(chosen), sum(chosen)

    return Expected(
        days=days,
        buckets=buckets,
        calls=len(cur),
        duration=sum(r.duration_ms for r in cur),
        evaluated=sum(1 for r in cur if r.id in evaluated_ids),
        sections=sections,
        prev=(len(prev), sum(r.duration_ms for r in prev), len(prev_ids & evaluated_ids)),
        scores=scores(cur_ids),
        prev_scores=scores(prev_ids),
    )


def check(d: Dashboard, want: Expected) -> None:
    assert [(x.day, x.calls) for x in d.days] == [(a, b) for a, b, _ in want.days]
    assert [x.moving_average for x in d.days] == pytest.approx([c for _, _, c in want.days])
    assert [b.calls for b in d.buckets] == want.buckets
    cur, prev = d.current, d.previous
    assert (cur.calls, cur.duration_ms_total, cur.evaluated_calls) == (
        want.calls,
        want.duration,
        want.evaluated,
    )
    assert (prev.calls, prev.duration_ms_total, prev.evaluated_calls) == want.prev
    assert (cur.evaluations, cur.score_bp_total) == want.scores
    assert (prev.evaluations, prev.score_bp_total) == want.prev_scores
    got = {(s.form, s.section): (s.evaluations, s.score_bp_total) for s in d.sections}
    assert got == want.sections
    assert [(s.form, s.section) for s in d.sections] == sorted(want.sections)
    for s in d.sections:
        count, total = want.sections[(s.form, s.section)]
        assert s.average_percent == pytest.approx(total / count / 100)


def site_of(device: str) -> str | None:
    return next((s for s, devices in SITES.items() if device in devices), None)


# --------------------------------------------------------------------------- the figures


def test_the_figures_match_a_python_count(filled: tuple[Index, Data]):
    idx, data = filled
    cases: list[tuple[Principal, DashboardFilters, Callable[[Rec], bool]]] = [
        (EVERYONE, DashboardFilters(*NOVEMBER), lambda r: True),
        (AUDITOR, DashboardFilters(*NOVEMBER), lambda r: True),
        (EVERYONE, DashboardFilters(*NOVEMBER, site="north"), lambda r: site_of(r.device) == "north"),
        (EVERYONE, DashboardFilters(*NOVEMBER, device="dev-c", line="line2"),
         lambda r: (r.device, r.line) == ("dev-c", "line2")),
        (NORTH, DashboardFilters(*NOVEMBER), lambda r: site_of(r.device) == "north"),
        (NORTH, DashboardFilters(*NOVEMBER, line="line2"),
         lambda r: site_of(r.device) == "north" and r.line == "line2"),
        (ONE_LINE, DashboardFilters(*NOVEMBER), lambda r: (r.device, r.line) == ("dev-c", "line2")),
        # three days: the moving average reaches back further than the previous period
        (EVERYONE, DashboardFilters(date(2026, 10, 30), date(2026, 11, 2)), lambda r: True),
        (EVERYONE, DashboardFilters(date(2026, 1, 1), date(2027, 1, 2)), lambda r: True),
    ]  # fmt: skip
    for principal, filters, seen in cases:
        d = dashboard(idx, gate(idx, principal), filters)
        check(d, expect(data, seen, filters.start, filters.end))
    # The data reach every bucket, both periods and some sections, so the checks above bite.
    everything = dashboard(idx, gate(idx, EVERYONE), DashboardFilters(*NOVEMBER))
    assert all(b.calls for b in everything.buckets)
    assert everything.previous.calls and everything.current.evaluated_calls
    assert {s.form for s in everything.sections} == {"Greeting", "Compliance & <Privacy>"}
    assert {s.section for s in everything.sections if s.form == "Greeting"} == {
        "Opening",
        "Needs",
        "Close",
    }


def test_a_call_counts_on_the_utc_day_it_started(filled: tuple[Index, Data]):
    idx, _ = filled
    one_day = dashboard(
        idx, gate(idx, EVERYONE), DashboardFilters(date(2026, 11, 1), date(2026, 11, 2))
    )
    ids = {
        r.recording_id
        for r in idx.search(since="2026-11-01T00:00:00Z", until="2026-11-02T00:00:00Z", limit=10**4)
    }
    assert one_day.current.calls == len(ids) >= 1  # 00:00:00.000 is in, 23:59:59.999 before not
    assert [x.calls for x in one_day.days] == [len(ids)]


def test_a_scoped_reviewer_never_counts_another_sites_calls(filled: tuple[Index, Data]):
    idx, data = filled
    mine = dashboard(idx, gate(idx, NORTH), DashboardFilters(*NOVEMBER))
    # Asking for the other site (the page would refuse the parameter) still counts nothing.
    theirs = dashboard(idx, gate(idx, NORTH), DashboardFilters(*NOVEMBER, site="south"))
    other_device = dashboard(idx, gate(idx, NORTH), DashboardFilters(*NOVEMBER, device="dev-c"))
    south_calls = expect(data, lambda r: r.device == "dev-c", *NOVEMBER).calls
    assert south_calls > 0
    for d in (theirs, other_device):
        assert d.current.calls == d.previous.calls == d.current.evaluations == 0
        assert d.sections == () and sum(b.calls for b in d.buckets) == 0
    everyone = dashboard(idx, gate(idx, EVERYONE), DashboardFilters(*NOVEMBER))
    no_site = expect(data, lambda r: r.device == "dev-d", *NOVEMBER).calls
    assert mine.current.calls == everyone.current.calls - south_calls - no_site
    assert mine.current.evaluations < everyone.current.evaluations


def test_an_empty_period(filled: tuple[Index, Data]):
    idx, _ = filled
    f = DashboardFilters(date(2025, 3, 1), date(2025, 3, 31))
    d = dashboard(idx, gate(idx, EVERYONE), f)
    assert [x.calls for x in d.days] == [0] * 30 and len(d.days) == 30
    assert (d.days[0].day, d.days[-1].day) == (date(2025, 3, 1), date(2025, 3, 30))
    assert [b.calls for b in d.buckets] == [0] * 7 and d.sections == ()
    cur = d.current
    assert (cur.average_duration_ms, cur.share_evaluated, cur.average_score_percent) == (
        None,
        None,
        None,
    )
    charts = dashboard_charts(d)
    assert charts.sections is None
    assert len(bars(charts.per_day)) == 30
    assert [(f.current, f.change) for f in figures(d.current, d.previous)] == [
        ("0", "±0"),
        ("—", "—"),
        ("—", "—"),
        ("—", "—"),
    ]


def test_each_view_is_one_search_leaf_and_a_role_without_search_is_refused(
    filled: tuple[Index, Data],
):
    idx, _ = filled
    before = len(leaves(idx, "access"))
    dashboard(idx, gate(idx, NORTH), DashboardFilters(*NOVEMBER, line="line1"))
    [leaf] = leaves(idx, "access")[before:]
    assert (leaf["user"], leaf["action"], leaf["recording_id"]) == ("nora", "search", None)
    assert leaf["detail"] == "web: dashboard 2026-11-01..2026-12-01 line=line1"
    with pytest.raises(AccessDenied, match="may not search"):
        dashboard(idx, gate(idx, ADMIN), DashboardFilters(*NOVEMBER))
    refused = leaves(idx, "access")[-1]
    assert refused["user"] == "adm" and refused["detail"].startswith("refused")


def test_trend_figures():
    f = DashboardFilters(*NOVEMBER)
    now = PeriodTotals(f.start, f.end, 120, 120 * 90_000, 30, 10, 10 * 8000)
    before = PeriodTotals(f.previous[0], f.start, 100, 100 * 120_000, 20, 4, 4 * 8250)
    rows = {row.name: row for row in figures(now, before)}
    assert [(r.current, r.previous, r.change, r.direction) for r in rows.values()] == [
        ("120", "100", "+20 (+20.0 %)", "up"),
        ("1:30", "2:00", "−0:30 (−25.0 %)", "down"),
        ("25.0 %", "20.0 %", "+5.0 points", "up"),
        ("80.0 %", "82.5 %", "−2.5 points", "down"),
    ]
    assert list(rows) == [
        "Calls",
        "Average duration",
        "Share of calls evaluated",
        "Average score",
    ]


# --------------------------------------------------------------------------- the parameters

TODAY = date(2026, 11, 25)


def parse(sites: tuple[str, ...] = ("north",), /, **params: str) -> DashboardFilters:
    return DashboardFilters.from_query(params, today=TODAY, sites=sites)


def test_the_period_and_filters_from_the_query():
    assert parse() == DashboardFilters(date(2026, 10, 27), date(2026, 11, 26))  # 30 days to today
    assert parse(**{"from": "2026-11-20", "to": "", "site": ""}) == DashboardFilters(
        date(2026, 11, 20), date(2026, 11, 26)
    )
    assert parse(to="2026-02-01").start == date(2026, 1, 2)
    f = parse(**{"from": "2025-11-25", "to": "2026-11-26", "site": "north", "device": " dev-a "})
    assert (f.days, f.site, f.device, f.line) == (366, "north", "dev-a", None)
    assert DashboardFilters.from_query(f.query(), today=TODAY, sites=["north"]) == f
    assert f.describe() == "2025-11-25..2026-11-26 site=north device=dev-a"
    assert f.previous == (date(2024, 11, 24), date(2025, 11, 25))


@pytest.mark.parametrize(
    ("params", "parameter", "words"),
    [
        ({"from": "2026-13-01"}, "from", "is not a date; write YYYY-MM-DD"),
        ({"to": "tomorrow"}, "to", "is not a date"),
        ({"from": "2026-11-20", "to": "2026-11-20"}, "to", "must be later than from"),
        ({"from": "2026-12-01"}, "to", "must be later than from"),
        ({"from": "2025-01-01", "to": "2026-01-03"}, "from", "367 days; at most 366"),
        ({"from": "0001-01-01"}, "from", "out of range"),
        ({"site": "south"}, "site", "not one of your sites (north)"),
        ({"device": "a\x00b"}, "device", "control characters"),
        ({"line": "x" * 201}, "line", "at most 200 characters"),
        ({"page": "2"}, "page", "unknown; the parameters are from, to, site, device, line"),
    ],
)
def test_parameters_not_understood_are_named(params: dict[str, str], parameter: str, words: str):
    with pytest.raises(DashboardParameterError) as caught:
        parse(**params)
    assert caught.value.parameter == parameter
    assert str(caught.value).startswith(f"{parameter}: ") and words in str(caught.value)


def test_the_sites_a_viewer_may_pick():
    sites = {k: frozenset(v) for k, v in SITES.items()}
    assert visible_sites(EVERYONE, sites) == ["empty", "north", "south"]
    assert visible_sites(AUDITOR, sites) == ["empty", "north", "south"]
    assert visible_sites(NORTH, sites) == ["north"]
    assert visible_sites(ONE_LINE, sites) == ["south"]
    assert visible_sites(ADMIN, sites) == []
    by_device = Principal("d", frozenset({Role.REVIEWER}), Scope(devices=frozenset({"dev-b"})))
    assert visible_sites(by_device, sites) == ["north"]


# --------------------------------------------------------------------------- the charts


def parsed(svg: str) -> ET.Element:
    root = ET.fromstring(svg)  # well-formed XML, or this raises
    assert root.tag == f"{SVG}svg" and root.get("role") == "img"
    title_id, desc_id = str(root.get("aria-labelledby")).split()
    assert root.find(f"{SVG}title") is not None and root.find(f"{SVG}title").get("id") == title_id  # type: ignore[union-attr]
    assert root.find(f"{SVG}desc").get("id") == desc_id  # type: ignore[union-attr]
    assert all(el.get("style") is None for el in root.iter())  # CSP: style-src 'self'
    return root


def bars(svg: str) -> list[tuple[str, float, float]]:
    """(title, height, width) of each bar."""
    root = parsed(svg)
    return [
        (
            rect.findtext(f"{SVG}title") or "",
            float(rect.get("height", 0)),
            float(rect.get("width", 0)),
        )
        for rect in root.iter(f"{SVG}rect")
        if rect.get("class") == "bar" and rect.find(f"{SVG}title") is not None
    ]


def texts(svg: str) -> list[str]:
    return [el.text or "" for el in parsed(svg).iter(f"{SVG}text")]


def test_a_column_chart_has_a_titled_bar_per_day_and_its_line():
    values = [3, 0, 7, 12, 5]
    svg = column_chart(
        "c-days",
        "Calls <per> day",
        "five days & more",
        [Bar(f"11-0{i + 1}", v, f"2026-11-0{i + 1}: {v} calls") for i, v in enumerate(values)],
        x_label="Day",
        y_label="Calls",
        line=[3.0, 1.5, 3.3, 5.5, 5.4],
        legend=("Calls", "7-day average"),
    )
    root = parsed(svg)
    assert root.findtext(f"{SVG}title") == "Calls <per> day"
    assert root.findtext(f"{SVG}desc") == "five days & more"
    got = bars(svg)
    assert [t for t, _, _ in got] == [f"2026-11-0{i + 1}: {v} calls" for i, v in enumerate(values)]
    heights = [h for _, h, _ in got]
    assert heights[1] == 0 and heights[3] == max(heights)  # proportional to the values
    assert heights[2] / heights[3] == pytest.approx(7 / 12, abs=0.01)
    [line] = [el for el in root.iter(f"{SVG}polyline")]
    assert len(str(line.get("points")).split()) == 5
    assert {"Day", "Calls", "7-day average", "0", "15"} <= set(texts(svg))  # axes, ticks
    assert svg == column_chart(  # deterministic
        "c-days",
        "Calls <per> day",
        "five days & more",
        [Bar(f"11-0{i + 1}", v, f"2026-11-0{i + 1}: {v} calls") for i, v in enumerate(values)],
        x_label="Day",
        y_label="Calls",
        line=[3.0, 1.5, 3.3, 5.5, 5.4],
        legend=("Calls", "7-day average"),
    )


def test_many_days_get_every_bar_but_at_most_twelve_labels():
    svg = column_chart(
        "c",
        "t",
        "s",
        [Bar(f"d{i}", i % 5, f"day {i}") for i in range(366)],
        x_label="x",
        y_label="y",
    )
    assert len(bars(svg)) == 366
    labels = [t for t in texts(svg) if t.startswith("d")]
    assert 6 <= len(labels) <= 12 and labels[0] == "d0"


def test_a_histogram_and_a_bar_chart():
    hist = histogram(
        "h", "Durations", "s", [Bar(f"b{i}", v, f"bucket {i}") for i, v in enumerate([4, 0, 9])],
        x_label="Duration", y_label="Calls",
    )  # fmt: skip
    assert [t for t, _, _ in bars(hist)] == ["bucket 0", "bucket 1", "bucket 2"]
    assert {"b0", "b1", "b2"} <= set(texts(hist))
    scores = bar_chart(
        "s",
        "Scores",
        "s",
        [Bar("Compliance & <Privacy> · Identity check of the caller", 50.0, "a"),
         Bar("Greeting · Close", 100.0, "b"), Bar("Greeting · Opening", 130.0, "c")],
        x_label="Average score (%)",
    )  # fmt: skip
    got = bars(scores)
    assert [t for t, _, _ in got] == ["a", "b", "c"]
    assert got[1][2] == pytest.approx(2 * got[0][2]) and got[2][2] == got[1][2]  # clamped at 100
    shown = texts(scores)
    assert "50.0 %" in shown and "Greeting · Close" in shown
    assert any(t.startswith("Compliance & <Privacy> · Identity") and t.endswith("…") for t in shown)


def test_chart_inputs_that_are_refused():
    with pytest.raises(ValueError, match="chart id"):
        column_chart('x" onload="', "t", "s", [], x_label="x", y_label="y")
    with pytest.raises(ValueError, match="one value per bar"):
        column_chart("x", "t", "s", [Bar("a", 1, "a")], x_label="x", y_label="y", line=[])
    assert len(bars(column_chart("x", "t", "s", [], x_label="x", y_label="y"))) == 0


def test_nice_ticks():
    assert nice_ticks(0) == [0, 1]
    assert nice_ticks(12, whole=True) == [0, 5, 10, 15]
    assert nice_ticks(31, whole=True) == [0, 10, 20, 30, 40]
    assert nice_ticks(3, whole=True) == [0, 1, 2, 3]
    assert nice_ticks(97) == [0, 20, 40, 60, 80, 100]
    assert nice_ticks(0.9) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]


# --------------------------------------------------------------------------- the page


@dataclass
class WebOffice:
    cfg: OfficeConfig
    index: Index
    data: Data
    clock: SteppingClock
    nora: Login  # reviewer of site north
    auditor: Login
    admin: Login

    def client(self, login: Login) -> TestClient:
        accounts = Accounts(
            self.index, self.cfg.accounts, sites=self.cfg.sites, clock=self.clock.now
        )
        app = create_app(self.cfg, self.index, FileBlobStore(self.cfg.root), accounts=accounts)
        client = TestClient(app, follow_redirects=False)
        sign_in(client, login)
        return client


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebOffice]:
    root: Path = tmp_path_factory.mktemp("dashboard")
    cfg = OfficeConfig(root=root, accounts=CHEAP, sites=SITES)
    index = open_index(cfg.index_url)
    clock = SteppingClock()
    admin = add_account(index, "adam", [Role.ADMIN], settings=CHEAP, clock=clock)
    nora = add_account(index, "nora", [Role.REVIEWER], NORTH.scope, settings=CHEAP, sites=SITES)
    auditor = add_account(index, "aud", [Role.AUDITOR], settings=CHEAP)
    yield WebOffice(cfg, index, generate(index), clock, nora, auditor, admin)
    index.close()


NOVEMBER_QUERY = "/dashboard?from=2026-11-01&to=2026-12-01"


def svgs(html: str) -> list[str]:
    return re.findall(r"<svg\b.*?</svg>", html, re.S)


def access(o: WebOffice) -> list[dict[str, Any]]:
    return leaves(o.index, "access")


def test_the_page_of_a_reviewer_of_one_site(web: WebOffice):
    client = web.client(web.nora)
    r = client.get(NOVEMBER_QUERY)
    assert r.status_code == 200, r.text
    want = expect(web.data, lambda rec: site_of(rec.device) == "north", *NOVEMBER)
    assert f"30 days, 2026-11-01 to 2026-11-30 (UTC): {want.calls} calls you may see" in r.text
    per_day, durations, sections = (parsed(s) for s in svgs(r.text))
    assert len(bars(ET.tostring(per_day, encoding="unicode"))) == 30
    day_titles = [t for t, _, _ in bars(svgs(r.text)[0])]
    first = want.days[0][1]
    assert day_titles[0] == f"2026-11-01 (Sun): {first} call" + ("" if first == 1 else "s")
    assert [t.split(": ")[1].split(" ")[0] for t, _, _ in bars(svgs(r.text)[1])] == [
        str(n) for n in want.buckets
    ]
    assert len(bars(svgs(r.text)[2])) == len(want.sections)
    assert durations.findtext(f"{SVG}title") == "Call duration"
    assert sections.findtext(f"{SVG}title") == "Average score per form section"
    # A table of the same numbers beside each chart, captioned.
    assert r.text.count("<caption") == 4
    for day, calls, _ in want.days[:3]:
        assert re.search(
            rf"{day.isoformat()} <span[^>]*>\w+</span></th><td class=\"num\">{calls}</td>", r.text
        )
    assert "Compliance &amp; &lt;Privacy&gt;" in r.text and "<Privacy>" not in r.text
    # Only the viewer's sites to pick; the nav link is the current page; no inline style.
    assert re.findall(r'<option value="(\w+)"', r.text) == ["north"]
    assert re.search(r'href="/dashboard" aria-current="page"', r.text)
    assert " style=" not in r.text and "<script>" not in r.text
    leaf = access(web)[-1]
    assert (leaf["user"], leaf["action"], leaf["recording_id"]) == ("nora", "search", None)
    assert leaf["detail"] == "web: dashboard 2026-11-01..2026-12-01"
    r = client.get(NOVEMBER_QUERY + "&site=north&line=line2")
    assert (
        access(web)[-1]["detail"] == "web: dashboard 2026-11-01..2026-12-01 site=north line=line2"
    )
    want = expect(
        web.data, lambda rec: site_of(rec.device) == "north" and rec.line == "line2", *NOVEMBER
    )
    assert f"line line2: {want.calls} calls you may see" in r.text


def test_an_auditor_sees_every_site_and_the_default_period(web: WebOffice):
    client = web.client(web.auditor)
    r = client.get("/dashboard")
    assert r.status_code == 200
    assert re.findall(r'<option value="(\w+)"', r.text) == ["empty", "north", "south"]
    today = datetime.now(UTC).date()
    start = today - timedelta(days=29)
    assert f"30 days, {start.isoformat()} to {today.isoformat()} (UTC)" in r.text
    assert access(web)[-1]["detail"] == (
        f"web: dashboard {start.isoformat()}..{(today + timedelta(days=1)).isoformat()}"
    )


def test_the_ledger_leaf_is_appended_before_anything_is_read(
    web: WebOffice, monkeypatch: pytest.MonkeyPatch
):
    client = web.client(web.nora)
    statements: list[str] = []
    real = web.index.transaction

    @contextmanager
    def spy(write: bool) -> Iterator[Query]:
        with real(write) as q:

            def recorded(sql: str, params: Any) -> Any:
                statements.append(sql)
                return q(sql, params)

            yield recorded

    monkeypatch.setattr(web.index, "transaction", spy)
    assert client.get(NOVEMBER_QUERY).status_code == 200
    leaf_at = [i for i, s in enumerate(statements) if s.startswith("INSERT INTO ledger")]
    reads = [i for i, s in enumerate(statements) if "qa_evaluations" in s or "recordings" in s]
    assert len(leaf_at) == 1 and len(reads) == 4
    assert leaf_at[0] < min(reads)
    # A ledger that takes no leaf: refused, and not one figure leaves.
    monkeypatch.setattr(Ledger, "append", failing_append)
    r = client.get(NOVEMBER_QUERY)
    assert r.status_code == 403 and "could not be logged" in r.text
    assert "<svg" not in r.text and "calls you may see" not in r.text


def failing_append(self: Ledger, leaf: Any) -> int:
    raise LedgerError("disk full")


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (
            "from=2026-13-01",
            "from: &#39;2026-13-01&#39; is not a date; write YYYY-MM-DD, e.g. 2026-11-25",
        ),
        ("from=2026-11-20&to=2026-11-01", "to: 2026-11-01 must be later than from (2026-11-20)"),
        ("from=2025-01-01&to=2026-11-01", "from: the period is 669 days; at most 366"),
        ("site=south", "site: &#39;south&#39; is not one of your sites (north)"),
        ("sort=calls", "sort: unknown; the parameters are from, to, site, device, line"),
    ],
)
def test_parameters_not_understood_get_the_page_with_a_message(
    web: WebOffice, query: str, message: str
):
    client = web.client(web.nora)
    before = len(access(web))
    r = client.get(f"/dashboard?{query}")
    assert r.status_code == 400
    assert f"The dashboard could not be shown: {message}." in r.text
    assert 'role="alert"' in r.text and 'name="from"' in r.text and "<svg" not in r.text
    assert "Traceback" not in r.text
    [leaf] = access(web)[before:]
    assert leaf["detail"] == f"web: dashboard, not understood: {message.split(':', maxsplit=1)[0]}"


def test_an_admin_has_no_dashboard(web: WebOffice):
    client = web.client(web.admin)
    r = client.get(NOVEMBER_QUERY)
    assert r.status_code == 403
    assert "adam may not search" in r.text and "<svg" not in r.text
    assert 'href="/dashboard"' not in r.text  # no link to it either
    assert access(web)[-1]["detail"].startswith("refused")
    assert client.get("/dashboard?from=nonsense").status_code == 403  # refused before parsing
    assert 'href="/dashboard"' in web.client(web.nora).get("/").text
