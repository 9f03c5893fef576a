"""``linetap-office user ...``: head-office accounts on the command line.

linetap-office user add NAME --role R [--role R2] [--site S] [--device D] [--line DEV/LINE]
                        [--everything] [--totp]
linetap-office user passwd NAME
linetap-office user disable NAME
linetap-office user list [--json]
linetap-office user role NAME --set R [--set R2]
linetap-office user scope NAME [--site S] [--device D] [--line DEV/LINE] [--everything|--clear]
linetap-office user totp NAME
linetap-office user token create NAME --label LABEL [--days N]
linetap-office user token list [NAME] [--json]
linetap-office user token revoke ID

New passwords come from ``$LINETAP_OFFICE_NEW_PASSWORD`` or are asked twice.

While no account exists (bootstrap), these commands act with file-system trust: whoever
can open the office config and database may run ``user add NAME --role admin`` (the first
account must be an admin), and the change is logged as an ``admin`` leaf by the user
``bootstrap``. From then on every ``user`` command acts as a named account
(:func:`headoffice.access.cli_actor`: ``$LINETAP_OFFICE_USER`` / ``$LINETAP_OFFICE_PASSWORD``
/ ``$LINETAP_OFFICE_TOTP``) that needs the ``manage_users`` right (role admin), authorized
and logged through :meth:`Gate.allow <headoffice.access.Gate.allow>` before anything is
read or changed; each change's :class:`~headoffice.accounts.AccountEvent` then becomes an
``admin`` leaf (:func:`record_event`: roles and scope, never a password or a TOTP secret).

``user token ...`` manages personal API tokens (:mod:`headoffice.apitokens`) for the web
review's JSON API: only an account itself creates its tokens (a token acts with its
owner's rights, which an admin must not borrow); listing and revoking another's need
``manage_users``
(authorized and logged first). Each creation and revocation is an ``admin`` leaf
(``api_token_created`` / ``api_token_revoked``, naming the token's id, never the token).
"""

from __future__ import annotations

import argparse
import getpass
import os
import socket
import sys
from collections.abc import Callable

from headoffice.access import AccessDenied, Actor, Gate, cli_actor
from headoffice.accounts import AccountError, AccountEvent, Accounts, UserInfo
from headoffice.apitokens import DEFAULT_DAYS, MAX_DAYS, TokenInfo, TokenStore
from headoffice.authz import Action, DeviceLine, Principal, Role, Scope
from headoffice.cli_query import office_config, office_location, office_options
from headoffice.config import OfficeConfig
from headoffice.index import Index, open_index
from headoffice.printing import fail, format_table, write_json
from sealedrec.errors import LinetapError

PASSWORD_ENV = "LINETAP_OFFICE_NEW_PASSWORD"

#: Who made the changes while no account existed (the ledger's ``admin`` leaves).
BOOTSTRAP = "bootstrap"

FIRST_MUST_BE_ADMIN = (
    "the first account must have role admin: linetap-office user add NAME --role admin"
)


def bootstrap_gate(index: Index, cfg: OfficeConfig) -> Gate:
    """The gate of the file-system-trusted user who makes the first admin account: its
    changes are ``admin`` leaves by the user ``bootstrap``."""
    client = f"cli:{getpass.getuser()}@{socket.gethostname()}"
    return Gate(index, cfg, Actor(Principal(BOOTSTRAP, frozenset()), BOOTSTRAP, client))


def event_detail(event: AccountEvent) -> str:
    """An account change for the ledger: roles and scope (never a secret)."""
    parts = []
    if event.roles:
        parts.append(f"roles {', '.join(str(r) for r in event.roles)}")
    if event.scope is not None:
        parts.append(f"scope {event.scope.describe()}")
    return "; ".join(parts)


def record_event(gate: Gate, event: AccountEvent) -> None:
    """Every change the user commands make becomes an ``admin`` leaf of the ledger, by
    the account acting (``bootstrap`` for the first admin)."""
    gate.admin(action=str(event.kind), subject=event.user, detail=event_detail(event))


def _new_password(name: str) -> str:
    env = os.environ.get(PASSWORD_ENV)
    if env:
        return env
    first = getpass.getpass(f"new password for {name}: ")
    if first != getpass.getpass("again: "):
        raise AccountError(
            f"the two passwords differ; run the command again (or set ${PASSWORD_ENV})"
        )
    return first


def _scope(args: argparse.Namespace) -> Scope:
    try:
        lines = frozenset(DeviceLine.parse(text) for text in args.line or ())
    except ValueError as exc:
        raise AccountError(str(exc)) from None
    return Scope(
        sites=frozenset(args.site or ()),
        devices=frozenset(args.device or ()),
        lines=lines,
        everything=bool(args.everything),
    )


def _what(args: argparse.Namespace) -> str:
    """The command for the ledger's access entry, e.g. ``user role sam``."""
    return " ".join(p for p in ("user", args.user_command, getattr(args, "name", None)) if p)


def _gate(accounts: Accounts, index: Index, cfg: OfficeConfig, args: argparse.Namespace) -> Gate:
    """While no account exists: the bootstrap gate (file-system trust). Otherwise the
    named account's, with ``manage_users`` authorized and logged."""
    if not accounts.list_users():
        return bootstrap_gate(index, cfg)
    gate = Gate(index, cfg, cli_actor(cfg, index))
    gate.allow(Action.MANAGE_USERS, detail=_what(args))
    return gate


GateOf = Callable[[Accounts, Index, OfficeConfig, argparse.Namespace], Gate]


def _run(
    args: argparse.Namespace, body: Callable[[Accounts, Gate], int], gate_of: GateOf = _gate
) -> int:
    where = office_location(args)  # ConfigError: run_command prints it, exit status 2
    cfg = office_config(where)
    try:
        index = open_index(where.index_url)
    except (LinetapError, OSError) as exc:
        return fail(sys.stderr, exc)
    try:
        accounts = Accounts(index, cfg.accounts, sites=cfg.sites)
        return body(accounts, gate_of(accounts, index, cfg, args))
    except (LinetapError, OSError) as exc:
        return fail(sys.stderr, exc)
    finally:
        index.close()


def _totp_note(accounts: Accounts, name: str, roles: tuple[Role, ...]) -> None:
    needs = sorted(set(roles) & set(accounts.settings.totp_required_for))
    if needs:
        print(
            f"note: role {', '.join(needs)} logs in only with a one-time code; enroll one "
            f"with: linetap-office user totp {name}"
        )


def _print_enrollment(accounts: Accounts, gate: Gate, name: str) -> None:
    enrollment = accounts.enroll_totp(name)
    record_event(gate, enrollment.event)
    print("TOTP enrolled; add it to the authenticator app now (shown only this once):")
    print(f"  {enrollment.uri}")
    print(f"  secret: {enrollment.secret}")


def cmd_add(args: argparse.Namespace) -> int:
    def body(accounts: Accounts, gate: Gate) -> int:
        scope = _scope(args)
        if gate.actor.principal.name == BOOTSTRAP and Role.ADMIN not in args.role:
            raise AccountError(FIRST_MUST_BE_ADMIN)  # file-system trust makes admins only
        password = _new_password(args.name)
        event = accounts.add_user(args.name, password, args.role, scope)
        record_event(gate, event)
        roles = ", ".join(event.roles)
        print(f"user {args.name} added (roles {roles}; scope {scope.describe()})")
        if args.totp:
            _print_enrollment(accounts, gate, args.name)
        else:
            _totp_note(accounts, args.name, event.roles)
        return 0

    return _run(args, body)


def cmd_passwd(args: argparse.Namespace) -> int:
    def body(accounts: Accounts, gate: Gate) -> int:
        accounts.principal(args.name)  # exists and enabled, before asking for a password
        record_event(gate, accounts.set_password(args.name, _new_password(args.name)))
        print(f"password of {args.name} changed; its sessions are ended")
        return 0

    return _run(args, body)


def cmd_disable(args: argparse.Namespace) -> int:
    def body(accounts: Accounts, gate: Gate) -> int:
        record_event(gate, accounts.disable(args.name))
        print(f"user {args.name} disabled; its sessions are ended")
        return 0

    return _run(args, body)


def cmd_role(args: argparse.Namespace) -> int:
    def body(accounts: Accounts, gate: Gate) -> int:
        event = accounts.set_roles(args.name, args.set)
        record_event(gate, event)
        print(f"roles of {args.name}: {', '.join(event.roles)}")
        totp = {u.name: u.totp_enrolled for u in accounts.list_users()}
        if not totp.get(args.name):
            _totp_note(accounts, args.name, event.roles)
        return 0

    return _run(args, body)


def cmd_scope(args: argparse.Namespace) -> int:
    def body(accounts: Accounts, gate: Gate) -> int:
        scope = _scope(args)
        if scope == Scope() and not args.clear:
            raise AccountError(
                "give the new scope (--site, --device, --line, --everything), or --clear for none"
            )
        record_event(gate, accounts.set_scope(args.name, scope))
        print(f"scope of {args.name}: {scope.describe()}")
        return 0

    return _run(args, body)


def cmd_totp(args: argparse.Namespace) -> int:
    def body(accounts: Accounts, gate: Gate) -> int:
        _print_enrollment(accounts, gate, args.name)
        return 0

    return _run(args, body)


def _user_json(user: UserInfo) -> dict[str, object]:
    return {
        "name": user.name,
        "roles": [str(r) for r in user.roles],
        "scope": {
            "everything": user.scope.everything,
            "sites": sorted(user.scope.sites),
            "devices": sorted(user.scope.devices),
            "lines": sorted(str(dl) for dl in user.scope.lines),
        },
        "disabled": user.disabled,
        "totp_enrolled": user.totp_enrolled,
        "failed_logins": user.failed_logins,
        "locked_until": user.locked_until,
        "created_at": user.created_at,
        "updated_at": user.updated_at,
    }


def cmd_list(args: argparse.Namespace) -> int:
    def body(accounts: Accounts, gate: Gate) -> int:
        del gate  # manage_users was authorized and logged before the list is read
        users = accounts.list_users()
        if args.json:
            write_json(sys.stdout, {"users": [_user_json(u) for u in users]})
            return 0
        if not users:
            print("no users; the first one: linetap-office user add NAME --role admin --totp")
            return 0
        rows = [
            (
                u.name,
                ", ".join(u.roles),
                u.scope.describe(),
                "yes" if u.totp_enrolled else "no",
                "disabled"
                if u.disabled
                else (f"locked until {u.locked_until}" if u.locked_until else "enabled"),
                u.failed_logins,
            )
            for u in users
        ]
        print(format_table(("NAME", "ROLES", "SCOPE", "TOTP", "STATE", "FAILED"), rows))
        return 0

    return _run(args, body)


def _actor_gate(
    accounts: Accounts, index: Index, cfg: OfficeConfig, args: argparse.Namespace
) -> Gate:
    """The named account's gate with nothing authorized yet: a token command decides by
    whose tokens it touches (:func:`_may_manage_tokens_of`)."""
    del args
    if not accounts.list_users():
        raise AccountError(f"no accounts yet, so no tokens; {FIRST_MUST_BE_ADMIN}")
    return Gate(index, cfg, cli_actor(cfg, index))


def _may_manage_tokens_of(gate: Gate, owner: str, what: str) -> None:
    """An account manages its own tokens; anyone else's need ``manage_users``
    (authorized and logged: raises AccessDenied)."""
    if gate.actor.principal.name != owner:
        gate.allow(Action.MANAGE_USERS, detail=what)


def cmd_token_create(args: argparse.Namespace) -> int:
    def body(accounts: Accounts, gate: Gate) -> int:
        if gate.actor.principal.name != args.name:
            # Not even an admin: a token acts with its owner's rights (a supervisor's
            # listen and export), and an admin holds no right to any recording.
            raise AccessDenied(
                f"only {args.name} can create tokens for {args.name}: sign in as that "
                "account (an admin may list and revoke others' tokens, not create them)"
            )
        new = TokenStore(accounts).create(args.name, args.label, args.days)
        info = new.info
        gate.admin(
            "api_token_created",
            info.name,
            f"token {info.id}; label {info.label!r}; expires {info.expires_at}",
        )
        print(f"API token for {info.name} (shown only this once; keep it in a secret store):")
        print(new.token)
        print(f"id {info.id}, label {info.label!r}, expires {info.expires_at}")
        return 0

    return _run(args, body, _actor_gate)


def _token_json(info: TokenInfo, state: str) -> dict[str, object]:
    return {
        "id": info.id,
        "user": info.name,
        "label": info.label,
        "created_at": info.created_at,
        "expires_at": info.expires_at,
        "last_used_at": info.last_used_at,
        "revoked_at": info.revoked_at,
        "state": state,
    }


def cmd_token_list(args: argparse.Namespace) -> int:
    def body(accounts: Accounts, gate: Gate) -> int:
        owner: str | None = args.name
        if owner is None and not gate.may(Action.MANAGE_USERS):
            owner = gate.actor.principal.name  # without NAME: one's own tokens
        if owner is None:
            gate.allow(Action.MANAGE_USERS, detail="user token list")
        else:
            _may_manage_tokens_of(gate, owner, f"user token list {owner}")
        store = TokenStore(accounts)
        now = store.now()
        tokens = [(t, t.state(now)) for t in store.tokens_of(owner)]
        if args.json:
            write_json(sys.stdout, {"tokens": [_token_json(t, state) for t, state in tokens]})
            return 0
        if not tokens:
            print("no API tokens; make one with: linetap-office user token create NAME --label L")
            return 0
        rows = [
            (t.id, t.name, t.label, t.created_at[:10], t.expires_at[:10], t.last_used_at, state)
            for t, state in tokens
        ]
        headers = ("ID", "USER", "LABEL", "CREATED", "EXPIRES", "LAST USED", "STATE")
        print(format_table(headers, rows))
        return 0

    return _run(args, body, _actor_gate)


def cmd_token_revoke(args: argparse.Namespace) -> int:
    def body(accounts: Accounts, gate: Gate) -> int:
        store = TokenStore(accounts)
        info = store.find(args.token)
        _may_manage_tokens_of(gate, info.name, f"user token revoke {info.id}")
        store.revoke(info)
        gate.admin("api_token_revoked", info.name, f"token {info.id}; label {info.label!r}")
        print(f"API token {info.id} of {info.name} ({info.label}) revoked")
        return 0

    return _run(args, body, _actor_gate)


def _token_commands(
    users: argparse._SubParsersAction[argparse.ArgumentParser],
    common: list[argparse.ArgumentParser],
) -> None:
    token = users.add_parser("token", help="personal API tokens for scripts: create, list, revoke")
    tokens = token.add_subparsers(dest="token_command", required=True)
    p = tokens.add_parser("create", parents=common, help="a new token (printed once)")
    p.add_argument("name", help="the account the token acts as")
    p.add_argument("--label", required=True, help='what it is for, e.g. "nightly export"')
    p.add_argument(
        "--days",
        type=int,
        default=DEFAULT_DAYS,
        help=f"valid for this many days (default {DEFAULT_DAYS}, at most {MAX_DAYS})",
    )
    p.set_defaults(func=cmd_token_create)
    p = tokens.add_parser("list", parents=common, help="tokens (no secret): state, last use")
    p.add_argument("name", nargs="?", help="this account's (default: yours; an admin's: all)")
    p.add_argument("--json", action="store_true", help="one JSON document")
    p.set_defaults(func=cmd_token_list)
    p = tokens.add_parser("revoke", parents=common, help="a token stops working at once")
    p.add_argument("token", metavar="ID", help="its id as `token list` shows it (or a prefix)")
    p.set_defaults(func=cmd_token_revoke)


def _scope_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--site", action="append", metavar="SITE", help="a site of [sites] (repeatable)")
    p.add_argument("--device", action="append", metavar="DEVICE", help="a device id (repeatable)")
    p.add_argument("--line", action="append", metavar="DEV/LINE", help="one line (repeatable)")
    p.add_argument(
        "--everything", action="store_true", help="every recording (e.g. an office-wide supervisor)"
    )


def add_user_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``user add|passwd|disable|list|role|scope|totp|token`` (one call in headoffice/cli.py)."""
    common = [office_options()]
    roles = [r.value for r in Role]
    user = sub.add_parser("user", help="head-office accounts: add, passwd, disable, list, ...")
    users = user.add_subparsers(dest="user_command", required=True)

    p = users.add_parser("add", parents=common, help="a new account (the first must be admin)")
    p.add_argument("name")
    p.add_argument("--role", action="append", required=True, choices=roles, help="repeatable")
    _scope_options(p)
    p.add_argument(
        "--totp", action="store_true", help="enroll a TOTP secret and print its URI once"
    )
    p.set_defaults(func=cmd_add)

    p = users.add_parser("passwd", parents=common, help="set a new password (ends its sessions)")
    p.add_argument("name")
    p.set_defaults(func=cmd_passwd)

    p = users.add_parser("disable", parents=common, help="no more logins (ends its sessions)")
    p.add_argument("name")
    p.set_defaults(func=cmd_disable)

    p = users.add_parser("list", parents=common, help="accounts, roles, scopes, lock state")
    p.add_argument("--json", action="store_true", help="one JSON document")
    p.set_defaults(func=cmd_list)

    p = users.add_parser("role", parents=common, help="replace an account's roles")
    p.add_argument("name")
    p.add_argument("--set", action="append", required=True, choices=roles, help="repeatable")
    p.set_defaults(func=cmd_role)

    p = users.add_parser("scope", parents=common, help="replace an account's scope")
    p.add_argument("name")
    _scope_options(p)
    p.add_argument("--clear", action="store_true", help="no recordings at all")
    p.set_defaults(func=cmd_scope)

    p = users.add_parser("totp", parents=common, help="enroll a new TOTP secret (prints it once)")
    p.add_argument("name")
    p.set_defaults(func=cmd_totp)

    _token_commands(users, common)
