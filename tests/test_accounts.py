"""Head-office accounts on SQLite and PostgreSQL: argon2id passwords, lock-out with
back-off, TOTP (required, replay), sessions (idle, absolute, logout), disabled accounts,
the first-admin rule and the ``user`` commands."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyotp
import pytest

from headoffice.accounts import (
    LOGIN_REFUSED,
    AccountError,
    Accounts,
    EventKind,
    LoginError,
    LoginFailure,
    lock_seconds,
)
from headoffice.authz import Role, Scope
from headoffice.cli import main
from headoffice.config import AccountsConfig
from headoffice.index import Index, open_index
from tests.office_accounts import Login, SteppingClock, leaves, use_clock
from tests.test_office_index import index_url, pg_dsn  # noqa: F401 - fixtures

PASSWORD = "correct horse battery"
CHEAP = AccountsConfig(password_time_cost=1, password_memory_kib=1024, password_parallelism=1)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 25, 10, 0, 5, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def index(index_url: str) -> Iterator[Index]:  # noqa: F811 - the imported fixture
    idx = open_index(index_url)
    try:
        yield idx
    finally:
        idx.close()


@pytest.fixture
def accounts(index: Index, clock: Clock) -> Accounts:
    acc = Accounts(index, CHEAP, sites={"hq": ["dev-1"]}, clock=clock)
    acc.add_user("root", PASSWORD, [Role.ADMIN])
    return acc


def _code(secret: str, when: datetime) -> str:
    return pyotp.TOTP(secret).at(when)


def _refused(accounts: Accounts, name: str, password: str, code: str | None = None) -> LoginFailure:
    with pytest.raises(LoginError) as caught:
        accounts.login(name, password, code, "test")
    assert caught.value.reason == LOGIN_REFUSED  # one answer for every refusal
    assert str(caught.value) == LOGIN_REFUSED
    return caught.value.failure


def _stored_hash(index: Index, name: str) -> str:
    with index.transaction(False) as q:
        [(digest,)] = q("SELECT password_hash FROM users WHERE name = ?", (name,))
    return str(digest)


# --------------------------------------------------------------------------- passwords


def test_password_is_argon2id_with_the_configured_parameters(accounts: Accounts, index: Index):
    digest = _stored_hash(index, "root")
    assert digest.startswith("$argon2id$v=19$m=1024,t=1,p=1$")
    assert PASSWORD not in digest


def test_wrong_password_and_unknown_user_are_one_answer(accounts: Accounts, monkeypatch):
    accounts.add_user("rita", PASSWORD, [Role.REVIEWER])
    assert _refused(accounts, "rita", "wrong password!") is LoginFailure.BAD_PASSWORD
    verified: list[str] = []
    real = accounts._verify

    def counting(digest: str, password: str) -> bool:
        verified.append(digest)
        return real(digest, password)

    monkeypatch.setattr(accounts, "_verify", counting)
    assert _refused(accounts, "nobody", PASSWORD) is LoginFailure.UNKNOWN_USER
    # an unknown name still costs one argon2id verify (on a dummy hash): no timing oracle
    assert len(verified) == 1 and verified[0].startswith("$argon2id$")
    assert accounts.login("rita", PASSWORD, None, "test").principal.name == "rita"


def test_hash_is_renewed_when_the_parameters_change(accounts: Accounts, index: Index, clock):
    accounts.add_user("rita", PASSWORD, [Role.REVIEWER])
    stronger = CHEAP.model_copy(update={"password_time_cost": 2})
    Accounts(index, stronger, clock=clock).login("rita", PASSWORD, None, "test")
    assert _stored_hash(index, "rita").startswith("$argon2id$v=19$m=1024,t=2,p=1$")
    Accounts(index, CHEAP, clock=clock).login("rita", PASSWORD, None, "test")  # still valid


def test_short_password_refused_with_the_fix(accounts: Accounts):
    with pytest.raises(AccountError, match="at least 12 characters"):
        accounts.add_user("rita", "short", [Role.REVIEWER])


# --------------------------------------------------------------------------- lock-out


def test_lock_seconds_back_off() -> None:
    expected = {1: 0, 4: 0, 5: 60, 6: 120, 7: 240, 10: 1920, 11: 3600, 12: 3600, 500: 3600}
    assert {n: lock_seconds(n, CHEAP) for n in expected} == expected


def test_lockout_and_back_off(accounts: Accounts, clock: Clock):
    accounts.add_user("rita", PASSWORD, [Role.REVIEWER])
    for _ in range(4):
        assert _refused(accounts, "rita", "wrong password!") is LoginFailure.BAD_PASSWORD
    accounts.login("rita", PASSWORD, None, "t")  # success clears the count
    for _ in range(5):
        assert _refused(accounts, "rita", "wrong password!") is LoginFailure.BAD_PASSWORD
    # locked 60 s: even the right password gets the same answer, and attempts don't count
    clock.advance(59)
    assert _refused(accounts, "rita", PASSWORD) is LoginFailure.LOCKED
    assert _refused(accounts, "rita", "wrong password!") is LoginFailure.LOCKED
    [user] = [u for u in accounts.list_users() if u.name == "rita"]
    assert user.failed_logins == 5
    clock.advance(2)
    # the sixth failure in a row locks for twice as long
    assert _refused(accounts, "rita", "wrong password!") is LoginFailure.BAD_PASSWORD
    clock.advance(119)
    assert _refused(accounts, "rita", PASSWORD) is LoginFailure.LOCKED
    clock.advance(2)
    assert accounts.login("rita", PASSWORD, None, "t").principal.name == "rita"
    [user] = [u for u in accounts.list_users() if u.name == "rita"]
    assert (user.failed_logins, user.locked_until) == (0, None)


def test_new_password_clears_the_lock(accounts: Accounts):
    accounts.add_user("rita", PASSWORD, [Role.REVIEWER])
    for _ in range(5):
        _refused(accounts, "rita", "wrong password!")
    accounts.set_password("rita", "another long passphrase")
    accounts.login("rita", "another long passphrase", None, "t")


# --------------------------------------------------------------------------- TOTP


def test_totp_required_for_supervisor(accounts: Accounts, clock: Clock):
    accounts.add_user("sam", PASSWORD, [Role.SUPERVISOR], Scope(sites=frozenset({"hq"})))
    assert _refused(accounts, "sam", PASSWORD) is LoginFailure.TOTP_NOT_ENROLLED
    enrollment = accounts.enroll_totp("sam")
    assert enrollment.uri.startswith("otpauth://totp/linetap:sam?secret=")
    assert enrollment.secret not in repr(enrollment)
    assert _refused(accounts, "sam", PASSWORD) is LoginFailure.CODE_MISSING
    wrong = "000000" if _code(enrollment.secret, clock.now) != "000000" else "111111"
    assert _refused(accounts, "sam", PASSWORD, wrong) is LoginFailure.BAD_CODE
    code = _code(enrollment.secret, clock.now)
    session = accounts.login("sam", PASSWORD, code, "t")
    assert session.second_factor == "totp"
    assert session.principal.roles == frozenset({Role.SUPERVISOR})
    # the same code again (same 30 s step): refused
    assert _refused(accounts, "sam", PASSWORD, code) is LoginFailure.REPLAYED_CODE
    # an older step, still inside the ±1 window: refused
    older = _code(enrollment.secret, clock.now - timedelta(seconds=30))
    assert older != code
    assert _refused(accounts, "sam", PASSWORD, older) is LoginFailure.REPLAYED_CODE
    # the next step's code works
    clock.advance(30)
    accounts.login("sam", PASSWORD, _code(enrollment.secret, clock.now), "t")
    # a code from two steps ago is outside the window
    stale = _code(enrollment.secret, clock.now - timedelta(seconds=90))
    assert _refused(accounts, "sam", PASSWORD, stale) is LoginFailure.BAD_CODE


def test_totp_optional_for_reviewer_but_checked_when_enrolled(accounts: Accounts, clock):
    accounts.add_user("rita", PASSWORD, [Role.REVIEWER])
    assert accounts.login("rita", PASSWORD, None, "t").second_factor == "none"
    secret = accounts.enroll_totp("rita").secret
    assert _refused(accounts, "rita", PASSWORD) is LoginFailure.CODE_MISSING
    assert accounts.login("rita", PASSWORD, _code(secret, clock.now), "t").second_factor == "totp"


def test_wrong_codes_count_towards_the_lock(accounts: Accounts, clock: Clock):
    accounts.add_user("sam", PASSWORD, [Role.SUPERVISOR])
    secret = accounts.enroll_totp("sam").secret
    for _ in range(5):
        wrong = "123456" if _code(secret, clock.now) != "123456" else "654321"
        assert _refused(accounts, "sam", PASSWORD, wrong) is LoginFailure.BAD_CODE
    assert _refused(accounts, "sam", PASSWORD, _code(secret, clock.now)) is LoginFailure.LOCKED


# --------------------------------------------------------------------------- sessions


def test_session_token_stored_only_as_its_hash(accounts: Accounts, index: Index):
    accounts.add_user("rita", PASSWORD, [Role.REVIEWER])
    session = accounts.login("rita", PASSWORD, None, "10.0.0.7")
    assert len(session.token) >= 43 and session.token not in repr(session)
    with index.transaction(False) as q:
        rows = q("SELECT token_sha256, client FROM sessions", ())
    assert [r[1] for r in rows] == ["10.0.0.7"]
    assert session.token not in rows[0][0] and len(rows[0][0]) == 64
    assert accounts.session("not-a-token") is None


def test_session_idle_expiry(accounts: Accounts, clock: Clock):
    accounts.add_user("rita", PASSWORD, [Role.REVIEWER], Scope(devices=frozenset({"dev-1"})))
    token = accounts.login("rita", PASSWORD, None, "t").token
    for _ in range(3):  # each use refreshes last_seen
        clock.advance(29 * 60)
        principal = accounts.session(token)
        assert principal is not None and principal.scope.devices == frozenset({"dev-1"})
    clock.advance(30 * 60)
    assert accounts.session(token) is None
    clock.advance(-30 * 60)
    assert accounts.session(token) is None  # deleted, not just refused


def test_session_absolute_expiry(accounts: Accounts, clock: Clock):
    accounts.add_user("rita", PASSWORD, [Role.REVIEWER])
    token = accounts.login("rita", PASSWORD, None, "t").token
    for _ in range(35):  # 35 x 20 min = 11 h 40 min, always used in time
        clock.advance(20 * 60)
        assert accounts.session(token) is not None
    clock.advance(20 * 60)  # 12 h after login
    assert accounts.session(token) is None


def test_logout(accounts: Accounts):
    accounts.add_user("rita", PASSWORD, [Role.REVIEWER])
    token = accounts.login("rita", PASSWORD, None, "t").token
    other = accounts.login("rita", PASSWORD, None, "t").token
    assert accounts.logout(token) is True
    assert accounts.session(token) is None
    assert accounts.logout(token) is False
    assert accounts.session(other) is not None


def test_promotion_ends_a_session_without_the_needed_code(accounts: Accounts):
    accounts.add_user("rita", PASSWORD, [Role.REVIEWER])
    token = accounts.login("rita", PASSWORD, None, "t").token
    accounts.set_roles("rita", [Role.SUPERVISOR])
    assert accounts.session(token) is None


# --------------------------------------------------------------------------- accounts


def test_disabled_user_refused_and_sessions_ended(accounts: Accounts):
    accounts.add_user("rita", PASSWORD, [Role.REVIEWER])
    token = accounts.login("rita", PASSWORD, None, "t").token
    event = accounts.disable("rita")
    assert (event.kind, event.user) == (EventKind.USER_DISABLED, "rita")
    assert accounts.session(token) is None
    assert _refused(accounts, "rita", PASSWORD) is LoginFailure.DISABLED
    with pytest.raises(AccountError, match="disabled"):
        accounts.principal("rita")


def test_first_user_must_be_admin(index: Index, clock: Clock):
    accounts = Accounts(index, CHEAP, clock=clock)
    with pytest.raises(AccountError, match="first account must have role admin"):
        accounts.add_user("rita", PASSWORD, [Role.REVIEWER])
    assert accounts.list_users() == []
    event = accounts.add_user("root", PASSWORD, [Role.ADMIN])
    assert event.kind is EventKind.USER_ADDED and event.roles == (Role.ADMIN,)
    assert accounts.add_user("rita", PASSWORD, [Role.REVIEWER]).user == "rita"


def test_last_admin_is_kept(accounts: Accounts):
    with pytest.raises(AccountError, match="last enabled admin"):
        accounts.disable("root")
    with pytest.raises(AccountError, match="last enabled admin"):
        accounts.set_roles("root", [Role.AUDITOR])
    accounts.add_user("root2", PASSWORD, [Role.ADMIN])
    accounts.disable("root")


def test_roles_scope_and_events(accounts: Accounts):
    accounts.add_user("sam", PASSWORD, [Role.SUPERVISOR])
    event = accounts.set_scope("sam", Scope(sites=frozenset({"hq"})))
    assert event.kind is EventKind.SCOPE_SET
    assert event.body() == {"kind": "scope_set", "user": "sam", "at": event.at, "scope": "sites hq"}
    assert accounts.principal("sam").scope == Scope(sites=frozenset({"hq"}))
    accounts.set_roles("sam", ["reviewer", "auditor"])
    assert accounts.principal("sam").roles == frozenset({Role.REVIEWER, Role.AUDITOR})
    with pytest.raises(AccountError, match=r"unknown site branch .*\[sites\]"):
        accounts.set_scope("sam", Scope(sites=frozenset({"branch"})))
    with pytest.raises(AccountError, match="roles are admin"):
        accounts.set_roles("sam", ["boss"])
    with pytest.raises(AccountError, match="no user 'nobody'"):
        accounts.set_roles("nobody", [Role.REVIEWER])
    with pytest.raises(AccountError, match="exists already"):
        accounts.add_user("sam", PASSWORD, [Role.REVIEWER])


# --------------------------------------------------------------------------- CLI


def test_cli_round_trip(
    tmp_path: Path,
    index_url: str,  # noqa: F811 - the imported fixture
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
):
    root = tmp_path / "office"
    root.mkdir()
    config = tmp_path / "office.toml"
    config.write_text(
        f'root = "{root}"\nindex = "{index_url}"\n[sites]\nhq = ["dev-1", "dev-2"]\n'
        "[accounts]\npassword_time_cost = 1\npassword_memory_kib = 1024\n"
        "password_parallelism = 1\n"
    )
    where = ["--config", str(config)]
    monkeypatch.setenv("LINETAP_OFFICE_NEW_PASSWORD", PASSWORD)
    assert main(["user", "add", "sam", "--role", "supervisor", *where]) == 1
    assert "first account must have role admin" in capsys.readouterr().err
    assert main(["user", "add", "root", "--role", "admin", "--totp", *where]) == 0
    out = capsys.readouterr().out
    assert "otpauth://totp/linetap:root?secret=" in out
    # From now on the user commands act as root (admin: a code per login, a step apart).
    secret = out.split("secret: ", 1)[1].split()[0]
    as_admin = Login("root", PASSWORD, secret, use_clock(monkeypatch, SteppingClock()))

    def as_root(argv: list[str]) -> int:
        as_admin.apply(monkeypatch)
        return main(argv)

    args = ["user", "add", "sam", "--role", "supervisor", "--site", "hq", "--line", "dev-9/line2"]
    assert as_root([*args, *where]) == 0
    assert "user totp sam" in capsys.readouterr().out  # told how to enroll the needed code
    assert as_root(["user", "role", "sam", "--set", "reviewer", "--set", "auditor", *where]) == 0
    assert as_root(["user", "scope", "sam", "--device", "dev-3", *where]) == 0
    monkeypatch.setenv("LINETAP_OFFICE_NEW_PASSWORD", "a new long passphrase")
    assert as_root(["user", "passwd", "sam", *where]) == 0
    capsys.readouterr()
    assert as_root(["user", "list", "--json", *where]) == 0
    users = {u["name"]: u for u in json.loads(capsys.readouterr().out)["users"]}
    assert users["root"]["roles"] == ["admin"] and users["root"]["totp_enrolled"] is True
    assert users["sam"]["roles"] == ["auditor", "reviewer"]
    assert users["sam"]["scope"]["devices"] == ["dev-3"]
    assert as_root(["user", "disable", "sam", *where]) == 0
    assert as_root(["user", "list", *where]) == 0
    table = capsys.readouterr().out
    assert "sam" in table and "disabled" in table
    assert as_root(["user", "disable", "root", *where]) == 1
    assert "last enabled admin" in capsys.readouterr().err
    assert as_root(["user", "scope", "root", "--site", "nowhere", *where]) == 1
    assert "add it under [sites]" in capsys.readouterr().err
    # the password set through the CLI works for a login (sam is disabled: root instead)
    index = open_index(index_url)
    try:
        accounts = Accounts(index, CHEAP)
        assert _refused(accounts, "sam", "a new long passphrase") is LoginFailure.DISABLED
        assert _refused(accounts, "root", PASSWORD) is LoginFailure.CODE_MISSING  # enrolled
        admin = [(leaf["user"], leaf["action"], leaf["subject"]) for leaf in leaves(index, "admin")]
        assert admin[:3] == [
            ("bootstrap", "user_added", "root"),
            ("bootstrap", "totp_enrolled", "root"),
            ("root", "user_added", "sam"),
        ]
        assert ("root", "user_disabled", "sam") in admin
        assert all("secret" not in leaf["detail"] for leaf in leaves(index, "admin"))
        access = [leaf for leaf in leaves(index, "access") if leaf["action"] == "manage_users"]
        assert access and all(leaf["user"] == "root" for leaf in access)
    finally:
        index.close()
