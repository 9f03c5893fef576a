"""Office accounts for tests: the office command line acts as a named account.

    login = add_account(index, "sup", [Role.SUPERVISOR], totp=True)
    office_main([...], ) with os.environ updated by login.env()   # or subprocess env=
    gate = gate_for(index, Principal("t", frozenset({Role.SUPERVISOR}), Scope.all()))

:func:`add_account` makes the account in the index (an admin first while there is none, as
the office requires) and returns a :class:`Login` whose :meth:`Login.env` is the
environment ``cli_actor`` reads: name, password and, for an account with TOTP, a fresh
one-time code. A code works once, and the office accepts the current 30 s step and the
next one, so without a clock two logins of one TOTP account fit in a step;
:class:`SteppingClock` (installed with :func:`use_clock`) lets a test log in as often as
it likes by moving the office's clock a step per code.
"""

from __future__ import annotations

import functools
import getpass
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pyotp
import pytest

import headoffice.access
from headoffice.access import PASSWORD_ENV, TOTP_ENV, USER_ENV, Actor, Gate
from headoffice.accounts import Accounts
from headoffice.authz import Principal, Role, Scope
from headoffice.config import AccountsConfig, OfficeConfig
from headoffice.index import Index
from headoffice.ledger.store import Ledger

PASSWORD = "correct horse battery staple"
#: argon2id settings that make a test's logins cheap (office.toml ``[accounts]``).
CHEAP = AccountsConfig(password_time_cost=1, password_memory_kib=1024, password_parallelism=1)
CHEAP_TOML = (
    "[accounts]\npassword_time_cost = 1\npassword_memory_kib = 1024\npassword_parallelism = 1\n"
)
STEP_S = 30


class SteppingClock:
    """The office's clock in a test: each :meth:`tick` is the next 30 s step."""

    def __init__(self) -> None:
        self.at = datetime.now(UTC)

    def now(self) -> datetime:
        return self.at

    def tick(self) -> datetime:
        self.at += timedelta(seconds=STEP_S)
        return self.at


def use_clock(monkeypatch: pytest.MonkeyPatch, clock: SteppingClock) -> SteppingClock:
    """Every login of the command line (``cli_actor``) reads ``clock``."""
    monkeypatch.setattr(headoffice.access, "Accounts", functools.partial(Accounts, clock=clock.now))
    return clock


@dataclass
class Login:
    name: str
    password: str = PASSWORD
    totp_secret: str | None = None
    clock: SteppingClock | None = None
    _last_step: int = field(default=-1, repr=False)

    def code(self) -> str:
        """A one-time code not used before: the clock's next step, or (no clock) the
        current step, else the next one the office still accepts."""
        assert self.totp_secret is not None, f"{self.name} has no TOTP"
        if self.clock is not None:
            at = self.clock.tick()
            step = int(at.timestamp()) // STEP_S
        else:
            step = max(int(datetime.now(UTC).timestamp()) // STEP_S, self._last_step + 1)
        self._last_step = step
        return pyotp.TOTP(self.totp_secret).at(step * STEP_S)

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """``base`` (default: nothing) with this account's credentials for the CLI."""
        out = dict(base or {})
        out[USER_ENV] = self.name
        out[PASSWORD_ENV] = self.password
        out.pop(TOTP_ENV, None)
        if self.totp_secret is not None:
            out[TOTP_ENV] = self.code()
        return out

    def subprocess_env(self) -> dict[str, str]:
        """The process environment plus the credentials (for ``subprocess.run(env=)``)."""
        return self.env(os.environ)

    def apply(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Set the credentials in this process's environment (for ``office_main``)."""
        for key, value in self.env().items():
            monkeypatch.setenv(key, value)
        if self.totp_secret is None:
            monkeypatch.delenv(TOTP_ENV, raising=False)


def add_account(
    index: Index,
    name: str,
    roles: Iterable[Role],
    scope: Scope | None = None,
    *,
    settings: AccountsConfig | None = None,
    sites: Mapping[str, Iterable[str]] | None = None,
    totp: bool | None = None,
    clock: SteppingClock | None = None,
    password: str = PASSWORD,
) -> Login:
    """Make the account ``name`` in ``index`` (after an admin ``office-admin`` while there
    is no account yet). ``totp``: enroll a TOTP secret (default: when one of ``roles``
    needs a code under ``settings``). ``scope`` defaults to everything."""
    settings = settings or AccountsConfig()
    accounts = Accounts(index, settings, sites=sites)
    role_list = list(roles)
    if not accounts.list_users() and Role.ADMIN not in role_list:
        accounts.add_user("office-admin", PASSWORD + " admin", [Role.ADMIN])
    accounts.add_user(name, password, role_list, scope if scope is not None else Scope.all())
    if totp is None:
        totp = bool(set(role_list) & set(settings.totp_required_for))
    secret = accounts.enroll_totp(name).secret if totp else None
    return Login(name, password, secret, clock)


def gate_for(
    index: Index,
    principal: Principal | None = None,
    cfg: OfficeConfig | None = None,
) -> Gate:
    """A gate for calling the ``cmd_*`` functions directly (no login): by default an
    office-wide supervisor."""
    principal = principal or Principal("tester", frozenset({Role.SUPERVISOR}), Scope.all())
    actor = Actor(principal, "test-session", f"test:{getpass.getuser()}")
    return Gate(index, cfg or OfficeConfig(), actor)


def leaves(index: Index, kind: str | None = None) -> list[dict[str, Any]]:
    """The ledger's leaves (of ``kind``) as dicts, oldest first."""
    return [
        json.loads(row.body) for row in Ledger(index).rows() if kind is None or row.kind == kind
    ]
