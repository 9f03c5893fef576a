"""``linetap-office fleet``: fleet health on the command line.

    linetap-office fleet [--json]                       every device, its lines, open alarms
    linetap-office fleet ack ALARM_ID --note "..."      acknowledge an alarm
    linetap-office fleet history DEVICE [--hours 48]    one device's hourly history

Each acts as a named account (:func:`headoffice.cli_query.run_as_account`) and goes
through the gate (:mod:`headoffice.fleet.view`: ``view_fleet``, ``manage_fleet`` to
acknowledge), a ledger leaf before anything is shown. ``fleet`` (and ``history``) exits
1 when an alarm in the account's reach is open, so a monitoring script can run it.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from headoffice.access import AccessDenied, Gate
from headoffice.cli_query import office_config, office_options, run_as_account
from headoffice.config import OfficeLocation
from headoffice.fleet.alarms import AlarmError
from headoffice.fleet.state import AlarmRow
from headoffice.fleet.view import (
    DeviceHistory,
    DeviceSummary,
    FleetGate,
    Overview,
    acknowledge,
    device_history,
    human_age,
    human_bytes,
    overview,
    short_time,
)
from headoffice.index import Index
from headoffice.notify.outbox import Outbox
from headoffice.printing import fail, format_table, terminal_safe, write_json

__all__ = ["add_fleet_commands", "run_fleet"]

ALARMED = 1


def _now() -> datetime:
    return datetime.now(UTC)


def _alarm_json(a: AlarmRow) -> dict[str, Any]:
    return {
        "id": a.id,
        "device_id": a.device_id,
        "line": a.line,
        "kind": a.kind,
        "state": a.state,
        "first_raised_at": a.first_raised_at,
        "last_seen_at": a.last_seen_at,
        "cleared_at": a.cleared_at,
        "count": a.count,
        "detail": a.detail,
        "acked_by": a.acked_by,
        "acked_at": a.acked_at,
        "ack_note": a.ack_note,
    }


def _device_json(d: DeviceSummary) -> dict[str, Any]:
    return {
        "device_id": d.device_id,
        "state": d.state,
        "since": d.since.isoformat() if d.since else None,
        "last_seen": d.last_seen.isoformat() if d.last_seen else None,
        "backlog": d.backlog,
        "oldest_unacked_s": d.oldest_unacked_s,
        "disk_free_bytes": d.disk_free_bytes,
        "clock_synced": d.clock_synced,
        "head_seq": d.head_seq,
        "office_seq": d.office_seq,
        "ahead": d.ahead,
        "lines": [
            {"name": ln.name, "state": ln.state, "last_call": ln.last_call, "flags": list(ln.flags)}
            for ln in d.lines
        ],
        "open_alarms": [a.id for a in d.alarms],
    }


def _state_text(d: DeviceSummary) -> str:
    return f"{d.state} since {short_time(d.since)}" if d.heard else "no telemetry"


def _lines_text(d: DeviceSummary) -> str:
    parts = []
    for ln in d.lines:
        flags = f" [{','.join(ln.flags)}]" if ln.flags else ""
        parts.append(f"{ln.name}: {short_time(ln.last_call)}{flags}")
    return "; ".join(parts) or "-"


def _clock(d: DeviceSummary) -> str:
    return "?" if d.clock_synced is None else "synced" if d.clock_synced else "UNSYNCED"


def _head(d: DeviceSummary) -> str:
    if d.head_seq is None:
        return f"?/{d.office_seq}"
    return f"{d.head_seq}/{d.office_seq}" + (f" (+{d.ahead})" if d.ahead else "")


def print_alarms(out: TextIO, alarms: tuple[AlarmRow, ...] | list[AlarmRow]) -> None:
    rows = [
        [a.id, a.where, a.kind, a.state, short_time(a.first_raised_at), a.count, a.detail[:100]]
        for a in alarms
    ]
    out.write(format_table(["ID", "WHERE", "KIND", "STATE", "RAISED", "N", "DETAIL"], rows) + "\n")


def print_overview(out: TextIO, view: Overview) -> None:
    rows = [
        [
            d.device_id,
            _state_text(d),
            "?" if d.backlog is None else str(d.backlog),
            human_age(d.oldest_unacked_s),
            human_bytes(d.disk_free_bytes),
            _clock(d),
            _head(d),
            _lines_text(d),
            len(d.alarms),
        ]
        for d in view.devices
    ]
    headers = ["DEVICE", "STATE", "BACKLOG", "OLDEST", "DISK FREE", "CLOCK", "HEAD/OFFICE"]
    out.write(format_table([*headers, "LINES (last call)", "ALARMS"], rows) + "\n")
    if view.alarms:
        out.write(f"\n{len(view.alarms)} open alarm(s):\n")
        print_alarms(out, view.alarms)
    else:
        out.write("\nno open alarm\n")


def print_history(out: TextIO, h: DeviceHistory) -> None:
    d = h.device
    out.write(f"{terminal_safe(d.device_id)}: {_state_text(d)}; head/office {_head(d)}\n\n")
    rows = [
        [
            short_time(x.hour),
            x.messages,
            round(x.online_s / 60),
            "" if x.max_backlog is None else str(x.max_backlog),
            human_age(x.max_oldest_unacked_s),
            human_bytes(x.min_disk_free_bytes) if x.min_disk_free_bytes is not None else "",
        ]
        for x in h.hours
    ]
    headers = ["HOUR (UTC)", "MESSAGES", "ONLINE MIN", "MAX BACKLOG", "MAX OLDEST", "MIN FREE"]
    out.write(format_table(headers, rows) + "\n")
    if h.line_hours:
        out.write("\ncalls per line and hour:\n")
        lrows = [
            [x.line, short_time(x.hour), x.calls, x.silent_calls, x.hum_calls, x.clipped_calls]
            for x in h.line_hours
        ]
        out.write(
            format_table(["LINE", "HOUR (UTC)", "CALLS", "SILENT", "HUM", "CLIPPED"], lrows) + "\n"
        )
    out.write(f"\nalarms ({len(h.alarms)}):\n")
    print_alarms(out, h.alarms)


def run_fleet(args: argparse.Namespace, out: TextIO | None = None) -> int:
    stdout = out or sys.stdout
    if args.what is None and args.arg is not None:
        return fail(sys.stderr, f"unknown fleet command {args.arg!r}: use ack or history")
    if args.what == "ack" and (args.arg is None or not args.arg.isdigit()):
        return fail(sys.stderr, 'write: linetap-office fleet ack ALARM_ID --note "..."')
    if args.what == "history" and args.arg is None:
        return fail(sys.stderr, "write: linetap-office fleet history DEVICE [--hours 48]")

    def body(where: OfficeLocation, index: Index, gate: Gate) -> int:
        cfg = office_config(where)
        fleet_gate = FleetGate.of(gate, index, cfg)
        try:
            if args.what == "ack":
                t = acknowledge(
                    index,
                    cfg,
                    fleet_gate,
                    int(args.arg),
                    note=args.note or "",
                    now=_now(),
                    enqueue=Outbox(index, cfg.notify).enqueue_in,
                )
                stdout.write(
                    f"alarm {t.alarm.id} ({terminal_safe(t.alarm.where)} {t.alarm.kind}) "
                    f"acknowledged by {terminal_safe(t.by)}\n"
                )
                return 0
            if args.what == "history":
                h = device_history(
                    index, fleet_gate, args.arg, args.hours, _now(), detail="cli: fleet history of"
                )
                if args.json:
                    write_json(stdout, _history_json(h))
                else:
                    print_history(stdout, h)
                return ALARMED if any(a.open for a in h.alarms) else 0
        except AccessDenied as exc:
            if exc.hidden:
                what = f"alarm {args.arg}" if args.what == "ack" else f"device {args.arg!r}"
                return fail(sys.stderr, f"there is no {what}")
            raise
        except AlarmError as exc:
            return fail(sys.stderr, exc)
        view = overview(index, fleet_gate, detail="cli: fleet")
        if args.json:
            write_json(
                stdout,
                {
                    "devices": [_device_json(d) for d in view.devices],
                    "alarms": [_alarm_json(a) for a in view.alarms],
                },
            )
        else:
            print_overview(stdout, view)
        return ALARMED if view.any_alarm else 0

    return run_as_account(args, body)


def _history_json(h: DeviceHistory) -> dict[str, Any]:
    return {
        "device": _device_json(h.device),
        "hours": [
            {
                "hour": x.hour,
                "messages": x.messages,
                "online_s": x.online_s,
                "max_backlog": x.max_backlog,
                "max_oldest_unacked_s": x.max_oldest_unacked_s,
                "min_disk_free_bytes": x.min_disk_free_bytes,
            }
            for x in h.hours
        ],
        "lines": [
            {
                "line": x.line,
                "hour": x.hour,
                "calls": x.calls,
                "judged_calls": x.judged_calls,
                "silent_calls": x.silent_calls,
                "hum_calls": x.hum_calls,
                "clipped_calls": x.clipped_calls,
            }
            for x in h.line_hours
        ],
        "alarms": [_alarm_json(a) for a in h.alarms],
    }


def add_fleet_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``fleet`` (with ``ack`` and ``history``)."""
    p = subparsers.add_parser(
        "fleet",
        parents=[office_options()],
        help="fleet health: devices, lines, alarms (exit 1 when an alarm is open)",
        description="Fleet health from the devices' telemetry: every device in the "
        "account's reach with its state, backlog, disk, clock, signed head against the "
        "office's, its lines (last call, level alarms) and the open alarms; exit status 1 "
        "when an alarm is open. 'fleet ack ALARM_ID --note TEXT' acknowledges one (right "
        "manage_fleet: admins, supervisors in scope); 'fleet history DEVICE' shows its "
        "hourly history and alarms (right view_fleet: admins, auditors, supervisors in "
        "scope). Acts as the account named by $LINETAP_OFFICE_USER / "
        "$LINETAP_OFFICE_PASSWORD (and $LINETAP_OFFICE_TOTP); every view is a ledger leaf.",
    )
    p.add_argument("what", nargs="?", choices=["ack", "history"], help="ack or history")
    p.add_argument("arg", nargs="?", help="the alarm id (ack) or device id (history)")
    p.add_argument("--note", default="", help="ack: why, what is being done (at most 500)")
    p.add_argument("--hours", type=int, default=48, help="history: hours back (default 48)")
    p.add_argument("--json", action="store_true", help="one JSON document")
    p.set_defaults(func=run_fleet)
