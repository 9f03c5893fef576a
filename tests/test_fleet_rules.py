"""The fleet's pure rules (headoffice/fleet/rules.py) and the telemetry parser: facts in,
conditions out, each threshold at its edge; the expected values are written out here."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from firmware.dsp import levels as device_levels
from firmware.tools._checks import base as device_checks
from headoffice.authz import Action, DeviceLine, Principal, Role, Scope, Target, authorize
from headoffice.fleet.config import FleetConfig
from headoffice.fleet.rules import (
    CallLevels,
    DeviceFacts,
    LineActivity,
    ReceiverEvent,
    call_levels,
    evaluate,
)
from headoffice.fleet.telemetry import TelemetryError, parse_status

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
CFG = FleetConfig()
MIB = 1024 * 1024


def status(**changes: Any) -> Any:
    doc: dict[str, Any] = {
        "state": "online",
        "device_id": "shop-1",
        "time_utc": "2026-11-25T11:59:50+00:00",
        "outbox": {"unacked_count": 0, "oldest_unacked_age_s": None},
        "disk_free_bytes": 4096 * MIB,
        "clock_sync": {"synchronized": True, "max_error_us": 12, "source": "adjtimex"},
        "recorder": {"lines": [{"name": "line1", "state": "idle"}], "faults": {}},
    }
    doc.update(changes)
    return parse_status(json.dumps(doc).encode(), "shop-1")


def facts(**changes: Any) -> DeviceFacts:
    base: dict[str, Any] = {
        "device_id": "shop-1",
        "online": True,
        "state_since": NOW - timedelta(hours=3),
        "last_seen_at": NOW - timedelta(seconds=10),
        "status": status(),
        "head_seq": 7,
        "office_seq": 7,
    }
    base.update(changes)
    return DeviceFacts(**base)


def kinds(f: DeviceFacts, cfg: FleetConfig = CFG) -> dict[tuple[str | None, str], str]:
    return {(c.line, c.kind): c.detail for c in evaluate(f, cfg, NOW).conditions}


def call(rec: str, seconds: float = 60, **levels: float | None) -> CallLevels:
    values: dict[str, float | None] = {
        "silence_fraction": 0.2,
        "rms_dbfs": -22.0,
        "hum_dbfs": -70.0,
        "clipped_fraction": 0.0,
    }
    values.update(levels)
    return CallLevels(rec, seconds, **values)


def test_a_healthy_device_has_no_condition():
    assert kinds(facts()) == {}


def test_the_level_defaults_are_the_ones_linetap_check_uses():
    assert CFG.silence_fraction == device_levels.SILENT_LINE_FRACTION
    assert CFG.silent_rms_dbfs == device_levels.SILENCE_DBFS
    assert CFG.hum_dbfs == device_levels.HUM_BAD_DBFS
    assert CFG.clip_fraction == device_checks.CLIP_FAIL_FRACTION


def test_offline_by_last_will_and_by_silence():
    will = evaluate(facts(online=False, state_since=NOW - timedelta(minutes=4)), CFG, NOW)
    [c] = will.conditions
    assert (c.kind, c.hold_s) == ("offline", CFG.raise_after_s)
    assert "last will" in c.detail and "11:56" in c.detail
    # Offline: what only telemetry tells cannot be judged (those alarms stay as they are).
    assert "backlog" in will.unknown and "disk_low" in will.unknown
    quiet = NOW - timedelta(seconds=CFG.offline_after_s)
    assert ("offline" in {k for _, k in kinds(facts(last_seen_at=quiet))}) is True
    just = NOW - timedelta(seconds=CFG.offline_after_s - 1)
    assert kinds(facts(last_seen_at=just)) == {}
    assert kinds(facts(last_seen_at=None, online=False)) == {}  # never heard: no claim


def test_a_line_silent_in_most_calls_is_silent_but_one_silent_call_is_not():
    silent = [call(f"r{i}", silence_fraction=0.99, rms_dbfs=-80.0) for i in range(3)]
    talk = [call(f"t{i}") for i in range(2)]
    assert ("line2", "silent_line") in kinds(facts(calls={"line2": silent + talk}))
    detail = kinds(facts(calls={"line2": silent + talk}))[("line2", "silent_line")]
    assert detail.startswith("3 of the last 5 calls silent")
    # 2 of 5 is under the 60 % share; 1 of 1 is under the two calls needed.
    assert kinds(facts(calls={"line2": silent[:2] + talk + [call("t9")]})) == {}
    assert kinds(facts(calls={"line2": silent[:1]})) == {}
    # Calls under min_call_s are not judged (a quick hang-up is quiet).
    short = [call(f"s{i}", seconds=9.9, silence_fraction=1.0) for i in range(5)]
    assert kinds(facts(calls={"line2": short})) == {}
    # Quiet by RMS alone (one-way audio: some windows above the floor).
    by_rms = [call(f"q{i}", silence_fraction=0.5, rms_dbfs=-56.0) for i in range(2)]
    assert ("line2", "silent_line") in kinds(facts(calls={"line2": by_rms}))


def test_hum_and_clipping_at_the_check_limits():
    at_limit = [call(f"h{i}", hum_dbfs=-30.0) for i in range(2)]
    under = [call(f"u{i}", hum_dbfs=-30.1) for i in range(2)]
    assert "up to -30.0 dBFS" in kinds(facts(calls={"line1": at_limit}))[("line1", "hum")]
    assert kinds(facts(calls={"line1": under})) == {}
    clip = [call(f"c{i}", clipped_fraction=0.0011) for i in range(2)]
    edge = [call(f"e{i}", clipped_fraction=0.001) for i in range(2)]
    assert ("line1", "clipping") in kinds(facts(calls={"line1": clip}))
    assert kinds(facts(calls={"line1": edge})) == {}


def test_calls_without_a_level_summary_are_not_judged():
    old = [CallLevels(f"o{i}", 60, None, None, None, None) for i in range(5)]
    assert kinds(facts(calls={"line1": old})) == {}


def test_head_ahead_waits_longer_and_a_missing_tail_is_seen():
    f = facts(head_seq=10, office_seq=7, status=status(outbox={"unacked_count": 3}))
    ev = evaluate(f, CFG, NOW)
    [ahead] = ev.conditions
    assert ahead.kind == "head_ahead" and ahead.hold_s == CFG.head_ahead_s
    assert "3 recording(s)" in ahead.detail
    lost = facts(head_seq=10, office_seq=7, status=status(outbox={"unacked_count": 1}))
    tail = kinds(lost)[(None, "missing_tail")]
    assert tail.startswith("2 recording(s) up to seq 10")


def test_backlog_disk_clock_and_recorder():
    f = facts(
        status=status(
            outbox={"unacked_count": 4, "oldest_unacked_age_s": float(CFG.backlog_s)},
            disk_free_bytes=100 * MIB,
            clock_sync={"synchronized": False},
            recorder={"state": "stale", "age_s": 40.0},
        )
    )
    k = kinds(f)
    assert set(k) == {
        (None, "backlog"),
        (None, "disk_low"),
        (None, "clock_unsynced"),
        (None, "recorder_fault"),
    }
    assert "6.0 h old (4 waiting)" in k[(None, "backlog")]
    assert "100 MiB free" in k[(None, "disk_low")]
    fault = facts(status=status(recorder={"lines": [], "faults": {"audio": "no card hw:1"}}))
    assert kinds(fault)[(None, "recorder_fault")] == "audio fault: no card hw:1"
    # A device whose announcement cannot play records calls whose callers are not told.
    silent = "announce.device 'hw:CARD=linetap': cannot open playback device (No such device)"
    fault = facts(status=status(recorder={"lines": [], "faults": {"announce": silent}}))
    assert kinds(fault)[(None, "recorder_fault")] == f"announcement playback fault: {silent}"


def test_receiver_events_surface_for_a_day_and_gaps_while_open():
    events = [
        ReceiverEvent("replay", "seq 4 again", NOW - timedelta(hours=2)),
        ReceiverEvent("replay", "seq 5 again", NOW - timedelta(hours=1)),
        ReceiverEvent("chain", "old", NOW - timedelta(days=2)),
        ReceiverEvent("quota", "not an event kind", NOW),
    ]
    ev = evaluate(facts(events=events, gaps=[(3, 4), (9, 9)]), CFG, NOW)
    got = {c.kind: c for c in ev.conditions}
    assert set(got) == {"replay", "gap"}
    assert got["replay"].hold_s == 0 and got["replay"].detail.startswith("2×")
    assert got["replay"].detail.endswith("last: seq 5 again")
    assert got["gap"].detail == "seq 3-4, 9 missing"


def test_certificate_expiry():
    soon = facts(cert_not_after=NOW + timedelta(days=29))
    assert "expires on 2026-12-24 (in 29 days)" in kinds(soon)[(None, "cert_expiring")]
    assert kinds(facts(cert_not_after=NOW + timedelta(days=31))) == {}
    gone = kinds(facts(cert_not_after=NOW - timedelta(days=1)))
    assert "expired on 2026-11-24" in gone[(None, "cert_expiring")]


def test_no_calls_on_a_busy_line_only_when_asked():
    busy = LineActivity(NOW - timedelta(hours=30), baseline_calls=14 * 5)
    assert kinds(facts(activity={"line1": busy})) == {}  # off by default
    on = CFG.model_copy(update={"no_calls": True})
    assert (
        "usually has 5.0 a day" in kinds(facts(activity={"line1": busy}), on)[("line1", "no_calls")]
    )
    quiet_line = LineActivity(NOW - timedelta(hours=30), baseline_calls=14)
    assert kinds(facts(activity={"line1": quiet_line}), on) == {}
    recent = LineActivity(NOW - timedelta(hours=2), baseline_calls=14 * 5)
    assert kinds(facts(activity={"line1": recent}), on) == {}


def test_call_levels_read_the_signed_summary():
    summary = {
        "frames": 80_000,
        "measured_ms": 10_000,
        "window_ms": 20,
        "windows": 500,
        "silent_windows": 490,
        "silence_floor_dbfs_x100": -5500,
        "block_ms": 100,
        "blocks": 100,
        "rms_dbfs_x100": -6012,
        "rms_median_dbfs_x100": -6100,
        "rms_p95_dbfs_x100": -5900,
        "peak_dbfs_x100": -3000,
        "clipped_samples": 80,
        "hum_50hz_dbfs_x100": -2512,
        "hum_60hz_dbfs_x100": -9000,
    }
    c = call_levels("r1", 12_345, {"levels": summary})
    assert (c.duration_s, c.silence_fraction, c.rms_dbfs, c.hum_dbfs, c.clipped_fraction) == (
        12.345,
        0.98,
        -60.12,
        -25.12,
        0.001,
    )
    assert call_levels("r2", 1000, {}) == CallLevels("r2", 1.0, None, None, None, None)
    assert call_levels("r3", 1000, {"levels": {"frames": "x"}}).rms_dbfs is None


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"[" * 50, "nested"),
        (b'{"state":"online","disk_free_bytes":' + b"9" * 30 + b"}", "digits"),
        (b'{"state":"online","outbox":{"oldest_unacked_age_s":NaN}}', "not a number"),
        (b'{"state":"online","outbox":{"oldest_unacked_age_s":1e999}}', "out of range"),
        (b'{"state":"sideways"}', "status field state"),
        (b'{"state":"online","device_id":"shop-2"}', "names device 'shop-2'"),
        (b'{"state":"online","disk_free_bytes":-1}', "disk_free_bytes"),
        (
            b'{"state":"online","recorder":{"lines":'
            + b"["
            + b",".join([b'{"name":"l"}'] * 17)
            + b"]}}",
            "lines",
        ),
        (b"x" * (200 * 1024), "over the"),
        (b"\xff\xfe", "not JSON"),
    ],
)
def test_hostile_status_documents_are_refused(payload: bytes, reason: str):
    with pytest.raises(TelemetryError, match=reason):
        parse_status(payload, "shop-1")


def test_the_last_will_and_unknown_fields_parse():
    assert parse_status(b'{"state":"offline"}', "shop-1").online is False
    doc = parse_status(
        b'{"state":"online","from_the_future":{"x":1},"disk_free_bytes":5}', "shop-1"
    )
    assert doc.disk_free_bytes == 5


def test_a_supervisor_of_one_line_sees_its_device_as_a_whole_but_not_its_other_lines():
    line_only = Principal(
        "s", frozenset({Role.SUPERVISOR}), Scope(lines=frozenset({DeviceLine("shop-1", "line2")}))
    )

    def may(action: Action, device: str, line: str) -> str:
        d = authorize(line_only, action, Target(device, line), {})
        return "Y" if d.allowed else "H" if d.hidden else "N"

    assert may(Action.VIEW_FLEET, "shop-1", "") == "Y"  # offline, backlog: their line too
    assert may(Action.MANAGE_FLEET, "shop-1", "line2") == "Y"
    assert may(Action.VIEW_FLEET, "shop-1", "line1") == "H"
    assert may(Action.VIEW_FLEET, "shop-2", "") == "H"
    auditor = Principal("a", frozenset({Role.AUDITOR}), Scope())
    assert authorize(auditor, Action.VIEW_FLEET, Target("any", ""), {}).allowed
    assert not authorize(auditor, Action.MANAGE_FLEET, Target("any", ""), {}).hidden
