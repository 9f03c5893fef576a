"""What people see of the fleet, through the gate: the overview (every device in the
viewer's reach with its state, lines and open alarms), one device's history, and the
acknowledgement of an alarm. The command line (:mod:`headoffice.cli_fleet`) and the web
(:mod:`headoffice.web.routes_fleet`) both call these.

Rights (:mod:`headoffice.authz`): ``view_fleet`` for the overview (one ledger leaf per
view, appended before anything is read; each device and alarm then shown only where the
viewer's scope reaches) and for a device's history (a leaf naming the device; a device
out of scope is hidden as a recording would be); ``manage_fleet`` on the alarm's device
and line to acknowledge it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from headoffice.access import AccessDenied, Gate
from headoffice.authz import Action, Target, authorize
from headoffice.config import OfficeConfig
from headoffice.fleet.alarms import AlarmError, Enqueue, FleetAlarms, Transition
from headoffice.fleet.rules import human_age
from headoffice.fleet.state import (
    AlarmRow,
    DeviceHour,
    DeviceRow,
    FleetStore,
    LineHour,
    hour_of,
    parse_iso,
)
from headoffice.index import Index

__all__ = [
    "DeviceHistory",
    "DeviceSummary",
    "FleetGate",
    "LineSummary",
    "Overview",
    "acknowledge",
    "device_history",
    "human_age",
    "human_bytes",
    "overview",
    "short_time",
]

MAX_HISTORY_HOURS = 24 * 31
LINE_FLAGS = ("silent_line", "hum", "clipping", "no_calls")


class FleetGate(Gate):
    """The gate, asked about a device (and line) of the fleet instead of a recording."""

    @classmethod
    def of(cls, gate: Gate, index: Index, cfg: OfficeConfig) -> FleetGate:
        return cls(index, cfg, gate.actor)

    def may_device(self, action: Action, device_id: str, line: str | None = None) -> bool:
        target = Target(device_id, line or "")
        return authorize(self.actor.principal, action, target, self.sites).allowed

    def allow_device(
        self, action: Action, device_id: str, line: str | None = None, *, detail: str = ""
    ) -> None:
        """Authorize and log ``action`` on a device (line): the same leaf and refusal as
        :meth:`Gate.allow`, the device named in the detail."""
        decision = authorize(
            self.actor.principal, action, Target(device_id, line or ""), self.sites
        )
        where = f"{device_id}/{line}" if line else device_id
        note = f"{detail} {where}".strip()
        if not decision.allowed:
            note = f"refused: {decision.reason}; {note}"
        self._append(action, None, note)
        if not decision.allowed:
            raise AccessDenied(
                f"{self.actor.principal.name} may not {action.value}: {decision.reason}",
                hidden=decision.hidden,
            )


@dataclass(frozen=True, slots=True)
class LineSummary:
    name: str
    state: str | None  # idle, recording, ... (telemetry)
    led: str | None
    last_call: str | None  # the newest call's start (device clock, UTC)
    flags: tuple[str, ...]  # open line alarms: silent_line, hum, clipping, no_calls


@dataclass(frozen=True, slots=True)
class DeviceSummary:
    device_id: str
    heard: bool  # any telemetry at all
    online: bool
    since: datetime | None
    last_seen: datetime | None
    backlog: int | None
    oldest_unacked_s: float | None
    disk_free_bytes: int | None
    clock_synced: bool | None
    head_seq: int | None
    office_seq: int
    lines: tuple[LineSummary, ...]
    alarms: tuple[AlarmRow, ...]

    @property
    def ahead(self) -> int | None:
        return None if self.head_seq is None else max(0, self.head_seq - self.office_seq)

    @property
    def state(self) -> str:
        """``online``, ``offline`` or ``unknown`` (never heard)."""
        return "unknown" if not self.heard else "online" if self.online else "offline"


@dataclass(frozen=True, slots=True)
class Overview:
    devices: tuple[DeviceSummary, ...]
    alarms: tuple[AlarmRow, ...]  # every open alarm in reach, newest first

    @property
    def any_alarm(self) -> bool:
        return bool(self.alarms)


@dataclass(frozen=True, slots=True)
class DeviceHistory:
    device: DeviceSummary
    hours: tuple[DeviceHour, ...]  # one per hour of the period, oldest first (zeros filled)
    line_hours: tuple[LineHour, ...]
    alarms: tuple[AlarmRow, ...]  # every alarm of the device (open and cleared), newest first
    start: datetime
    end: datetime


def _summaries(index: Index, gate: FleetGate, only: str | None = None) -> list[DeviceSummary]:
    store = FleetStore(index)
    rows = {d.device_id: d for d in store.devices() if only in (None, d.device_id)}
    lines = store.lines(only)
    with index.transaction(False) as q:
        seqs = {str(r[0]): int(r[1]) for r in q("SELECT device_id, last_seq FROM devices", ())}
    names = [
        d
        for d in sorted({*rows, *(d for d in seqs if only in (None, d))})
        if gate.may_device(Action.VIEW_FLEET, d)
    ]
    # Each line (from telemetry and from recordings) asked for its newest call along the
    # (device, line, started) index: no scan of every recording.
    pairs = {(ln.device_id, ln.line) for ln in lines} | {
        (device, line) for device in names for line in store.recorded_lines(device)
    }
    with index.transaction(False) as q:
        last_calls: dict[tuple[str, str], str | None] = {}
        for device, line in sorted(pairs):
            [(last,)] = q(
                "SELECT MAX(started_utc) FROM recordings WHERE device_id = ? AND line = ?",
                (device, line),
            )
            last_calls[(device, line)] = None if last is None else str(last)
    open_alarms = store.alarms(device_id=only)
    out = []
    for device in names:
        alarms = tuple(
            a for a in open_alarms
            if a.device_id == device and gate.may_device(Action.VIEW_FLEET, device, a.line)
        )  # fmt: skip
        line_names = sorted(
            {ln.line for ln in lines if ln.device_id == device}
            | {line for (d, line) in last_calls if d == device}
        )
        summaries = tuple(
            LineSummary(
                name,
                next((ln.state for ln in lines if (ln.device_id, ln.line) == (device, name)), None),
                next((ln.led for ln in lines if (ln.device_id, ln.line) == (device, name)), None),
                last_calls.get((device, name)),
                tuple(a.kind for a in alarms if a.line == name and a.kind in LINE_FLAGS),
            )
            for name in line_names
            if gate.may_device(Action.VIEW_FLEET, device, name)
        )
        out.append(_summary(device, rows.get(device), seqs.get(device, 0), summaries, alarms))
    return out


def _summary(
    device: str,
    row: DeviceRow | None,
    office_seq: int,
    lines: tuple[LineSummary, ...],
    alarms: tuple[AlarmRow, ...],
) -> DeviceSummary:
    status = row.status if row is not None else None
    outbox = status.outbox if status is not None else None
    clock = status.clock_sync if status is not None else None
    return DeviceSummary(
        device_id=device,
        heard=row is not None,
        online=row.online if row is not None else False,
        since=row.state_since if row is not None else None,
        last_seen=row.last_seen_at if row is not None else None,
        backlog=outbox.unacked_count if outbox is not None else None,
        oldest_unacked_s=outbox.oldest_unacked_age_s if outbox is not None else None,
        disk_free_bytes=status.disk_free_bytes if status is not None else None,
        clock_synced=clock.synchronized if clock is not None else None,
        head_seq=row.head.seq if row is not None and row.head is not None else None,
        office_seq=office_seq,
        lines=lines,
        alarms=alarms,
    )


def overview(index: Index, gate: FleetGate, *, detail: str = "fleet overview") -> Overview:
    """Every device and open alarm in ``gate``'s reach (one leaf: ``view_fleet``)."""
    gate.allow(Action.VIEW_FLEET, detail=detail)
    devices = _summaries(index, gate)
    alarms = sorted((a for d in devices for a in d.alarms), key=lambda a: a.id, reverse=True)
    return Overview(tuple(devices), tuple(alarms))


def device_history(
    index: Index, gate: FleetGate, device_id: str, hours: int, now: datetime, *, detail: str
) -> DeviceHistory:
    """One device's state, its last ``hours`` hourly rollups and its alarms (a leaf
    naming the device; :class:`AccessDenied` ``hidden`` when out of scope or unknown)."""
    hours = max(1, min(MAX_HISTORY_HOURS, hours))
    gate.allow_device(Action.VIEW_FLEET, device_id, detail=detail)
    found = _summaries(index, gate, device_id)
    if not found:
        raise AccessDenied(f"no device {device_id!r} in the fleet", hidden=True)
    end = parse_iso(hour_of(now)) or now
    start = end - timedelta(hours=hours - 1)
    store = FleetStore(index)
    rolled = {h.hour: h for h in store.device_hours(device_id, start)}
    filled = []
    for i in range(hours):
        stamp = hour_of(start + timedelta(hours=i))
        filled.append(rolled.get(stamp) or DeviceHour(stamp, 0, 0, None, None, None))
    alarms = tuple(
        a
        for a in store.alarms(device_id=device_id, states=("raised", "acknowledged", "cleared"))
        if gate.may_device(Action.VIEW_FLEET, device_id, a.line)
    )
    line_hours = tuple(
        h for h in store.line_hours(device_id, start)
        if gate.may_device(Action.VIEW_FLEET, device_id, h.line)
    )  # fmt: skip
    return DeviceHistory(found[0], tuple(filled), line_hours, alarms, start, end)


def acknowledge(
    index: Index,
    cfg: OfficeConfig,
    gate: FleetGate,
    alarm_id: int,
    *,
    note: str,
    now: datetime,
    enqueue: Enqueue | None = None,
    channel: str = "cli",
) -> Transition:
    """Acknowledge alarm ``alarm_id`` as ``gate``'s account (``manage_fleet`` on its
    device and line, a leaf either way); :class:`AlarmError` or :class:`AccessDenied`."""
    alarm = FleetStore(index).alarm(alarm_id)
    if alarm is None or alarm.state == "pending":
        gate.allow(Action.MANAGE_FLEET, detail=f"{channel}: acknowledge of no alarm {alarm_id}")
        raise AlarmError(f"there is no alarm {alarm_id}")
    gate.allow_device(
        Action.MANAGE_FLEET,
        alarm.device_id,
        alarm.line,
        detail=f"{channel}: acknowledge alarm {alarm_id} ({alarm.kind}) of",
    )
    return FleetAlarms(index, cfg.fleet, enqueue).ack(
        alarm_id, gate.actor.principal.name, note, now
    )


def human_bytes(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def short_time(when: datetime | str | None) -> str:
    """``YYYY-MM-DD HH:MM`` UTC, or ``-``."""
    at = parse_iso(when) if isinstance(when, str) or when is None else when
    return at.strftime("%Y-%m-%d %H:%M") if at is not None else "-"
