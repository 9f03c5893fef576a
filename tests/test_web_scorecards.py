"""QA scorecards (issue 16): the scoring rule (examples worked out by hand, and hypothesis
properties against an independent float computation), the form model and the builder's
draft, the store on SQLite and PostgreSQL, and the web routes over the real sealed office
of tests/test_web_playback.py: forms defined by an admin, evaluations by a reviewer in
scope, versions, scope and the ledger, CSRF, and the lists."""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from headoffice.authz import DeviceLine, Principal, Role, Scope, site_map
from headoffice.index import Index, StoredRecord, open_index
from headoffice.web.qa_forms import (
    AnswerError,
    Draft,
    DraftError,
    FormDefinition,
    Question,
    ScorecardError,
    Section,
    parse_time,
    read_answers,
    score,
)
from headoffice.web.scorecards import Answer, ListFilter, ScorecardStore
from tests.office_accounts import CHEAP, add_account, leaves
from tests.test_office_index import Device, index_url, pg_dsn  # noqa: F401 - fixtures
from tests.test_web import csrf_of
from tests.test_web_playback import DEVICE, SealedOffice, build_sealed_office, signed_in

# --------------------------------------------------------------------------- helpers


def q(qid: str, kind: str = "yes_no", weight: int = 1, critical: bool = False) -> Question:
    return Question.model_validate(
        {"id": qid, "text": f"Question {qid}", "kind": kind, "weight": weight, "critical": critical}
    )


def form(*sections: tuple[str, list[Question]]) -> FormDefinition:
    return FormDefinition(
        sections=tuple(Section(title=t, questions=tuple(qs)) for t, qs in sections)
    )


#: An answer's value as a fraction, written out here (not taken from the code).
WORTH = {"yes": 1.0, "no": 0.0, "1": 0.0, "2": 0.25, "3": 0.5, "4": 0.75, "5": 1.0}


def expected_bp(definition: FormDefinition, values: dict[str, str]) -> int:
    """The raw score as floats, rounded half up: the rule as the issue states it."""
    answered = [x for x in definition.questions if values[x.id] != "na"]
    total = sum(x.weight * WORTH[values[x.id]] for x in answered)
    return math.floor(10_000 * total / sum(x.weight for x in answered) + 0.5)


BASIC = form(
    ("Opening", [q("greet", weight=3), q("tone", "scale5", 1, critical=True)]),
    ("Closing", [q("help", weight=2), q("bye", "scale5", 2)]),
)


# --------------------------------------------------------------------------- the rule


def test_worked_examples():
    # (3·1 + 1·0.5) / 4 = 87.5 %; Closing: (2·0 + 2·0.75) / 4 = 37.5 %; all: (3 + .5 + 1.5) / 8
    s = score(BASIC, {"greet": "yes", "tone": "3", "help": "no", "bye": "4"})
    assert (s.raw_bp, s.score_bp, s.failed) == (6250, 6250, False)
    assert [(x.section, x.score_bp) for x in s.sections] == [("Opening", 8750), ("Closing", 3750)]
    # n.a. leaves a question out of both sums: (3·1) / 3
    s = score(BASIC, {"greet": "yes", "tone": "na", "help": "na", "bye": "na"})
    assert (s.raw_bp, s.score_bp) == (10_000, 10_000)
    assert [x.section for x in s.sections] == ["Opening"]  # Closing: all n.a., no row


def test_rounding_is_half_up_in_exact_integers():
    # 1·0.25 / (1 + 7) = 3.125 % = 312.5 bp exactly: half up is 313 (floor or banker's: 312)
    half = form(("S", [q("a", "scale5", 1), q("b", weight=7)]))
    assert score(half, {"a": "2", "b": "no"}).raw_bp == 313
    # 1/3 = 3333.33 bp -> 3333; 2/3 = 6666.67 bp -> 6667
    thirds = form(("S", [q("a"), q("b"), q("c")]))
    assert score(thirds, {"a": "yes", "b": "no", "c": "no"}).raw_bp == 3333
    assert score(thirds, {"a": "yes", "b": "yes", "c": "no"}).raw_bp == 6667


def test_a_failed_critical_question_fails_the_form_and_its_section():
    s = score(BASIC, {"greet": "yes", "tone": "1", "help": "yes", "bye": "5"})
    # raw: (3 + 0 + 2 + 2) / 8 = 87.5 %
    assert (s.raw_bp, s.score_bp, s.failed, s.failed_questions) == (8750, 0, True, ("tone",))
    assert [(x.section, x.raw_bp, x.score_bp) for x in s.sections] == [
        ("Opening", 7500, 0),
        ("Closing", 10_000, 10_000),
    ]
    # "2" on the scale, or n.a., does not fail it
    assert not score(BASIC, {"greet": "no", "tone": "2", "help": "no", "bye": "1"}).failed
    assert not score(BASIC, {"greet": "no", "tone": "na", "help": "no", "bye": "1"}).failed
    yes_no = form(("S", [q("a", critical=True), q("b")]))
    s = score(yes_no, {"a": "no", "b": "yes"})
    assert (s.raw_bp, s.score_bp, s.failed) == (5000, 0, True)


def test_nothing_to_score_and_bad_answers():
    with pytest.raises(
        ScorecardError, match=r"every question is answered n\.a\.: there is nothing"
    ):
        score(BASIC, dict.fromkeys(("greet", "tone", "help", "bye"), "na"))
    with pytest.raises(AnswerError) as info:
        score(BASIC, {"greet": "5", "tone": "yes", "help": "", "extra": "yes"})
    assert info.value.problems == {
        "greet": "'5' is not an answer: choose one of yes, no, na",
        "tone": "'yes' is not an answer: choose one of 1, 2, 3, 4, 5, na",
        "help": "not answered (choose n.a. if it does not apply)",
        "bye": "not answered (choose n.a. if it does not apply)",
        "extra": "this form has no such question",
    }


VALUE = {
    "yes_no": st.sampled_from(["yes", "no", "na"]),
    "scale5": st.sampled_from([*list("12345"), "na"]),
}


@st.composite
def forms_and_answers(draw: st.DrawFn) -> tuple[FormDefinition, dict[str, str]]:
    count = draw(st.integers(1, 12))
    questions = [
        q(
            f"q{i}",
            draw(st.sampled_from(["yes_no", "scale5"])),
            draw(st.integers(1, 100)),
            draw(st.booleans()),
        )
        for i in range(count)
    ]
    cut = draw(st.integers(1, count))
    sections = [("A", questions[:cut])] + ([("B", questions[cut:])] if cut < count else [])
    definition = form(*sections)
    values = {x.id: draw(VALUE[x.kind]) for x in questions}
    if all(v == "na" for v in values.values()):
        values["q0"] = "yes" if questions[0].kind == "yes_no" else "3"
    return definition, values


@settings(max_examples=300, deadline=None)
@given(forms_and_answers(), st.randoms())
def test_score_properties(case: tuple[FormDefinition, dict[str, str]], rnd: random.Random):
    definition, values = case
    s = score(definition, values)
    assert 0 <= s.score_bp <= s.raw_bp <= 10_000
    assert s.raw_bp == expected_bp(definition, values)
    failing = {"yes_no": "no", "scale5": "1"}
    failed = [x.id for x in definition.questions if x.critical and values[x.id] == failing[x.kind]]
    assert s.failed == bool(failed) and list(s.failed_questions) == failed
    assert s.score_bp == (0 if failed else s.raw_bp)
    # The order of the questions (and how they are split into sections) does not matter.
    shuffled = list(definition.questions)
    rnd.shuffle(shuffled)
    again = score(form(("All", shuffled)), dict(reversed(list(values.items()))))
    assert (again.raw_bp, again.score_bp, again.failed) == (s.raw_bp, s.score_bp, s.failed)


# --------------------------------------------------------------------------- model and draft


def test_the_form_model_is_strict_and_bounded():
    assert FormDefinition.model_validate_json(BASIC.canonical()) == BASIC
    assert BASIC.canonical().startswith('{"sections":[{"questions":[{"critical":false,"id":"greet"')
    bad: list[dict[str, Any]] = [
        {"id": "Bad Id", "text": "x", "kind": "yes_no", "weight": 1},
        {"id": "a", "text": "x", "kind": "yes_no", "weight": 0},
        {"id": "a", "text": "x", "kind": "yes_no", "weight": 101},
        {"id": "a", "text": "x", "kind": "yes_no", "weight": "3"},  # strict: no text numbers
        {"id": "a", "text": "x", "kind": "stars", "weight": 1},
        {"id": "a", "text": " ", "kind": "yes_no", "weight": 1},
        {"id": "a", "text": "x" * 501, "kind": "yes_no", "weight": 1},
        {"id": "a", "text": "two\nlines", "kind": "yes_no", "weight": 1},
    ]
    for data in bad:
        with pytest.raises(ValueError):
            Question.model_validate(data)
    with pytest.raises(ValueError, match="unique in a form: a"):
        form(("S", [q("a")]), ("T", [q("a")]))
    with pytest.raises(ValueError, match="section titles must be unique"):
        form(("Same", [q("a")]), ("same", [q("b")]))
    with pytest.raises(ValueError):
        form(*[(f"S{i}", [q(f"q{i}")]) for i in range(21)])
    with pytest.raises(ValueError):
        form(("S", [q(f"q{i}") for i in range(51)]))


def test_parse_time():
    cases = {
        "": None,
        "7": 7000,
        "0:07": 7000,
        "1:05": 65_000,
        "1:02:03.5": 3_723_500,
        "12.25": 12_250,
    }
    assert {text: parse_time(text) for text in cases} == cases
    for text, message in {
        "1:75": "below 60",
        "x": "not a time",
        "-3": "not a time",
        "1:2:3:4": "not a time",
    }.items():
        with pytest.raises(ScorecardError, match=message):
            parse_time(text)


def test_read_answers_checks_each_question():
    fields = {
        "a.greet": "yes",
        "a.tone": "3",
        "c.tone": " polite ",
        "t.tone": "0:12",
        "a.help": "na",
        "a.bye": "2",
    }
    answers = read_answers(BASIC, fields, 30_000)
    assert answers["tone"] == Answer(value="3", comment="polite", at_ms=12_000)
    assert answers["greet"] == Answer(value="yes")
    with pytest.raises(AnswerError) as info:
        read_answers(
            BASIC, {**fields, "t.tone": "0:31", "c.greet": "x" * 1001, "a.bye": ""}, 30_000
        )
    assert info.value.problems == {
        "tone": "the time 0:31 is past the end of the call (0:30)",
        "greet": "the comment is too long: 1,001 characters, at most 1,000",
        "bye": "not answered (choose n.a. if it does not apply)",
    }


def builder_fields(**extra: str) -> list[tuple[str, str]]:
    base = {
        "s0.title": "Opening", "s0.q0.text": "Greets the caller", "s0.q0.kind": "yes_no",
        "s0.q0.weight": "3", "s0.q0.id": "", "s0.q1.text": "", "s0.q1.id": "",
        "s0.q1.weight": "1", "s0.q1.kind": "yes_no",  # a blank row: left out
        "s1.title": "Closing", "s1.q0.text": "Polite", "s1.q0.kind": "scale5",
        "s1.q0.weight": "2", "s1.q0.critical": "1", "s1.q0.id": "polite",
    }  # fmt: skip
    return list({**base, **extra}.items())


def test_the_draft_builds_a_form_and_names_each_problem():
    draft = Draft.from_fields("Basic", builder_fields())
    built = draft.build()
    assert built == form(
        (
            "Opening",
            [Question(id="greets-the-caller", text="Greets the caller", kind="yes_no", weight=3)],
        ),
        ("Closing", [Question(id="polite", text="Polite", kind="scale5", weight=2, critical=True)]),
    )
    bad = Draft.from_fields(
        " ", builder_fields(**{"s0.q0.weight": "x", "s1.q0.id": "Bad!", "s1.title": ""})
    )
    with pytest.raises(DraftError) as info:
        bad.build()
    assert [(p.field, p.message) for p in info.value.problems] == [
        ("name", "Name: the form needs a name"),
        ("s0.q0.weight", "Section 1, question 1: the weight must be a whole number from 1 to 100 (got 'x')."),
        ("s1.title", "Section 2: give the section a title."),
        ("s1.q0.id", "Section 2, question 1: the id 'Bad!' may hold only lowercase letters, digits, - "
         "and _ (at most 40, starting with a letter or digit); or leave it empty to have one made."),
    ]  # fmt: skip
    twice = Draft.from_fields("B", builder_fields(**{"s0.q0.id": "polite"}))
    with pytest.raises(DraftError, match="1 problem") as info:
        twice.build()
    assert info.value.problems[0].field == "s1.q0.id"
    # The rows' buttons
    draft.apply("add-question:1")
    draft.apply("add-section")
    draft.apply("remove-question:0:1")
    draft.apply("remove-section:9")  # no such section: nothing
    assert [len(s.questions) for s in draft.sections] == [1, 2, 1]


# --------------------------------------------------------------------------- the store


@pytest.fixture
def filled(index_url: str) -> Iterator[tuple[Index, list[StoredRecord]]]:  # noqa: F811
    """Six 30 s calls: dev-a line1, line2, dev-b line1 (twice each)."""
    devices = {"dev-a": Device("dev-a"), "dev-b": Device("dev-b")}
    with open_index(index_url) as idx:
        records = []
        for device, line in [("dev-a", "line1"), ("dev-a", "line2"), ("dev-b", "line1")] * 2:
            m = devices[device].manifest(line=line)
            idx.add(m, "p")
            record = idx.get(m["recording_id"])
            assert record is not None
            records.append(record)
        yield idx, records


def answers_of(values: dict[str, str]) -> dict[str, Answer]:
    return {k: Answer.model_validate({"value": v}) for k, v in values.items()}


def test_the_store(filled: tuple[Index, list[StoredRecord]]):
    idx, records = filled
    store = ScorecardStore(idx)
    v1 = store.save_form("Basic", BASIC, "ada")
    assert (v1.name, v1.version, v1.latest, v1.definition, v1.retired) == (
        "Basic",
        1,
        1,
        BASIC,
        False,
    )
    with pytest.raises(ScorecardError, match="a form named 'Basic' exists already"):
        store.save_form("BASIC", BASIC, "ada")
    changed = form(("Only", [q("greet", weight=1)]))
    v2 = store.save_form("Basic", changed, "ada", version=2)
    with pytest.raises(ScorecardError, match="changed meanwhile"):
        store.save_form("Basic", changed, "ada", version=2)
    assert [(f.id, f.version) for f in store.forms()] == [(v2.id, 2)]
    assert [f.version for f in store.versions("Basic")] == [1, 2]
    with pytest.raises(ScorecardError, match="version 1 was replaced by version 2"):
        store.evaluate(records[0], v1.id, "rita", "", answers_of({"greet": "yes"}))
    # Evaluate with v2: stored with its section scores, in one piece.
    e = store.evaluate(records[0], v2.id, "rita", " Anna ", answers_of({"greet": "yes"}))
    assert (e.row.agent, e.row.score_bp, e.row.device_id, e.row.line) == (
        "Anna",
        10_000,
        "dev-a",
        "line1",
    )
    assert e.sections == {"Only": 10_000} and e.form.version == 2
    with idx.transaction(False) as sql:
        assert sql("SELECT evaluation_id, section, score_bp FROM qa_section_scores", ()) == [
            (e.row.id, "Only", 10_000)
        ]
        [(stored,)] = sql("SELECT answers FROM qa_evaluations WHERE id = ?", (e.row.id,))
    assert json.loads(stored) == {"greet": {"at_ms": None, "comment": "", "value": "yes"}}
    assert store.evaluation(e.row.id) == e
    assert store.evaluation(e.row.id + 1000) is None
    assert store.evaluations_for(records[0].recording_id) == [e.row]
    # Retired: kept, listed as retired, not usable
    store.set_retired("Basic", True)
    assert store.forms(retired=False) == [] and store.forms()[0].retired
    with pytest.raises(ScorecardError, match="is retired"):
        store.evaluate(records[1], v2.id, "rita", "", answers_of({"greet": "yes"}))
    store.set_retired("Basic", False)
    # An empty agent is the line; a failed form stores 0 and its raw score
    e2 = store.evaluate(records[1], v2.id, "rita", "", answers_of({"greet": "no"}))
    assert (e2.row.agent, e2.row.score_bp) == ("line2", 0)
    with pytest.raises(AnswerError):
        store.evaluate(records[1], v2.id, "rita", "", {"greet": Answer(value="yes", at_ms=30_001)})
    store.evaluate(records[3], v2.id, "rita", "Bob", answers_of({"greet": "yes"}))  # dev-a line1
    assert store.agents_for_line("dev-a", "line1") == ["Bob", "Anna"]  # latest first
    assert store.agents_for_line("dev-b", "line1") == []


def test_lists_show_only_what_the_viewer_may_see(filled: tuple[Index, list[StoredRecord]]):
    idx, records = filled
    store = ScorecardStore(idx)
    f = store.save_form("Two", form(("S", [q("a"), q("b")])), "ada")
    scores = {}
    for n, record in enumerate(records):
        values = [{"a": "yes", "b": "yes"}, {"a": "yes", "b": "no"}, {"a": "no", "b": "no"}][n % 3]
        e = store.evaluate(record, f.id, "rita", f"agent{n % 2}", answers_of(values))
        scores[e.row.id] = (record.device_id, record.line, e.row.agent, e.row.score_bp)
    sites = site_map({"north": ["dev-a"]})
    everyone = Principal("aud", frozenset({Role.AUDITOR}), Scope())
    north = Principal("rev", frozenset({Role.REVIEWER}), Scope(sites=frozenset({"north"})))
    one_line = Principal(
        "rev", frozenset({Role.REVIEWER}), Scope(lines=frozenset({DeviceLine("dev-b", "line1")}))
    )
    admin = Principal("ada", frozenset({Role.ADMIN}), Scope.all())

    def expect(keep: Any) -> tuple[set[int], int | None]:
        ids = {i for i, row in scores.items() if keep(*row)}
        bps = [scores[i][3] for i in ids]
        return ids, (math.floor(Fraction(sum(bps), len(bps)) + Fraction(1, 2)) if bps else None)

    def got(principal: Principal, wanted: ListFilter) -> tuple[set[int], int | None]:
        page = store.evaluation_list(principal, sites, wanted)
        assert page.total == len(page.rows)
        return {r.id for r in page.rows}, page.average_bp

    everything = ListFilter()
    assert got(everyone, everything) == expect(lambda d, ln, a, s: True)
    assert got(north, everything) == expect(lambda d, ln, a, s: d == "dev-a")
    assert got(one_line, everything) == expect(lambda d, ln, a, s: (d, ln) == ("dev-b", "line1"))
    assert got(admin, everything) == (set(), None)
    assert got(north, ListFilter(agent="agent1")) == expect(
        lambda d, ln, a, s: d == "dev-a" and a == "agent1"
    )
    assert got(everyone, ListFilter(device="dev-b", line="line1")) == expect(
        lambda d, ln, a, s: d == "dev-b"
    )
    assert got(north, ListFilter(device="dev-b")) == (set(), None)
    assert got(everyone, ListFilter(form=f.id)) == expect(lambda d, ln, a, s: True)
    assert {r.id for r in store.by_agent(north, sites, "agent0").rows} == expect(
        lambda d, ln, a, s: d == "dev-a" and a == "agent0"
    )[0]
    assert {r.id for r in store.by_line(one_line, sites, "dev-a", "line1").rows} == set()
    assert {r.id for r in store.by_form(north, sites, f.id).rows} == expect(
        lambda d, ln, a, s: d == "dev-a"
    )[0]
    lines = store.groups(north, sites, everything, "line")
    assert [(g.key, g.count) for g in lines] == [(("dev-a", "line1"), 2), (("dev-a", "line2"), 2)]
    assert [g.average_bp for g in lines] == [
        expect(lambda d, ln, a, s, x=x: (d, ln) == ("dev-a", x))[1] for x in ("line1", "line2")
    ]
    agents = store.groups(everyone, sites, everything, "agent")
    assert [(g.key, g.count, g.average_bp) for g in agents] == [
        ((x,), 3, expect(lambda d, ln, a, s, x=x: a == x)[1]) for x in ("agent0", "agent1")
    ]
    forms = store.groups(one_line, sites, everything, "form")
    assert [(g.key, g.count) for g in forms] == [(("Two", "1", str(f.id)), 2)]


# --------------------------------------------------------------------------- the web


@pytest.fixture(scope="module")
def office(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SealedOffice]:
    o = build_sealed_office(tmp_path_factory.mktemp("qa"))
    # Calls of another device, for the lists' scope: rita (scoped to DEVICE) never sees them.
    elsewhere = Device("elsewhere")
    for _ in range(2):
        o.index.add(elsewhere.manifest(line="line7"), "p")
    yield o
    o.index.close()


@pytest.fixture(scope="module")
def admin(office: SealedOffice) -> TestClient:
    """One signed-in admin for the module (an admin logs in with TOTP: one code a step)."""
    login = add_account(office.index, "ada", [Role.ADMIN], settings=CHEAP)
    return signed_in(office, login)


def access_leaves(o: SealedOffice, user: str) -> list[dict[str, Any]]:
    return [leaf for leaf in leaves(o.index, "access") if leaf["user"] == user]


def new_form(o: SealedOffice, name: str, definition: FormDefinition = BASIC) -> int:
    return ScorecardStore(o.index).save_form(name, definition, "ada").id


def evaluate(client: TestClient, o: SealedOffice, form_id: int, **fields: str) -> Any:
    page = client.get(f"/recordings/{o.rec}/evaluate?form={form_id}")
    assert page.status_code == 200, page.text
    return client.post(
        f"/recordings/{o.rec}/evaluate",
        data={"csrf": csrf_of(page.text), "form": str(form_id), **fields},
    )


def test_an_admin_defines_a_form_and_others_may_not(office: SealedOffice, admin: TestClient):
    start = admin.get("/")  # an admin sees no recordings: the start page is the forms
    assert (start.status_code, start.headers["location"]) == (303, "/forms")
    page = admin.get("/forms/new")
    assert page.status_code == 200 and 'data-role="form-builder"' in page.text
    data = {
        "csrf": csrf_of(page.text),
        "name": "Service check",
        "op": "save",
        **dict(builder_fields()),
    }
    r = admin.post("/forms/new", data=data)
    assert r.status_code == 303, r.text
    saved = ScorecardStore(office.index).form(int(r.headers["location"].rsplit("/", 1)[1]))
    assert saved is not None and (saved.name, saved.version, saved.created_by) == (
        "Service check",
        1,
        "ada",
    )
    assert saved.definition == Draft.from_fields("x", builder_fields()).build()
    leaf = access_leaves(office, "ada")[-1]
    assert (leaf["action"], leaf["detail"], leaf["recording_id"]) == (
        "manage_forms",
        "web: define form Service check v1",
        None,
    )
    shown = admin.get(r.headers["location"]).text
    assert "Greets the caller" in shown and 'data-role="edit-form"' in shown
    # A reviewer may see forms, not define them: 403, logged, nothing saved.
    rita = signed_in(office, office.reviewer)
    assert rita.get("/forms").status_code == 200 and "New form" not in rita.get("/forms").text
    assert rita.get("/forms/new").status_code == 403
    token = csrf_of(rita.get("/forms").text)
    r = rita.post(
        "/forms/new", data={"csrf": token, "name": "Mine", "op": "save", **dict(builder_fields())}
    )
    assert r.status_code == 403
    r = rita.post(f"/forms/{saved.id}/retire", data={"csrf": token, "retired": "1"})
    assert r.status_code == 403
    assert ScorecardStore(office.index).form(saved.id) == saved  # not retired, not changed
    refused = [x for x in access_leaves(office, "rita") if x["action"] == "manage_forms"]
    assert [x["detail"] for x in refused] == [
        "refused: not granted: reviewer may not manage_forms; web: new form",
        "refused: not granted: reviewer may not manage_forms; web: define form Mine v1",
        "refused: not granted: reviewer may not manage_forms; web: retire form Service check",
    ]
    assert [f.name for f in ScorecardStore(office.index).forms()].count("Mine") == 0


def test_the_builder_keeps_what_was_typed(office: SealedOffice, admin: TestClient):
    token = csrf_of(admin.get("/forms/new").text)
    bad = {
        "csrf": token,
        "name": "Kept",
        "op": "save",
        **dict(builder_fields(**{"s0.q0.weight": "250"})),
    }
    r = admin.post("/forms/new", data=bad)
    assert r.status_code == 400
    assert (
        'role="alert"' in r.text
        and "the weight must be a whole number from 1 to 100 (got &#39;250&#39;)" in r.text
    )
    assert (
        'value="Greets the caller"' in r.text
        and 'value="250"' in r.text
        and 'value="Kept"' in r.text
    )
    assert re.search(r'id="f-s0-q0-weight"[^>]*aria-invalid="true"', r.text)
    assert all(f.name != "Kept" for f in ScorecardStore(office.index).forms())
    # "Add a question" shows one more row, saving nothing
    r = admin.post("/forms/new", data={**bad, "op": "add-question:0"})
    assert r.status_code == 200 and 'name="s0.q2.text"' in r.text
    # a second form may not take a name in use
    new_form(office, "Taken")
    r = admin.post(
        "/forms/new", data={"csrf": token, "name": "taken", "op": "save", **dict(builder_fields())}
    )
    assert r.status_code == 400 and "a form named &#39;Taken&#39; exists already" in r.text


def test_a_reviewer_evaluates_and_the_server_stores_the_total(office: SealedOffice):
    fid = new_form(office, "Evaluated")
    rita = signed_in(office, office.reviewer)
    panel = rita.get(f"/recordings/{office.rec}").text
    assert f'<option value="{fid}">Evaluated (v1)</option>' in panel
    r = evaluate(rita, office, fid, agent="Anna", **{
        "a.greet": "yes", "a.tone": "4", "a.help": "no", "a.bye": "na",
        "c.tone": "warm", "t.tone": "0:07",
    })  # fmt: skip
    assert r.status_code == 303, r.text
    # (3·1 + 1·0.75 + 2·0) / 6 = 62.5 %, worked out by hand
    eid = int(r.headers["location"].rsplit("/", 1)[1])
    e = ScorecardStore(office.index).evaluation(eid)
    assert e is not None and (e.row.score_bp, e.row.raw_bp, e.row.failed, e.row.agent) == (
        6250,
        6250,
        False,
        "Anna",
    )
    assert e.sections == {"Opening": 9375, "Closing": 0}  # 3.75/4 and 0/2
    leaf = access_leaves(office, "rita")[-1]
    assert (leaf["action"], leaf["recording_id"], leaf["detail"]) == (
        "score",
        office.rec,
        "web: evaluate with form Evaluated v1",
    )
    page = rita.get(f"/evaluations/{eid}").text
    assert '<output id="qa-total" data-bp="6250">62.50 %</output>' in page
    assert f'href="/recordings/{office.rec}#t=7.000"' in page and "warm" in page
    assert access_leaves(office, "rita")[-1]["detail"] == f"web: evaluation {eid}"
    panel = rita.get(f"/recordings/{office.rec}").text
    assert re.search(rf'data-evaluation-id="{eid}".*?62\.50 %', panel, re.S)
    # A failed critical question: 0 stored, the banner, the raw kept
    r = evaluate(
        rita, office, fid, **{"a.greet": "yes", "a.tone": "1", "a.help": "yes", "a.bye": "5"}
    )
    failed = ScorecardStore(office.index).evaluation(int(r.headers["location"].rsplit("/", 1)[1]))
    assert failed is not None and (failed.row.score_bp, failed.row.raw_bp, failed.row.failed) == (
        0,
        8750,
        True,
    )
    page = rita.get(r.headers["location"]).text
    assert 'data-role="critical-failed"' in page and "87.50 %" in page


def test_an_invalid_evaluation_is_shown_again(office: SealedOffice):
    fid = new_form(office, "Invalid")
    rita = signed_in(office, office.reviewer)
    before = len(ScorecardStore(office.index).evaluations_for(office.rec))
    r = evaluate(
        rita,
        office,
        fid,
        **{
            "a.greet": "yes",
            "a.tone": "3",
            "c.tone": "kept comment",
            "t.tone": "9:00",
            "a.help": "yes",
        },
    )
    assert r.status_code == 400
    assert "the time 9:00 is past the end of the call" in r.text and "not answered" in r.text
    assert "kept comment" in r.text and 'value="9:00"' in r.text
    assert re.search(r'name="a\.greet" value="yes" checked', r.text)
    assert len(ScorecardStore(office.index).evaluations_for(office.rec)) == before
    assert (
        access_leaves(office, "rita")[-1]["detail"]
        == "web: evaluate with form Invalid v1 (not saved)"
    )
    r = evaluate(rita, office, fid, **dict.fromkeys(("a.greet", "a.tone", "a.help", "a.bye"), "na"))
    assert r.status_code == 400 and "nothing to score" in r.text


def test_an_edit_makes_v2_and_old_evaluations_keep_v1(office: SealedOffice, admin: TestClient):
    fid = new_form(office, "Versioned")
    rita = signed_in(office, office.reviewer)
    r = evaluate(
        rita, office, fid, **{"a.greet": "yes", "a.tone": "5", "a.help": "yes", "a.bye": "5"}
    )
    old = r.headers["location"]
    edit = admin.get(f"/forms/{fid}/edit")
    assert edit.status_code == 200 and "Saving makes version 2" in edit.text
    fields = {"csrf": csrf_of(edit.text), "op": "save", "s0.title": "New section", "s0.q0.id": "fresh",
              "s0.q0.text": "A new question", "s0.q0.kind": "yes_no", "s0.q0.weight": "4"}  # fmt: skip
    r = admin.post(f"/forms/{fid}/edit", data=fields)
    assert r.status_code == 303
    v2 = ScorecardStore(office.index).form(int(r.headers["location"].rsplit("/", 1)[1]))
    assert v2 is not None and (v2.name, v2.version, v2.definition.questions[0].id) == (
        "Versioned",
        2,
        "fresh",
    )
    assert access_leaves(office, "ada")[-1]["detail"] == "web: define form Versioned v2"
    page = rita.get(old).text  # the old evaluation: v1's questions, v1's name
    assert "Question greet" in page and "A new question" not in page and "version 1" in page
    r = rita.get(f"/recordings/{office.rec}/evaluate?form={fid}")
    assert r.status_code == 400 and "was replaced by version 2" in r.text
    r = evaluate(rita, office, v2.id, **{"a.fresh": "no"})
    assert r.status_code == 303
    # Retired: not offered, not accepted
    assert (
        admin.post(
            f"/forms/{v2.id}/retire", data={"csrf": csrf_of(edit.text), "retired": "1"}
        ).status_code
        == 303
    )
    assert f'value="{v2.id}"' not in rita.get(f"/recordings/{office.rec}").text
    token = csrf_of(rita.get("/forms").text)
    r = rita.post(
        f"/recordings/{office.rec}/evaluate",
        data={"csrf": token, "form": str(v2.id), "a.fresh": "yes"},
    )
    assert r.status_code == 400 and "is retired" in r.text
    assert access_leaves(office, "ada")[-1]["detail"] == "web: retire form Versioned"
    # Restored: offered again
    r = admin.post(f"/forms/{v2.id}/retire", data={"csrf": csrf_of(edit.text), "retired": "0"})
    assert (
        r.status_code == 303
        and access_leaves(office, "ada")[-1]["detail"] == "web: restore form Versioned"
    )
    assert (
        f'<option value="{v2.id}">Versioned (v2)</option>'
        in rita.get(f"/recordings/{office.rec}").text
    )


def test_out_of_scope_is_not_found_and_logged(office: SealedOffice):
    fid = new_form(office, "Scoped")
    rita = signed_in(office, office.reviewer)
    r = evaluate(
        rita, office, fid, **{"a.greet": "yes", "a.tone": "5", "a.help": "yes", "a.bye": "5"}
    )
    eid_path = r.headers["location"]
    olga = signed_in(office, office.outsider)
    token = csrf_of(olga.get("/forms").text)
    before = len(ScorecardStore(office.index).evaluations_for(office.rec))
    for response in (
        olga.get(f"/recordings/{office.rec}/evaluate?form={fid}"),
        olga.post(
            f"/recordings/{office.rec}/evaluate",
            data={"csrf": token, "form": str(fid), "a.greet": "yes"},
        ),
        olga.get(eid_path),
        olga.get("/evaluations/999999"),
    ):
        assert response.status_code == 404
        assert office.rec not in response.text and "Scoped" not in response.text
    assert len(ScorecardStore(office.index).evaluations_for(office.rec)) == before
    refused = access_leaves(office, "olga")[-4:]
    assert [(x["action"], x["recording_id"]) for x in refused] == [
        ("score", office.rec), ("score", office.rec), ("view_metadata", office.rec), ("view_metadata", None),
    ]  # fmt: skip
    assert all(str(x["detail"]).startswith("refused") for x in refused)


def test_posts_without_the_csrf_token_are_refused(office: SealedOffice, admin: TestClient):
    fid = new_form(office, "Csrf")
    rita = signed_in(office, office.reviewer)
    before = len(ScorecardStore(office.index).evaluations_for(office.rec))
    for data in (
        {"form": str(fid), "a.greet": "yes"},
        {"csrf": "0" * 64, "form": str(fid), "a.greet": "yes"},
    ):
        assert rita.post(f"/recordings/{office.rec}/evaluate", data=data).status_code == 403
    assert len(ScorecardStore(office.index).evaluations_for(office.rec)) == before
    assert (
        admin.post(
            "/forms/new", data={"name": "No token", "op": "save", **dict(builder_fields())}
        ).status_code
        == 403
    )
    assert admin.post(f"/forms/{fid}/retire", data={"retired": "1"}).status_code == 403
    assert all(f.name != "No token" for f in ScorecardStore(office.index).forms())
    assert not next(f for f in ScorecardStore(office.index).forms() if f.id == fid).retired


def test_an_auditor_may_view_not_evaluate(office: SealedOffice):
    fid = new_form(office, "Audited")
    rita = signed_in(office, office.reviewer)
    r = evaluate(
        rita, office, fid, **{"a.greet": "no", "a.tone": "5", "a.help": "yes", "a.bye": "5"}
    )
    aud = signed_in(office, office.auditor)
    assert aud.get(r.headers["location"]).status_code == 200
    panel = aud.get(f"/recordings/{office.rec}").text
    assert 'id="qa-heading"' in panel and 'data-role="qa-start"' not in panel
    assert aud.get(f"/recordings/{office.rec}/evaluate?form={fid}").status_code == 403
    token = csrf_of(panel)
    r = aud.post(
        f"/recordings/{office.rec}/evaluate",
        data={"csrf": token, "form": str(fid), "a.greet": "yes"},
    )
    assert r.status_code == 403
    assert access_leaves(office, "aud")[-1]["detail"].startswith(
        "refused: not granted: auditor may not score"
    )
    assert ">QA</a>" not in panel  # no nav link: the auditor neither scores nor manages forms


def test_the_lists_show_only_rows_in_scope(office: SealedOffice, admin: TestClient):
    store = ScorecardStore(office.index)
    fid = new_form(office, "Listed", form(("S", [q("a"), q("b")])))
    others = [r for r in office.index.search(limit=100) if r.device_id == "elsewhere"]
    assert len(others) == 2
    outside = {
        store.evaluate(rec, fid, "olga", "Otto", answers_of({"a": "yes", "b": "no"})).row.id
        for rec in others
    }
    record = office.index.get(office.rec)
    assert record is not None
    mine = store.evaluate(record, fid, "rita", "Rosa", answers_of({"a": "yes", "b": "yes"})).row.id

    def listed(client: TestClient, query: str) -> set[int]:
        r = client.get(f"/evaluations?{query}")
        assert r.status_code == 200, r.text
        return {int(x) for x in re.findall(r'<tr data-evaluation-id="(\d+)"', r.text)}

    rita, olga, aud = (
        signed_in(office, x) for x in (office.reviewer, office.outsider, office.auditor)
    )
    assert listed(rita, f"form={fid}") == {mine}
    assert listed(olga, f"form={fid}") == outside
    assert listed(aud, f"form={fid}") == outside | {mine}
    assert listed(rita, "agent=Otto") == set() and listed(aud, "agent=Otto") == outside
    assert listed(rita, "device=elsewhere&line=line7") == set()
    assert listed(olga, "device=elsewhere&line=line7") >= outside
    assert listed(rita, f"device={DEVICE}&line=line1&form={fid}") == {mine}
    r = aud.get(f"/evaluations?form={fid}")
    assert 'data-bp="6667"' in r.text  # (5000 + 5000 + 10000) / 3, half up
    assert "Otto" not in rita.get("/evaluations").text
    leaf = access_leaves(office, "rita")[-1]
    assert (leaf["action"], leaf["detail"]) == ("search", "web: evaluations")
    assert rita.get("/evaluations?page=0").status_code == 400
    assert "unknown" in rita.get("/evaluations?colour=red").text
    assert admin.get("/evaluations").status_code == 403
    assert 'href="/forms"' in admin.get("/forms").text and ">QA</a>" in admin.get("/forms").text
