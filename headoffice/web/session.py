"""The web's session plumbing: cookies, CSRF tokens, the client's address and the
half-done logins waiting for their one-time code.

- **Session cookie** (:data:`SESSION_COOKIE`): the token :meth:`Accounts.login` returned,
  ``HttpOnly``, ``SameSite=Strict``, path ``/``, ``Secure`` over TLS or when
  ``[web] cookie_secure``. The server keeps only its hash (:mod:`headoffice.accounts`).
- **CSRF**: every POST carries ``HMAC-SHA256(secret, cookie token)`` as the form field
  ``csrf`` or the ``X-CSRF-Token`` header. Signed in, the cookie token is the session's;
  before (the login forms) it is a random pre-session cookie (:data:`PRE_COOKIE`), so the
  login form is protected too. The secret is 32 random bytes in the store root's
  ``keys/web-csrf.key`` (0600, made once).
- **Client address**: the peer's, or, when the peer is one of ``[web] trusted_proxies``,
  the right-most ``X-Forwarded-For`` entry that is not itself a trusted proxy.
- **Pending logins**: a password that was right for an account that needs a code waits
  here (in this process's memory only, at most :data:`PENDING_TTL_S`, used once) for the
  code step, so the password is never sent back to the browser in a form.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sealedrec.errors import LinetapError

SESSION_COOKIE = "linetap_session"
PRE_COOKIE = "linetap_pre"
PENDING_COOKIE = "linetap_pending"
CSRF_FIELD = "csrf"
CSRF_HEADER = "X-CSRF-Token"
SECRET_NAME = "web-csrf.key"
SECRET_BYTES = 32
PENDING_TTL_S = 300.0
PENDING_MAX = 1000


class WebSecretError(LinetapError, OSError):
    """The CSRF secret cannot be made or read (the message says which file and why)."""


def load_or_create_secret(root: Path) -> bytes:
    """The server's CSRF secret, ``root/keys/web-csrf.key``: made once (0600, O_EXCL, so
    two starting processes agree on one), then read."""
    keys = root / "keys"
    path = keys / SECRET_NAME
    try:
        keys.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as fh:
                fh.write(secrets.token_bytes(SECRET_BYTES))
                fh.flush()
                os.fsync(fh.fileno())
        data = path.read_bytes()
    except OSError as exc:
        raise WebSecretError(f"{path}: cannot make or read the web's CSRF secret ({exc})") from exc
    if len(data) != SECRET_BYTES:
        raise WebSecretError(
            f"{path}: holds {len(data)} bytes, not {SECRET_BYTES}; delete it (sessions' CSRF "
            "tokens change) and restart"
        )
    return data


def csrf_token(secret: bytes, cookie_token: str) -> str:
    """The CSRF token bound to a session (or pre-session) cookie."""
    return hmac.new(secret, b"csrf\0" + cookie_token.encode(), hashlib.sha256).hexdigest()


def csrf_ok(secret: bytes, cookie_token: str | None, sent: str | None) -> bool:
    if not cookie_token or not sent:
        return False
    return hmac.compare_digest(csrf_token(secret, cookie_token).encode(), sent.encode())


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(e, strict=False) for e in entries)


def _is_in(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def client_address(
    peer: str | None, forwarded_for: str | None, proxies: tuple[Network, ...]
) -> str:
    """Who the request came from (see the module docstring)."""
    peer = peer or "unknown"
    if not forwarded_for or not _is_in(peer, proxies):
        return peer
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return peer  # a mangled header: believe only the peer
        if not _is_in(hop, proxies):
            return hop
    return hops[0] if hops else peer


@dataclass(slots=True)
class PendingLogin:
    name: str
    password: str = field(repr=False)
    client: str
    expires: float


class PendingLogins:
    """Logins whose password was right, waiting for their code (see the module docstring)."""

    def __init__(self, ttl_s: float = PENDING_TTL_S, limit: int = PENDING_MAX) -> None:
        self.ttl_s = ttl_s
        self.limit = limit
        self._items: OrderedDict[str, PendingLogin] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, name: str, password: str, client: str) -> str:
        nonce = secrets.token_urlsafe(32)
        with self._lock:
            self._expire()
            while len(self._items) >= self.limit:
                self._items.popitem(last=False)
            self._items[nonce] = PendingLogin(name, password, client, time.monotonic() + self.ttl_s)
        return nonce

    def peek(self, nonce: str | None) -> PendingLogin | None:
        with self._lock:
            self._expire()
            return self._items.get(nonce) if nonce else None

    def take(self, nonce: str | None) -> PendingLogin | None:
        """The pending login, removed (a code step is tried once)."""
        with self._lock:
            self._expire()
            return self._items.pop(nonce, None) if nonce else None

    def _expire(self) -> None:
        now = time.monotonic()
        for nonce in [n for n, p in self._items.items() if p.expires <= now]:
            del self._items[nonce]
