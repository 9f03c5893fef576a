"""The compliance pages: legal holds and data-subject requests, for those with the
``hold`` right (the compliance role; :mod:`headoffice.authz`).

- ``GET /compliance``: the holds in force on recordings in the viewer's scope (filter:
  ``case`` contains), each with a release form; one ``search`` leaf per view.
- ``POST /recordings/{id}/holds``: put a recording on hold for a case (``case_ref``,
  ``reason``); ``POST /recordings/{id}/holds/release``: release a case's hold (``next``:
  back to ``compliance`` or the recording). Both through :class:`headoffice.holds.Holds`
  (a ``hold`` / ``release`` leaf before anything changes). The recording page draws its
  holds (and, for the hold right, these forms) with the template global
  ``holds_panel(viewer, record)``, covered by the page's ``view_metadata`` leaf.
- ``GET /compliance/dsar``: the request form; with ``number`` or ``name`` and ``ref``,
  the recordings found (:func:`headoffice.dsar.find_subject`: one ``search`` leaf).
- ``POST /compliance/dsar/access``: the access ZIP, streamed (each recording an
  ``export`` leaf before its bytes; :func:`headoffice.dsar.access_zip`).
- ``GET /compliance/dsar/erase``: the confirmation: each recording's verdict (a dry
  run); ``POST /compliance/dsar/erase`` (``confirm=yes`` and the ``rid`` of each
  recording shown as to be deleted): the erasure, then its report. A recording found
  since the confirmation page is not deleted (it was not shown): it is reported kept.

Every POST needs the CSRF token (the app's guard). A recording out of scope (or none)
answers 404, a right the role lacks 403; a viewer without the ``hold`` right gets 403
for these pages (logged).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from fastapi import FastAPI, Form, Request
from fastapi.responses import RedirectResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from headoffice.access import AccessDenied, Gate
from headoffice.authz import GRANTS, Action
from headoffice.dsar import (
    DsarError,
    DsarRequest,
    ErasureItem,
    ErasureReport,
    Fate,
    Subject,
    access_zip,
    check_ref,
    erase,
    find_subject,
)
from headoffice.exportzip import RecordingsZip, ZipSink, safe_part
from headoffice.holds import MAX_CASE_REF, MAX_REASON, HoldError, Holds, holds_of
from headoffice.index.records import StoredRecord
from headoffice.web.routes_export import Exporter
from headoffice.web.search import scope_clause

if TYPE_CHECKING:
    from headoffice.web.app import Viewer, _Site
    from headoffice.web.routes_audio import Playback

__all__ = ["add_compliance_routes", "may_compliance"]

MAX_CASE_FILTER = 100
MAX_HOLDS_SHOWN = 1000
DONE_MESSAGES = {"released": "The hold was released."}  # ?done= (fixed texts only)


def may_compliance(v: Viewer | None) -> bool:
    """Whether any role of the viewer grants ``hold`` (the Compliance pages)."""
    return v is not None and any(Action.HOLD in GRANTS[role] for role in v.principal.roles)


@dataclass(frozen=True, slots=True)
class HeldRow:
    """A hold in force, as the holds page lists it."""

    recording_id: str
    case_ref: str
    reason: str
    set_by: str
    set_at: str
    started_utc: str
    device_id: str
    line: str


def holds_in_force(
    site: _Site, gate: Gate, case: str | None, limit: int = MAX_HOLDS_SHOWN
) -> list[HeldRow]:
    """The holds in force on recordings the gate's actor may see (case contains
    ``case``, ignoring ASCII case), by case then time set."""
    where = ["h.released_at IS NULL"]
    params: list[Any] = []
    scope = scope_clause(gate.actor.principal, gate.sites)
    if scope is not None:  # its columns (device_id, line) are the recordings' alone
        where.append(scope[0])
        params += scope[1]
    if case:
        escaped = case.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        where.append("LOWER(h.case_ref) LIKE ? ESCAPE '\\'")
        params.append(f"%{escaped}%")
    with site.index.transaction(False) as q:
        rows = q(
            "SELECT h.recording_id, h.case_ref, h.reason, h.set_by, h.set_at, r.started_utc, "
            "r.device_id, r.line FROM holds h JOIN recordings r "
            f"ON r.recording_id = h.recording_id WHERE {' AND '.join(where)} "
            "ORDER BY h.case_ref, h.set_at, h.id LIMIT ?",
            (*params, limit),
        )
    return [HeldRow(*(str(c) for c in r)) for r in rows]


class _Compliance:
    """What the routes share: the site, the office identity and the helpers."""

    def __init__(self, site: _Site, playback: Playback) -> None:
        self.site = site
        self.source = Exporter(site, playback)

    def holds_panel(self, v: Viewer, record: StoredRecord) -> dict[str, Any]:
        """The recording page's holds card (templates/_holds.html's ``h``)."""
        gate = self.site.gate_of(v)
        holds = holds_of(self.site.index, record.recording_id)
        return {
            "base": f"/recordings/{quote(record.recording_id, safe='')}",
            "csrf": v.csrf,
            "holds": holds,
            "active": [h for h in holds if h.active],
            "may_hold": gate.may(Action.HOLD, record),
            "may_release": gate.may(Action.RELEASE, record),
            "max_case": MAX_CASE_REF,
            "max_reason": MAX_REASON,
        }

    def page_refused(self, request: Request, v: Viewer, what: str) -> Response | None:
        """None when ``v`` may use the compliance pages, else the 403 page (logged)."""
        if may_compliance(v):
            return None
        gate = self.site.gate_of(v)
        with contextlib.suppress(AccessDenied):
            gate.allow(Action.SEARCH, detail=f"web: {what} refused: no hold right")
        exc = AccessDenied(f"{v.principal.name} may not use the compliance pages (no hold right)")
        return self.site.refused(request, v, exc)

    def error(self, request: Request, v: Viewer, title: str, message: str) -> Response:
        context = {"title": title, "message": message, "viewer": v}
        return self.site.render(request, "error.html", context, 400)

    def request_of(self, v: Viewer, number: str, name: str, exact: str, ref: str) -> DsarRequest:
        """The request the form describes (:class:`DsarError` naming what is wrong)."""
        subject = Subject.parse(number, name, exact=exact in ("1", "on", "true", "yes"))
        office = self.site.cfg.web.office_name
        return DsarRequest(check_ref(ref), subject, v.principal.name, datetime.now(UTC), office)

    def lookup(
        self, request: Request, v: Viewer, form: tuple[str, str, str, str], purpose: str
    ) -> tuple[DsarRequest, list[StoredRecord]] | Response:
        """The request of ``form`` (number, name, exact, ref) and its recordings (one
        ``search`` leaf, ``purpose``), else the error page (400, or 403 refused)."""
        try:
            dsar = self.request_of(v, *form)
            return dsar, find_subject(self.site.index, self.site.gate_of(v), dsar, purpose)
        except DsarError as exc:
            return self.error(request, v, "Request not understood", _sentence(exc))
        except AccessDenied as exc:
            return self.site.refused(request, v, exc)

    def erase_confirmed(
        self, request: Request, form: tuple[str, str, str, str], confirm: str, confirmed: set[str]
    ) -> Response:
        """Erase the ``confirmed`` recordings of the request ``form`` (number, name,
        exact, ref) when ``confirm`` is ``yes``, and show the report."""
        site = self.site
        v = site.viewer(request)
        if (refused := self.page_refused(request, v, "data-subject erasure")) is not None:
            return refused
        if confirm != "yes":
            message = "Tick the confirmation box to erase; nothing was deleted."
            return self.error(request, v, "Not confirmed", message)
        found = self.lookup(request, v, form, "erasure")
        if isinstance(found, Response):
            return found
        dsar, records = found
        chosen = [r for r in records if r.recording_id in confirmed]
        others = [r for r in records if r.recording_id not in confirmed]
        settings = {"index": site.index, "store": request.app.state.store,
                    "gate": site.gate_of(v), "retention": site.cfg.retention,
                    "sites": site.cfg.sites}  # fmt: skip
        done = erase(dsar, chosen, **settings)
        rest = erase(dsar, others, **settings, dry_run=True)
        report = ErasureReport(dsar, False, (*done.items, *_unconfirmed(rest)))
        return self.erase_page(request, v, report)

    def erase_page(self, request: Request, v: Viewer, report: ErasureReport) -> Response:
        """The confirmation (a dry run's report) or the erasure's report."""
        context = {
            "viewer": v, "dsar": report.request, "report": report,
            "query": _subject_query(report.request),
            "counts": {fate.value: report.count(fate) for fate in Fate},
            "todo": [i for i in report.items if i.fate is Fate.WOULD_DELETE],
        }  # fmt: skip
        return self.site.render(request, "dsar_erase.html", context)


def _sentence(exc: Exception) -> str:
    """An error's message as a sentence for a page (the command line prints it as is)."""
    text = str(exc)
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def _subject_query(request: DsarRequest) -> str:
    s = request.subject
    pairs = [("number" if s.number is not None else "name", s.shown), ("ref", request.ref)]
    if s.exact:
        pairs.append(("exact", "1"))
    return urlencode(pairs)


def _zip_stream(
    c: _Compliance, request: Request, gate: Gate, dsar: DsarRequest, records: list[StoredRecord]
) -> Iterator[bytes]:
    sink = ZipSink()
    store = request.app.state.store
    with RecordingsZip(sink) as out:
        for _item in access_zip(out, dsar, records, store=store, gate=gate, source=c.source):
            if chunk := sink.take():
                yield chunk
    yield sink.take()


def _unconfirmed(report: ErasureReport) -> list[ErasureItem]:
    """A dry run's items for recordings found since the confirmation: not deleted."""
    why = "found since the confirmation page, so not deleted: run the erasure again"
    return [
        replace(item, fate=Fate.KEPT, reason=why) if item.fate is Fate.WOULD_DELETE else item
        for item in report.items
    ]


def _hold_routes(app: FastAPI, c: _Compliance) -> None:
    site = c.site

    @app.get("/compliance")
    def holds_page(request: Request, case: str = "") -> Response:
        v = site.viewer(request)
        if (refused := c.page_refused(request, v, "holds in force")) is not None:
            return refused
        case = " ".join(case.split())[:MAX_CASE_FILTER]
        gate = site.gate_of(v)
        try:
            gate.allow(
                Action.SEARCH, detail="web: holds in force" + (f"; case={case}" if case else "")
            )
        except AccessDenied as exc:
            return site.refused(request, v, exc)
        rows = holds_in_force(site, gate, case or None)
        context = {
            "viewer": v, "rows": rows, "case": case, "limit": MAX_HOLDS_SHOWN,
            "done": DONE_MESSAGES.get(request.query_params.get("done", "")),
            "max_reason": MAX_REASON,
        }  # fmt: skip
        return site.render(request, "compliance.html", context)

    def change(
        request: Request, recording_id: str, case_ref: str, reason: str, release: bool
    ) -> StoredRecord | Response:
        v = site.viewer(request)
        action = Action.RELEASE if release else Action.HOLD
        record = site.record(recording_id)
        gate = site.gate_of(v)
        if record is None or not gate.may(action, record):
            # Refused (and logged) before anything about the recording is said.
            return site.guarded(request, v, recording_id, action, f"web: {action.value}")
        holds = Holds(site.index, request.app.state.store, gate)
        try:
            if release:
                holds.release(record, case_ref, reason)
            else:
                holds.set(record, case_ref, reason)
        except HoldError as exc:
            title = "Hold not released" if release else "Hold not set"
            return c.error(request, v, title, f"{_sentence(exc)} Go back and correct it.")
        except AccessDenied as exc:
            return site.not_found(request, v) if exc.hidden else site.refused(request, v, exc)
        return record

    @app.post("/recordings/{recording_id}/holds")
    def set_hold(
        recording_id: str,
        request: Request,
        case_ref: str = Form("", max_length=MAX_CASE_REF + 50),
        reason: str = Form("", max_length=MAX_REASON + 50),
    ) -> Response:
        done = change(request, recording_id, case_ref, reason, release=False)
        if isinstance(done, Response):
            return done
        target = f"/recordings/{quote(done.recording_id, safe='')}#holds-heading"
        return RedirectResponse(target, status_code=303)

    @app.post("/recordings/{recording_id}/holds/release")
    def release_hold(
        recording_id: str,
        request: Request,
        case_ref: str = Form("", max_length=MAX_CASE_REF + 50),
        reason: str = Form("", max_length=MAX_REASON + 50),
        next: str = Form("recording", max_length=20),
    ) -> Response:
        done = change(request, recording_id, case_ref, reason, release=True)
        if isinstance(done, Response):
            return done
        if next == "compliance":
            return RedirectResponse("/compliance?done=released", status_code=303)
        target = f"/recordings/{quote(done.recording_id, safe='')}#holds-heading"
        return RedirectResponse(target, status_code=303)


def _dsar_routes(app: FastAPI, c: _Compliance) -> None:
    site = c.site

    @app.get("/compliance/dsar")
    def dsar_page(
        request: Request, number: str = "", name: str = "", exact: str = "", ref: str = ""
    ) -> Response:
        v = site.viewer(request)
        if (refused := c.page_refused(request, v, "data-subject requests")) is not None:
            return refused
        context: dict[str, Any] = {
            "viewer": v, "number": number, "name": name, "exact": bool(exact), "ref": ref,
            "dsar": None, "records": [], "held": set(), "error": None,
        }  # fmt: skip
        if not (number or name or ref):
            return site.render(request, "dsar.html", context)
        try:  # a mistake in the form is shown on the form itself
            c.request_of(v, number, name, exact, ref)
        except DsarError as exc:
            context["error"] = _sentence(exc)
            return site.render(request, "dsar.html", context, 400)
        found = c.lookup(request, v, (number, name, exact, ref), "lookup")
        if isinstance(found, Response):
            return found
        dsar, records = found
        held = {r.recording_id for r in records if any(h.active for h in holds_of(site.index, r.recording_id))}  # fmt: skip
        context |= {"dsar": dsar, "records": records, "held": held, "query": _subject_query(dsar)}
        return site.render(request, "dsar.html", context)

    @app.post("/compliance/dsar/access")
    def dsar_access(
        request: Request,
        number: str = Form("", max_length=250),
        name: str = Form("", max_length=250),
        exact: str = Form("", max_length=5),
        ref: str = Form("", max_length=150),
    ) -> Response:
        v = site.viewer(request)
        if (refused := c.page_refused(request, v, "data-subject access")) is not None:
            return refused
        found = c.lookup(request, v, (number, name, exact, ref), "access")
        if isinstance(found, Response):
            return found
        dsar, records = found
        if not records:
            message = "No recording in your scope matches; nothing was exported."
            return c.error(request, v, "Nothing found", message)
        name_ = f"dsar_{safe_part(dsar.ref)}_{dsar.at:%Y%m%d-%H%M%S}.zip"
        return StreamingResponse(
            _zip_stream(c, request, site.gate_of(v), dsar, records),
            media_type="application/zip",
            headers={"Content-Disposition": f'attachment; filename="{name_}"'},
        )


def _erasure_routes(app: FastAPI, c: _Compliance) -> None:
    site = c.site

    @app.get("/compliance/dsar/erase")
    def dsar_erase_confirm(
        request: Request, number: str = "", name: str = "", exact: str = "", ref: str = ""
    ) -> Response:
        v = site.viewer(request)
        if (refused := c.page_refused(request, v, "data-subject erasure")) is not None:
            return refused
        found = c.lookup(request, v, (number, name, exact, ref), "erasure dry run")
        if isinstance(found, Response):
            return found
        dsar, records = found
        report = erase(
            dsar, records, index=site.index, store=request.app.state.store,
            gate=site.gate_of(v), retention=site.cfg.retention, sites=site.cfg.sites,
            dry_run=True,
        )  # fmt: skip
        return c.erase_page(request, v, report)

    @app.post("/compliance/dsar/erase")
    async def dsar_erase(request: Request) -> Response:
        form = await request.form()  # (the CSRF guard has read and checked it already)
        number, name, exact, ref, confirm = (
            str(form.get(k, ""))[:250] for k in ("number", "name", "exact", "ref", "confirm")
        )
        confirmed = {str(x)[:250] for x in form.getlist("rid")}
        # The erasure itself blocks (index, store): off the event loop.
        return await run_in_threadpool(
            c.erase_confirmed, request, (number, name, exact, ref), confirm, confirmed
        )


def add_compliance_routes(app: FastAPI, site: _Site) -> None:
    """Register the compliance routes (after :func:`add_audio_routes`: the access ZIP
    decrypts with its office identity) and the template globals ``may_compliance`` and
    ``holds_panel(viewer, record)``."""
    c = _Compliance(site, app.state.playback)
    site.templates.env.globals["may_compliance"] = may_compliance
    site.templates.env.globals["holds_panel"] = c.holds_panel
    _hold_routes(app, c)
    _dsar_routes(app, c)
    _erasure_routes(app, c)
