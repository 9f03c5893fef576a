"""Who may do what to which recording: the one authorization function of the head office.

Pure (no I/O): the CLI, the web and the API all call :func:`authorize` with the acting
:class:`Principal` (from :mod:`headoffice.accounts`), the :class:`Action`, the recording's
:class:`Target` (its device and line; ``None`` for actions on no recording) and the
office's sites (``[sites]`` in office.toml: site name -> device ids).

The table (``scope`` = only recordings inside the principal's :class:`Scope`;
``all`` = every recording, whatever the scope; ``yes`` = an office action, no recording;
``-`` = never)::

    action          admin  supervisor  reviewer  auditor  compliance
    search          -      scope       scope     all      scope
    view_metadata   -      scope       scope     all      scope
    listen          -      scope       scope     -        -
    export          -      scope       -         -        scope
    note            -      scope       scope     -        -
    score           -      scope       scope     -        -
    hold            -      -           -         -        scope
    release         -      -           -         -        scope
    delete          -      -           -         -        scope
    manage_users    yes    -           -         -        -
    manage_forms    yes    -           -         -        -
    read_audit      -      -           -         yes      -
    view_fleet      all    scope       -         all      -
    manage_fleet    all    scope       -         -        -

Decisions behind it:

- **admin** manages users, roles and policies and the QA scorecard forms, and sees no
  recording (not even its metadata) unless another role is granted too: for an admin
  alone, recordings do not exist ("out of scope").
- **auditor** reads the audit ledger and the metadata of every recording (search,
  view_metadata) across the whole office, never audio.
- **compliance** handles data-subject requests: hold, release, delete (erasure), and
  export (access) within its scope, plus search and view_metadata to find the calls.
  It has no ``listen``: a data subject's copy leaves by ``export``, which is a ledger
  entry each time.
- The **anonymised training export** (``linetap-office anonymise``) needs ``export``
  on each recording, no right of its own: stripped of numbers, names, devices and
  times, it still carries the voices, so whoever may make one may take the recordings
  out anyway, and nobody else should (supervisor, compliance).
- **reviewer** is a supervisor without ``export``.
- Roles add up; the scope belongs to the principal and limits every ``scope`` grant of
  every role it holds (``Scope.everything`` lifts the limit, e.g. for a supervisor of the
  whole office). ``all`` grants (the auditor's) ignore the scope.
- A recording the principal may not even see the metadata of is denied with the reason
  :data:`OUT_OF_SCOPE` whatever the action, so nobody learns that it exists (the web
  answers 404). A visible recording with an action not granted is denied with a reason
  naming what is missing (the web answers 403).
- ``search`` with ``target=None`` asks "may this principal search at all"; each hit must
  then pass ``view_metadata`` on its own target. Every other recording action needs a
  target; the office actions (manage_users, manage_forms, read_audit) take none.
- A site named in a scope but missing from ``[sites]`` covers no device (fail closed).
- **Fleet health** (headoffice/fleet/): ``view_fleet`` (device telemetry, alarms, the
  hourly history; no recording) and ``manage_fleet`` (acknowledge an alarm) take a
  device (and line) as their target, never a recording: an admin, who runs the office
  and its appliances, and an auditor see the whole fleet; a supervisor the devices and
  lines of their scope, and acknowledges their alarms (it is their floor whose line went
  quiet). A device-wide target (line ``""``: offline, backlog, ...) is in a scope that
  names the device, its site, or any of its lines. Out of scope is hidden as for a
  recording; ``target=None`` asks "may this principal use the fleet view at all".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum, StrEnum

#: The reason of a denial for a recording the principal may not know exists (web: 404).
OUT_OF_SCOPE = "out of scope"


class Role(StrEnum):
    ADMIN = "admin"
    SUPERVISOR = "supervisor"
    REVIEWER = "reviewer"
    AUDITOR = "auditor"
    COMPLIANCE = "compliance"


class Action(StrEnum):
    SEARCH = "search"
    VIEW_METADATA = "view_metadata"
    LISTEN = "listen"
    EXPORT = "export"
    NOTE = "note"
    SCORE = "score"
    HOLD = "hold"
    RELEASE = "release"
    DELETE = "delete"
    MANAGE_USERS = "manage_users"
    MANAGE_FORMS = "manage_forms"
    READ_AUDIT = "read_audit"
    VIEW_FLEET = "view_fleet"
    MANAGE_FLEET = "manage_fleet"


#: Actions on the office itself, never on a recording (``target`` must be ``None``).
OFFICE_ACTIONS = frozenset({Action.MANAGE_USERS, Action.MANAGE_FORMS, Action.READ_AUDIT})
#: Actions on a device (and line) of the fleet, never on a recording.
FLEET_ACTIONS = frozenset({Action.VIEW_FLEET, Action.MANAGE_FLEET})


class Reach(Enum):
    """How far a role's grant of an action goes."""

    SCOPE = "scope"  # recordings inside the principal's scope
    ALL = "all"  # every recording
    OFFICE = "office"  # an office action (no recording)


_S, _A, _O = Reach.SCOPE, Reach.ALL, Reach.OFFICE

#: The table of the module docstring, written out (a missing action = not granted).
GRANTS: Mapping[Role, Mapping[Action, Reach]] = {
    Role.ADMIN: {
        Action.MANAGE_USERS: _O,
        Action.MANAGE_FORMS: _O,
        Action.VIEW_FLEET: _A,
        Action.MANAGE_FLEET: _A,
    },
    Role.SUPERVISOR: {
        Action.SEARCH: _S,
        Action.VIEW_METADATA: _S,
        Action.LISTEN: _S,
        Action.EXPORT: _S,
        Action.NOTE: _S,
        Action.SCORE: _S,
        Action.VIEW_FLEET: _S,
        Action.MANAGE_FLEET: _S,
    },
    Role.REVIEWER: {
        Action.SEARCH: _S,
        Action.VIEW_METADATA: _S,
        Action.LISTEN: _S,
        Action.NOTE: _S,
        Action.SCORE: _S,
    },
    Role.AUDITOR: {
        Action.READ_AUDIT: _O,
        Action.SEARCH: _A,
        Action.VIEW_METADATA: _A,
        Action.VIEW_FLEET: _A,
    },
    Role.COMPLIANCE: {
        Action.SEARCH: _S,
        Action.VIEW_METADATA: _S,
        Action.EXPORT: _S,
        Action.HOLD: _S,
        Action.RELEASE: _S,
        Action.DELETE: _S,
    },
}


@dataclass(frozen=True, slots=True, order=True)
class DeviceLine:
    """One line of one device (``DEVICE/LINE`` on the command line)."""

    device_id: str
    line: str

    @classmethod
    def parse(cls, text: str) -> DeviceLine:
        device, sep, line = text.strip().partition("/")
        if not sep or not device or not line or "/" in line:
            raise ValueError(f"line {text!r}: write DEVICE/LINE, e.g. shop-1/line2")
        return cls(device, line)

    def __str__(self) -> str:
        return f"{self.device_id}/{self.line}"


@dataclass(frozen=True, slots=True)
class Scope:
    """Which recordings a principal's ``scope`` grants reach: those of the devices of
    ``sites``, of ``devices``, and of single ``lines``; ``everything`` reaches all."""

    sites: frozenset[str] = frozenset()
    devices: frozenset[str] = frozenset()
    lines: frozenset[DeviceLine] = frozenset()
    everything: bool = False

    @classmethod
    def all(cls) -> Scope:
        return cls(everything=True)

    def covers(self, target: Target, sites: Mapping[str, frozenset[str]]) -> bool:
        if self.everything or target.device_id in self.devices:
            return True
        if DeviceLine(target.device_id, target.line) in self.lines:
            return True
        return any(target.device_id in sites.get(site, frozenset()) for site in self.sites)

    def covers_device(self, device_id: str, sites: Mapping[str, frozenset[str]]) -> bool:
        """A device as a whole: named, at a site named, or one of its lines named."""
        return (
            self.everything
            or device_id in self.devices
            or any(dl.device_id == device_id for dl in self.lines)
            or any(device_id in sites.get(site, frozenset()) for site in self.sites)
        )

    def describe(self) -> str:
        if self.everything:
            return "everything"
        parts = [
            f"{what} {', '.join(sorted(str(v) for v in values))}"
            for what, values in (
                ("sites", self.sites),
                ("devices", self.devices),
                ("lines", self.lines),
            )
            if values
        ]
        return "; ".join(parts) or "nothing"


@dataclass(frozen=True, slots=True)
class Principal:
    """Someone acting: an account's name, its roles and its scope."""

    name: str
    roles: frozenset[Role]
    scope: Scope = field(default_factory=Scope)


@dataclass(frozen=True, slots=True)
class Target:
    """The recording acted on, by what scopes are made of: its device and line."""

    device_id: str
    line: str


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str

    @property
    def hidden(self) -> bool:
        """Denied because the principal may not know the recording exists (web: 404)."""
        return not self.allowed and self.reason == OUT_OF_SCOPE

    def __bool__(self) -> bool:
        return self.allowed


def site_map(sites: Mapping[str, Iterable[str]]) -> dict[str, frozenset[str]]:
    """office.toml's ``[sites]`` (name -> device ids) as :func:`authorize` takes it."""
    return {name: frozenset(devices) for name, devices in sites.items()}


def _roles_text(principal: Principal) -> str:
    return ", ".join(sorted(principal.roles)) or "no role"


def _reaches(principal: Principal, action: Action) -> list[tuple[Role, Reach]]:
    return [
        (role, GRANTS[role][action]) for role in sorted(principal.roles) if action in GRANTS[role]
    ]


def _grant_on(
    principal: Principal, action: Action, target: Target, sites: Mapping[str, frozenset[str]]
) -> tuple[Role, Reach] | None:
    for role, reach in _reaches(principal, action):
        if reach is Reach.ALL or (reach is Reach.SCOPE and principal.scope.covers(target, sites)):
            return role, reach
    return None


def authorize(
    principal: Principal,
    action: Action,
    target: Target | None,
    sites: Mapping[str, frozenset[str]],
) -> Decision:
    """May ``principal`` do ``action`` to the recording ``target`` (``None``: an office
    action, or ``search`` in general)? See the module docstring for the table."""
    action = Action(action)
    if action in FLEET_ACTIONS:
        return _authorize_fleet(principal, action, target, sites)
    if action in OFFICE_ACTIONS:
        if target is not None:
            return Decision(False, f"{action} is an office action; ask with target=None")
        if _reaches(principal, action):
            return Decision(True, f"{action} granted to {_roles_text(principal)}")
        return Decision(False, f"not granted: {_roles_text(principal)} may not {action}")
    if target is None:
        if action is not Action.SEARCH:
            return Decision(False, f"{action} needs the recording's device and line (a Target)")
        if _reaches(principal, action):
            return Decision(True, "search granted; check view_metadata on each hit")
        return Decision(False, f"not granted: {_roles_text(principal)} may not search")
    if _grant_on(principal, Action.VIEW_METADATA, target, sites) is None:
        return Decision(False, OUT_OF_SCOPE)
    grant = _grant_on(principal, action, target, sites)
    if grant is not None:
        role, reach = grant
        where = "on every recording" if reach is Reach.ALL else "within scope"
        return Decision(True, f"{action} granted to {role} {where}")
    if _reaches(principal, action):
        return Decision(
            False,
            f"not granted: {action} on {target.device_id}/{target.line} is outside the scope "
            f"of {principal.name} ({principal.scope.describe()})",
        )
    return Decision(False, f"not granted: {_roles_text(principal)} may not {action}")


def _authorize_fleet(
    principal: Principal,
    action: Action,
    target: Target | None,
    sites: Mapping[str, frozenset[str]],
) -> Decision:
    """The fleet actions (see the module docstring): ``target.line`` ``""`` is the
    device as a whole."""
    reaches = _reaches(principal, action)
    seen = _reaches(principal, Action.VIEW_FLEET)
    if target is None:
        if reaches:
            return Decision(True, f"{action} granted to {_roles_text(principal)}")
        return Decision(False, f"not granted: {_roles_text(principal)} may not {action}")

    def covered(reach: Reach) -> bool:
        if reach is Reach.ALL:
            return True
        if not target.line:
            return principal.scope.covers_device(target.device_id, sites)
        return principal.scope.covers(target, sites)

    if seen and not any(covered(reach) for _, reach in seen):
        return Decision(False, OUT_OF_SCOPE)
    for role, reach in reaches:
        if covered(reach):
            return Decision(True, f"{action} granted to {role}")
    return Decision(False, f"not granted: {_roles_text(principal)} may not {action}")
