"""Who is acting, and the one gate every access goes through.

The office's command line acts as a named account, never as an anonymous superuser:
:func:`cli_actor` logs in with ``$LINETAP_OFFICE_USER`` / ``$LINETAP_OFFICE_PASSWORD``
/ ``$LINETAP_OFFICE_TOTP`` or, on a terminal, by asking. The web and any API make an
:class:`Actor` from their session instead.

:meth:`Gate.allow` is the gate: it asks :func:`headoffice.authz.authorize`, appends the
access (allowed or refused) to the audit ledger, and only then lets the caller send
anything. A ledger that cannot be appended to refuses the access.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from headoffice.accounts import Accounts, LoginError, LoginFailure
from headoffice.authz import Action, Principal, Target, authorize, site_map
from headoffice.config import OfficeConfig
from headoffice.index import Index
from headoffice.index.records import StoredRecord, now_iso
from headoffice.ledger.leaves import AccessLeaf, AdminLeaf
from headoffice.ledger.store import Ledger, LedgerError
from sealedrec.errors import LinetapError

USER_ENV = "LINETAP_OFFICE_USER"
PASSWORD_ENV = "LINETAP_OFFICE_PASSWORD"
TOTP_ENV = "LINETAP_OFFICE_TOTP"


class AccessDenied(LinetapError, PermissionError):
    """Refused by the authorization function or for want of a ledger entry. ``hidden``:
    the recording is out of the actor's scope (say "not found", as for a missing one)."""

    def __init__(self, message: str, *, hidden: bool = False) -> None:
        super().__init__(message)
        self.hidden = hidden


@dataclass(frozen=True, slots=True)
class Actor:
    principal: Principal
    session: str  # a short, non-secret name of the session (a prefix of its token's hash)
    client: str  # where from: "cli:user@host", or the web client's address


def session_name(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def cli_actor(
    cfg: OfficeConfig,
    index: Index,
    *,
    environ: Mapping[str, str] = os.environ,
    ask: Callable[[str], str] = getpass.getpass,
    interactive: bool | None = None,
) -> Actor:
    """Log the command line in as a named account (see the module docstring)."""
    tty = sys.stdin.isatty() if interactive is None else interactive
    accounts = Accounts(index, cfg.accounts, sites=cfg.sites)
    name = environ.get(USER_ENV) or (input("linetap-office user: ").strip() if tty else "")
    if not name:
        raise AccessDenied(
            f"the office command line acts as a named account: set ${USER_ENV} and "
            f"${PASSWORD_ENV} (and ${TOTP_ENV} where the role needs a code), or run it on "
            "a terminal to be asked; 'linetap-office user add' makes accounts"
        )
    password = environ.get(PASSWORD_ENV) or (ask(f"password for {name}: ") if tty else "")
    code = environ.get(TOTP_ENV) or None
    client = f"cli:{getpass.getuser()}@{socket.gethostname()}"
    try:
        session = accounts.login(name, password, code, client)
    except LoginError as exc:
        if exc.failure is LoginFailure.CODE_MISSING and tty:
            session = accounts.login(name, password, ask("one-time code: ").strip(), client)
        else:
            raise AccessDenied(f"login as {name} refused ({exc.reason})") from None
    return Actor(session.principal, session_name(session.token), client)


class Gate:
    """Authorize and log one actor's accesses (CLI command, web request, API call)."""

    def __init__(self, index: Index, cfg: OfficeConfig, actor: Actor) -> None:
        self.ledger = Ledger(index)
        self.sites = site_map(cfg.sites)
        self.actor = actor

    def may(self, action: Action, record: StoredRecord | None = None) -> bool:
        """Whether ``action`` is allowed, without logging (for filtering what a search
        shows; each shown or opened recording is then logged through :meth:`allow`)."""
        target = Target(record.device_id, record.line) if record is not None else None
        return authorize(self.actor.principal, action, target, self.sites).allowed

    def allow(
        self, action: Action, record: StoredRecord | None = None, *, detail: str = ""
    ) -> None:
        """Authorize ``action`` and append it to the ledger (refusals too); raises
        :class:`AccessDenied` when refused or when the ledger cannot take the entry."""
        target = Target(record.device_id, record.line) if record is not None else None
        decision = authorize(self.actor.principal, action, target, self.sites)
        note = detail if decision.allowed else f"refused: {decision.reason}; {detail}".rstrip("; ")
        self._append(action, record.recording_id if record else None, note)
        if not decision.allowed:
            raise AccessDenied(
                f"{self.actor.principal.name} may not {action.value}: {decision.reason}",
                hidden=decision.hidden,
            )

    def _append(self, action: Action, rec: str | None, detail: str) -> None:
        p = self.actor.principal
        leaf = AccessLeaf(
            user=p.name,
            roles=tuple(sorted(r.value for r in p.roles)),
            action=action.value,
            recording_id=rec,
            detail=detail[:500],
            client=self.actor.client,
            session=self.actor.session,
            at=now_iso(),
        )
        try:
            self.ledger.append(leaf)
        except LedgerError as exc:
            raise AccessDenied(f"refused: the access could not be logged ({exc})") from exc

    def admin(self, action: str, subject: str, detail: str = "") -> None:
        """An admin change (users, roles, policies, a deletion's tombstone) as a leaf."""
        self.ledger.append(
            AdminLeaf(
                user=self.actor.principal.name,
                action=action,
                subject=subject,
                detail=detail[:2000],
                at=now_iso(),
            )
        )
