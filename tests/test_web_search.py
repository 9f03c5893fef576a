"""The web search page's query, on SQLite and PostgreSQL: every filter, paging, sorting,
the scope applied in SQL equal to ``index.search`` filtered by ``gate.may`` (hypothesis),
injection attempts, and the URL query round trip."""

from __future__ import annotations

import getpass
import itertools
import random
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headoffice.access import AccessDenied, Actor, Gate
from headoffice.authz import Action, DeviceLine, Principal, Role, Scope
from headoffice.config import OfficeConfig
from headoffice.index import Index, StoredRecord, open_index
from headoffice.web import search
from headoffice.web.notes import NoteStore
from headoffice.web.search import (
    SearchFilters,
    SearchPage,
    SearchParameterError,
    search_page,
)
from tests.office_accounts import leaves
from tests.test_office_index import Device, index_url, pg_dsn  # noqa: F401 - fixtures

DEVICES = ("dev-a", "dev-b", "dev-c", "dev-d")
SITES = {"north": ("dev-a", "dev-b"), "south": ("dev-c",), "empty": ()}
LINES = ("line1", "line2")
CALLERS = [
    {"number": "+41 44 555 01 01", "name": "Müller AG", "source": "fsk"},
    {"number": "0201234567", "name": "50%_off", "source": "fsk"},
    {"number": "0799998877", "name": "O'Brien; DROP", "source": "fsk"},
    None,
]
EVERYONE = Principal("sup", frozenset({Role.SUPERVISOR}), Scope.all())


def gate(index: Index, principal: Principal = EVERYONE) -> Gate:
    return Gate(
        index, OfficeConfig(sites=SITES), Actor(principal, "t", f"test:{getpass.getuser()}")
    )


@pytest.fixture
def filled(index_url: str) -> Iterator[Index]:  # noqa: F811 - the fixture
    """24 recordings over 4 devices, 2 lines, 4 callers, 3 directions, 3 days."""
    rnd = random.Random(7)
    devices = {d: Device(d) for d in DEVICES}
    with open_index(index_url) as idx:
        for n in range(24):
            dev = devices[DEVICES[n % 4]]
            m = dev.manifest(
                line=LINES[n % 2 if n % 5 else 1],
                started_utc=f"2026-11-{24 + n % 3}T{10 + n % 7:02d}:{n:02d}:00.000+00:00",
                ended_utc=f"2026-11-{24 + n % 3}T{10 + n % 7:02d}:{n:02d}:30.000+00:00",
                duration_ms=rnd.choice([4_000, 30_000, 30_000, 61_500, 600_000]),
                caller_id=CALLERS[n % 4],
                direction=("inbound", "outbound", "unknown")[n % 3],
                dialled_digits="0800123" if n % 6 == 1 else ("**55" if n % 6 == 4 else ""),
                recovered=n % 7 == 3,
            )
            idx.add(m, "p")
        yield idx


def everything(idx: Index) -> list[StoredRecord]:
    return idx.search(limit=10_000)


def ids(page: SearchPage) -> list[str]:
    return [r.recording_id for r in page.rows]


def run(idx: Index, principal: Principal = EVERYONE, **params: Any) -> SearchPage:
    filters = SearchFilters.from_query({k: str(v) for k, v in params.items()})
    return search_page(idx, gate(idx, principal), filters, SITES)


def all_pages(idx: Index, principal: Principal, filters: SearchFilters) -> list[str]:
    out: list[str] = []
    g = gate(idx, principal)
    page = 1
    while True:
        p = search_page(idx, g, filters.replace(page=page), SITES)
        out += ids(p)
        assert p.total >= len(out)
        if page >= p.pages:
            assert len(out) == p.total
            return out
        page += 1


# --------------------------------------------------------------------------- filters


def expected(idx: Index, pred: Any) -> set[str]:
    return {r.recording_id for r in everything(idx) if pred(r)}


def test_each_filter(filled: Index):
    idx = filled
    cases: list[tuple[dict[str, Any], Any]] = [
        ({}, lambda r: True),
        ({"since": "2026-11-25"}, lambda r: r.started_utc >= "2026-11-25"),
        ({"until": "2026-11-25"}, lambda r: r.started_utc < "2026-11-25"),
        (
            {"since": "2026-11-25T11:00:00Z", "until": "2026-11-26T12:00:00+01:00"},
            lambda r: "2026-11-25T11:00" <= r.started_utc < "2026-11-26T11:00",
        ),
        ({"site": "north"}, lambda r: r.device_id in ("dev-a", "dev-b")),
        ({"site": "empty"}, lambda r: False),
        ({"site": "nowhere"}, lambda r: False),
        ({"device": "dev-c"}, lambda r: r.device_id == "dev-c"),
        ({"line": "line2"}, lambda r: r.line == "line2"),
        (
            {"device": "dev-a", "line": "line2"},
            lambda r: (r.device_id, r.line) == ("dev-a", "line2"),
        ),
        ({"direction": "outbound"}, lambda r: r.direction == "outbound"),
        ({"caller": "müller"}, lambda r: r.caller_name == "Müller AG"),
        ({"caller": "555 01"}, lambda r: r.caller_number == "+41 44 555 01 01"),
        ({"caller": "%_"}, lambda r: r.caller_name == "50%_off"),  # wildcards are literal
        ({"caller": "o'brien"}, lambda r: r.caller_name == "O'Brien; DROP"),
        ({"digits": "0800"}, lambda r: r.dialled_digits == "0800123"),
        ({"digits": "**"}, lambda r: r.dialled_digits == "**55"),
        ({"min_duration": 61}, lambda r: r.duration_ms >= 61_000),
        ({"max_duration": 30}, lambda r: r.duration_ms <= 30_000),
        ({"min_duration": 30, "max_duration": 62}, lambda r: 30_000 <= r.duration_ms <= 62_000),
        ({"recovered": "true"}, lambda r: r.recovered),
        ({"recovered": "no"}, lambda r: not r.recovered),
    ]
    for params, pred in cases:
        want = expected(idx, pred)
        page = run(idx, page_size=100, **params)
        assert set(ids(page)) == want, params
        assert page.total == len(want), params
    assert run(idx, caller="müller").total > 0
    assert run(idx, recovered="true").total > 0


def test_caller_pages_are_the_same_whichever_way_they_are_found(
    filled: Index, monkeypatch: pytest.MonkeyPatch
):
    """A rare caller substring's page is found through the caller_hits prefix, a common
    one by walking the sort order: the same rows, in the same order, either way."""
    for caller in ("müller", "555 01", "0", "o'brien", "%_"):
        want = expected(
            filled,
            lambda r: caller in f"{r.caller_number or ''}|{r.caller_name or ''}".lower(),  # noqa: B023
        )
        for sort in ("started", "duration", "caller"):
            pages = []
            for rare in (0, 10_000):  # never rare / always rare
                monkeypatch.setattr(search, "RARE_CALLER_MATCHES", rare)
                pages.append(
                    [
                        ids(run(filled, caller=caller, sort=sort, page_size=25, page=n))
                        for n in (1, 2)
                    ]
                )
            assert pages[0] == pages[1], (caller, sort)
            assert set(pages[0][0] + pages[0][1]) == want, (caller, sort)


def mark_for_review(idx: Index) -> dict[str, set[str]]:
    """Notes, reviewed marks, holds (one released) and QA evaluations on some of the
    recordings of ``filled``: what each filter should find, by name."""
    recs = sorted(everything(idx), key=lambda r: r.recording_id)
    notes = NoteStore(idx)
    for r in recs[0:6]:
        notes.add_note(r, "rita", 1000, "a note", "note")
    notes.add_note(recs[0], "sam", 2000, "", "bookmark")
    for r in recs[4:10]:
        notes.mark_reviewed(r.recording_id, "rita")
    notes.mark_reviewed(recs[4].recording_id, "sam")
    notes.mark_reviewed(recs[9].recording_id, "rita", reviewed=False)  # unmarked again
    when = "2026-12-01T00:00:00.000+00:00"
    with idx.transaction(True) as q:
        for n, r in enumerate(recs[8:12]):
            released = (when, "sam") if n == 3 else (None, None)
            q(
                "INSERT INTO holds (recording_id, case_ref, reason, set_by, set_at, released_at,"
                " released_by) VALUES (?, 'CASE-1', 'dispute', 'cleo', ?, ?, ?)",
                (r.recording_id, when, *released),
            )
        q(
            "INSERT INTO qa_forms (name, version, definition, created_by, created_at)"
            " VALUES ('calls', 1, '{}', 'ada', ?)",
            (when,),
        )
        [(form_id,)] = q("SELECT id FROM qa_forms", ())
        # recs[12] scored twice (90 % then 40 %); a failed one scores 0
        for r, bp, failed in [
            (recs[12], 9000, False),
            (recs[12], 4000, False),
            (recs[13], 7550, False),
            (recs[14], 0, True),
            (recs[15], 10000, False),
        ]:
            q(
                "INSERT INTO qa_evaluations (recording_id, form_id, evaluator, agent, device_id,"
                " line, call_started_utc, raw_bp, score_bp, failed, answers, created_at)"
                " VALUES (?, ?, 'rita', 'al', ?, ?, ?, ?, ?, ?, '{}', ?)",
                (r.recording_id, form_id, r.device_id, r.line, r.started_utc, bp, bp,
                 failed, when),
            )  # fmt: skip

    def ids_of(rs: list[StoredRecord]) -> set[str]:
        return {r.recording_id for r in rs}

    return {
        "notes": ids_of(recs[0:6]),
        "reviewed": ids_of(recs[4:9]),
        "held": ids_of(recs[8:11]),
        "score_40_80": ids_of(recs[12:14]),
        "score_ge_90": ids_of([recs[12], recs[15]]),
        "score_le_10": ids_of([recs[14]]),
        "scored": ids_of(recs[12:16]),
    }


def test_review_filters(filled: Index):
    idx = filled
    want = mark_for_review(idx)
    every = expected(idx, lambda r: True)
    cases: list[tuple[dict[str, Any], set[str]]] = [
        ({"has_notes": "true"}, want["notes"]),
        ({"has_notes": "false"}, every - want["notes"]),
        ({"reviewed": "true"}, want["reviewed"]),
        ({"reviewed": "false"}, every - want["reviewed"]),
        ({"on_hold": "true"}, want["held"]),
        ({"on_hold": "false"}, every - want["held"]),
        ({"min_score": 40, "max_score": 80}, want["score_40_80"]),
        ({"min_score": 90}, want["score_ge_90"]),
        ({"max_score": 10}, want["score_le_10"]),
        ({"min_score": 0}, want["scored"]),
        ({"reviewed": "true", "has_notes": "true"}, want["reviewed"] & want["notes"]),
        ({"on_hold": "true", "reviewed": "false"}, want["held"] - want["reviewed"]),
    ]
    for params, found in cases:
        page = run(idx, page_size=100, **params)
        assert set(ids(page)) == found, params
        assert page.total == len(found), params


def test_rows_carry_their_review_marks(filled: Index):
    idx = filled
    want = mark_for_review(idx)
    page = run(idx, page_size=100)
    assert set(page.marks) == set(ids(page))
    recs = sorted(everything(idx), key=lambda r: r.recording_id)
    for rid, m in page.marks.items():
        assert m.reviewed == (rid in want["reviewed"]), rid
        assert m.on_hold == (rid in want["held"]), rid
        assert (m.notes > 0) == (rid in want["notes"]), rid
        assert (m.score_bp is not None) == (rid in want["scored"]), rid
    first = page.marks[recs[0].recording_id]
    assert first.notes == 2  # a note and a bookmark
    twice = page.marks[recs[12].recording_id]
    assert (twice.score_bp, twice.score) == (4000, "40 %")  # the latest evaluation
    failed = page.marks[recs[14].recording_id]
    assert (failed.score_bp, failed.failed) == (0, True)


def test_paging_and_total(filled: Index):
    idx = filled
    every = [r.recording_id for r in everything(idx)]
    first = run(idx, page_size=25, sort="started", order="asc")
    assert (first.total, first.page, first.pages, len(first.rows)) == (24, 1, 1, 24)
    assert ids(first) == every  # the same order as index.search
    # 24 rows, pages of 25 -> with a date filter fewer; build pages of the whole by slicing
    assert run(idx, page=2, page_size=25).rows == []
    assert run(idx, page=2, page_size=25).total == 24
    empty = run(idx, device="nobody")
    assert (empty.total, empty.pages, empty.rows) == (0, 1, [])


def test_paging_over_many_pages(index_url: str):  # noqa: F811 - the fixture
    dev = Device("dev-p")
    with open_index(index_url) as idx:
        for n in range(60):
            idx.add(
                dev.manifest(
                    started_utc=f"2026-11-25T10:{n:02d}:00.000+00:00",
                    ended_utc=f"2026-11-25T10:{n:02d}:30.000+00:00",
                    caller_id=None,
                ),
                "p",
            )
        p1 = run(idx, page_size=25)
        p3 = run(idx, page_size=25, page=3)
        assert (p1.total, p1.pages, len(p1.rows), len(p3.rows)) == (60, 3, 25, 10)
        together = all_pages(idx, EVERYONE, SearchFilters(page_size=25))
        assert together == sorted(together, reverse=True, key=lambda i: idx.get(i).started_utc)  # type: ignore[union-attr]
        assert len(set(together)) == 60


def test_sorting(filled: Index):
    idx = filled
    for key, field in (
        ("started", lambda r: r.started_utc),
        ("duration", lambda r: r.duration_ms),
        ("device", lambda r: (r.device_id, r.line)),
        ("caller", lambda r: r.caller_number or ""),
    ):
        for order in ("asc", "desc"):
            rows = run(idx, sort=key, order=order, page_size=100).rows
            keys = [field(r) for r in rows]
            assert keys == sorted(keys, reverse=order == "desc"), (key, order)
            # ties break by start time in the same direction
            for a, b in itertools.pairwise(rows):
                if field(a) == field(b):
                    assert (a.started_utc <= b.started_utc) == (order == "asc") or (
                        a.started_utc == b.started_utc
                    )


# --------------------------------------------------------------------------- scope


def principals() -> st.SearchStrategy[Principal]:
    lines = st.builds(DeviceLine, st.sampled_from([*DEVICES, "dev-x"]), st.sampled_from(LINES))
    scope = st.builds(
        Scope,
        sites=st.frozensets(st.sampled_from([*SITES, "unknown"]), max_size=2),
        devices=st.frozensets(st.sampled_from([*DEVICES, "dev-x"]), max_size=2),
        lines=st.frozensets(lines, max_size=3),
        everything=st.sampled_from([False, False, True]),
    )
    roles = st.frozensets(st.sampled_from(list(Role)), max_size=2)
    return st.builds(Principal, st.just("p"), roles, scope)


def filter_params() -> st.SearchStrategy[dict[str, str]]:
    return st.fixed_dictionaries(
        {},
        optional={
            "device": st.sampled_from(DEVICES),
            "line": st.sampled_from(LINES),
            "site": st.sampled_from([*SITES, "unknown"]),
            "direction": st.sampled_from(["inbound", "outbound", "unknown"]),
            "caller": st.sampled_from(["555", "müller", "%", "_", "0", "brien", "x"]),
            "digits": st.sampled_from(["0", "*", "55"]),
            "since": st.sampled_from(["2026-11-24T12:00:00Z", "2026-11-25"]),
            "until": st.sampled_from(["2026-11-26", "2026-11-27"]),
            "min_duration": st.sampled_from(["0", "30", "61"]),
            "max_duration": st.sampled_from(["61", "600", "1000"]),
            "recovered": st.sampled_from(["true", "false"]),
        },
    )


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(principal=principals(), params=filter_params())
def test_scope_in_sql_equals_filtering_search_with_may(
    filled: Index, principal: Principal, params: dict[str, str]
):
    idx = filled
    filters = SearchFilters.from_query({**params, "page_size": "25", "order": "asc"})
    g = gate(idx, principal)
    kw: dict[str, Any] = {
        "device": filters.device,
        "line": filters.line,
        "since": filters.since,
        "until": filters.until,
        "caller": filters.caller,
        "digits": filters.digits,
        "min_duration_ms": None if filters.min_duration is None else filters.min_duration * 1000,
        "max_duration_ms": None if filters.max_duration is None else filters.max_duration * 1000,
        "recovered": filters.recovered,
    }
    site = set(SITES.get(filters.site, ())) if filters.site is not None else None
    want = [
        r.recording_id
        for r in idx.search(**kw, limit=10_000)
        if g.may(Action.VIEW_METADATA, r)
        and (site is None or r.device_id in site)
        and (filters.direction is None or r.direction == filters.direction)
    ]
    if not g.may(Action.SEARCH):
        with pytest.raises(AccessDenied):
            search_page(idx, g, filters, SITES)
        return
    assert all_pages(idx, principal, filters) == want


def test_search_is_one_ledger_leaf_per_page_and_refused_without_the_grant(filled: Index):
    idx = filled
    before = len(leaves(idx, "access"))
    run(idx, caller="555", page_size=25)
    found = leaves(idx, "access")[before:]
    assert [(leaf["action"], leaf["detail"]) for leaf in found] == [
        ("search", "caller=555&page_size=25")
    ]
    admin = Principal("adm", frozenset({Role.ADMIN}), Scope.all())
    with pytest.raises(AccessDenied):
        run(idx, admin)
    assert leaves(idx, "access")[-1]["detail"].startswith("refused")
    reviewer = Principal("rev", frozenset({Role.REVIEWER}), Scope(sites=frozenset({"south"})))
    assert {r.device_id for r in run(idx, reviewer, page_size=100).rows} == {"dev-c"}
    nothing = Principal("rev", frozenset({Role.REVIEWER}), Scope())
    assert run(idx, nothing).total == 0
    auditor = Principal("aud", frozenset({Role.AUDITOR}), Scope())
    assert run(idx, auditor).total == 24


# --------------------------------------------------------------------------- injection

ATTEMPTS = [
    "' OR '1'='1",
    "'; DROP TABLE recordings; --",
    "x' UNION SELECT name, password_hash FROM users --",
    '" OR ""="',
    "%' OR 1=1 --",
    "\\",
    "?",
    "%s",
    "%(x)s",
    "') OR ('a'='a",
    "1; DELETE FROM ledger",
    "\x00",
]


def test_injection_attempts_in_every_text_filter_find_nothing(filled: Index):
    idx = filled
    with idx.transaction(False) as q:
        tables_before = q("SELECT COUNT(*) FROM recordings", ())
    for name in ("site", "device", "line", "caller", "digits"):
        for attempt in ATTEMPTS:
            try:
                filters = SearchFilters.from_query({name: attempt})
            except SearchParameterError:
                continue  # refused outright (e.g. blank after strip)
            page = search_page(idx, gate(idx), filters, SITES)
            assert page.total == 0, (name, attempt)
            assert page.rows == []
    with idx.transaction(False) as q:
        assert q("SELECT COUNT(*) FROM recordings", ()) == tables_before
        assert q("SELECT COUNT(*) FROM users", ()) == [(0,)]
    assert len(everything(idx)) == 24


# --------------------------------------------------------------------------- the URL query


def test_query_round_trip():
    f = SearchFilters.from_query(
        {
            "since": "2026-11-25",
            "until": "2026-11-26T10:00:00+01:00",
            "site": "north",
            "device": "dev-a",
            "line": "line1",
            "direction": "inbound",
            "caller": "Müller & Co?=",
            "digits": "*55#",
            "min_duration": "10",
            "max_duration": "600",
            "recovered": "false",
            "page": "3",
            "page_size": "100",
            "sort": "caller",
            "order": "asc",
        }
    )
    assert f.until is not None and f.until.isoformat() == "2026-11-26T09:00:00+00:00"
    assert f.recovered is False
    assert SearchFilters.from_query(dict(parse_qsl(f.to_query()))) == f
    assert SearchFilters().to_query() == ""
    assert SearchFilters.from_query({"caller": "", "page": " "}) == SearchFilters()
    assert f.replace(page=1).page == 1


@settings(max_examples=100, deadline=None)
@given(
    params=filter_params(),
    page=st.integers(1, 99),
    size=st.sampled_from(["25", "50", "100"]),
    sort=st.sampled_from(["started", "duration", "device", "caller"]),
    text=st.text(min_size=1, max_size=20).filter(lambda t: t.strip() == t and t.strip()),
)
def test_query_round_trip_property(
    params: dict[str, str], page: int, size: str, sort: str, text: str
):
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        with pytest.raises(SearchParameterError, match="caller"):
            SearchFilters.from_query({"caller": text})
        return
    f = SearchFilters.from_query(
        {**params, "page": str(page), "page_size": size, "sort": sort, "caller": text}
    )
    assert SearchFilters.from_query(dict(parse_qsl(f.to_query()))) == f


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"page": "0"}, "page"),
        ({"page": "two"}, "page"),
        ({"page_size": "30"}, "page_size"),
        ({"sort": "password"}, "sort"),
        ({"order": "sideways"}, "order"),
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-13-01"}, "until"),
        ({"since": "2026-11-26", "until": "2026-11-25"}, "until"),
        ({"min_duration": "-1"}, "min_duration"),
        ({"max_duration": "ten"}, "max_duration"),
        ({"min_duration": "60", "max_duration": "30"}, "max_duration"),
        ({"recovered": "maybe"}, "recovered"),
        ({"direction": "sideways"}, "direction"),
        ({"caller": "x" * 201}, "caller"),
        ({"colour": "red"}, "colour"),
        ({"on_hold": "perhaps"}, "on_hold"),
        ({"min_score": "101"}, "min_score"),
        ({"min_score": "80", "max_score": "20"}, "max_score"),
        ({"device": "dev\x00a"}, "device"),
    ],
)
def test_bad_parameters_name_the_parameter(params: dict[str, str], name: str):
    with pytest.raises(SearchParameterError, match=f"search parameter '{name}'") as exc:
        SearchFilters.from_query(params)
    assert exc.value.parameter == name
