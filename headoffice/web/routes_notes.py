"""Notes, the reviewed mark and the history of a recording page.

- ``POST /recordings/{id}/notes``: a note or bookmark at a position in the call (the
  ``note`` right; the ledger leaf is the access itself, detail ``web: note at mm:ss``);
- ``POST /recordings/{id}/sensitive``: mark a span of the call (``start`` to ``end``,
  ``mm:ss`` or ms) as sensitive, silenced in the anonymised export (the ``note`` right;
  leaf detail ``web: sensitive mm:ss-mm:ss``);
- ``POST /recordings/{id}/reviewed``: mark (``reviewed=1``) or unmark (``reviewed=0``)
  the recording as reviewed by the signed-in person (the ``note`` right too);
- ``GET /recordings/{id}/history``: the ledger's leaves about this recording (its
  ingest, every access to it), for those with ``view_metadata``; reading it is itself
  an access leaf (detail ``web: history``), appended before the list is read.

The POSTs answer the recording page's notes panel (templates/_notes.html) as an
htmx fragment; without htmx (no ``HX-Request``), a 303 back to the recording page.
The panel is drawn into the recording page by the template global ``review_panel``
(registered here), without a leaf of its own: the page's ``view_metadata`` leaf
covers it. A recording out of scope (or none) answers 404, a right the role lacks 403.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from fastapi import FastAPI, Form, Request
from fastapi.responses import RedirectResponse, Response

from headoffice.authz import Action
from headoffice.index.records import StoredRecord
from headoffice.web.notes import (
    MAX_NOTE_CHARS,
    NoteError,
    NoteStore,
    ledger_history,
    mmss,
    parse_position,
)

if TYPE_CHECKING:
    from headoffice.web.app import Viewer, _Site

__all__ = ["add_note_routes"]


class _Notes:
    """What the routes share: the site, the store, and the helpers over them."""

    def __init__(self, site: _Site) -> None:
        self.site = site
        self.store = NoteStore(site.index)

    def panel(self, v: Viewer, record: StoredRecord, error: str | None = None) -> dict[str, Any]:
        """The notes panel's context (templates/_notes.html's ``p``)."""
        gate = self.site.gate_of(v)
        reviews = self.store.reviewed_by(record.recording_id)
        return {
            "rid": record.recording_id,
            "base": f"/recordings/{quote(record.recording_id, safe='')}",
            "csrf": v.csrf,
            "notes": self.store.notes_for(record.recording_id),
            "sensitive": self.store.sensitive_spans(record.recording_id),
            "reviews": reviews,
            "mine": any(r.reviewer == v.principal.name for r in reviews),
            "may_note": gate.may(Action.NOTE, record),
            "may_history": gate.may(Action.VIEW_METADATA, record),
            "max_chars": MAX_NOTE_CHARS,
            "duration_ms": record.duration_ms,
            "error": error,
        }

    def guarded(
        self, request: Request, v: Viewer, recording_id: str, action: Action, detail: str
    ) -> StoredRecord | Response:
        return self.site.guarded(request, v, recording_id, action, detail)

    def answer(
        self, request: Request, v: Viewer, record: StoredRecord, error: str | None = None
    ) -> Response:
        """The panel fragment for htmx (400 with ``error``), else the error page or a
        303 back to the recording page."""
        status = 400 if error else 200
        if request.headers.get("hx-request"):
            context = {"p": self.panel(v, record, error)}
            return self.site.render(request, "_notes.html", context, status_code=status)
        if error:
            context2: dict[str, Any] = {"title": "Note not saved", "message": error, "viewer": v}
            return self.site.render(request, "error.html", context2, status)
        target = f"/recordings/{quote(record.recording_id, safe='')}#notes-heading"
        return RedirectResponse(target, status_code=303)


def add_note_routes(app: FastAPI, site: _Site) -> NoteStore:
    """Register the notes, reviewed and history routes on ``app`` and the template
    global ``review_panel(viewer, record)`` the recording page draws its panel with."""
    notes = _Notes(site)
    store = notes.store
    guarded, answer = notes.guarded, notes.answer
    site.templates.env.globals["review_panel"] = notes.panel
    site.templates.env.filters["mmss"] = mmss

    @app.post("/recordings/{recording_id}/notes")
    def post_note(
        recording_id: str,
        request: Request,
        at_ms: str = Form("0", max_length=20),
        text: str = Form(""),
        kind: str = Form("note", max_length=20),
    ) -> Response:
        v = site.viewer(request)
        record = site.record(recording_id)
        gate = site.gate_of(v)
        if record is None or not gate.may(Action.NOTE, record):
            # Refused (and logged) before anything about the recording is said.
            refused = guarded(request, v, recording_id, Action.NOTE, "web: note")
            if isinstance(refused, Response):
                return refused
            record = refused
        try:
            position = int(at_ms.strip() or "0")
        except ValueError:
            return answer(request, v, record, "the position must be a whole number of milliseconds")
        try:
            kind_, body = NoteStore.check(record, position, text, kind)
        except NoteError as exc:
            return answer(request, v, record, f"The note was not saved: {exc}.")
        allowed = guarded(
            request, v, recording_id, Action.NOTE, f"web: {kind_} at {mmss(position)}"
        )
        if isinstance(allowed, Response):
            return allowed
        store.add_note(allowed, v.principal.name, position, body, kind_)
        return answer(request, v, allowed)

    @app.post("/recordings/{recording_id}/sensitive")
    def post_sensitive(
        recording_id: str,
        request: Request,
        start: str = Form("", max_length=20),
        end: str = Form("", max_length=20),
        text: str = Form("", max_length=MAX_NOTE_CHARS + 200),
    ) -> Response:
        v = site.viewer(request)
        record = site.record(recording_id)
        if record is None or not site.gate_of(v).may(Action.NOTE, record):
            refused = guarded(request, v, recording_id, Action.NOTE, "web: sensitive")
            if isinstance(refused, Response):
                return refused
            record = refused
        try:
            start_ms, end_ms = parse_position(start), parse_position(end)
            reason = NoteStore.check_span(record, start_ms, end_ms, text)
        except NoteError as exc:
            return answer(request, v, record, f"The sensitive span was not saved: {exc}.")
        detail = f"web: sensitive {mmss(start_ms)}-{mmss(end_ms)}"
        allowed = guarded(request, v, recording_id, Action.NOTE, detail)
        if isinstance(allowed, Response):
            return allowed
        store.add_sensitive(allowed, v.principal.name, start_ms, end_ms, reason)
        return answer(request, v, allowed)

    @app.post("/recordings/{recording_id}/reviewed")
    def post_reviewed(
        recording_id: str, request: Request, reviewed: str = Form("1", max_length=5)
    ) -> Response:
        v = site.viewer(request)
        mark = reviewed.strip().lower() not in {"0", "false", "no", "off"}
        allowed = guarded(
            request, v, recording_id, Action.NOTE, "web: reviewed" if mark else "web: unreviewed"
        )
        if isinstance(allowed, Response):
            return allowed
        store.mark_reviewed(allowed.recording_id, v.principal.name, mark)
        return answer(request, v, allowed)

    @app.get("/recordings/{recording_id}/history")
    def get_history(recording_id: str, request: Request) -> Response:
        v = site.viewer(request)
        allowed = guarded(request, v, recording_id, Action.VIEW_METADATA, "web: history")
        if isinstance(allowed, Response):
            return allowed
        rows = ledger_history(site.index, allowed.recording_id)
        return site.render(request, "_history.html", {"rows": rows, "rid": allowed.recording_id})

    return store
