"""QA scorecards' store: :class:`ScorecardStore` over the index's ``qa_forms``,
``qa_evaluations`` and ``qa_section_scores`` (:func:`headoffice.index.schema._scorecards`),
on both backends. The form model and the scoring rule are :mod:`headoffice.web.qa_forms`
(re-exported here).

- A saved form never changes: editing saves version + 1 of the same name, the old
  versions stay for the evaluations that answered them, and retiring a name hides it
  from new evaluations (:meth:`ScorecardStore.usable`).
- An evaluation is scored here, on the server, and stored with its section scores in one
  transaction; the device, line and call start are copied from the recording.
- The store validates and stores; who may do what is the routes' business
  (:mod:`headoffice.web.routes_scorecards`, through the gate). The lists are limited in
  SQL to what a principal may see, by the search page's
  :func:`~headoffice.web.search.scope_clause` over the evaluation's copied device/line.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from headoffice.authz import Principal
from headoffice.index import Index
from headoffice.index.records import Query, Row, StoredRecord, now_iso
from headoffice.web.qa_forms import (
    Answer,
    AnswerError,
    FormDefinition,
    Question,
    Score,
    ScorecardError,
    Section,
    answer_problem,
    check_name,
    printable,
    score,
)
from headoffice.web.search import scope_clause
from sealedrec.manifest import canonical_json

__all__ = [
    "Answer",
    "AnswerError",
    "Evaluation",
    "EvaluationPage",
    "EvaluationRow",
    "FormDefinition",
    "FormRecord",
    "Group",
    "ListFilter",
    "Question",
    "Score",
    "ScorecardError",
    "ScorecardStore",
    "Section",
    "score",
]

MAX_AGENT_CHARS = 100
LIST_PAGE_SIZE = 50
MAX_GROUPS = 100

# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class FormRecord:
    id: int
    name: str
    version: int
    definition: FormDefinition
    created_by: str
    created_at: str
    retired: bool
    latest: int  # the newest version of this name
    evaluations: int  # evaluations against this version

    @property
    def current(self) -> bool:
        """Whether new evaluations may use it: the newest version of a name not retired."""
        return self.version == self.latest and not self.retired


@dataclass(frozen=True, slots=True)
class EvaluationRow:
    id: int
    recording_id: str
    form_id: int
    form_name: str
    form_version: int
    evaluator: str
    agent: str
    device_id: str
    line: str
    call_started_utc: str
    raw_bp: int
    score_bp: int
    failed: bool
    created_at: str


@dataclass(frozen=True, slots=True)
class Evaluation:
    row: EvaluationRow
    form: FormRecord
    answers: dict[str, Answer]
    sections: dict[str, int]  # section title -> score_bp, as stored


@dataclass(frozen=True, slots=True)
class EvaluationPage:
    rows: list[EvaluationRow]
    total: int
    average_bp: int | None
    page: int
    pages: int


@dataclass(frozen=True, slots=True)
class Group:
    """One line of a list's summary: an agent, a device/line or a form version."""

    key: tuple[str, ...]
    count: int
    average_bp: int


def average(total: int, count: int) -> int | None:
    """The exact mean of integer basis points, rounded half up."""
    return (2 * total + count) // (2 * count) if count else None


_FORM_COLUMNS = (
    "f.id, f.name, f.version, f.definition, f.created_by, f.created_at, f.retired, "
    "(SELECT MAX(g.version) FROM qa_forms g WHERE g.name = f.name), "
    "(SELECT COUNT(*) FROM qa_evaluations e WHERE e.form_id = f.id)"
)
_ROW_COLUMNS = (
    "e.id, e.recording_id, e.form_id, f.name, f.version, e.evaluator, e.agent, e.device_id, "
    "e.line, e.call_started_utc, e.raw_bp, e.score_bp, e.failed, e.created_at"
)
_FROM = " FROM qa_evaluations e JOIN qa_forms f ON f.id = e.form_id"


def _form(r: Row) -> FormRecord:
    return FormRecord(
        int(r[0]), str(r[1]), int(r[2]), FormDefinition.model_validate_json(r[3]),
        str(r[4]), str(r[5]), bool(r[6]), int(r[7]), int(r[8]),
    )  # fmt: skip


def _row(r: Row) -> EvaluationRow:
    return EvaluationRow(
        int(r[0]), str(r[1]), int(r[2]), str(r[3]), int(r[4]), str(r[5]), str(r[6]),
        str(r[7]), str(r[8]), str(r[9]), int(r[10]), int(r[11]), bool(r[12]), str(r[13]),
    )  # fmt: skip


# --------------------------------------------------------------------------- the store


class ScorecardStore:
    """The forms and evaluations in one office index (both backends)."""

    def __init__(self, index: Index) -> None:
        self.index = index

    # -- forms ---------------------------------------------------------------------------
    def next_version(self, name: str) -> int:
        with self.index.transaction(False) as q:
            return self._next_version(q, name)

    @staticmethod
    def _next_version(q: Query, name: str) -> int:
        [(latest,)] = q("SELECT MAX(version) FROM qa_forms WHERE name = ?", (name,))
        return int(latest or 0) + 1

    def save_form(
        self,
        name: str,
        definition: FormDefinition,
        created_by: str,
        *,
        version: int | None = None,
    ) -> FormRecord:
        """Save ``definition`` as the next version of ``name`` (1: a new form). With
        ``version`` (what the caller logged it as), refuse when another version was saved
        since; a new form may not take the name of another form (ignoring case)."""
        name = check_name(name)
        with self.index.transaction(True) as q:
            self.index.serialize_appends(q, "qa_forms")
            expected = self._next_version(q, name)
            clash = q("SELECT name FROM qa_forms WHERE LOWER(name) = LOWER(?) LIMIT 1", (name,))
            if clash and (version == 1 or expected == 1):
                raise ScorecardError(
                    f"a form named {clash[0][0]!r} exists already: edit it, or choose another name"
                )
            if version is not None and version != expected:
                raise ScorecardError(
                    f"form {name!r} was changed meanwhile (now version {expected - 1}): "
                    "open it again and repeat your edit"
                )
            [(form_id,)] = q(
                "INSERT INTO qa_forms (name, version, definition, created_by, created_at, "
                "retired) VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                (name, expected, definition.canonical(), created_by, now_iso(), False),
            )
        saved = self.form(int(form_id))
        assert saved is not None
        return saved

    def set_retired(self, name: str, retired: bool) -> None:
        """Retire (hide from new evaluations) or restore every version of ``name``."""
        with self.index.transaction(True) as q:
            q("UPDATE qa_forms SET retired = ? WHERE name = ?", (retired, name))

    def form(self, form_id: int) -> FormRecord | None:
        with self.index.transaction(False) as q:
            rows = q(f"SELECT {_FORM_COLUMNS} FROM qa_forms f WHERE f.id = ?", (form_id,))
        return _form(rows[0]) if rows else None

    def forms(self, *, retired: bool = True, every_version: bool = False) -> list[FormRecord]:
        """The newest version of every form by name (``retired=False``: only the usable
        ones; ``every_version``: each version, by name then version)."""
        sql = f"SELECT {_FORM_COLUMNS} FROM qa_forms f WHERE 1 = 1"
        params: tuple[Any, ...] = ()
        if not every_version:
            sql += " AND f.version = (SELECT MAX(g.version) FROM qa_forms g WHERE g.name = f.name)"
        if not retired:
            sql, params = sql + " AND f.retired = ?", (False,)
        with self.index.transaction(False) as q:
            rows = q(sql + " ORDER BY f.name, f.version", params)
        return [_form(r) for r in rows]

    def versions(self, name: str) -> list[FormRecord]:
        with self.index.transaction(False) as q:
            rows = q(
                f"SELECT {_FORM_COLUMNS} FROM qa_forms f WHERE f.name = ? ORDER BY f.version",
                (name,),
            )
        return [_form(r) for r in rows]

    # -- evaluations ---------------------------------------------------------------------
    @staticmethod
    def check_agent(agent: str, record: StoredRecord) -> str:
        agent = agent.strip() or record.line
        if len(agent) > MAX_AGENT_CHARS:
            raise ScorecardError(
                f"the agent's name is too long: at most {MAX_AGENT_CHARS} characters"
            )
        try:
            return printable(agent, "the agent's name")
        except ValueError as exc:
            raise ScorecardError(str(exc)) from None

    @staticmethod
    def usable(form: FormRecord | None, form_id: int) -> FormRecord:
        """``form`` if new evaluations may use it, else why not (:class:`ScorecardError`)."""
        if form is None:
            raise ScorecardError(f"there is no form {form_id}")
        if form.retired:
            raise ScorecardError(f"form {form.name!r} is retired: choose another form")
        if form.version != form.latest:
            raise ScorecardError(
                f"form {form.name!r} version {form.version} was replaced by version "
                f"{form.latest}: evaluate with that one"
            )
        return form

    def evaluate(
        self,
        record: StoredRecord,
        form_id: int,
        evaluator: str,
        agent: str,
        answers: Mapping[str, Answer],
    ) -> Evaluation:
        """Score ``answers`` to form ``form_id`` (its current version) for ``record`` and
        store the evaluation and its section scores in one transaction."""
        form = self.usable(self.form(form_id), form_id)
        agent = self.check_agent(agent, record)
        problems = {
            qid: problem
            for qid, a in answers.items()
            if (problem := answer_problem(a.comment, a.at_ms, record.duration_ms))
        }
        if problems:
            raise AnswerError(problems)
        result = score(form.definition, {qid: a.value for qid, a in answers.items()})
        stored = canonical_json({qid: a.model_dump(mode="json") for qid, a in answers.items()})
        with self.index.transaction(True) as q:
            [(evaluation_id,)] = q(
                "INSERT INTO qa_evaluations (recording_id, form_id, evaluator, agent, "
                "device_id, line, call_started_utc, raw_bp, score_bp, failed, answers, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (record.recording_id, form.id, evaluator, agent, record.device_id,
                 record.line, record.started_utc, result.raw_bp, result.score_bp,
                 result.failed, stored.decode(), now_iso()),
            )  # fmt: skip
            for s in result.sections:
                q(
                    "INSERT INTO qa_section_scores (evaluation_id, section, score_bp) "
                    "VALUES (?, ?, ?)",
                    (evaluation_id, s.section, s.score_bp),
                )
        saved = self.evaluation(int(evaluation_id))
        assert saved is not None
        return saved

    def evaluation(self, evaluation_id: int) -> Evaluation | None:
        with self.index.transaction(False) as q:
            rows = q(f"SELECT {_ROW_COLUMNS}, e.answers{_FROM} WHERE e.id = ?", (evaluation_id,))
            sections = q(
                "SELECT section, score_bp FROM qa_section_scores WHERE evaluation_id = ?",
                (evaluation_id,),
            )
        if not rows:
            return None
        row = _row(rows[0])
        form = self.form(row.form_id)
        assert form is not None  # a foreign key
        answers = {k: Answer.model_validate(v) for k, v in json.loads(rows[0][14]).items()}
        return Evaluation(row, form, answers, {str(s): int(bp) for s, bp in sections})

    def evaluations_for(self, recording_id: str) -> list[EvaluationRow]:
        """A recording's evaluations, newest first."""
        with self.index.transaction(False) as q:
            rows = q(
                f"SELECT {_ROW_COLUMNS}{_FROM} WHERE e.recording_id = ? "
                "ORDER BY e.created_at DESC, e.id DESC",
                (recording_id,),
            )
        return [_row(r) for r in rows]

    def agents_for_line(self, device_id: str, line: str, limit: int = 20) -> list[str]:
        """The agents evaluations named for this line, most recent first (suggestions)."""
        with self.index.transaction(False) as q:
            rows = q(
                "SELECT agent FROM qa_evaluations WHERE device_id = ? AND line = ? "
                "GROUP BY agent ORDER BY MAX(created_at) DESC LIMIT ?",
                (device_id, line, limit),
            )
        return [str(r[0]) for r in rows]

    # -- lists ---------------------------------------------------------------------------
    def evaluation_list(
        self, principal: Principal, sites: Mapping[str, frozenset[str]], wanted: ListFilter
    ) -> EvaluationPage:
        """One page of the evaluations matching ``wanted`` that ``principal`` may see
        (newest first), their number and their average score."""
        where, params = wanted.where(principal, sites)
        offset = (wanted.page - 1) * LIST_PAGE_SIZE
        with self.index.transaction(False) as q:
            [(count, total)] = q(
                f"SELECT COUNT(*), SUM(score_bp) FROM qa_evaluations{where}", params
            )
            rows = q(
                f"SELECT {_ROW_COLUMNS}{_FROM}{where} ORDER BY e.created_at DESC, e.id DESC "
                "LIMIT ? OFFSET ?",
                (*params, LIST_PAGE_SIZE, offset),
            )
        count = int(count)
        return EvaluationPage(
            [_row(r) for r in rows],
            count,
            average(int(total or 0), count),
            wanted.page,
            max(1, -(-count // LIST_PAGE_SIZE)),
        )

    def by_agent(
        self, principal: Principal, sites: Mapping[str, frozenset[str]], agent: str, page: int = 1
    ) -> EvaluationPage:
        return self.evaluation_list(principal, sites, ListFilter(agent=agent, page=page))

    def by_line(
        self,
        principal: Principal,
        sites: Mapping[str, frozenset[str]],
        device_id: str,
        line: str,
        page: int = 1,
    ) -> EvaluationPage:
        return self.evaluation_list(
            principal, sites, ListFilter(device=device_id, line=line, page=page)
        )

    def by_form(
        self, principal: Principal, sites: Mapping[str, frozenset[str]], form_id: int, page: int = 1
    ) -> EvaluationPage:
        return self.evaluation_list(principal, sites, ListFilter(form=form_id, page=page))

    def groups(
        self,
        principal: Principal,
        sites: Mapping[str, frozenset[str]],
        wanted: ListFilter,
        by: Literal["agent", "line", "form"],
    ) -> list[Group]:
        """Count and average score per agent, per device/line or per form version of the
        evaluations matching ``wanted`` that ``principal`` may see (at most 100)."""
        where, params = wanted.where(principal, sites)
        keys = {
            "agent": ("e.agent",),
            "line": ("e.device_id", "e.line"),
            "form": ("f.name", "f.version", "e.form_id"),
        }[by]
        cols = ", ".join(keys)
        with self.index.transaction(False) as q:
            rows = q(
                f"SELECT {cols}, COUNT(*), SUM(e.score_bp){_FROM}{where} GROUP BY {cols} "
                f"ORDER BY {cols} LIMIT ?",
                (*params, MAX_GROUPS),
            )
        out = []
        for r in rows:
            count = int(r[-2])
            out.append(Group(tuple(str(k) for k in r[:-2]), count, average(int(r[-1]), count) or 0))
        return out


class ListFilter(BaseModel):
    """Which evaluations a list shows (empty: all the viewer may see)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    agent: Annotated[str, StringConstraints(max_length=MAX_AGENT_CHARS)] | None = None
    device: Annotated[str, StringConstraints(max_length=200)] | None = None
    line: Annotated[str, StringConstraints(max_length=200)] | None = None
    form: Annotated[int, Field(ge=1)] | None = None
    page: Annotated[int, Field(ge=1, le=1_000_000)] = 1

    def where(
        self, principal: Principal, sites: Mapping[str, frozenset[str]]
    ) -> tuple[str, tuple[Any, ...]]:
        """The WHERE of the list: the principal's scope (as the search page's, over the
        evaluation's device and line) and the filters; columns unqualified or ``e.``."""
        clauses: list[tuple[str, tuple[Any, ...]]] = []
        scope = scope_clause(principal, sites)
        if scope is not None:
            clauses.append(scope)
        for column, value in (
            ("agent", self.agent), ("device_id", self.device), ("line", self.line),
            ("form_id", self.form),
        ):  # fmt: skip
            if value is not None:
                clauses.append((f"{column} = ?", (value,)))
        if not clauses:
            return "", ()
        return (
            " WHERE " + " AND ".join(sql for sql, _ in clauses),
            tuple(p for _, params in clauses for p in params),
        )

    @classmethod
    def from_query(cls, params: Mapping[str, str]) -> ListFilter:
        """The filter of a URL query (empty values count as not given); an unknown name or
        a bad value raises :class:`ScorecardError` naming the parameter."""
        data = {k: v.strip() for k, v in params.items() if v.strip()}
        for name in data:
            if name not in cls.model_fields:
                known = ", ".join(cls.model_fields)
                raise ScorecardError(
                    f"list parameter {name[:40]!r}: unknown; the parameters are {known}"
                )
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            error = exc.errors()[0]
            name = str(error["loc"][0]) if error["loc"] else "?"
            raise ScorecardError(f"list parameter {name!r}: {error['msg']}") from None

    def to_query(self, **changes: Any) -> str:
        """The URL query of this filter with ``changes`` (only what is given)."""
        values = {**self.model_dump(), **changes}
        return urlencode(
            [(k, str(v)) for k, v in values.items() if v is not None and (k != "page" or v != 1)]
        )

    @property
    def empty(self) -> bool:
        return all(v is None for v in (self.agent, self.device, self.line, self.form))
