"""QA scorecard forms and the scoring rule (pure: no I/O); the store is
:mod:`headoffice.web.scorecards`.

- **Forms** (:class:`FormDefinition`): sections of questions, each with a slug ``id``
  unique in the form, a ``kind`` (``yes_no``: yes / no / n.a.; ``scale5``: 1..5 / n.a.),
  a ``weight`` (1..100) and a ``critical`` flag; canonical JSON (:meth:`canonical`) is
  what ``qa_forms.definition`` keeps.
- **Scoring** (:func:`score`): yes = 1, no = 0, scale N = (N - 1) / 4; the raw score is
  Σ weight·value / Σ weight over the answered (not n.a.) questions, in integer basis
  points (0..10000), rounded half up with exact integer arithmetic. A critical question
  failed (``no``, or ``1`` on the scale) fails the form: ``score_bp`` 0, ``raw_bp`` keeps
  the raw. Each section is scored by the same rule over its own questions (a critical
  failure zeroes its section too); a section whose questions are all n.a. has no score,
  and a form answered n.a. throughout cannot be scored. static/scorecard.js previews the
  total with the same rule; the server's is the one stored.
- **Answers** (:func:`read_answers`): the evaluation page's fields, each question's
  value with an optional comment at an optional time in the call.
- **The builder's draft** (:class:`Draft`): the form builder page's fields as typed
  (kept as text, so a refused save shows what was typed), and :meth:`Draft.build`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from sealedrec.manifest import canonical_json

MAX_SECTIONS = 20
MAX_QUESTIONS = 50  # per section
#: Per form: a form's builder posts 5 fields a question, and the web parses at most 1000.
MAX_FORM_QUESTIONS = 150
MAX_TEXT_CHARS = 500
MAX_TITLE_CHARS = 200
MAX_NAME_CHARS = 100
MAX_COMMENT_CHARS = 1000
SLUG = r"^[a-z0-9][a-z0-9_-]{0,39}$"

Kind = Literal["yes_no", "scale5"]
KINDS: dict[str, str] = {"yes_no": "Yes / no / n.a.", "scale5": "1 to 5 / n.a."}
AnswerValue = Literal["yes", "no", "na", "1", "2", "3", "4", "5"]
#: The values each kind takes, in the order the page offers them.
VALUES: dict[str, tuple[str, ...]] = {
    "yes_no": ("yes", "no", "na"),
    "scale5": ("1", "2", "3", "4", "5", "na"),
}


class ScorecardError(ValueError):
    """A form, answer or evaluation that cannot be stored (the message says why)."""


class AnswerError(ScorecardError):
    """Answers that do not fit their form: ``problems`` maps question id -> what is wrong."""

    def __init__(self, problems: Mapping[str, str]) -> None:
        count = len(problems)
        super().__init__(f"{count} answer{'' if count == 1 else 's'} to correct")
        self.problems = dict(problems)


def printable(text: str, what: str) -> str:
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise ValueError(f"{what} must be one line without control characters")
    return text


def percent(bp: int | None) -> str:
    """Basis points as a percentage with two decimals (``8750`` -> ``87.50 %``)."""
    if bp is None:
        return "—"
    return f"{bp // 100}.{bp % 100:02d} %"


# --------------------------------------------------------------------------- the form model

_STRICT = ConfigDict(strict=True, frozen=True, extra="forbid")
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


class Question(BaseModel):
    model_config = _STRICT

    id: Annotated[str, StringConstraints(pattern=SLUG)]
    text: Annotated[Text, StringConstraints(max_length=MAX_TEXT_CHARS)]
    kind: Kind
    weight: Annotated[int, Field(ge=1, le=100)]
    critical: bool = False

    @model_validator(mode="after")
    def _one_line(self) -> Self:
        printable(self.text, "a question's text")
        return self


class Section(BaseModel):
    model_config = _STRICT

    title: Annotated[Text, StringConstraints(max_length=MAX_TITLE_CHARS)]
    questions: Annotated[tuple[Question, ...], Field(min_length=1, max_length=MAX_QUESTIONS)]

    @model_validator(mode="after")
    def _one_line(self) -> Self:
        printable(self.title, "a section's title")
        return self


class FormDefinition(BaseModel):
    """A form's questions; ids unique in the form, section titles unique (ignoring case:
    a section's scores are kept under its title)."""

    model_config = _STRICT

    sections: Annotated[tuple[Section, ...], Field(min_length=1, max_length=MAX_SECTIONS)]

    @model_validator(mode="after")
    def _unique(self) -> Self:
        ids = [q.id for q in self.questions]
        if len(ids) > MAX_FORM_QUESTIONS:
            raise ValueError(f"{len(ids)} questions: a form has at most {MAX_FORM_QUESTIONS}")
        twice = sorted({i for i in ids if ids.count(i) > 1})
        if twice:
            raise ValueError(f"question ids must be unique in a form: {', '.join(twice)}")
        titles = [s.title.casefold() for s in self.sections]
        if len(set(titles)) != len(titles):
            raise ValueError("section titles must be unique in a form")
        return self

    @property
    def questions(self) -> list[Question]:
        return [q for s in self.sections for q in s.questions]

    def canonical(self) -> str:
        """The canonical JSON stored in ``qa_forms.definition``."""
        return canonical_json(self.model_dump(mode="json")).decode()


class Answer(BaseModel):
    """One question's answer, with an optional comment at an optional time in the call."""

    model_config = _STRICT

    value: AnswerValue
    comment: Annotated[
        str, StringConstraints(strip_whitespace=True, max_length=MAX_COMMENT_CHARS)
    ] = ""
    at_ms: Annotated[int, Field(ge=0)] | None = None


# --------------------------------------------------------------------------- scoring


@dataclass(frozen=True, slots=True)
class SectionScore:
    section: str
    raw_bp: int
    score_bp: int
    failed: bool


@dataclass(frozen=True, slots=True)
class Score:
    raw_bp: int
    score_bp: int
    failed: bool
    sections: tuple[SectionScore, ...]  # the sections with at least one answered question
    failed_questions: tuple[str, ...]  # ids of the critical questions failed


def _quarters(kind: str, value: str) -> int | None:
    """An answer's value in quarters (yes 4, no 0, scale N: N - 1); None for n.a."""
    if value == "na":
        return None
    if kind == "yes_no":
        return 4 if value == "yes" else 0
    return int(value) - 1


def _critical_fail(question: Question, value: str) -> bool:
    return question.critical and value == ("no" if question.kind == "yes_no" else "1")


def _basis_points(pairs: Sequence[tuple[int, int]]) -> int:
    """Σ w·q / (4·Σ w) in basis points, rounded half up: floor((2N + D) / 2D)."""
    n = 10_000 * sum(w * q for w, q in pairs)
    d = 4 * sum(w for w, _ in pairs)
    return (2 * n + d) // (2 * d)


def _rate(
    questions: Sequence[Question], values: Mapping[str, str]
) -> tuple[int, bool, list[str]] | None:
    pairs: list[tuple[int, int]] = []
    failed: list[str] = []
    for q in questions:
        value = values[q.id]
        quarters = _quarters(q.kind, value)
        if quarters is not None:
            pairs.append((q.weight, quarters))
        if _critical_fail(q, value):
            failed.append(q.id)
    if not pairs:
        return None
    return _basis_points(pairs), bool(failed), failed


def score(definition: FormDefinition, values: Mapping[str, str]) -> Score:
    """The score of ``values`` (question id -> answer value, every question answered);
    :class:`ScorecardError` when all are n.a. (see the module docstring)."""
    check_values(definition, values)
    whole = _rate(definition.questions, values)
    if whole is None:
        raise ScorecardError("every question is answered n.a.: there is nothing to score")
    raw, failed, failed_ids = whole
    sections = []
    for section in definition.sections:
        part = _rate(section.questions, values)
        if part is not None:
            s_raw, s_failed, _ = part
            sections.append(SectionScore(section.title, s_raw, 0 if s_failed else s_raw, s_failed))
    return Score(raw, 0 if failed else raw, failed, tuple(sections), tuple(failed_ids))


def check_values(definition: FormDefinition, values: Mapping[str, str]) -> None:
    """:class:`AnswerError` unless every question has a value its kind takes and no
    value names a question the form lacks."""
    problems: dict[str, str] = {}
    known = {q.id for q in definition.questions}
    for qid in values:
        if qid not in known:
            problems[qid[:40]] = "this form has no such question"
    for q in definition.questions:
        value = values.get(q.id)
        if value is None or value == "":
            problems[q.id] = "not answered (choose n.a. if it does not apply)"
        elif value not in VALUES[q.kind]:
            problems[q.id] = (
                f"{value[:10]!r} is not an answer: choose one of {', '.join(VALUES[q.kind])}"
            )
    if problems:
        raise AnswerError(problems)


def parse_time(text: str) -> int | None:
    """A time in a call typed as ``m:ss``, ``h:mm:ss`` or seconds (each with an optional
    ``.fraction``) in milliseconds; ``None`` for an empty text; else :class:`ScorecardError`."""
    text = text.strip()
    if not text:
        return None
    match = re.fullmatch(r"(\d{1,6})(?::(\d{1,2}))?(?::(\d{1,2}))?(?:\.(\d{1,3}))?", text)
    if match is None:
        raise ScorecardError(f"the time {text[:20]!r} is not a time: write m:ss, e.g. 1:05")
    *whole, fraction = match.groups()
    parts = [int(p) for p in whole if p is not None]  # [s], [m, s] or [h, m, s]
    if any(p >= 60 for p in parts[1:]):
        raise ScorecardError(f"the time {text!r}: minutes and seconds must be below 60")
    seconds = 0
    for part in parts:
        seconds = seconds * 60 + part
    return seconds * 1000 + int((fraction or "0").ljust(3, "0"))


def read_answers(
    definition: FormDefinition, fields: Mapping[str, str], duration_ms: int
) -> dict[str, Answer]:
    """The answers of the evaluation page's fields (``a.ID`` value, ``c.ID`` comment,
    ``t.ID`` time in the call); :class:`AnswerError` naming each question at fault."""
    problems: dict[str, str] = {}
    answers: dict[str, Answer] = {}
    values = {q.id: fields.get(f"a.{q.id}", "") for q in definition.questions}
    try:
        check_values(definition, values)
    except AnswerError as exc:
        problems.update(exc.problems)
    for q in definition.questions:
        comment = fields.get(f"c.{q.id}", "").strip()
        try:
            at_ms = parse_time(fields.get(f"t.{q.id}", ""))
        except ScorecardError as exc:
            problems.setdefault(q.id, str(exc))
            continue
        problem = answer_problem(comment, at_ms, duration_ms)
        if problem:
            problems.setdefault(q.id, problem)
        elif q.id not in problems:
            answers[q.id] = Answer.model_validate(
                {"value": values[q.id], "comment": comment, "at_ms": at_ms}
            )
    if problems:
        raise AnswerError(problems)
    return answers


def answer_problem(comment: str, at_ms: int | None, duration_ms: int) -> str | None:
    if len(comment) > MAX_COMMENT_CHARS:
        return (
            f"the comment is too long: {len(comment):,} characters, at most {MAX_COMMENT_CHARS:,}"
        )
    duration = max(0, int(duration_ms))
    if at_ms is not None and not 0 <= at_ms <= duration:
        return f"the time {clock(at_ms)} is past the end of the call ({clock(duration)})"
    return None


def clock(ms: int) -> str:
    """``ms`` as ``m:ss`` (``h:mm:ss`` from an hour on), as the time fields take it."""
    seconds = max(0, int(ms)) // 1000
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def check_name(name: str) -> str:
    """A form's name, stripped, else :class:`ScorecardError` saying what is wrong."""
    name = name.strip()
    if not name:
        raise ScorecardError("the form needs a name")
    if len(name) > MAX_NAME_CHARS:
        raise ScorecardError(f"the name is too long: at most {MAX_NAME_CHARS} characters")
    try:
        return printable(name, "the name")
    except ValueError as exc:
        raise ScorecardError(str(exc)) from None


# --------------------------------------------------------------------------- the builder's draft

_FIELD = re.compile(r"s(\d{1,3})\.(?:(title)|q(\d{1,3})\.(id|text|kind|weight|critical))")
#: Rows the builder page keeps beyond the limits, so a refused save can say what is too many.
_SLACK = 5


@dataclass(frozen=True, slots=True)
class Problem:
    """Something wrong in the builder: ``field`` is the input's name ("" for the form)."""

    field: str
    message: str


class DraftError(ScorecardError):
    def __init__(self, problems: Sequence[Problem]) -> None:
        count = len(problems)
        super().__init__(f"the form was not saved: {count} problem{'' if count == 1 else 's'}")
        self.problems = list(problems)


# Mutable on purpose: the builder's add/remove buttons change a draft before it is shown.
@dataclass(slots=True)
class DraftQuestion:
    id: str = ""
    text: str = ""
    kind: str = "yes_no"
    weight: str = "1"
    critical: bool = False

    def blank(self) -> bool:
        return not (self.id.strip() or self.text.strip())


@dataclass(slots=True)
class DraftSection:
    title: str = ""
    questions: list[DraftQuestion] = field(default_factory=list)

    def blank(self) -> bool:
        return not self.title.strip() and all(q.blank() for q in self.questions)


@dataclass(slots=True)
class Draft:
    """The builder page's form as typed (see the module docstring)."""

    name: str = ""
    sections: list[DraftSection] = field(default_factory=list)

    @classmethod
    def blank(cls, name: str = "") -> Draft:
        return cls(name, [DraftSection("", [DraftQuestion() for _ in range(3)])])

    @classmethod
    def of(cls, name: str, definition: FormDefinition) -> Draft:
        sections = [
            DraftSection(
                s.title,
                [
                    DraftQuestion(q.id, q.text, q.kind, str(q.weight), q.critical)
                    for q in s.questions
                ],
            )
            for s in definition.sections
        ]
        return cls(name, sections)

    @classmethod
    def from_fields(cls, name: str, fields: Sequence[tuple[str, str]]) -> Draft:
        """The draft of the builder's fields (``s0.title``, ``s0.q1.text``, …), in the
        order of their numbers; other fields are not the draft's (csrf, op, name)."""
        titles: dict[int, str] = {}
        questions: dict[int, dict[int, DraftQuestion]] = {}
        for key, value in fields:
            match = _FIELD.fullmatch(key)
            if match is None:
                continue
            s, title, qn, attr = match.groups()
            i = int(s)
            if title:
                titles[i] = value
                continue
            question = questions.setdefault(i, {}).setdefault(int(qn), DraftQuestion(weight=""))
            if attr == "critical":
                question.critical = value not in {"", "0", "off"}
            else:
                setattr(question, attr, value)
        order = sorted(set(titles) | set(questions))[: MAX_SECTIONS + _SLACK]
        sections = [
            DraftSection(
                titles.get(i, ""),
                [q for _, q in sorted(questions.get(i, {}).items())][: MAX_QUESTIONS + _SLACK],
            )
            for i in order
        ]
        return cls(name, sections)

    def apply(self, op: str) -> None:
        """A builder button: ``add-section``, ``add-question:S``, ``remove-question:S:Q``,
        ``remove-section:S`` (S, Q: 0-based positions); unknown ones change nothing."""
        verb, _, where = op.partition(":")
        at = [int(n) for n in where.split(":") if n.isdigit()]
        if verb == "add-section" and len(self.sections) < MAX_SECTIONS + _SLACK:
            self.sections.append(DraftSection("", [DraftQuestion()]))
        elif verb == "add-question" and len(at) == 1 and at[0] < len(self.sections):
            if len(self.sections[at[0]].questions) < MAX_QUESTIONS + _SLACK:
                self.sections[at[0]].questions.append(DraftQuestion())
        elif verb == "remove-section" and len(at) == 1 and at[0] < len(self.sections):
            del self.sections[at[0]]
        elif verb == "remove-question" and len(at) == 2 and at[0] < len(self.sections):
            rows = self.sections[at[0]].questions
            if at[1] < len(rows):
                del rows[at[1]]

    def build(self) -> FormDefinition:
        """The form this draft describes; :class:`DraftError` listing every problem (blank
        rows are left out; a blank id is made from the question's text)."""
        problems: list[Problem] = []
        try:
            self.name = check_name(self.name)
        except ScorecardError as exc:
            problems.append(Problem("name", f"Name: {exc}"))
        taken = {q.id.strip() for s in self.sections for q in s.questions if q.id.strip()}
        seen: _Seen = (set(), set())
        sections = []
        for i, draft in enumerate(self.sections):
            if draft.blank():
                continue
            section = _build_section(i, draft, (taken, seen), problems)
            if section is not None:
                sections.append(section)
        if not sections and not problems:
            problems.append(Problem("", "The form has no questions: add a section and a question."))
        if len(sections) > MAX_SECTIONS:
            problems.append(Problem("", f"A form has at most {MAX_SECTIONS} sections."))
        count = sum(len(s.questions) for s in sections)
        if count > MAX_FORM_QUESTIONS:
            problems.append(
                Problem("", f"A form has at most {MAX_FORM_QUESTIONS} questions ({count} here).")
            )
        if problems:
            raise DraftError(problems)
        try:
            return FormDefinition(sections=tuple(sections))
        except ValidationError as exc:
            raise DraftError([Problem("", _message(exc))]) from None


def _message(exc: ValidationError) -> str:
    return str(exc.errors()[0]["msg"]).removeprefix("Value error, ")


def slug(text: str, taken: set[str]) -> str:
    """A question id made from ``text``, unlike any in ``taken`` (which it joins)."""
    base = re.sub(r"[^a-z0-9]+", "-", text.casefold()).strip("-")[:32].strip("-") or "q"
    candidate, n = base, 2
    while candidate in taken:
        candidate, n = f"{base}-{n}", n + 1
    taken.add(candidate)
    return candidate


#: The section titles (casefolded) and question ids seen so far in a build.
_Seen = tuple[set[str], set[str]]


def _build_section(
    i: int, draft: DraftSection, ids: tuple[set[str], _Seen], problems: list[Problem]
) -> Section | None:
    taken, (titles, seen) = ids
    found = len(problems)
    where = f"Section {i + 1}"
    title = draft.title.strip()
    if not title:
        problems.append(Problem(f"s{i}.title", f"{where}: give the section a title."))
    elif title.casefold() in titles:
        problems.append(Problem(f"s{i}.title", f"{where}: another section has this title."))
    titles.add(title.casefold())
    questions = []
    for j, dq in enumerate(draft.questions):
        if dq.blank():
            continue
        if not dq.id.strip():
            dq.id = slug(dq.text, taken)
        key, at = f"s{i}.q{j}", f"{where}, question {j + 1}"
        if dq.id.strip() in seen:
            problems.append(Problem(f"{key}.id", f"{at}: another question has the id {dq.id!r}."))
        seen.add(dq.id.strip())
        question = _build_question(key, at, dq, problems)
        if question is not None:
            questions.append(question)
    if all(dq.blank() for dq in draft.questions):
        problems.append(Problem(f"s{i}.title", f"{where}: add at least one question."))
    elif len(questions) > MAX_QUESTIONS:
        problems.append(
            Problem(f"s{i}.title", f"{where}: a section has at most {MAX_QUESTIONS} questions.")
        )
    if len(problems) > found:
        return None
    try:
        return Section(title=title, questions=tuple(questions))
    except ValidationError as exc:
        problems.append(Problem(f"s{i}.title", f"{where}: {_message(exc)}."))
        return None


def _build_question(
    key: str, where: str, dq: DraftQuestion, problems: list[Problem]
) -> Question | None:
    found = len(problems)
    qid, text = dq.id.strip(), dq.text.strip()
    if re.fullmatch(SLUG, qid) is None:
        why = (
            f"the id {qid[:50]!r} may hold only lowercase letters, digits, - and _ (at most "
            "40, starting with a letter or digit); or leave it empty to have one made"
        )
        problems.append(Problem(f"{key}.id", f"{where}: {why}."))
    if not text:
        problems.append(Problem(f"{key}.text", f"{where}: the question has no text."))
    elif len(text) > MAX_TEXT_CHARS:
        why = f"the text is too long ({len(text)} characters, at most {MAX_TEXT_CHARS})"
        problems.append(Problem(f"{key}.text", f"{where}: {why}."))
    if dq.kind not in KINDS:
        problems.append(Problem(f"{key}.kind", f"{where}: choose yes/no or a 1 to 5 scale."))
    weight = dq.weight.strip()
    if not (re.fullmatch(r"[0-9]{1,3}", weight) and 1 <= int(weight) <= 100):
        why = f"the weight must be a whole number from 1 to 100 (got {weight[:10]!r})"
        problems.append(Problem(f"{key}.weight", f"{where}: {why}."))
    if len(problems) > found:
        return None
    try:
        return Question.model_validate(
            {
                "id": qid,
                "text": text,
                "kind": dq.kind,
                "weight": int(weight),
                "critical": dq.critical,
            }
        )
    except ValidationError as exc:
        problems.append(Problem(f"{key}.text", f"{where}: {_message(exc)}."))
        return None
