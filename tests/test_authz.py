"""The authorization table: every role x every action, in and out of scope, through
``authorize`` — the expected answers written out here, not derived from the rules."""

from __future__ import annotations

import pytest

from headoffice.authz import (
    OUT_OF_SCOPE,
    Action,
    DeviceLine,
    Principal,
    Role,
    Scope,
    Target,
    authorize,
    site_map,
)

SITES = site_map({"hq": ["dev-hq-1", "dev-hq-2"], "branch": ["dev-br-1"]})
IN = Target("dev-hq-2", "line1")  # inside a scope of site hq
OUT = Target("dev-br-1", "line1")  # outside it

# Per role, per action: "<in scope><out of scope>", each
#   Y = allowed, N = denied (not granted: 403), H = hidden, denied "out of scope" (404).
# Office actions (manage_users, manage_forms, read_audit) are asked with target=None in both columns.
TABLE = """
action         admin supervisor reviewer auditor compliance
search         HH    YH         YH       YY      YH
view_metadata  HH    YH         YH       YY      YH
listen         HH    YH         YH       NN      NH
export         HH    YH         NH       NN      YH
note           HH    YH         YH       NN      NH
score          HH    YH         YH       NN      NH
hold           HH    NH         NH       NN      YH
release        HH    NH         NH       NN      YH
delete         HH    NH         NH       NN      YH
manage_users   YY    NN         NN       NN      NN
manage_forms   YY    NN         NN       NN      NN
read_audit     NN    NN         NN       YY      NN
view_fleet     YY    YH         NN       YY      NN
manage_fleet   YY    YH         NN       NN      NN
"""


def _cases() -> list[tuple[Role, Action, str, str]]:
    lines = [line.split() for line in TABLE.strip().splitlines()]
    roles = [Role(r) for r in lines[0][1:]]
    out = []
    for action, *cells in lines[1:]:
        for role, cell in zip(roles, cells, strict=True):
            out.append((role, Action(action), "in", cell[0]))
            out.append((role, Action(action), "out", cell[1]))
    return out


CASES = _cases()


def test_the_table_covers_every_role_and_action() -> None:
    assert {(r, a) for r, a, _, _ in CASES} == {(r, a) for r in Role for a in Action}
    assert len(CASES) == len(Role) * len(Action) * 2


@pytest.mark.parametrize(("role", "action", "where", "expected"), CASES)
def test_authorize_table(role: Role, action: Action, where: str, expected: str) -> None:
    principal = Principal("p", frozenset({role}), Scope(sites=frozenset({"hq"})))
    office_action = action in {Action.MANAGE_USERS, Action.MANAGE_FORMS, Action.READ_AUDIT}
    target = None if office_action else IN if where == "in" else OUT
    decision = authorize(principal, action, target, SITES)
    assert decision.allowed is (expected == "Y"), decision
    if expected == "H":
        assert decision.reason == OUT_OF_SCOPE
        assert decision.hidden
    elif expected == "N":
        assert decision.reason.startswith("not granted"), decision
        assert not decision.hidden


@pytest.mark.parametrize(
    ("scope", "target", "allowed"),
    [
        (Scope(devices=frozenset({"dev-br-1"})), Target("dev-br-1", "line3"), True),
        (Scope(devices=frozenset({"dev-br-1"})), Target("dev-hq-1", "line1"), False),
        (
            Scope(lines=frozenset({DeviceLine("dev-br-1", "line2")})),
            Target("dev-br-1", "line2"),
            True,
        ),
        (
            Scope(lines=frozenset({DeviceLine("dev-br-1", "line2")})),
            Target("dev-br-1", "line1"),
            False,
        ),
        (Scope(sites=frozenset({"branch"})), Target("dev-br-1", "line1"), True),
        (Scope(sites=frozenset({"nowhere"})), Target("dev-br-1", "line1"), False),  # fail closed
        (Scope.all(), Target("dev-never-seen", "line9"), True),
        (Scope(), Target("dev-hq-1", "line1"), False),
    ],
)
def test_scope_kinds(scope: Scope, target: Target, allowed: bool) -> None:
    supervisor = Principal("s", frozenset({Role.SUPERVISOR}), scope)
    decision = authorize(supervisor, Action.LISTEN, target, SITES)
    assert decision.allowed is allowed
    assert allowed or decision.reason == OUT_OF_SCOPE


def test_roles_add_up_and_scope_limits_only_scoped_grants() -> None:
    both = Principal("ar", frozenset({Role.AUDITOR, Role.REVIEWER}), Scope(sites=frozenset({"hq"})))
    assert authorize(both, Action.LISTEN, IN, SITES).allowed
    assert authorize(both, Action.READ_AUDIT, None, SITES).allowed
    # out of scope: the auditor role shows the metadata, so the recording is not hidden,
    # but listening there is not granted (403, not 404)
    assert authorize(both, Action.VIEW_METADATA, OUT, SITES).allowed
    listen = authorize(both, Action.LISTEN, OUT, SITES)
    assert not listen.allowed and not listen.hidden
    assert "outside the scope" in listen.reason
    admin_reviewer = Principal("x", frozenset({Role.ADMIN, Role.REVIEWER}), Scope.all())
    assert authorize(admin_reviewer, Action.LISTEN, OUT, SITES).allowed
    assert authorize(admin_reviewer, Action.MANAGE_USERS, None, SITES).allowed


def test_targets_must_fit_the_action() -> None:
    admin = Principal("a", frozenset({Role.ADMIN}), Scope.all())
    wrong = authorize(admin, Action.MANAGE_USERS, IN, SITES)
    assert not wrong.allowed and "target=None" in wrong.reason
    supervisor = Principal("s", frozenset({Role.SUPERVISOR}), Scope.all())
    assert not authorize(supervisor, Action.LISTEN, None, SITES).allowed
    assert authorize(supervisor, Action.SEARCH, None, SITES).allowed
    assert not authorize(admin, Action.SEARCH, None, SITES).allowed
    nobody = Principal("n", frozenset(), Scope.all())
    assert all(not authorize(nobody, a, IN, SITES).allowed for a in Action)


def test_manage_forms_is_an_office_action_of_admins_only() -> None:
    admin = Principal("a", frozenset({Role.ADMIN}), Scope())
    granted = authorize(admin, Action.MANAGE_FORMS, None, SITES)
    assert granted.allowed and granted.reason == "manage_forms granted to admin"
    on_a_recording = authorize(admin, Action.MANAGE_FORMS, IN, SITES)
    assert not on_a_recording.allowed and "target=None" in on_a_recording.reason
    # Scoring calls (supervisor, reviewer) does not make one a form designer.
    for role in (Role.SUPERVISOR, Role.REVIEWER, Role.AUDITOR, Role.COMPLIANCE):
        everywhere = Principal("x", frozenset({role}), Scope.all())
        refused = authorize(everywhere, Action.MANAGE_FORMS, None, SITES)
        assert not refused.allowed and not refused.hidden
        assert refused.reason == f"not granted: {role} may not manage_forms"
    both = Principal("ar", frozenset({Role.ADMIN, Role.REVIEWER}), Scope(sites=frozenset({"hq"})))
    assert authorize(both, Action.MANAGE_FORMS, None, SITES).allowed
    assert authorize(both, Action.SCORE, IN, SITES).allowed


def test_device_line_parse() -> None:
    assert DeviceLine.parse("dev-1/line2") == DeviceLine("dev-1", "line2")
    assert str(DeviceLine("dev-1", "line2")) == "dev-1/line2"
    for bad in ("dev-1", "/line1", "dev-1/", "a/b/c"):
        with pytest.raises(ValueError, match="DEVICE/LINE"):
            DeviceLine.parse(bad)
