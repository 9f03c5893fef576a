"""The web review's FastAPI application: :func:`create_app`.

Every page that shows anything of a recording goes through one
:class:`~headoffice.access.Gate` made from the request's session, so each view is
authorized by :func:`headoffice.authz.authorize` and appended to the audit ledger before
any byte of it is sent. A recording out of the actor's scope (or no recording at all)
answers 404, never 403, so a guessed id tells nothing; the refusal is a ledger leaf.

Cross-cutting rules, for every route (also those added later):

- a POST needs the CSRF token of its cookie (:mod:`headoffice.web.session`), else 403;
- every response carries :data:`SECURITY_HEADERS`, dynamic ones ``Cache-Control:
  no-store`` as well;
- a page that needs a session and has none (or one that ended: idle, absolute, logout,
  account disabled) redirects to ``/login`` with a message.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from headoffice.access import AccessDenied, Actor, Gate, session_name
from headoffice.accounts import LOGIN_REFUSED, Accounts, LoginError, LoginFailure
from headoffice.authz import Action, Principal, Role
from headoffice.blobstore import BlobStore
from headoffice.config import OfficeConfig
from headoffice.index import Index, announcements
from headoffice.index.records import StoredRecord
from headoffice.ledger.store import Ledger
from headoffice.web.api import add_api
from headoffice.web.routes_audio import add_audio_routes
from headoffice.web.routes_compliance import add_compliance_routes
from headoffice.web.routes_dashboard import add_dashboard_routes
from headoffice.web.routes_export import add_export_routes
from headoffice.web.routes_fleet import add_fleet_routes
from headoffice.web.routes_notes import add_note_routes
from headoffice.web.routes_scorecards import add_scorecard_routes
from headoffice.web.search import SearchFilters, SearchParameterError, search_page
from headoffice.web.session import (
    CSRF_FIELD,
    CSRF_HEADER,
    PENDING_COOKIE,
    PRE_COOKIE,
    SESSION_COOKIE,
    PendingLogins,
    client_address,
    csrf_ok,
    csrf_token,
    load_or_create_secret,
    parse_networks,
)

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
TEMPLATE_DIR = HERE / "templates"

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "media-src 'self' blob:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}
AUDIT_PAGE_ROWS = 100
MAX_ID = 200  # a recording id longer than this is no id: not looked up
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

#: Messages the login page shows for ``?reason=`` (fixed texts: nothing is reflected).
LOGIN_REASONS = {
    "expired": "Your session ended (unused for too long, or past its limit). Please sign in again.",
    "signedout": "You are signed out.",
    "restart": "The sign-in took too long or was interrupted. Please start again.",
}


class LoginRequired(Exception):
    """No live session: the handler redirects to /login (``reason``: a LOGIN_REASONS key)."""

    def __init__(self, reason: str | None) -> None:
        super().__init__(reason or "")
        self.reason = reason


class CsrfRefused(Exception):
    """A state-changing request without the right CSRF token (403)."""


@dataclass(frozen=True, slots=True)
class Viewer:
    """The signed-in person of a request: the actor (for the gate) and their CSRF token."""

    actor: Actor
    csrf: str

    @property
    def principal(self) -> Principal:
        return self.actor.principal


def _fmt_duration(ms: int) -> str:
    seconds = max(0, int(ms)) // 1000
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _fmt_time(stamp: str | None) -> str:
    if not stamp:
        return ""
    return stamp.replace("T", " ").split(".")[0].removesuffix("+00:00") + " UTC"


def _viewer(request: Request) -> Viewer:
    """The signed-in viewer of a request (the route dependency)."""
    site: _Site = request.app.state.site
    return site.viewer(request)


ViewerDep = Annotated[Viewer, Depends(_viewer)]


class _Site:
    """What every route of one app shares: settings, index, accounts, the CSRF secret,
    the pending logins and the templates, and the helpers over them."""

    def __init__(self, cfg: OfficeConfig, index: Index, accounts: Accounts) -> None:
        self.cfg = cfg
        self.index = index
        self.accounts = accounts
        self.secret = load_or_create_secret(cfg.root)
        self.proxies = parse_networks(cfg.web.trusted_proxies)
        self.pending = PendingLogins()
        self.templates = Jinja2Templates(directory=str(TEMPLATE_DIR))
        self.templates.env.filters["duration"] = _fmt_duration
        self.templates.env.filters["utc"] = _fmt_time
        self.templates.env.globals["office_name"] = cfg.web.office_name
        self.templates.env.globals["AUDITOR"] = Role.AUDITOR

    def client_of(self, request: Request) -> str:
        peer = request.client.host if request.client else None
        return client_address(peer, request.headers.get("x-forwarded-for"), self.proxies)

    def secure(self, request: Request) -> bool:
        return self.cfg.web.cookie_secure or request.url.scheme == "https"

    def set_cookie(self, response: Response, request: Request, name: str, value: str) -> None:
        response.set_cookie(
            name,
            value,
            path="/",
            httponly=True,
            samesite="strict",
            secure=self.secure(request),
        )

    def clear_cookie(self, response: Response, request: Request, name: str) -> None:
        response.delete_cookie(
            name, path="/", httponly=True, samesite="strict", secure=self.secure(request)
        )

    def render(
        self, request: Request, name: str, context: dict[str, Any], status_code: int = 200
    ) -> HTMLResponse:
        return self.templates.TemplateResponse(request, name, context, status_code=status_code)

    def viewer(self, request: Request) -> Viewer:
        """The request's live session as a :class:`Viewer`, or :class:`LoginRequired`."""
        token = request.cookies.get(SESSION_COOKIE)
        if not token:
            raise LoginRequired(None)
        principal = self.accounts.session(token)
        if principal is None:
            raise LoginRequired("expired")
        actor = Actor(principal, session_name(token), self.client_of(request))
        return Viewer(actor, csrf_token(self.secret, token))

    def gate_of(self, v: Viewer) -> Gate:
        return Gate(self.index, self.cfg, v.actor)

    async def csrf_guard(self, request: Request) -> None:
        if request.method in SAFE_METHODS:
            return
        sent = request.headers.get(CSRF_HEADER)
        if sent is None and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")
        ):
            value = (await request.form()).get(CSRF_FIELD)
            sent = value if isinstance(value, str) else None
        cookies = (request.cookies.get(SESSION_COOKIE), request.cookies.get(PRE_COOKIE))
        if not any(csrf_ok(self.secret, c, sent) for c in cookies):
            raise CsrfRefused

    def record(self, recording_id: str) -> StoredRecord | None:
        """The recording under ``recording_id`` from a URL; an id longer than any id is
        none (not looked up)."""
        return self.index.get(recording_id) if len(recording_id) <= MAX_ID else None

    def guarded(
        self, request: Request, v: Viewer, recording_id: str, action: Action, detail: str
    ) -> StoredRecord | Response:
        """The recording if ``v`` may do ``action`` on it (logged with ``detail``), else
        the refusal page: 404 out of scope or missing (a guess tells nothing), 403 for a
        right the role lacks. A missing recording's refusal is a ledger leaf too."""
        gate = self.gate_of(v)
        record = self.record(recording_id)
        try:
            if record is None:
                gate.allow(
                    action, None, detail=f"{detail} of no recording {recording_id[:MAX_ID]!r}"
                )
            else:
                gate.allow(action, record, detail=detail)
        except AccessDenied as exc:
            if record is None or exc.hidden:
                return self.not_found(request, v)
            return self.refused(request, v, exc)
        if record is None:  # allowed on nothing: still nothing to show
            return self.not_found(request, v)
        return record

    def not_found(self, request: Request, v: Viewer) -> HTMLResponse:
        return self.render(
            request,
            "error.html",
            {"title": "Not found", "message": "There is no such recording.", "viewer": v},
            404,
        )

    def refused(self, request: Request, v: Viewer, exc: AccessDenied) -> HTMLResponse:
        return self.render(
            request,
            "error.html",
            {"title": "Not allowed", "message": str(exc), "viewer": v},
            403,
        )

    def login_page(
        self,
        request: Request,
        *,
        message: str | None = None,
        error: str | None = None,
        status: int = 200,
    ) -> HTMLResponse:
        pre = request.cookies.get(PRE_COOKIE)
        new_pre = None
        if not pre:
            pre = new_pre = secrets.token_urlsafe(32)
        waiting = self.pending.peek(request.cookies.get(PENDING_COOKIE))
        response = self.render(
            request,
            "login.html",
            {
                "viewer": None,
                "csrf": csrf_token(self.secret, pre),
                "step": "code" if waiting is not None else "password",
                "name": waiting.name if waiting is not None else "",
                "message": message,
                "error": error,
            },
            status,
        )
        if new_pre is not None:
            self.set_cookie(response, request, PRE_COOKIE, new_pre)
        return response

    def signed_in(self, request: Request, token: str) -> Response:
        response = RedirectResponse("/", status_code=303)
        self.set_cookie(response, request, SESSION_COOKIE, token)
        self.clear_cookie(response, request, PENDING_COOKIE)
        return response


async def _security_headers(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    response = await call_next(request)
    for key, value in SECURITY_HEADERS.items():
        response.headers.setdefault(key, value)
    path = request.url.path
    if path.startswith("/static/vendor/"):
        # Versioned folders: a new version is a new URL.
        response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
    elif path.startswith("/static/"):
        response.headers["Cache-Control"] = "no-cache"
    else:
        response.headers["Cache-Control"] = "no-store"
    return response


def _error_handlers(app: FastAPI, site: _Site) -> None:
    """Login redirects, CSRF refusals and HTTP errors as pages."""

    @app.exception_handler(LoginRequired)
    async def _login_required(request: Request, exc: LoginRequired) -> Response:
        target = "/login" + (f"?reason={exc.reason}" if exc.reason else "")
        response = RedirectResponse(target, status_code=303)
        if exc.reason == "expired":
            site.clear_cookie(response, request, SESSION_COOKIE)
        if request.headers.get("hx-request"):
            response.headers["HX-Redirect"] = target
        return response

    @app.exception_handler(CsrfRefused)
    async def _csrf_refused(request: Request, exc: CsrfRefused) -> Response:
        return site.render(
            request,
            "error.html",
            {
                "title": "Request refused",
                "message": "This form has expired or did not come from this site. Go back, "
                "reload the page and try again.",
                "viewer": None,
            },
            403,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            title, message = "Not found", "There is no such page or recording."
        else:
            title, message = "Error", str(exc.detail)
        return site.render(
            request,
            "error.html",
            {"title": title, "message": message, "viewer": None},
            exc.status_code,
        )


def _login_routes(app: FastAPI, site: _Site) -> None:
    """Sign in (password, then a one-time code where needed) and sign out."""

    @app.get("/login", response_class=HTMLResponse)
    def get_login(request: Request, reason: str | None = None) -> Response:
        token = request.cookies.get(SESSION_COOKIE)
        if token and site.accounts.session(token) is not None:
            return RedirectResponse("/", status_code=303)
        return site.login_page(request, message=LOGIN_REASONS.get(reason or ""))

    @app.post("/login")
    def post_login(
        request: Request,
        name: str = Form("", max_length=200),
        password: str = Form("", max_length=2048),
    ) -> Response:
        client = site.client_of(request)
        try:
            session = site.accounts.login(name.strip(), password, None, client)
        except LoginError as exc:
            if exc.failure is LoginFailure.CODE_MISSING:
                # Right password, and the account needs a code: the code step.
                nonce = site.pending.put(name.strip(), password, client)
                response = RedirectResponse("/login", status_code=303)
                site.set_cookie(response, request, PENDING_COOKIE, nonce)
                return response
            return site.login_page(request, error=LOGIN_REFUSED, status=401)
        return site.signed_in(request, session.token)

    @app.post("/login/code")
    def post_login_code(request: Request, code: str = Form("", max_length=32)) -> Response:
        waiting = site.pending.take(request.cookies.get(PENDING_COOKIE))
        if waiting is None:
            return RedirectResponse("/login?reason=restart", status_code=303)
        try:
            session = site.accounts.login(
                waiting.name, waiting.password, code.strip(), waiting.client
            )
        except LoginError:
            response = site.login_page(request, error=LOGIN_REFUSED, status=401)
            site.clear_cookie(response, request, PENDING_COOKIE)
            return response
        return site.signed_in(request, session.token)

    @app.post("/login/cancel")
    def post_login_cancel(request: Request) -> Response:
        site.pending.take(request.cookies.get(PENDING_COOKIE))
        response = RedirectResponse("/login", status_code=303)
        site.clear_cookie(response, request, PENDING_COOKIE)
        return response

    @app.post("/logout")
    def post_logout(request: Request) -> Response:
        token = request.cookies.get(SESSION_COOKIE)
        if token:
            site.accounts.logout(token)
        response = RedirectResponse("/login?reason=signedout", status_code=303)
        site.clear_cookie(response, request, SESSION_COOKIE)
        return response


def _page_routes(app: FastAPI, site: _Site) -> None:
    """The pages: search, a recording, the audit ledger."""

    @app.get("/", response_class=HTMLResponse)
    def search(request: Request, v: ViewerDep) -> Response:
        try:
            filters = SearchFilters.from_query(request.query_params)
        except SearchParameterError as exc:
            return site.render(
                request,
                "error.html",
                {"title": "Search not understood", "message": str(exc), "viewer": v},
                400,
            )
        gate = site.gate_of(v)
        if not gate.may(Action.SEARCH) and gate.may(Action.MANAGE_FORMS):
            # An admin alone sees no recordings: their start page is the QA forms.
            return RedirectResponse("/forms", status_code=303)
        try:
            page = search_page(site.index, gate, filters, site.cfg.sites)
        except AccessDenied as exc:
            return site.refused(request, v, exc)
        return site.render(
            request,
            "search.html",
            {"viewer": v, "page": page, "filters": filters, "sites": sorted(site.cfg.sites)},
        )

    @app.get("/recordings/{recording_id}", response_class=HTMLResponse)
    def recording(recording_id: str, request: Request, v: ViewerDep) -> Response:
        gate = site.gate_of(v)
        record = site.record(recording_id)
        try:
            if record is None:
                # Logged like any other site.refused view, so guessing ids leaves a trail.
                gate.allow(
                    Action.VIEW_METADATA, None, detail=f"web: no recording {recording_id[:200]!r}"
                )
            else:
                gate.allow(Action.VIEW_METADATA, record, detail="web: recording page")
        except AccessDenied as exc:
            if record is None or exc.hidden:
                return site.not_found(request, v)
            return site.refused(request, v, exc)
        assert record is not None
        manifest = record.manifest
        heard = announcements.announcements_of(manifest)
        return site.render(
            request,
            "recording.html",
            {
                "viewer": v,
                "r": record,
                "masked_spans": manifest.get("masked_spans") or [],
                "announcements": heard,
                "announce_summary": announcements.summary(heard),
                "may_listen": gate.may(Action.LISTEN, record),
            },
        )

    @app.get("/audit", response_class=HTMLResponse)
    def audit(request: Request, v: ViewerDep) -> Response:
        gate = site.gate_of(v)
        try:
            gate.allow(Action.READ_AUDIT, detail="web: audit page")
        except AccessDenied as exc:
            return site.refused(request, v, exc)
        ledger = Ledger(site.index)
        size = ledger.size()
        rows = [
            {"idx": row.idx, "kind": row.kind, "at": row.appended_at, **json.loads(row.body)}
            for row in ledger.rows(max(0, size - AUDIT_PAGE_ROWS), size)
        ]
        rows.reverse()
        return site.render(request, "audit.html", {"viewer": v, "rows": rows, "size": size})

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}


def create_app(
    cfg: OfficeConfig,
    index: Index,
    store: BlobStore,
    *,
    accounts: Accounts | None = None,
) -> FastAPI:
    """The web review over ``index`` and ``store`` with ``cfg``'s settings. ``accounts``
    (default: made from ``cfg``) is for tests that move the clock."""
    site = _Site(cfg, index, accounts or Accounts(index, cfg.accounts, sites=cfg.sites))
    app = FastAPI(
        title=cfg.web.office_name,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        dependencies=[Depends(site.csrf_guard)],
    )
    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")
    app.middleware("http")(_security_headers)
    _error_handlers(app, site)
    _login_routes(app, site)
    _page_routes(app, site)
    add_audio_routes(app, site)
    add_note_routes(app, site)
    add_export_routes(app, site)
    add_compliance_routes(app, site)
    add_scorecard_routes(app, site)
    add_api(app, site)
    add_dashboard_routes(app, site)
    add_fleet_routes(app, site)
    app.state.site = site
    app.state.store = store
    return app
