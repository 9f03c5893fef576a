"""QA scorecards in the web review: forms, evaluations and their lists.

- ``GET /forms``: the forms (newest version of each name); ``GET /forms/{id}``: one
  version, its questions and its other versions. Admins (``manage_forms``) also get
  ``GET|POST /forms/new`` and ``GET|POST /forms/{id}/edit`` (the builder; saving an
  edit makes version + 1 of the same name) and ``POST /forms/{id}/retire``
  (``retired=1`` retires, ``0`` restores). Viewing forms needs ``manage_forms`` or
  ``search`` (whoever may read evaluations may read what they answered).
- ``GET|POST /recordings/{id}/evaluate?form=ID``: the evaluation page and its submit
  (``score`` on the recording); the server scores and stores, then 303 to the result.
- ``GET /evaluations/{id}``: one evaluation (``view_metadata`` on its recording).
- ``GET /evaluations?agent=&device=&line=&form=&page=``: the list (``search``), limited
  in SQL to the viewer's scope, with the average score and per agent / line / form
  summaries.

Every request is authorized and logged by the gate before any byte is sent (details
such as ``web: evaluate with form NAME v2``, ``web: define form NAME v3``). A recording
out of scope (or none) answers 404, a right the role lacks 403; POSTs need the CSRF
token. The recording page's QA panel (templates/_qa_panel.html) is drawn by the
template global ``qa_panel(viewer, record)`` without a leaf of its own (the page's
``view_metadata`` leaf covers it); ``qa_link(viewer)`` is the nav link's target.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from fastapi import FastAPI, Form, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from headoffice.access import AccessDenied
from headoffice.authz import GRANTS, Action, site_map
from headoffice.index.records import StoredRecord
from headoffice.web.qa_forms import (
    KINDS,
    MAX_COMMENT_CHARS,
    VALUES,
    AnswerError,
    Draft,
    DraftError,
    Problem,
    ScorecardError,
    clock,
    percent,
    read_answers,
    score,
)
from headoffice.web.scorecards import FormRecord, ListFilter, ScorecardStore

if TYPE_CHECKING:
    from headoffice.web.app import Viewer, _Site

__all__ = ["add_scorecard_routes"]


def _number(text: str) -> int | None:
    """A positive id typed in a URL, else None (then: not found)."""
    text = text.strip()
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else None


def may_score_any(v: Viewer) -> bool:
    """Whether any role of the viewer grants ``score`` (page-level: links and buttons)."""
    return any(Action.SCORE in GRANTS[role] for role in v.principal.roles)


def _seconds(ms: int) -> str:
    """A ``#t=`` fragment's seconds (``7.250``)."""
    return f"{ms // 1000}.{ms % 1000:03d}"


class _Scorecards:
    """What the routes share: the site, the store, and the helpers over them."""

    def __init__(self, site: _Site) -> None:
        self.site = site
        self.store = ScorecardStore(site.index)

    # -- access --------------------------------------------------------------------------
    def may_manage(self, v: Viewer) -> bool:
        return self.site.gate_of(v).may(Action.MANAGE_FORMS)

    def office(self, request: Request, v: Viewer, detail: str, *, manage: bool) -> Response | None:
        """Authorize and log a forms request: ``manage`` needs ``manage_forms``, else
        ``manage_forms`` or ``search`` will do. None when allowed, else the 403 page."""
        action = Action.MANAGE_FORMS if manage or self.may_manage(v) else Action.SEARCH
        try:
            self.site.gate_of(v).allow(action, detail=detail)
        except AccessDenied as exc:
            return self.site.refused(request, v, exc)
        return None

    def guarded(
        self, request: Request, v: Viewer, recording_id: str, action: Action, detail: str
    ) -> StoredRecord | Response:
        return self.site.guarded(request, v, recording_id, action, detail)

    def missing(self, request: Request, v: Viewer, what: str) -> Response:
        context = {"title": "Not found", "message": f"There is no such {what}.", "viewer": v}
        return self.site.render(request, "error.html", context, 404)

    def problem(self, request: Request, v: Viewer, title: str, message: str) -> Response:
        context = {"title": title, "message": message, "viewer": v}
        return self.site.render(request, "error.html", context, 400)

    # -- template globals ----------------------------------------------------------------
    def panel(self, v: Viewer, record: StoredRecord) -> dict[str, Any]:
        """The recording page's QA panel (templates/_qa_panel.html's ``qa``)."""
        may = self.site.gate_of(v).may(Action.SCORE, record)
        return {
            "evaluations": self.store.evaluations_for(record.recording_id),
            "may_score": may,
            "forms": self.store.forms(retired=False) if may else [],
            "action": f"/recordings/{quote(record.recording_id, safe='')}/evaluate",
            "line_list": "/evaluations?"
            + ListFilter(device=record.device_id, line=record.line).to_query(),
        }

    def link(self, v: Viewer | None) -> str | None:
        """The QA nav link's target: the evaluations for scorers, the forms for admins."""
        if v is None:
            return None
        if may_score_any(v):
            return "/evaluations"
        return "/forms" if self.may_manage(v) else None

    # -- the builder ---------------------------------------------------------------------
    def builder(
        self,
        request: Request,
        v: Viewer,
        draft: Draft,
        base: FormRecord | None,
        problems: Sequence[Problem] = (),
    ) -> Response:
        context = {
            "viewer": v,
            "active": "qa",
            "draft": draft,
            "base": base,
            "kinds": KINDS,
            "problems": problems,
            "bad": {p.field for p in problems},
            "action": f"/forms/{base.id}/edit" if base else "/forms/new",
        }
        return self.site.render(request, "form_edit.html", context, 400 if problems else 200)

    def save_draft(
        self, request: Request, form_id: str | None, fields: Sequence[tuple[str, str]]
    ) -> Response:
        """A builder POST (``form_id``: the version edited; None: a new form): a button
        that changes the rows, or save (a new version)."""
        v = self.site.viewer(request)
        base = None
        if form_id is not None:
            number = _number(form_id)
            base = self.store.form(number) if number else None
            if base is None:
                refused = self.office(request, v, "web: edit no form", manage=True)
                return refused or self.missing(request, v, "form")
        form = dict(fields)
        op = form.get("op", "save")
        name = base.name if base else form.get("name", "")
        draft = Draft.from_fields(name[:1000], fields)
        if op != "save":
            refused = self.office(request, v, f"web: form builder ({op[:40]})", manage=True)
            if refused:
                return refused
            draft.apply(op)
            return self.builder(request, v, draft, base)
        try:
            definition = draft.build()
        except DraftError as exc:
            detail = f"web: define form {draft.name[:100]} (not saved: {exc.problems[0].message})"
            return self.office(request, v, detail, manage=True) or self.builder(
                request, v, draft, base, exc.problems
            )
        version = self.store.next_version(draft.name) if base else 1
        detail = f"web: define form {draft.name} v{version}"
        refused = self.office(request, v, detail, manage=True)
        if refused:
            return refused
        try:
            saved = self.store.save_form(draft.name, definition, v.principal.name, version=version)
        except ScorecardError as exc:
            return self.builder(request, v, draft, base, [Problem("name", f"Not saved: {exc}.")])
        return RedirectResponse(f"/forms/{saved.id}", status_code=303)

    # -- evaluating ----------------------------------------------------------------------
    def evaluate_page(
        self,
        request: Request,
        v: Viewer,
        record: StoredRecord,
        form: FormRecord | None,
        typed: Mapping[str, str],
        *,
        errors: tuple[Mapping[str, str], str | None] = ({}, None),
    ) -> Response:
        problems, error = errors
        context = {
            "viewer": v,
            "active": "qa",
            "r": record,
            "form": form,
            "forms": self.store.forms(retired=False),
            "typed": typed,
            "problems": problems,
            "error": error,
            "values": VALUES,
            "agents": self.store.agents_for_line(record.device_id, record.line),
            "max_comment": MAX_COMMENT_CHARS,
            "end": clock(record.duration_ms),
        }
        status = 400 if problems or error else 200
        return self.site.render(request, "evaluate.html", context, status)

    def submit(self, request: Request, recording_id: str, fields: Mapping[str, str]) -> Response:
        """An evaluation POST: checked, logged, scored and stored (or shown again with
        what is wrong, as typed)."""
        v = self.site.viewer(request)
        record = self.site.record(recording_id)
        if record is None or not self.site.gate_of(v).may(Action.SCORE, record):
            # Refused (and logged) before anything about the recording or forms is said.
            refused = self.guarded(request, v, recording_id, Action.SCORE, "web: evaluate")
            if isinstance(refused, Response):
                return refused
            record = refused
        form_id = _number(fields.get("form", ""))
        try:
            form = self.store.usable(self.store.form(form_id or 0), form_id or 0)
        except ScorecardError as exc:
            allowed = self.guarded(request, v, recording_id, Action.SCORE, "web: evaluate")
            if isinstance(allowed, Response):
                return allowed
            return self.problem(request, v, "Evaluation not saved", f"{str(exc).capitalize()}.")
        what = f"web: evaluate with form {form.name} v{form.version}"
        problems: dict[str, str] = {}
        error = None
        try:
            answers = read_answers(form.definition, fields, record.duration_ms)
            agent = self.store.check_agent(fields.get("agent", ""), record)
            score(form.definition, {k: a.value for k, a in answers.items()})
        except AnswerError as exc:
            problems, error = exc.problems, f"The evaluation was not saved: {exc}."
        except ScorecardError as exc:
            error = f"The evaluation was not saved: {exc}."
        allowed = self.guarded(
            request, v, recording_id, Action.SCORE, what + (" (not saved)" if error else "")
        )
        if isinstance(allowed, Response):
            return allowed
        if error:
            return self.evaluate_page(request, v, allowed, form, fields, errors=(problems, error))
        try:
            saved = self.store.evaluate(allowed, form.id, v.principal.name, agent, answers)
        except ScorecardError as exc:  # e.g. the form was retired or edited a moment ago
            return self.problem(request, v, "Evaluation not saved", f"{str(exc).capitalize()}.")
        return RedirectResponse(f"/evaluations/{saved.row.id}", status_code=303)


async def _fields(request: Request) -> list[tuple[str, str]]:
    """The POSTed form's text fields, in order (parsed once: the CSRF guard read them).
    The routes that need them are async for this alone, and do the rest (the session,
    the index) in the thread pool as FastAPI does for the plain routes."""
    form = await request.form()
    return [(k, value) for k, value in form.multi_items() if isinstance(value, str)]


def add_scorecard_routes(app: FastAPI, site: _Site) -> ScorecardStore:
    """Register the QA routes on ``app`` and the template globals ``qa_panel`` and
    ``qa_link`` and the filters ``bp`` (basis points as a percentage), ``qa_clock`` and
    ``qa_seconds`` (a time in a call as m:ss, and as a ``#t=`` fragment's seconds)."""
    qa = _Scorecards(site)
    env = site.templates.env
    env.globals["qa_panel"] = qa.panel
    env.globals["qa_link"] = qa.link
    env.filters["bp"] = percent
    env.filters["qa_clock"] = clock
    env.filters["qa_seconds"] = _seconds
    _form_admin_routes(app, site, qa)  # before /forms/{form_id}: /forms/new is not an id
    _form_view_routes(app, site, qa)
    _evaluate_routes(app, site, qa)
    _evaluation_view_routes(app, site, qa)
    return qa.store


def _form_admin_routes(app: FastAPI, site: _Site, qa: _Scorecards) -> None:
    store = qa.store

    @app.get("/forms/new")
    def new_form(request: Request) -> Response:
        v = site.viewer(request)
        return qa.office(request, v, "web: new form", manage=True) or qa.builder(
            request, v, Draft.blank(), None
        )

    @app.post("/forms/new")
    async def post_new_form(request: Request) -> Response:
        fields = await _fields(request)
        return await run_in_threadpool(qa.save_draft, request, None, fields)

    @app.get("/forms/{form_id}/edit")
    def edit_form(form_id: str, request: Request) -> Response:
        v = site.viewer(request)
        number = _number(form_id)
        found = store.form(number) if number else None
        detail = f"web: edit form {found.name} v{found.version}" if found else "web: edit no form"
        refused = qa.office(request, v, detail, manage=True)
        if refused:
            return refused
        if found is None:
            return qa.missing(request, v, "form")
        return qa.builder(request, v, Draft.of(found.name, found.definition), found)

    @app.post("/forms/{form_id}/edit")
    async def post_edit_form(form_id: str, request: Request) -> Response:
        fields = await _fields(request)
        return await run_in_threadpool(qa.save_draft, request, form_id, fields)

    @app.post("/forms/{form_id}/retire")
    def retire_form(
        form_id: str, request: Request, retired: str = Form("1", max_length=5)
    ) -> Response:
        v = site.viewer(request)
        number = _number(form_id)
        found = store.form(number) if number else None
        verb = "restore" if retired.strip() in {"0", "false", "no"} else "retire"
        detail = f"web: {verb} form {found.name}" if found else f"web: {verb} no form"
        refused = qa.office(request, v, detail, manage=True)
        if refused:
            return refused
        if found is None:
            return qa.missing(request, v, "form")
        store.set_retired(found.name, verb == "retire")
        return RedirectResponse("/forms", status_code=303)


def _form_view_routes(app: FastAPI, site: _Site, qa: _Scorecards) -> None:
    store = qa.store

    @app.get("/forms")
    def forms(request: Request) -> Response:
        v = site.viewer(request)
        refused = qa.office(request, v, "web: forms", manage=False)
        if refused:
            return refused
        context = {
            "viewer": v,
            "active": "qa",
            "forms": store.forms(),
            "may_manage": qa.may_manage(v),
            "may_list": site.gate_of(v).may(Action.SEARCH),
        }
        return site.render(request, "forms.html", context)

    @app.get("/forms/{form_id}")
    def form(form_id: str, request: Request) -> Response:
        v = site.viewer(request)
        number = _number(form_id)
        found = store.form(number) if number else None
        detail = (
            f"web: form {found.name} v{found.version}"
            if found
            else f"web: no form {form_id[:40]!r}"
        )
        refused = qa.office(request, v, detail, manage=False)
        if refused:
            return refused
        if found is None:
            return qa.missing(request, v, "form")
        context = {
            "viewer": v,
            "active": "qa",
            "form": found,
            "versions": store.versions(found.name),
            "kinds": KINDS,
            "may_manage": qa.may_manage(v),
            "may_list": site.gate_of(v).may(Action.SEARCH),
            "list": "/evaluations?" + ListFilter(form=found.id).to_query(),
        }
        return site.render(request, "form.html", context)


def _evaluate_routes(app: FastAPI, site: _Site, qa: _Scorecards) -> None:
    store = qa.store

    @app.get("/recordings/{recording_id}/evaluate")
    def evaluate(recording_id: str, request: Request, form: str = "") -> Response:
        v = site.viewer(request)
        number = _number(form)
        chosen = store.form(number) if number else None
        detail = (
            f"web: evaluation page, form {chosen.name} v{chosen.version}"
            if chosen
            else "web: evaluation page"
        )
        allowed = qa.guarded(request, v, recording_id, Action.SCORE, detail)
        if isinstance(allowed, Response):
            return allowed
        if form and chosen is None:
            return qa.missing(request, v, "form")
        if chosen is not None:
            try:
                store.usable(chosen, chosen.id)
            except ScorecardError as exc:
                return qa.problem(request, v, "Form not usable", f"{str(exc).capitalize()}.")
        return qa.evaluate_page(request, v, allowed, chosen, {})

    @app.post("/recordings/{recording_id}/evaluate")
    async def post_evaluate(recording_id: str, request: Request) -> Response:
        fields = dict(await _fields(request))
        return await run_in_threadpool(qa.submit, request, recording_id, fields)


def _evaluation_view_routes(app: FastAPI, site: _Site, qa: _Scorecards) -> None:
    store = qa.store

    @app.get("/evaluations/{evaluation_id}")
    def evaluation(evaluation_id: str, request: Request) -> Response:
        v = site.viewer(request)
        number = _number(evaluation_id)
        found = store.evaluation(number) if number else None
        if found is None:
            # Refused (there is no recording to ask about) and so logged: guesses leave a trail.
            try:
                site.gate_of(v).allow(
                    Action.VIEW_METADATA, None, detail=f"web: no evaluation {evaluation_id[:40]!r}"
                )
            except AccessDenied:
                return qa.missing(request, v, "evaluation")
            return qa.missing(request, v, "evaluation")
        allowed = qa.guarded(
            request, v, found.row.recording_id, Action.VIEW_METADATA, f"web: evaluation {number}"
        )
        if isinstance(allowed, Response):
            return allowed
        context = {
            "viewer": v,
            "active": "qa",
            "e": found,
            "r": allowed,
            "kinds": KINDS,
            "may_score": site.gate_of(v).may(Action.SCORE, allowed),
            "by_agent": "/evaluations?" + ListFilter(agent=found.row.agent).to_query(),
            "by_line": "/evaluations?"
            + ListFilter(device=found.row.device_id, line=found.row.line).to_query(),
        }
        return site.render(request, "evaluation.html", context)

    @app.get("/evaluations")
    def evaluations(request: Request) -> Response:
        v = site.viewer(request)
        try:
            wanted = ListFilter.from_query(request.query_params)
        except ScorecardError as exc:
            return qa.problem(request, v, "List not understood", f"{str(exc).capitalize()}.")
        try:
            site.gate_of(v).allow(
                Action.SEARCH, detail=f"web: evaluations {wanted.to_query()}".rstrip()
            )
        except AccessDenied as exc:
            return site.refused(request, v, exc)
        sites = site_map(site.cfg.sites)
        principal = v.principal
        context = {
            "viewer": v,
            "active": "qa",
            "wanted": wanted,
            "page": store.evaluation_list(principal, sites, wanted),
            "groups": {
                by: store.groups(principal, sites, wanted, by) for by in ("agent", "line", "form")
            },
            "forms": store.forms(every_version=True),
        }
        return site.render(request, "evaluations.html", context)
