"""The web review's first slice (issue 16): login with password and TOTP, logout, expired
sessions, CSRF, security headers, scope and the ledger, the vendored files, and the real
``linetap-office web`` process.

The index holds real recordings stored by the real receiver (the ``Office`` helper of
test_receiver_hostile.py): device ``honest`` is "A", device ``hostile`` is "B".
"""

from __future__ import annotations

import hashlib
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pyotp
import pytest
from fastapi.testclient import TestClient

from headoffice.accounts import LOGIN_REFUSED, Accounts
from headoffice.authz import Role, Scope
from headoffice.config import OfficeConfig, WebConfig
from headoffice.web.app import CSP, create_app
from headoffice.web.session import (
    SESSION_COOKIE,
    client_address,
    load_or_create_secret,
    parse_networks,
)
from sealedrec.protocol import AckStatus
from tests.conftest import VENV_BIN
from tests.office_accounts import CHEAP, CHEAP_TOML, Login, SteppingClock, add_account, leaves
from tests.test_receiver_hostile import HONEST, HOSTILE, Office

VENDOR = Path(__file__).resolve().parent.parent / "headoffice" / "web" / "static" / "vendor"
A_REC = "rec-a-0001"
B_REC = "rec-b-0001"
CSRF_RE = re.compile(r'name="csrf" value="([0-9a-f]{64})"')


@dataclass
class Web:
    office: Office
    cfg: OfficeConfig
    clock: SteppingClock
    reviewer: Login
    supervisor: Login
    auditor: Login

    def client(self, base_url: str = "http://testserver") -> TestClient:
        accounts = Accounts(self.office.index, self.cfg.accounts, clock=self.clock.now)
        app = create_app(self.cfg, self.office.index, self.office.store, accounts=accounts)
        return TestClient(app, base_url=base_url, follow_redirects=False)


@pytest.fixture
def web(tmp_path: Path) -> Iterator[Web]:
    office = Office(tmp_path, f"sqlite:///{tmp_path / 'index.sqlite3'}")
    assert office.upload(HONEST, A_REC).status is AckStatus.STORED
    assert office.upload(HOSTILE, B_REC).status is AckStatus.STORED
    clock = SteppingClock()
    cfg = OfficeConfig(root=tmp_path, accounts=CHEAP)
    index = office.index
    reviewer = add_account(
        index, "rita", [Role.REVIEWER], Scope(devices=frozenset({HONEST})), settings=CHEAP
    )
    supervisor = add_account(index, "sam", [Role.SUPERVISOR], settings=CHEAP, clock=clock)
    auditor = add_account(index, "aud", [Role.AUDITOR], settings=CHEAP)
    yield Web(office, cfg, clock, reviewer, supervisor, auditor)
    office.index.close()


def csrf_of(html: str) -> str:
    match = CSRF_RE.search(html)
    assert match, html
    return match.group(1)


def sign_in(client: TestClient, login: Login, *, code: str | None = None) -> None:
    page = client.get("/login")
    r = client.post(
        "/login", data={"name": login.name, "password": login.password, "csrf": csrf_of(page.text)}
    )
    if login.totp_secret is not None:
        assert r.status_code == 303 and r.headers["location"] == "/login"
        step = client.get("/login")
        assert 'name="code"' in step.text and login.name in step.text
        r = client.post(
            "/login/code", data={"code": code or login.code(), "csrf": csrf_of(step.text)}
        )
    assert r.status_code == 303 and r.headers["location"] == "/", r.text
    assert client.cookies.get(SESSION_COOKIE)


def access_leaves(web: Web) -> list[dict[str, object]]:
    return leaves(web.office.index, "access")


# -- login ----------------------------------------------------------------------------------
def test_login_with_password_sets_a_strict_cookie_and_logout_ends_it(web: Web):
    client = web.client()
    page = client.get("/login")
    assert page.status_code == 200
    assert 'autocomplete="current-password"' in page.text and '<label for="password">' in page.text
    r = client.post(
        "/login",
        data={"name": "rita", "password": web.reviewer.password, "csrf": csrf_of(page.text)},
    )
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = next(c for c in r.headers.get_list("set-cookie") if c.startswith(SESSION_COOKIE))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain HTTP and cookie_secure unset
    token = client.cookies[SESSION_COOKIE]

    home = client.get("/")
    assert home.status_code == 200
    assert 'class="user"' in home.text and "rita" in home.text and "reviewer" in home.text
    assert 'href="/audit"' not in home.text  # not an auditor

    out = client.post("/logout", data={"csrf": csrf_of(home.text)})
    assert out.status_code == 303 and out.headers["location"] == "/login?reason=signedout"
    assert client.get("/").headers["location"] == "/login"
    # The old token is dead on the server too, not only forgotten by the browser.
    client.cookies.set(SESSION_COOKIE, token)
    assert client.get("/").headers["location"] == "/login?reason=expired"


def test_wrong_password_gets_the_one_refusal_message(web: Web):
    client = web.client()
    page = client.get("/login")
    for name, password in (("rita", "wrong password!"), ("nobody", "whatever it is")):
        r = client.post(
            "/login", data={"name": name, "password": password, "csrf": csrf_of(page.text)}
        )
        assert r.status_code == 401 and LOGIN_REFUSED in r.text
        assert SESSION_COOKIE not in client.cookies


@pytest.mark.parametrize("how", ["tls", "config"])
def test_secure_cookie_over_tls_or_when_configured(web: Web, how: str):
    if how == "config":  # behind a TLS-terminating proxy: the app itself sees plain HTTP
        web.cfg = web.cfg.model_copy(update={"web": WebConfig(cookie_secure=True)})
    # The client sends Secure cookies over https only; the app sees the scheme either way.
    client = web.client("https://testserver")
    page = client.get("/login")
    r = client.post(
        "/login",
        data={"name": "rita", "password": web.reviewer.password, "csrf": csrf_of(page.text)},
    )
    cookie = next(c for c in r.headers.get_list("set-cookie") if c.startswith(SESSION_COOKIE))
    assert "Secure" in cookie and "HttpOnly" in cookie


def test_supervisor_needs_a_totp_code_and_a_replayed_code_is_refused(web: Web):
    client = web.client()
    code = web.supervisor.code()
    sign_in(client, web.supervisor, code=code)
    assert "supervisor" in client.get("/").text

    again = web.client()
    page = again.get("/login")
    r = again.post(
        "/login",
        data={"name": "sam", "password": web.supervisor.password, "csrf": csrf_of(page.text)},
    )
    assert r.headers["location"] == "/login"
    step = again.get("/login")
    r = again.post("/login/code", data={"code": code, "csrf": csrf_of(step.text)})
    assert r.status_code == 401 and LOGIN_REFUSED in r.text
    assert SESSION_COOKIE not in again.cookies
    # The pending login was used up: the code step starts again from the password.
    assert 'name="password"' in again.get("/login").text

    # A wrong code says the same as a replayed one; a fresh code gets in.
    page = again.get("/login")
    again.post(
        "/login",
        data={"name": "sam", "password": web.supervisor.password, "csrf": csrf_of(page.text)},
    )
    step = again.get("/login")
    wrong = again.post("/login/code", data={"code": "000000", "csrf": csrf_of(step.text)})
    assert wrong.status_code == 401 and LOGIN_REFUSED in wrong.text
    # (A fresh code getting in: test_totp_codes_come_from_pyotp. Not here: the password
    # step of a TOTP account counts as a failed login in Accounts.login, so a fifth
    # attempt in a row would lock the account.)


def test_an_expired_session_returns_to_login_with_a_message(web: Web):
    client = web.client()
    sign_in(client, web.reviewer)
    assert client.get("/").status_code == 200
    web.clock.at += timedelta(seconds=CHEAP.idle_timeout_s + 1)
    r = client.get("/")
    assert r.status_code == 303 and r.headers["location"] == "/login?reason=expired"
    page = client.get(r.headers["location"])
    assert page.status_code == 200 and "Your session ended" in page.text
    # The ended session's cookie was cleared with the redirect.
    assert SESSION_COOKIE not in client.cookies
    assert client.get(f"/recordings/{A_REC}").headers["location"] == "/login"


# -- CSRF -----------------------------------------------------------------------------------
def test_a_post_without_the_csrf_token_is_refused(web: Web):
    client = web.client()
    client.get("/login")
    # The login form itself is protected (a pre-session token).
    r = client.post("/login", data={"name": "rita", "password": web.reviewer.password})
    assert r.status_code == 403 and SESSION_COOKIE not in client.cookies
    sign_in(client, web.reviewer)
    home = client.get("/")
    assert client.post("/logout").status_code == 403
    assert client.post("/logout", data={"csrf": "0" * 64}).status_code == 403
    assert client.post("/logout", headers={"X-CSRF-Token": "f" * 64}).status_code == 403
    assert client.get("/").status_code == 200  # still signed in
    # Another session's token does not fit this one.
    other = web.client()
    sign_in(other, web.reviewer)
    assert client.post("/logout", data={"csrf": csrf_of(other.get("/").text)}).status_code == 403
    # The header form works (htmx sends it so).
    ok = client.post("/logout", headers={"X-CSRF-Token": csrf_of(home.text)})
    assert ok.status_code == 303


# -- headers --------------------------------------------------------------------------------
def test_security_headers_on_every_response(web: Web):
    client = web.client()
    sign_in(client, web.reviewer)
    responses = {
        "login": web.client().get("/login"),
        "search": client.get("/"),
        "recording": client.get(f"/recordings/{A_REC}"),
        "not found": client.get(f"/recordings/{B_REC}"),
        "no route": client.get("/no/such/page"),
        "css": client.get("/static/app.css"),
        "vendor": client.get("/static/vendor/htmx.org-2.0.11/htmx.min.js"),
        "redirect": web.client().get("/"),
    }
    for what, r in responses.items():
        assert r.headers["content-security-policy"] == CSP, what
        assert r.headers["x-content-type-options"] == "nosniff", what
        assert r.headers["referrer-policy"] == "no-referrer", what
        if what not in {"css", "vendor"}:
            assert r.headers["cache-control"] == "no-store", what
    assert responses["css"].status_code == 200 and responses["vendor"].status_code == 200
    assert "immutable" in responses["vendor"].headers["cache-control"]
    # No inline script or style in any page (the CSP would block it anyway).
    for what in ("login", "search", "recording", "not found"):
        html = responses[what].text
        assert "<style" not in html and " style=" not in html, what
        assert not re.search(r"<script(?![^>]*\bsrc=)", html), what
        assert re.search(r"\son[a-z]+=", html) is None, what


# -- scope and the ledger -------------------------------------------------------------------
def test_a_reviewer_scoped_to_device_a_sees_nothing_of_device_b(web: Web):
    client = web.client()
    sign_in(client, web.reviewer)
    before = len(access_leaves(web))
    home = client.get("/")
    assert home.status_code == 200
    assert A_REC[:12] in home.text and f"/recordings/{A_REC}" in home.text
    assert B_REC[:12] not in home.text and HOSTILE not in home.text
    assert client.get(f"/?device={HOSTILE}").text.count("/recordings/") == 0

    page = client.get(f"/recordings/{A_REC}")
    assert page.status_code == 200 and HONEST in page.text
    player = re.search(r'<div id="player"[^>]*>', page.text)
    assert player and f'data-recording-id="{A_REC}"' in player.group(0)

    guessed = client.get(f"/recordings/{B_REC}")
    assert guessed.status_code == 404 and HOSTILE not in guessed.text
    missing = client.get("/recordings/no-such-recording")
    assert missing.status_code == 404
    assert missing.text.replace("no-such-recording", B_REC) == guessed.text.replace(
        "no-such-recording", B_REC
    )  # the same page: a guess tells nothing

    new = access_leaves(web)[before:]
    assert [(leaf["action"], leaf["recording_id"]) for leaf in new] == [
        ("search", None),
        ("search", None),
        ("view_metadata", A_REC),
        ("view_metadata", B_REC),
        ("view_metadata", None),
    ]
    refused = new[3]
    assert refused["user"] == "rita" and str(refused["detail"]).startswith("refused: out of scope")
    assert "no-such-recording" in str(new[4]["detail"]) and "refused" in str(new[4]["detail"])
    assert all(leaf["client"] == "testclient" for leaf in new)
    assert len({leaf["session"] for leaf in new}) == 1


def test_every_page_view_adds_an_access_leaf(web: Web):
    client = web.client()
    sign_in(client, web.auditor)
    for path in ("/", f"/recordings/{A_REC}", f"/recordings/{B_REC}", "/audit", "/?page=1"):
        before = len(access_leaves(web))
        assert client.get(path).status_code == 200, path
        assert len(access_leaves(web)) == before + 1, path
    home = client.get("/")
    assert 'href="/audit"' in home.text and B_REC[:12] in home.text  # the auditor sees all
    audit = client.get("/audit")
    assert "read_audit" in audit.text and "view_metadata" in audit.text


def test_a_reviewer_may_not_read_the_audit_ledger(web: Web):
    client = web.client()
    sign_in(client, web.reviewer)
    r = client.get("/audit")
    assert r.status_code == 403
    assert access_leaves(web)[-1]["action"] == "read_audit"
    assert str(access_leaves(web)[-1]["detail"]).startswith("refused")


def test_a_bad_search_parameter_is_a_400_page(web: Web):
    client = web.client()
    sign_in(client, web.reviewer)
    r = client.get("/?page_size=7")
    assert r.status_code == 400 and "page_size" in r.text


# -- pieces ---------------------------------------------------------------------------------
def test_client_address_believes_forwarded_for_only_from_trusted_proxies():
    proxies = parse_networks(["127.0.0.1", "10.0.0.0/8"])
    assert client_address("192.0.2.7", "203.0.113.9", proxies) == "192.0.2.7"
    assert client_address("127.0.0.1", "203.0.113.9", proxies) == "203.0.113.9"
    # A client's own forged entries sit left of what our proxies appended.
    assert client_address("127.0.0.1", "1.2.3.4, 203.0.113.9, 10.1.1.1", proxies) == "203.0.113.9"
    assert client_address("127.0.0.1", "not-an-ip", proxies) == "127.0.0.1"
    assert client_address("127.0.0.1", None, proxies) == "127.0.0.1"
    assert client_address("127.0.0.1", "203.0.113.9", ()) == "127.0.0.1"


def test_the_csrf_secret_is_made_once_and_private(tmp_path: Path):
    first = load_or_create_secret(tmp_path)
    path = tmp_path / "keys" / "web-csrf.key"
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_or_create_secret(tmp_path) == first and len(first) == 32


def test_web_config_checks_tls_pair_and_proxies():
    with pytest.raises(ValueError, match="tls_cert and tls_key"):
        WebConfig(tls_cert=Path("a.crt"))
    with pytest.raises(ValueError, match="trusted_proxies"):
        WebConfig(trusted_proxies=("proxy.example",))
    assert WebConfig().port == 8443


def test_vendored_files_match_their_recorded_sha256():
    readme = (VENDOR / "README.md").read_text(encoding="utf-8")
    listed = dict(re.findall(r"^\| `([^`]+)` \| .*? \| `([0-9a-f]{64})` \|$", readme, re.M))
    on_disk = {
        str(p.relative_to(VENDOR))
        for p in VENDOR.rglob("*")
        if p.is_file() and p.name != "README.md"
    }
    assert set(listed) == on_disk
    for name, digest in listed.items():
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, name
    # Each package folder keeps its licence.
    for folder in (p for p in VENDOR.iterdir() if p.is_dir()):
        assert (folder / "LICENSE").is_file(), folder
    assert (VENDOR / "htmx.org-2.0.11" / "htmx.min.js").is_file()
    assert (VENDOR / "wavesurfer.js-8.0.1" / "wavesurfer.min.js").is_file()


# -- the real process -----------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_linetap_office_web_serves_and_stops_on_sigterm(tmp_path: Path):
    (tmp_path / "root").mkdir()
    config = tmp_path / "office.toml"
    config.write_text(f'root = "{tmp_path / "root"}"\n{CHEAP_TOML}\n[web]\nlisten = "127.0.0.1"\n')
    port = free_port()
    proc = subprocess.Popen(
        [str(VENV_BIN / "linetap-office"), "web", "--config", str(config), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=2) as r:
                    status, headers, body = r.status, r.headers, r.read().decode()
                break
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "linetap-office web did not answer"
                time.sleep(0.1)
        assert status == 200 and 'name="password"' in body
        assert headers["Content-Security-Policy"] == CSP
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"] == "no-referrer"
        assert headers["Cache-Control"] == "no-store"
        assert "server" not in {k.lower() for k in headers}
        assert (tmp_path / "root" / "keys" / "web-csrf.key").stat().st_mode & 0o777 == 0o600
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_totp_codes_come_from_pyotp(web: Web):
    """The code step takes a standard RFC 6238 code (what an authenticator app shows)."""
    assert web.supervisor.totp_secret is not None
    client = web.client()
    step = int(web.clock.tick().timestamp()) // 30
    sign_in(client, web.supervisor, code=pyotp.TOTP(web.supervisor.totp_secret).at(step * 30))
