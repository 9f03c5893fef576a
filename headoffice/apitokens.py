"""Personal API tokens: how scripts sign in to the web review's JSON API as a named account.

- A token is 32 random bytes, shown once as ``lt_`` + URL-safe base64 (no padding). The
  office keeps only its SHA-256 (table ``api_tokens``, :func:`headoffice.index.schema._api_tokens`);
  its **id** is the first 16 hex digits of that hash, which is also what
  :func:`headoffice.access.session_name` makes of it, so the ``session`` of every ledger
  leaf of an API access names the token that made it.
- A token lives :data:`DEFAULT_DAYS` days unless asked otherwise, at most :data:`MAX_DAYS`.
- :meth:`TokenStore.authenticate` runs at every request: an unknown, revoked or expired
  token is refused, and a live one acts as its account with the roles and scope the
  account has *now* (:meth:`headoffice.accounts.Accounts.principal`), so a disabled
  account's tokens stop at once and a role change applies to the next request.

The store validates and stores; who may create, list and revoke tokens is the command
line's business (:mod:`headoffice.cli_users`: the account itself or an admin), and each
creation and revocation is an ``admin`` leaf of the ledger there.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from headoffice.accounts import AccountError, Accounts
from headoffice.authz import Principal
from headoffice.index import Row, utc_iso
from sealedrec.errors import LinetapError

__all__ = [
    "DEFAULT_DAYS",
    "MAX_DAYS",
    "TOKEN_PREFIX",
    "NewToken",
    "TokenError",
    "TokenInfo",
    "TokenStore",
    "TokenUse",
    "token_digest",
]

TOKEN_PREFIX = "lt_"
TOKEN_BYTES = 32
DEFAULT_DAYS = 90
MAX_DAYS = 365
MAX_LABEL = 100
ID_CHARS = 16  # the id: this many hex digits of the token's SHA-256
MIN_PREFIX = 8  # `token revoke` needs at least this many of them
#: The longest text worth hashing as a token (a real one is 46 characters).
MAX_TOKEN_CHARS = 100
_HEX = re.compile(r"[0-9a-f]+")
_COLUMNS = "token_sha256, name, label, created_at, expires_at, last_used_at, revoked_at"

TokenState = Literal["active", "expired", "revoked"]


class TokenError(LinetapError, ValueError):
    """A token that cannot be made, found or revoked (the message says what to do)."""


def token_digest(token: str) -> str:
    """The SHA-256 (hex) of a token as the office stores it."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A token as the office knows it (never the token itself)."""

    token_sha256: str
    name: str
    label: str
    created_at: str
    expires_at: str
    last_used_at: str | None
    revoked_at: str | None

    @property
    def id(self) -> str:
        return self.token_sha256[:ID_CHARS]

    def state(self, now: datetime) -> TokenState:
        if self.revoked_at is not None:
            return "revoked"
        if now >= datetime.fromisoformat(self.expires_at):
            return "expired"
        return "active"


@dataclass(frozen=True, slots=True)
class NewToken:
    """A token just made: give ``token`` to its owner once; it is stored nowhere."""

    token: str = field(repr=False)
    info: TokenInfo


@dataclass(frozen=True, slots=True)
class TokenUse:
    """A request's live token: who it acts as (now) and which token it is."""

    principal: Principal
    info: TokenInfo


def _info(row: Row) -> TokenInfo:
    return TokenInfo(
        token_sha256=str(row[0]),
        name=str(row[1]),
        label=str(row[2]),
        created_at=str(row[3]),
        expires_at=str(row[4]),
        last_used_at=row[5],
        revoked_at=row[6],
    )


class TokenStore:
    """The API tokens in the accounts' index. ``clock`` returns the current time (UTC;
    tests inject one)."""

    def __init__(self, accounts: Accounts, *, clock: Callable[[], datetime] | None = None) -> None:
        self.accounts = accounts
        self.index = accounts.index
        self._clock = clock or (lambda: datetime.now(UTC))

    def now(self) -> datetime:
        now = self._clock()
        return now if now.tzinfo is not None else now.replace(tzinfo=UTC)

    # -- changes -------------------------------------------------------------------------
    def create(self, name: str, label: str, days: int = DEFAULT_DAYS) -> NewToken:
        """A new token for the enabled account ``name``, valid ``days`` days (1 to
        :data:`MAX_DAYS`); ``label`` says what it is for (e.g. "nightly export")."""
        label = label.strip()
        if not label or len(label) > MAX_LABEL or any(ord(c) < 32 or ord(c) == 127 for c in label):
            raise TokenError(
                f"label: say what the token is for in 1 to {MAX_LABEL} printable characters, "
                'e.g. --label "nightly export"'
            )
        if not 1 <= days <= MAX_DAYS:
            raise TokenError(f"--days {days}: a token lives 1 to {MAX_DAYS} days")
        try:
            self.accounts.principal(name)  # exists and is enabled
        except AccountError as exc:
            raise TokenError(f"no token made: {exc}") from None
        token = TOKEN_PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(TOKEN_BYTES)).decode(
            "ascii"
        ).rstrip("=")
        now = self.now()
        info = TokenInfo(
            token_sha256=token_digest(token),
            name=name,
            label=label,
            created_at=utc_iso(now),
            expires_at=utc_iso(now + timedelta(days=days)),
            last_used_at=None,
            revoked_at=None,
        )
        with self.index.transaction(True) as q:
            q(
                "INSERT INTO api_tokens (token_sha256, name, label, created_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (info.token_sha256, name, label, info.created_at, info.expires_at),
            )
        return NewToken(token, info)

    def revoke(self, info: TokenInfo) -> TokenInfo:
        """Revoke the token (it stops at its next request); the revoked row is kept."""
        stamp = utc_iso(self.now())
        with self.index.transaction(True) as q:
            rows = q(
                f"UPDATE api_tokens SET revoked_at = ? WHERE token_sha256 = ? "
                f"AND revoked_at IS NULL RETURNING {_COLUMNS}",
                (stamp, info.token_sha256),
            )
        if not rows:
            raise TokenError(f"token {info.id} of {info.name} is revoked already")
        return _info(rows[0])

    # -- reading -------------------------------------------------------------------------
    def tokens_of(self, name: str | None = None) -> list[TokenInfo]:
        """The tokens of ``name`` (of everyone when ``None``), oldest first; revoked and
        expired ones too."""
        where, params = ("WHERE name = ? ", (name,)) if name is not None else ("", ())
        with self.index.transaction(False) as q:
            rows = q(f"SELECT {_COLUMNS} FROM api_tokens {where}ORDER BY created_at, name", params)
        return [_info(r) for r in rows]

    def find(self, ref: str) -> TokenInfo:
        """The one token ``ref`` names: a token itself (``lt_...``), or a prefix of at
        least :data:`MIN_PREFIX` hex digits of its id (as ``token list`` shows it)."""
        ref = ref.strip()
        if ref.startswith(TOKEN_PREFIX):
            wanted, exact = token_digest(ref), True
        elif len(ref) >= MIN_PREFIX and _HEX.fullmatch(ref.lower()):
            wanted, exact = ref.lower(), False
        else:
            raise TokenError(
                f"{ref[:20]!r}: give the token's id as `linetap-office user token list` shows "
                f"it (at least {MIN_PREFIX} of its hex digits), or the token itself"
            )
        # the prefix is hex digits only, so LIKE sees no wildcard but its own
        where = "token_sha256 = ?" if exact else "token_sha256 LIKE ?"
        with self.index.transaction(False) as q:
            rows = q(
                f"SELECT {_COLUMNS} FROM api_tokens WHERE {where} LIMIT 2",
                (wanted if exact else wanted + "%",),
            )
        if not rows:
            raise TokenError(f"no API token {ref[:20]!r}; see `linetap-office user token list`")
        if len(rows) > 1:
            raise TokenError(f"{ref!r} names more than one token; give more of its id")
        return _info(rows[0])

    def authenticate(self, token: str) -> TokenUse | None:
        """The account a token acts as, now, or ``None``: not a token, unknown, revoked,
        expired, or its account disabled (or gone). Notes the token's last use."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > MAX_TOKEN_CHARS:
            return None
        digest = token_digest(token)
        now = self.now()
        with self.index.transaction(True) as q:
            rows = q(f"SELECT {_COLUMNS} FROM api_tokens WHERE token_sha256 = ?", (digest,))
            if not rows or not hmac.compare_digest(str(rows[0][0]).encode(), digest.encode()):
                return None
            info = _info(rows[0])
            if info.state(now) != "active":
                return None
            stamp = utc_iso(now)
            q("UPDATE api_tokens SET last_used_at = ? WHERE token_sha256 = ?", (stamp, digest))
        try:
            principal = self.accounts.principal(info.name)
        except AccountError:
            return None  # disabled since (or never enabled): its tokens do not act
        return TokenUse(principal, dataclasses.replace(info, last_used_at=stamp))
