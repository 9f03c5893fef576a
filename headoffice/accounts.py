"""Head-office accounts: users, roles, scopes, passwords, TOTP, lock-out and sessions.

Kept in the index database (tables ``users``, ``user_roles``, ``user_scope``,
``sessions``: :mod:`headoffice.index.schema`), through :meth:`Index.transaction`.

- **Passwords**: argon2id (argon2-cffi, explicit parameters from
  :class:`~headoffice.config.AccountsConfig`); a hash made with other parameters is
  replaced at the next successful login.
- **TOTP** (RFC 6238, pyotp, 30 s steps, ±1 step accepted): required for the roles in
  ``totp_required_for`` (admin, supervisor, compliance by default), checked for anyone
  enrolled. The step of the last accepted code is kept (``users.totp_last_step``); a
  code of that step or an older one is refused, so a code works once.
- **Lock-out**: after ``lockout_after`` failed logins in a row the account is locked for
  ``lockout_first_s``, doubled per further failure up to ``lockout_max_s``; a successful
  login (or a new password) clears the count.
- **One answer for every refused login**: an unknown name, a wrong password, a wrong,
  missing or replayed code, a disabled or a locked account all raise :class:`LoginError`
  with the same public :attr:`LoginError.reason`; only :attr:`LoginError.failure` (for
  the log, never for the client) tells them apart. While an account is locked the
  password is not judged at all (the hash is still computed, for equal timing) and the
  attempt does not count: a lock that answered differently after a correct password
  would let guessing go on during the lock. An unknown name costs an argon2 verify on a
  dummy hash, so timing tells no names either. Secrets are compared with
  :func:`hmac.compare_digest`.
- **Sessions** live on the server: the client gets a random 32-byte token once; only its
  SHA-256 is stored. A session ends when idle for ``idle_timeout_s``, at
  ``absolute_timeout_s`` after login, at :meth:`Accounts.logout`, when the account is
  disabled or its password changes, and when its roles now need a TOTP code it was not
  opened with.
- **Bootstrap**: while no account exists, the first one must have role admin. Whoever
  can write the office's config and database is trusted to create it (the CLI's user
  commands act with that file-system trust).

Every change returns an :class:`AccountEvent` for the caller to record (the ledger).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum

import pyotp
from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError

from headoffice.authz import DeviceLine, Principal, Role, Scope
from headoffice.config import AccountsConfig
from headoffice.index import Index, Query, Row, utc_iso
from sealedrec.errors import LinetapError
from sealedrec.tlskeys import DEVICE_ID_PATTERN

USER_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}"
_USER_NAME = re.compile(USER_NAME_PATTERN)
_DEVICE_ID = re.compile(DEVICE_ID_PATTERN)
_LINE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_PASSWORD_CHARS = 1024
TOTP_DIGITS = 6
TOTP_INTERVAL_S = 30
TOTP_WINDOW = 1  # steps either side of now

#: What every refused login says to the client.
LOGIN_REFUSED = (
    "login refused: wrong name, password or one-time code, or the account is locked after "
    "failed attempts or disabled; wait a few minutes and try again, or ask an admin"
)


class AccountError(LinetapError, ValueError):
    """An account change that cannot be made (the message says what to do instead)."""


class LoginFailure(StrEnum):
    """Why a login was refused: for the log and the ledger, never for the client."""

    UNKNOWN_USER = "unknown_user"
    BAD_PASSWORD = "bad_password"
    DISABLED = "disabled"
    LOCKED = "locked"
    CODE_MISSING = "code_missing"
    BAD_CODE = "bad_code"
    REPLAYED_CODE = "replayed_code"
    TOTP_NOT_ENROLLED = "totp_not_enrolled"


class LoginError(LinetapError, PermissionError):
    """A refused login. ``reason`` is what the client is told (always
    :data:`LOGIN_REFUSED`); ``failure`` and ``user`` are for the log."""

    def __init__(self, failure: LoginFailure, user: str) -> None:
        self.reason = LOGIN_REFUSED
        self.failure = failure
        self.user = user
        super().__init__(self.reason)


class EventKind(StrEnum):
    USER_ADDED = "user_added"
    PASSWORD_SET = "password_set"
    USER_DISABLED = "user_disabled"
    ROLES_SET = "roles_set"
    SCOPE_SET = "scope_set"
    TOTP_ENROLLED = "totp_enrolled"


@dataclass(frozen=True, slots=True)
class AccountEvent:
    """One change to an account, for the caller to log (never holds a secret)."""

    kind: EventKind
    user: str
    at: str
    roles: tuple[Role, ...] = ()
    scope: Scope | None = None

    def body(self) -> dict[str, str | list[str]]:
        """The event as JSON-ready fields (e.g. a ledger entry's body)."""
        out: dict[str, str | list[str]] = {
            "kind": str(self.kind),
            "user": self.user,
            "at": self.at,
        }
        if self.roles:
            out["roles"] = [str(r) for r in self.roles]
        if self.scope is not None:
            out["scope"] = self.scope.describe()
        return out


@dataclass(frozen=True, slots=True)
class TotpEnrollment:
    """A new TOTP secret: show ``uri`` (or ``secret``) to the user once."""

    secret: str = field(repr=False)
    uri: str = field(repr=False)
    event: AccountEvent


@dataclass(frozen=True, slots=True)
class Session:
    """A login. ``token`` goes to the client once and is stored nowhere (only its
    SHA-256)."""

    token: str = field(repr=False)
    principal: Principal
    created_at: str
    expires_at: str
    second_factor: str  # "totp" or "none"
    client: str


@dataclass(frozen=True, slots=True)
class UserInfo:
    """An account as ``user list`` shows it (no secret)."""

    name: str
    roles: tuple[Role, ...]
    scope: Scope
    disabled: bool
    totp_enrolled: bool
    failed_logins: int
    locked_until: str | None
    created_at: str
    updated_at: str


@dataclass(frozen=True, slots=True)
class _UserRow:
    password_hash: str
    totp_secret: str | None
    totp_last_step: int
    disabled: bool
    failed_logins: int
    locked_until: str | None


_USER_COLUMNS = "password_hash, totp_secret, totp_last_step, disabled, failed_logins, locked_until"


def _user_row(row: Row) -> _UserRow:
    return _UserRow(
        password_hash=str(row[0]),
        totp_secret=row[1],
        totp_last_step=int(row[2]),
        disabled=bool(row[3]),
        failed_logins=int(row[4]),
        locked_until=row[5],
    )


def _token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _parse(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp)


def lock_seconds(failures: int, settings: AccountsConfig) -> int:
    """How long an account with ``failures`` failed logins in a row is locked (0: not)."""
    if failures < settings.lockout_after:
        return 0
    doublings = min(failures - settings.lockout_after, 32)
    return min(settings.lockout_first_s << doublings, settings.lockout_max_s)


class Accounts:
    """The office's accounts in ``index``. ``sites`` (office.toml ``[sites]``) is what
    site names a scope may use; ``clock`` returns the current time (UTC, tests inject
    one)."""

    def __init__(
        self,
        index: Index,
        settings: AccountsConfig,
        *,
        sites: Mapping[str, Iterable[str]] | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.index = index
        self.settings = settings
        self.sites = frozenset(sites or {})
        self._clock = clock or (lambda: datetime.now(UTC))
        self._hasher = PasswordHasher(
            time_cost=settings.password_time_cost,
            memory_cost=settings.password_memory_kib,
            parallelism=settings.password_parallelism,
            hash_len=32,
            salt_len=16,
            type=Type.ID,
        )
        self._dummy_hash: str | None = None

    # -- helpers -------------------------------------------------------------------------
    def _now(self) -> datetime:
        now = self._clock()
        return now if now.tzinfo is not None else now.replace(tzinfo=UTC)

    def _stamp(self, when: datetime | None = None) -> str:
        return utc_iso(when if when is not None else self._now())

    def _check_password(self, password: str) -> None:
        if len(password) < self.settings.min_password_length:
            raise AccountError(
                f"password too short: use at least {self.settings.min_password_length} "
                "characters (a passphrase of several words is easiest)"
            )
        if len(password) > MAX_PASSWORD_CHARS:
            raise AccountError(f"password too long: use at most {MAX_PASSWORD_CHARS} characters")

    def _check_scope(self, scope: Scope) -> None:
        unknown = sorted(scope.sites - self.sites)
        if unknown:
            known = ", ".join(sorted(self.sites)) or "none"
            raise AccountError(
                f"unknown site {', '.join(unknown)} (known: {known}); add it under [sites] "
                'in office.toml, e.g. hq = ["dev-1", "dev-2"]'
            )
        for device in scope.devices | {dl.device_id for dl in scope.lines}:
            if not _DEVICE_ID.fullmatch(device):
                raise AccountError(
                    f"device id {device!r}: letters, digits, '_', '.', '-' (up to 64), as enrolled"
                )
        for dl in scope.lines:
            if not _LINE.fullmatch(dl.line):
                raise AccountError(f"line {dl}: write DEVICE/LINE with a line name like line1")

    @staticmethod
    def _check_roles(roles: Iterable[Role | str]) -> tuple[Role, ...]:
        try:
            out = tuple(sorted({Role(r) for r in roles}))
        except ValueError as exc:
            raise AccountError(f"{exc}; roles are {', '.join(r.value for r in Role)}") from None
        if not out:
            raise AccountError(f"give at least one role ({', '.join(r.value for r in Role)})")
        return out

    def _require(self, q: Query, name: str) -> None:
        if not q("SELECT name FROM users WHERE name = ?", (name,)):
            raise AccountError(f"no user {name!r}; see `linetap-office user list`")

    def _roles(self, q: Query, name: str) -> tuple[Role, ...]:
        rows = q("SELECT role FROM user_roles WHERE name = ? ORDER BY role", (name,))
        return tuple(Role(r[0]) for r in rows if r[0] in Role._value2member_map_)

    def _scope(self, q: Query, name: str) -> Scope:
        rows = q("SELECT kind, value FROM user_scope WHERE name = ?", (name,))
        sites = frozenset(v for k, v in rows if k == "site")
        devices = frozenset(v for k, v in rows if k == "device")
        lines = frozenset(DeviceLine.parse(v) for k, v in rows if k == "line")
        return Scope(sites, devices, lines, any(k == "everything" for k, _ in rows))

    def _write_roles(self, q: Query, name: str, roles: tuple[Role, ...]) -> None:
        q("DELETE FROM user_roles WHERE name = ?", (name,))
        for role in roles:
            q("INSERT INTO user_roles (name, role) VALUES (?, ?)", (name, str(role)))

    def _write_scope(self, q: Query, name: str, scope: Scope) -> None:
        q("DELETE FROM user_scope WHERE name = ?", (name,))
        items = [
            *(("site", s) for s in sorted(scope.sites)),
            *(("device", d) for d in sorted(scope.devices)),
            *(("line", str(dl)) for dl in sorted(scope.lines)),
            *((("everything", "*"),) if scope.everything else ()),
        ]
        for kind, value in items:
            q("INSERT INTO user_scope (name, kind, value) VALUES (?, ?, ?)", (name, kind, value))

    def _other_enabled_admins(self, q: Query, name: str) -> int:
        [(count,)] = q(
            "SELECT COUNT(*) FROM users u JOIN user_roles r ON r.name = u.name "
            "WHERE r.role = ? AND u.disabled = ? AND u.name <> ?",
            (str(Role.ADMIN), False, name),
        )
        return int(count)

    def _event(
        self,
        kind: EventKind,
        name: str,
        roles: tuple[Role, ...] = (),
        scope: Scope | None = None,
    ) -> AccountEvent:
        return AccountEvent(kind, name, self._stamp(), roles, scope)

    def _needs_totp(self, roles: Iterable[Role]) -> bool:
        return bool(set(roles) & set(self.settings.totp_required_for))

    # -- changes -------------------------------------------------------------------------
    def add_user(
        self,
        name: str,
        password: str,
        roles: Iterable[Role | str],
        scope: Scope | None = None,
    ) -> AccountEvent:
        """A new, enabled account. While no account exists, ``roles`` must include admin."""
        if not _USER_NAME.fullmatch(name):
            raise AccountError(
                f"user name {name!r}: letters, digits, '_', '.', '@', '-' (up to 64), "
                "starting with a letter or digit"
            )
        role_list = self._check_roles(roles)
        scope = scope or Scope()
        self._check_scope(scope)
        self._check_password(password)
        digest = self._hasher.hash(password)
        stamp = self._stamp()
        with self.index.transaction(True) as q:
            self.index.serialize_appends(q, "users")
            if q("SELECT name FROM users WHERE name = ?", (name,)):
                raise AccountError(
                    f"user {name!r} exists already; change it with `linetap-office user "
                    "passwd|role|scope`"
                )
            if not q("SELECT name FROM users LIMIT 1", ()) and Role.ADMIN not in role_list:
                raise AccountError(
                    "the first account must have role admin: linetap-office user add NAME "
                    "--role admin"
                )
            q(
                "INSERT INTO users (name, password_hash, created_at, updated_at) "
                "VALUES (?, ?, ?, ?)",
                (name, digest, stamp, stamp),
            )
            self._write_roles(q, name, role_list)
            self._write_scope(q, name, scope)
        return self._event(EventKind.USER_ADDED, name, role_list, scope)

    def set_password(self, name: str, password: str) -> AccountEvent:
        """A new password; clears the lock-out and ends the account's sessions."""
        self._check_password(password)
        digest = self._hasher.hash(password)
        with self.index.transaction(True) as q:
            self._require(q, name)
            q(
                "UPDATE users SET password_hash = ?, failed_logins = 0, locked_until = NULL, "
                "updated_at = ? WHERE name = ?",
                (digest, self._stamp(), name),
            )
            q("DELETE FROM sessions WHERE name = ?", (name,))
        return self._event(EventKind.PASSWORD_SET, name)

    def disable(self, name: str) -> AccountEvent:
        """The account can no longer log in; its sessions end. The last enabled admin
        cannot be disabled."""
        with self.index.transaction(True) as q:
            self._require(q, name)
            if Role.ADMIN in self._roles(q, name) and not self._other_enabled_admins(q, name):
                raise AccountError(
                    f"{name} is the last enabled admin; add another admin first "
                    "(linetap-office user add NAME --role admin --totp)"
                )
            q(
                "UPDATE users SET disabled = ?, updated_at = ? WHERE name = ?",
                (True, self._stamp(), name),
            )
            q("DELETE FROM sessions WHERE name = ?", (name,))
        return self._event(EventKind.USER_DISABLED, name)

    def set_roles(self, name: str, roles: Iterable[Role | str]) -> AccountEvent:
        """Replace the account's roles (the last enabled admin keeps role admin)."""
        role_list = self._check_roles(roles)
        with self.index.transaction(True) as q:
            self._require(q, name)
            if (
                Role.ADMIN not in role_list
                and Role.ADMIN in self._roles(q, name)
                and not self._other_enabled_admins(q, name)
            ):
                raise AccountError(
                    f"{name} is the last enabled admin; give another account role admin first"
                )
            self._write_roles(q, name, role_list)
            q("UPDATE users SET updated_at = ? WHERE name = ?", (self._stamp(), name))
        return self._event(EventKind.ROLES_SET, name, role_list)

    def set_scope(self, name: str, scope: Scope) -> AccountEvent:
        """Replace the account's scope."""
        self._check_scope(scope)
        with self.index.transaction(True) as q:
            self._require(q, name)
            self._write_scope(q, name, scope)
            q("UPDATE users SET updated_at = ? WHERE name = ?", (self._stamp(), name))
        return self._event(EventKind.SCOPE_SET, name, scope=scope)

    def enroll_totp(self, name: str) -> TotpEnrollment:
        """A new TOTP secret for the account, in force at once (replacing any old one);
        show the provisioning URI to the user once. The last accepted step is kept, so no
        code older than one already used is accepted."""
        secret = pyotp.random_base32()
        uri = pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_INTERVAL_S).provisioning_uri(
            name=name, issuer_name=self.settings.totp_issuer
        )
        with self.index.transaction(True) as q:
            self._require(q, name)
            q(
                "UPDATE users SET totp_secret = ?, updated_at = ? WHERE name = ?",
                (secret, self._stamp(), name),
            )
        return TotpEnrollment(secret, uri, self._event(EventKind.TOTP_ENROLLED, name))

    # -- reading -------------------------------------------------------------------------
    def list_users(self) -> list[UserInfo]:
        with self.index.transaction(False) as q:
            rows = q(
                "SELECT name, totp_secret, disabled, failed_logins, locked_until, created_at, "
                "updated_at FROM users ORDER BY name",
                (),
            )
            return [
                UserInfo(
                    name=r[0],
                    roles=self._roles(q, r[0]),
                    scope=self._scope(q, r[0]),
                    disabled=bool(r[2]),
                    totp_enrolled=r[1] is not None,
                    failed_logins=int(r[3]),
                    locked_until=r[4],
                    created_at=r[5],
                    updated_at=r[6],
                )
                for r in rows
            ]

    def principal(self, name: str) -> Principal:
        """The enabled account ``name`` as a :class:`Principal` (for a caller that acts
        as a named account)."""
        with self.index.transaction(False) as q:
            rows = q("SELECT disabled FROM users WHERE name = ?", (name,))
            if not rows:
                raise AccountError(f"no user {name!r}; see `linetap-office user list`")
            if bool(rows[0][0]):
                raise AccountError(f"user {name!r} is disabled")
            return Principal(name, frozenset(self._roles(q, name)), self._scope(q, name))

    # -- login and sessions --------------------------------------------------------------
    def _dummy(self) -> str:
        if self._dummy_hash is None:
            self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(24))
        return self._dummy_hash

    def _verify(self, digest: str, password: str) -> bool:
        try:
            return self._hasher.verify(digest, password)
        except (VerificationError, InvalidHashError):
            return False

    def _code_step(self, secret: str, code: str, now: datetime) -> int | None:
        """The time step ``code`` belongs to (now ±1), or None."""
        totp = pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_INTERVAL_S)
        current = totp.timecode(now)
        found: int | None = None
        for step in range(current - TOTP_WINDOW, current + TOTP_WINDOW + 1):
            # every step compared, no early exit: the time does not depend on which matched
            if hmac.compare_digest(totp.generate_otp(step).encode(), code.encode()):
                found = step
        return found

    def _judge(
        self,
        row: _UserRow | None,
        *,
        roles: tuple[Role, ...],
        verified_hash: str | None,
        password_ok: bool,
        code: str | None,
        now: datetime,
    ) -> tuple[LoginFailure | None, int | None]:
        """(failure or None, accepted TOTP step or None) for a login attempt."""
        if row is None:
            return LoginFailure.UNKNOWN_USER, None
        if row.locked_until is not None and _parse(row.locked_until) > now:
            return LoginFailure.LOCKED, None
        if row.disabled:
            return LoginFailure.DISABLED, None
        if (
            not password_ok
            or verified_hash is None
            or not hmac.compare_digest(row.password_hash.encode(), verified_hash.encode())
        ):
            return LoginFailure.BAD_PASSWORD, None
        if row.totp_secret is None:
            if self._needs_totp(roles):
                return LoginFailure.TOTP_NOT_ENROLLED, None
            return None, None
        if not code:
            return LoginFailure.CODE_MISSING, None
        step = self._code_step(row.totp_secret, code.strip(), now)
        if step is None:
            return LoginFailure.BAD_CODE, None
        if step <= row.totp_last_step:
            return LoginFailure.REPLAYED_CODE, None
        return None, step

    def login(self, name: str, password: str, totp_code: str | None, client: str) -> Session:
        """Check the credentials and open a session, or raise :class:`LoginError`.
        ``client`` describes where the login came from (address, "cli")."""
        password = password[:MAX_PASSWORD_CHARS]  # none longer can be set; bounds the work
        with self.index.transaction(False) as q:
            rows = q(f"SELECT {_USER_COLUMNS} FROM users WHERE name = ?", (name,))
        snapshot = _user_row(rows[0]) if rows else None
        verified_hash = snapshot.password_hash if snapshot is not None else None
        password_ok = self._verify(verified_hash or self._dummy(), password)
        password_ok = password_ok and snapshot is not None
        new_hash: str | None = None
        if password_ok and verified_hash is not None:
            try:
                if self._hasher.check_needs_rehash(verified_hash):
                    new_hash = self._hasher.hash(password)
            except InvalidHashError:
                new_hash = None
        now = self._now()
        stamp = self._stamp(now)
        session: Session | None = None
        with self.index.transaction(True) as q:
            # A no-op update: takes the row's lock on PostgreSQL (SQLite's write
            # transaction holds the whole file), then judges the fresh row.
            locked = q(
                "UPDATE users SET failed_logins = failed_logins WHERE name = ? "
                f"RETURNING {_USER_COLUMNS}",
                (name,),
            )
            row = _user_row(locked[0]) if locked else None
            roles = self._roles(q, name) if row is not None else ()
            failure, step = self._judge(
                row,
                roles=roles,
                verified_hash=verified_hash,
                password_ok=password_ok,
                code=totp_code,
                now=now,
            )
            if failure is not None:
                if row is not None and failure not in {LoginFailure.LOCKED, LoginFailure.DISABLED}:
                    self._count_failure(q, name, now)
            else:
                token = secrets.token_urlsafe(32)
                expires = self._stamp(now + timedelta(seconds=self.settings.absolute_timeout_s))
                q(
                    "UPDATE users SET failed_logins = 0, locked_until = NULL, "
                    "totp_last_step = CASE WHEN ? > totp_last_step THEN ? ELSE totp_last_step "
                    "END WHERE name = ?",
                    (step or 0, step or 0, name),
                )
                if new_hash is not None:
                    q(
                        "UPDATE users SET password_hash = ?, updated_at = ? WHERE name = ?",
                        (new_hash, stamp, name),
                    )
                second = "totp" if step is not None else "none"
                q(
                    "INSERT INTO sessions (token_sha256, name, created_at, last_seen_at, "
                    "expires_at, second_factor, client) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (_token_digest(token), name, stamp, stamp, expires, second, client),
                )
                principal = Principal(name, frozenset(roles), self._scope(q, name))
                session = Session(token, principal, stamp, expires, second, client)
        if session is None:  # the failure is committed (counted) before it is raised
            raise LoginError(failure or LoginFailure.UNKNOWN_USER, name)
        return session

    def _count_failure(self, q: Query, name: str, now: datetime) -> None:
        [(failures,)] = q(
            "UPDATE users SET failed_logins = failed_logins + 1 WHERE name = ? "
            "RETURNING failed_logins",
            (name,),
        )
        seconds = lock_seconds(int(failures), self.settings)
        if seconds:
            q(
                "UPDATE users SET locked_until = ? WHERE name = ?",
                (self._stamp(now + timedelta(seconds=seconds)), name),
            )

    def session(self, token: str) -> Principal | None:
        """The principal of a live session (and the session's last use set to now), or
        None: unknown token, idle or absolute expiry, disabled account, or a session
        without the TOTP code its account's roles now require."""
        digest = _token_digest(token)
        now = self._now()
        with self.index.transaction(True) as q:
            rows = q(
                "SELECT s.token_sha256, s.name, s.last_seen_at, s.expires_at, "
                "s.second_factor, u.disabled FROM sessions s JOIN users u ON u.name = s.name "
                "WHERE s.token_sha256 = ?",
                (digest,),
            )
            if not rows or not hmac.compare_digest(str(rows[0][0]).encode(), digest.encode()):
                return None
            _, name, last_seen, expires, second, disabled = rows[0]
            idle = _parse(last_seen) + timedelta(seconds=self.settings.idle_timeout_s)
            roles = self._roles(q, name)
            if (
                now >= _parse(expires)
                or now >= idle
                or bool(disabled)
                or (second != "totp" and self._needs_totp(roles))
            ):
                q("DELETE FROM sessions WHERE token_sha256 = ?", (digest,))
                return None
            q(
                "UPDATE sessions SET last_seen_at = ? WHERE token_sha256 = ?",
                (self._stamp(now), digest),
            )
            return Principal(name, frozenset(roles), self._scope(q, name))

    def logout(self, token: str) -> bool:
        """End a session; False if there was none."""
        with self.index.transaction(True) as q:
            gone = q(
                "DELETE FROM sessions WHERE token_sha256 = ? RETURNING name",
                (_token_digest(token),),
            )
        return bool(gone)

    def purge_sessions(self) -> int:
        """Delete sessions past their absolute expiry (housekeeping); how many."""
        with self.index.transaction(True) as q:
            gone = q(
                "DELETE FROM sessions WHERE expires_at <= ? RETURNING name",
                (self._stamp(),),
            )
        return len(gone)
