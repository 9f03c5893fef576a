"""The web review's JSON API for scripts, under ``/api/v1`` (:func:`add_api`).

A FastAPI application of its own, mounted into the web review's, so its OpenAPI document
(``GET /api/v1/openapi.json``) holds the API and nothing of the HTML pages.

Authentication, at every request:

- ``Authorization: Bearer lt_...``: a personal API token (:mod:`headoffice.apitokens`,
  made with ``linetap-office user token create``), acting as its account with the
  account's roles and scope at that moment; no CSRF token is needed (a browser never
  sends this header by itself);
- else the browser's session cookie (as the pages use it): a request that changes
  something (POST) then needs the page's CSRF token in the ``X-CSRF-Token`` header;
- neither, or a token that is unknown, revoked, expired or whose account is disabled:
  401 with ``WWW-Authenticate: Bearer``.

Authorization and the audit ledger are the pages': every read and write goes through a
:class:`~headoffice.access.Gate`, whose leaf is appended before any byte of the answer
is sent (the leaf's ``session`` names the token: its id). A recording out of the caller's
scope answers 404 exactly as one that does not exist, and the refusal is a leaf; a right
the caller's roles lack answers 403. ``GET /me`` is a leaf of its own (``whoami``: no
right is needed to learn who one is, but it is an access all the same).

Every error is JSON, ``{"error": "...", "detail": ...}`` (:class:`ErrorBody`), never a
traceback; every parameter is bounded (lengths, ranges, the recording id's form).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import Depends, FastAPI, Path, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Mount

from headoffice.access import AccessDenied, Actor, Gate, session_name
from headoffice.apitokens import TokenInfo, TokenStore
from headoffice.authz import Action
from headoffice.blobstore import BlobStore
from headoffice.index.records import StoredRecord, now_iso, row_from_manifest
from headoffice.ledger.leaves import AccessLeaf
from headoffice.ledger.store import Ledger, LedgerError
from headoffice.officeroot import device_signing_key
from headoffice.web.api_models import (
    ErrorBody,
    FieldError,
    Me,
    NoteIn,
    NoteList,
    NoteOut,
    RecordingDetail,
    RecordingItem,
    RecordingList,
    RecordingQuery,
    RecordingSummary,
    ReviewMarks,
    Rights,
    Verification,
)
from headoffice.web.notes import NoteError, NoteStore, mmss
from headoffice.web.routes_export import EXPORT_FORMATS, Exporter, ExportFailed, export_name
from headoffice.web.search import SearchParameterError, row_marks, search_page
from headoffice.web.session import CSRF_HEADER, SESSION_COOKIE, csrf_ok
from sealedrec.errors import LinetapError
from sealedrec.manifest import ManifestError, verify_signature
from sealedrec.verify import check_blob

if TYPE_CHECKING:
    from headoffice.web.app import _Site
    from headoffice.web.routes_audio import Playback

__all__ = ["API_PREFIX", "ApiError", "add_api"]

API_PREFIX = "/api/v1"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: A recording id's form (the manifest model's): anything else names no recording.
RECORDING_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
NOT_FOUND = "There is no such recording."
TOKEN_HINT = "make one with: linetap-office user token create NAME --label LABEL"

API_DESCRIPTION = (
    "The head office's recordings for scripts, under the same roles, scopes and audit "
    "ledger as the web review. Authenticate with `Authorization: Bearer lt_...` (a "
    "personal API token: `linetap-office user token create NAME --label LABEL`). Every "
    "access is appended to the audit ledger before the answer is sent. A recording out "
    'of your scope answers 404, like one that does not exist. Errors: `{"error": "...", '
    '"detail": ...}`.'
)

RecordingId = Annotated[
    str, Path(min_length=1, max_length=128, pattern=RECORDING_ID_PATTERN, description="its id")
]
AudioFormat = Literal["flac", "wav", "opus"]


class ApiError(Exception):
    """An answer other than success: ``status`` and an :class:`ErrorBody`."""

    def __init__(self, status: int, error: str, detail: str | None = None) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.detail = detail


def _error(status: int, error: str, detail: Any = None) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    body = ErrorBody(error=error, detail=detail).model_dump(mode="json")
    return JSONResponse(body, status_code=status, headers=headers)


_WHY = {
    400: "the request is not understood (the error names the parameter)",
    401: "no valid API token or session",
    403: "the caller's roles lack this right, a session's change lacks its CSRF token, or "
    "the access could not be logged",
    404: "no such recording, or one outside the caller's scope",
    409: "the recording has no audio, or its blob differs from its manifest",
    422: "a parameter or the body is malformed or out of range",
    503: "the office identity cannot decrypt recordings here",
}


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorBody, "description": _WHY[code]} for code in codes}


@dataclass(frozen=True, slots=True)
class Caller:
    """Who a request acts as: the actor for the gate, and the token (``None``: a
    browser session)."""

    actor: Actor
    token: TokenInfo | None


bearer = HTTPBearer(
    auto_error=False,
    scheme_name="apiToken",
    bearerFormat="lt_ + 43 URL-safe base64 characters",
    description="A personal API token: " + TOKEN_HINT,
)


class _Api:
    """What the API's routes share: the site, the token store, the notes."""

    def __init__(self, site: _Site, parent: FastAPI) -> None:
        self.site = site
        self.parent = parent
        self.tokens = TokenStore(site.accounts)
        self.notes = NoteStore(site.index)

    # -- who --------------------------------------------------------------------------
    def caller(self, request: Request, credentials: HTTPAuthorizationCredentials | None) -> Caller:
        """The request's caller (see the module docstring), or :class:`ApiError` 401/403."""
        client = self.site.client_of(request)
        if request.headers.get("authorization") is not None:
            if credentials is None:
                raise ApiError(401, "send the token as: Authorization: Bearer lt_...", TOKEN_HINT)
            use = self.tokens.authenticate(credentials.credentials)
            if use is None:
                raise ApiError(
                    401,
                    "the API token is unknown, revoked or expired, or its account is disabled",
                    TOKEN_HINT,
                )
            return Caller(
                Actor(use.principal, session_name(credentials.credentials), client), use.info
            )
        cookie = request.cookies.get(SESSION_COOKIE)
        if not cookie:
            raise ApiError(
                401, "authentication needed: send Authorization: Bearer lt_...", TOKEN_HINT
            )
        principal = self.site.accounts.session(cookie)
        if principal is None:
            raise ApiError(401, "the session has ended; sign in again, or use an API token")
        if request.method not in SAFE_METHODS and not csrf_ok(
            self.site.secret, cookie, request.headers.get(CSRF_HEADER)
        ):
            raise ApiError(
                403,
                "refused: with the session cookie, a change needs the page's CSRF token",
                f"send it in the {CSRF_HEADER} header, or use an API token",
            )
        return Caller(Actor(principal, session_name(cookie), client), None)

    def gate(self, caller: Caller) -> Gate:
        return Gate(self.site.index, self.site.cfg, caller.actor)

    def recording(
        self, caller: Caller, recording_id: str, action: Action, detail: str
    ) -> StoredRecord:
        """The recording if the caller may do ``action`` on it (a leaf with ``detail``,
        refusals too), else :class:`ApiError` 404 (missing or out of scope) or 403."""
        gate = self.gate(caller)
        record = self.site.index.get(recording_id)
        try:
            if record is None:
                gate.allow(action, None, detail=f"{detail} of no recording {recording_id!r}")
            else:
                gate.allow(action, record, detail=detail)
        except AccessDenied as exc:
            if record is None or exc.hidden:
                raise ApiError(404, NOT_FOUND) from None
            raise ApiError(403, str(exc)) from None
        if record is None:  # allowed on nothing: still nothing to show
            raise ApiError(404, NOT_FOUND)
        return record

    def whoami(self, caller: Caller) -> None:
        """``GET /me`` as an access leaf: it needs no right (everyone may learn who they
        are), so it is not a :meth:`Gate.allow`, but it is logged before the answer."""
        p = caller.actor.principal
        leaf = AccessLeaf(
            user=p.name,
            roles=tuple(sorted(r.value for r in p.roles)),
            action="whoami",
            detail="api: me",
            client=caller.actor.client,
            session=caller.actor.session,
            at=now_iso(),
        )
        try:
            Ledger(self.site.index).append(leaf)
        except LedgerError as exc:
            raise ApiError(403, "refused: the access could not be logged", str(exc)) from exc

    # -- what -------------------------------------------------------------------------
    def store(self) -> BlobStore:
        store: BlobStore = self.parent.state.store
        return store

    def exporter(self) -> Exporter:
        playback: Playback = self.parent.state.playback  # the pages' office identity
        return Exporter(self.site, playback)

    def verification(self, record: StoredRecord, blob_too: bool) -> Verification:
        """The signature, the index against the signed manifest and (``blob_too``) the
        sealed blob against it."""
        problems: list[str] = []
        signature: Literal["valid", "invalid", "unknown_device"] = "valid"
        try:
            key = device_signing_key(self.site.cfg.root, record.device_id)
        except (LinetapError, OSError) as exc:
            signature = "unknown_device"
            problems.append(f"the signature cannot be checked here: {exc}")
        else:
            try:
                verify_signature(record.manifest, key)
            except ManifestError as exc:
                signature = "invalid"
                problems.append(str(exc))
        try:
            derived = row_from_manifest(record.manifest)
        except ManifestError as exc:
            stale = ["manifest"]
            problems.append(str(exc))
        else:
            stale = [k for k, v in derived.items() if getattr(record, k) != v]
            if stale:
                problems.append(f"index columns {', '.join(stale)} differ from the manifest")
        blob: Literal["not_checked", "ok", "mismatch"] = "not_checked"
        if blob_too and record.container is not None:
            try:
                with self.store().local_blob(record.path) as path:
                    found = check_blob(path, record.manifest, record.recording_id)
            except (LinetapError, OSError) as exc:
                found = [f"the blob cannot be read: {exc}"]
            blob = "mismatch" if found else "ok"
            problems += found
        return Verification(
            signature=signature, index_matches_manifest=not stale, blob=blob, problems=problems
        )

    def detail(self, caller: Caller, record: StoredRecord, blob_too: bool) -> RecordingDetail:
        gate = self.gate(caller)
        with self.site.index.transaction(False) as q:
            marks = row_marks(q, [record.recording_id]).get(record.recording_id)
        may = Rights(
            listen=gate.may(Action.LISTEN, record),
            export=gate.may(Action.EXPORT, record),
            note=gate.may(Action.NOTE, record),
        )
        return RecordingDetail.model_validate(
            {
                **RecordingSummary.of(record).model_dump(),
                "container": record.container,
                "blob_sha256": record.blob_sha256,
                "stored_at": record.stored_at,
                "masked_spans": record.manifest.get("masked_spans") or [],
                "manifest": record.manifest,
                "marks": ReviewMarks.of(marks),
                "verification": self.verification(record, blob_too),
                "may": may,
            }
        )


def _error_handlers(api: FastAPI) -> None:
    """Every error as an :class:`ErrorBody`."""

    @api.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        return _error(exc.status, exc.error, exc.detail)

    @api.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        problems = [
            FieldError(
                loc=[p if isinstance(p, int) else str(p) for p in e.get("loc", ())],
                msg=str(e.get("msg", "")),
                type=str(e.get("type", "")),
            )
            for e in exc.errors()
        ]
        first = problems[0] if problems else None
        where = ".".join(str(p) for p in first.loc) if first else "request"
        message = f"{where}: {first.msg}" if first else "the request is not valid"
        return _error(422, message, problems)

    @api.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        text = "no such API path; see /api/v1/openapi.json" if exc.status_code == 404 else None
        return _error(exc.status_code, text or str(exc.detail))

    @api.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> Response:
        # A bug: the client gets a JSON error without internals; the server still logs it.
        return _error(500, "internal error; the office's log has the details")


def _caller(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]
) -> Caller:
    """The routes' dependency: the request's :class:`Caller` (documents the bearer scheme)."""
    api: _Api = request.app.state.api
    return api.caller(request, credentials)


CallerDep = Annotated[Caller, Depends(_caller)]


def _reading_routes(api: FastAPI, a: _Api) -> None:
    """Search, one recording, who am I."""

    @api.get(
        "/recordings",
        response_model=RecordingList,
        responses=_responses(400, 401, 403, 422),
        summary="Search recordings (the search page's filters), one page",
    )
    def recordings(caller: CallerDep, query: Annotated[RecordingQuery, Query()]) -> RecordingList:
        try:
            filters = query.filters()
        except SearchParameterError as exc:
            raise ApiError(400, str(exc), exc.parameter) from None
        try:
            page = search_page(a.site.index, a.gate(caller), filters, a.site.cfg.sites)
        except AccessDenied as exc:
            raise ApiError(403, str(exc)) from None
        return RecordingList(
            items=[
                RecordingItem(
                    **RecordingSummary.of(row).model_dump(),
                    marks=ReviewMarks.of(page.marks.get(row.recording_id)),
                )
                for row in page.rows
            ],
            total=page.total,
            page=page.page,
            pages=page.pages,
            per_page=page.page_size,
        )

    @api.get(
        "/recordings/{recording_id}",
        response_model=RecordingDetail,
        responses=_responses(401, 403, 404, 422),
        summary="One recording: metadata, signed manifest, verification, your rights",
    )
    def recording(
        recording_id: RecordingId,
        caller: CallerDep,
        check_blob: Annotated[
            bool, Query(description="also check the sealed blob's size and SHA-256")
        ] = False,
    ) -> RecordingDetail:
        record = a.recording(caller, recording_id, Action.VIEW_METADATA, "api: recording")
        return a.detail(caller, record, check_blob)

    @api.get(
        "/me",
        response_model=Me,
        responses=_responses(401, 403),
        summary="Who the token (or session) acts as: name, roles, scope",
    )
    def me(caller: CallerDep) -> Me:
        a.whoami(caller)
        return Me.of(caller.actor.principal, caller.token)


def _audio_route(api: FastAPI, a: _Api) -> None:
    """A recording's audio, as the pages' export makes it."""

    @api.get(
        "/recordings/{recording_id}/audio",
        response_class=Response,
        responses={
            200: {
                "description": "the audio, as an attachment",
                "content": {
                    mime: {"schema": {"type": "string", "format": "binary"}}
                    for mime in sorted(set(EXPORT_FORMATS.values()))
                },
            },
            **_responses(400, 401, 403, 404, 409, 422, 503),
        },
        summary="The recording's audio, decrypted (the export right; each one a leaf)",
    )
    def audio(
        recording_id: RecordingId,
        caller: CallerDep,
        format: Annotated[AudioFormat, Query(description="flac, wav (16-bit) or opus")] = "flac",
    ) -> Response:
        record = a.recording(caller, recording_id, Action.EXPORT, f"api: export {format}")
        try:
            data, _ = a.exporter().encode(a.store(), record, format)
        except ExportFailed as exc:
            raise ApiError(exc.status, "this recording cannot be exported", str(exc)) from None
        name = export_name(record, format)
        return Response(
            data,
            media_type=EXPORT_FORMATS[format],
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )


def _note_routes(api: FastAPI, a: _Api) -> None:
    """A recording's notes: read, write."""

    @api.get(
        "/recordings/{recording_id}/notes",
        response_model=NoteList,
        responses=_responses(401, 403, 404, 422),
        summary="The recording's notes and bookmarks, in call order",
    )
    def notes(recording_id: RecordingId, caller: CallerDep) -> NoteList:
        record = a.recording(caller, recording_id, Action.VIEW_METADATA, "api: notes")
        return NoteList(items=[NoteOut.of(n) for n in a.notes.notes_for(record.recording_id)])

    @api.post(
        "/recordings/{recording_id}/notes",
        response_model=NoteOut,
        status_code=201,
        responses=_responses(400, 401, 403, 404, 422),
        summary="Add a note or bookmark at a position in the call (the note right)",
    )
    def add_note(recording_id: RecordingId, body: NoteIn, caller: CallerDep) -> NoteOut:
        record = a.site.index.get(recording_id)
        if record is None or not a.gate(caller).may(Action.NOTE, record):
            # Refused (and logged) before anything about the recording is said.
            record = a.recording(caller, recording_id, Action.NOTE, "api: note")
        try:
            kind, text = NoteStore.check(record, body.at_ms, body.text, body.kind)
        except NoteError as exc:
            raise ApiError(400, f"the note was not saved: {exc}", "at_ms or text") from None
        allowed = a.recording(
            caller, recording_id, Action.NOTE, f"api: {kind} at {mmss(body.at_ms)}"
        )
        note = a.notes.add_note(allowed, caller.actor.principal.name, body.at_ms, text, kind)
        return NoteOut.of(note)


class _ApiMount(Mount):
    """The API's mount: every path under the prefix, also one with a line break in it
    (Starlette's ``{path:path}`` is a ``.*`` that stops at one, and such a request would
    get the pages' HTML 404 instead of the API's JSON)."""

    def __init__(self, path: str, app: FastAPI) -> None:
        super().__init__(path, app=app)
        self.path_regex = re.compile(self.path_regex.pattern, re.DOTALL)


def add_api(app: FastAPI, site: _Site) -> FastAPI:
    """Mount the JSON API at :data:`API_PREFIX` of the web review ``app`` (after the
    playback routes: export shares their office identity); returns the API's app."""
    a = _Api(site, app)
    api = FastAPI(
        title=f"{site.cfg.web.office_name} API",
        version="1",
        description=API_DESCRIPTION,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    api.state.api = a
    _error_handlers(api)
    _reading_routes(api, a)
    _audio_route(api, a)
    _note_routes(api, a)
    app.router.routes.append(_ApiMount(API_PREFIX, api))
    return api
