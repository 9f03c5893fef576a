"""The fleet alarms' lifecycle (headoffice/fleet/alarms.py) and the telemetry ingest
(headoffice/fleet/ingest.py) on SQLite and PostgreSQL: damping, one alarm per device /
line / kind, flapping counted on one alarm, acknowledgement, automatic clearing, each
step an ``admin`` ledger leaf and a notification in the outbox; heads signed with the
enrolled key believed, a head signed by another key refused as a forgery."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from headoffice.fleet.alarms import AlarmError, FleetAlarms
from headoffice.fleet.config import FleetConfig
from headoffice.fleet.ingest import SETTLE_S, FleetIngest
from headoffice.fleet.rules import Condition, Evaluation
from headoffice.fleet.state import FleetStore
from headoffice.index import Index, open_index
from headoffice.notify.model import NotifyConfig
from headoffice.notify.outbox import Outbox
from sealedrec.head import sign_head
from sealedrec.keys import public_key_b64
from sealedrec.manifest import GENESIS_HASH, manifest_hash, sign_manifest
from tests.office_accounts import leaves
from tests.test_office_index import index_url, pg_dsn  # noqa: F401 - fixtures

T0 = datetime.now(UTC).replace(microsecond=0)
CFG = FleetConfig(raise_after_s=60, clear_after_s=120, flap_window_s=3600)
OFFLINE = Condition("offline", None, "no telemetry", 60)
DEVICE = "shop-1"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def holds(*conditions: Condition, unknown: frozenset[str] = frozenset()) -> Evaluation:
    return Evaluation(tuple(conditions), unknown)


@pytest.fixture
def index(index_url: str) -> Iterator[Index]:  # noqa: F811 - the fixture
    idx = open_index(index_url)
    yield idx
    idx.close()


def fleet_leaves(index: Index) -> list[dict[str, Any]]:
    return [leaf for leaf in leaves(index, "admin") if leaf["action"].startswith("alarm_")]


def queued(index: Index) -> list[tuple[str, str, str]]:
    with index.transaction(False) as q:
        rows = q("SELECT kind, alarm, summary FROM notifications ORDER BY created_at, id", ())
    return [(str(r[0]), str(r[1]), str(r[2])) for r in rows]


def test_raised_only_after_holding_then_acknowledged_then_cleared(index: Index):
    alarms = FleetAlarms(index, CFG, Outbox(index, NotifyConfig()).enqueue_in)
    assert alarms.sync(DEVICE, holds(OFFLINE), at(0)) == []  # pending
    assert alarms.sync(DEVICE, holds(OFFLINE), at(59)) == []
    assert FleetStore(index).alarms() == []  # pending is not an alarm yet
    [raised] = alarms.sync(DEVICE, holds(OFFLINE), at(60))
    assert (raised.step, raised.alarm.state, raised.by) == ("raised", "raised", "office")
    # The same condition again: the same alarm, nothing new.
    assert alarms.sync(DEVICE, holds(OFFLINE), at(90)) == []
    [open_alarm] = FleetStore(index).alarms()
    assert open_alarm.id == raised.alarm.id and open_alarm.last_seen_at.startswith(
        at(90).strftime("%Y-%m-%dT%H:%M:%S")
    )
    acked = alarms.ack(open_alarm.id, "sam", "  driving   there ", at(100))
    assert (acked.alarm.state, acked.alarm.acked_by, acked.alarm.ack_note) == (
        "acknowledged",
        "sam",
        "driving there",
    )
    with pytest.raises(AlarmError, match="acknowledged already by sam"):
        alarms.ack(open_alarm.id, "kim", "me too", at(101))
    # Gone: cleared only after clear_after_s without it.
    assert alarms.sync(DEVICE, holds(), at(200)) == []
    assert alarms.sync(DEVICE, holds(), at(319)) == []
    [cleared] = alarms.sync(DEVICE, holds(), at(320))
    assert (cleared.step, cleared.alarm.state) == ("cleared", "cleared")
    assert FleetStore(index).alarms() == []
    with pytest.raises(AlarmError, match="cleared already"):
        alarms.ack(open_alarm.id, "sam", "", at(400))
    steps = [(leaf["action"], leaf["user"], leaf["subject"]) for leaf in fleet_leaves(index)]
    subject = f"fleet:{DEVICE}:offline#{open_alarm.id}"
    assert steps == [
        ("alarm_raised", "office", subject),
        ("alarm_acknowledged", "sam", subject),
        ("alarm_cleared", "office", subject),
    ]
    assert fleet_leaves(index)[1]["detail"] == "note: driving there"
    assert [(k, a) for k, a, _ in queued(index)] == [
        ("alarm_raised", "offline"),
        ("alarm_acknowledged", "offline"),
        ("alarm_cleared", "offline"),
    ]


def test_a_condition_that_comes_back_before_clear_after_keeps_its_alarm(index: Index):
    alarms = FleetAlarms(index, CFG)
    alarms.sync(DEVICE, holds(OFFLINE), at(0))
    alarms.sync(DEVICE, holds(OFFLINE), at(60))
    assert alarms.sync(DEVICE, holds(), at(100)) == []
    assert alarms.sync(DEVICE, holds(OFFLINE), at(150)) == []  # back within 120 s
    assert alarms.sync(DEVICE, holds(), at(200)) == []
    assert alarms.sync(DEVICE, holds(), at(300)) == []  # absent since 200 only
    [a] = FleetStore(index).alarms()
    assert a.state == "raised" and a.count == 1
    # A pending one that goes away leaves nothing.
    hum = Condition("hum", "line2", "hum", 60)
    alarms.sync(DEVICE, holds(hum), at(0))
    alarms.sync(DEVICE, holds(), at(30))
    with index.transaction(False) as q:
        assert q("SELECT COUNT(*) FROM fleet_alarms WHERE kind = 'hum'", ()) == [(0,)]


def test_flapping_reopens_one_alarm_and_counts(index: Index):
    alarms = FleetAlarms(index, CFG)
    for cycle in range(3):
        base = cycle * 1000
        alarms.sync(DEVICE, holds(OFFLINE), at(base))
        alarms.sync(DEVICE, holds(OFFLINE), at(base + 60))
        alarms.sync(DEVICE, holds(), at(base + 100))
        alarms.sync(DEVICE, holds(), at(base + 220))
    with index.transaction(False) as q:
        rows = q("SELECT id, count, state FROM fleet_alarms", ())
    assert len(rows) == 1 and int(rows[0][1]) == 3 and rows[0][2] == "cleared"
    raised = [leaf for leaf in fleet_leaves(index) if leaf["action"] == "alarm_raised"]
    assert len(raised) == 3
    assert raised[2]["detail"].startswith("again (3 times within the flap window)")
    # Past the flap window: a new alarm.
    alarms.sync(DEVICE, holds(OFFLINE), at(2220 + 3601))
    alarms.sync(DEVICE, holds(OFFLINE), at(2220 + 3661))
    with index.transaction(False) as q:
        assert q("SELECT COUNT(*) FROM fleet_alarms", ()) == [(2,)]


def test_one_alarm_per_device_line_and_kind_and_unknown_kinds_are_left(index: Index):
    alarms = FleetAlarms(index, CFG.model_copy(update={"raise_after_s": 0}))
    c = [
        Condition("silent_line", "line1", "a", 0),
        Condition("silent_line", "line2", "b", 0),
        Condition("silent_line", "line1", "duplicate", 0),
        Condition("disk_low", None, "c", 0),
    ]
    assert len(alarms.sync(DEVICE, holds(*c), at(0))) == 3
    assert len(alarms.sync("shop-2", holds(c[0]), at(0))) == 1
    # The device went offline: disk_low cannot be judged, and stays.
    alarms.sync(DEVICE, holds(unknown=frozenset({"disk_low"})), at(10))
    alarms.sync(DEVICE, holds(unknown=frozenset({"disk_low"})), at(500))
    open_now = {(a.device_id, a.line, a.kind) for a in FleetStore(index).alarms()}
    assert open_now == {(DEVICE, None, "disk_low"), ("shop-2", "line1", "silent_line")}


def test_two_workers_syncing_at_once_make_one_alarm(index: Index):
    """Every worker evaluates every status message: under the device lock and the unique
    index, they agree on one alarm and one leaf."""
    now = Condition("offline", None, "last will", 0)
    # One connection per worker, opened before any of them works (as serve processes
    # are: opening runs the schema's DDL, which must not race a worker's transaction).
    workers = [open_index(index.url) for _ in range(4)]
    start = threading.Barrier(len(workers))
    errors: list[BaseException] = []

    def worker(own: Index) -> None:
        try:
            start.wait(10)
            for i in range(5):
                FleetAlarms(own, CFG).sync(DEVICE, holds(now), at(i))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(own,)) for own in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for own in workers:
        own.close()
    assert errors == []
    assert len(FleetStore(index).alarms()) == 1
    assert len([leaf for leaf in fleet_leaves(index) if leaf["action"] == "alarm_raised"]) == 1


# --------------------------------------------------------------------------- the ingest


def enroll(root: Path, device: str) -> Ed25519PrivateKey:
    key = Ed25519PrivateKey.generate()
    (root / "devices").mkdir(parents=True, exist_ok=True)
    record = {"device_id": device, "signing_key": public_key_b64(key.public_key())}
    (root / "devices" / f"{device}.json").write_text(json.dumps(record))
    return key


def status_payload(
    key: Ed25519PrivateKey | None,
    seq: int,
    *,
    when: datetime,
    unacked: int = 0,
    device: str = DEVICE,
    **extra: Any,
) -> bytes:
    doc: dict[str, Any] = {
        "state": "online",
        "device_id": device,
        "time_utc": when.isoformat(),
        "outbox": {"unacked_count": unacked, "oldest_unacked_age_s": 5.0 if unacked else None},
        "disk_free_bytes": 8 * 1024**3,
        "clock_sync": {"synchronized": True},
        "recorder": {"lines": [{"name": "line1", "state": "idle", "led": "off"}], "faults": {}},
        **extra,
    }
    if key is not None:
        sha = GENESIS_HASH if seq == 0 else hashlib.sha256(f"m{seq}".encode()).hexdigest()
        doc["head"] = sign_head(
            device_id=device,
            seq=seq,
            manifest_sha256=sha,
            recording_id=None if seq == 0 else f"{device}-rec-{seq}",
            signed_at=when,
            key=key,
        )
    return json.dumps(doc).encode()


TOPIC = f"linetap/{DEVICE}/status"


def test_a_signed_head_ahead_of_the_office_raises_head_ahead(index: Index, tmp_path: Path):
    key = enroll(tmp_path, DEVICE)
    cfg = FleetConfig(raise_after_s=0, head_ahead_s=30, clear_after_s=0)
    ingest = FleetIngest(tmp_path, index, cfg)
    out = ingest.handle(TOPIC, status_payload(key, 3, when=at(0), unacked=3), at(0))
    assert out.result == "stored"
    row = FleetStore(index).device(DEVICE)
    assert row is not None and row.head is not None and row.head.seq == 3
    # The same message again (another worker's copy, or the retained one): nothing new.
    assert ingest.handle(TOPIC, status_payload(key, 3, when=at(0), unacked=3), at(1)).result == (
        "duplicate"
    )
    assert ingest.tick(at(29)) == []
    [t] = ingest.tick(at(30))
    assert (t.alarm.kind, t.step) == ("head_ahead", "raised")
    assert "3 recording(s) the office has not received" in t.alarm.detail
    # The recordings arrive: the office's chain head catches up, the alarm clears.
    prev = GENESIS_HASH
    for seq in (1, 2, 3):
        manifest = signed_call(key, seq, prev)
        prev = manifest_hash(manifest)
        index.add(manifest, f"/store/{seq}")
    later = ingest.handle(TOPIC, status_payload(key, 3, when=at(40)), at(40))
    assert [(x.alarm.kind, x.step) for x in later.transitions] == [("head_ahead", "cleared")]
    hours = FleetStore(index).device_hours(DEVICE, at(0))
    assert sum(h.messages for h in hours) == 2  # the duplicate is not counted


def test_a_head_signed_by_another_key_is_refused_as_forged(index: Index, tmp_path: Path):
    enroll(tmp_path, DEVICE)
    thief = Ed25519PrivateKey.generate()
    ingest = FleetIngest(tmp_path, index, FleetConfig())
    out = ingest.handle(TOPIC, status_payload(thief, 9, when=at(0)), at(0))
    assert out.result == "forged"
    assert FleetStore(index).device(DEVICE) is None  # nothing of it was kept
    [receiver_alarm] = index.alarms(DEVICE, "telemetry_forged")
    assert "signed by key" in receiver_alarm.message
    [t] = out.transitions
    assert (t.alarm.kind, t.alarm.state) == ("telemetry_forged", "raised")  # at once
    # A head tampered with after signing (seq raised) is refused too.
    key = Ed25519PrivateKey.generate()
    (tmp_path / "devices" / f"{DEVICE}.json").write_text(
        json.dumps({"device_id": DEVICE, "signing_key": public_key_b64(key.public_key())})
    )
    doc = json.loads(status_payload(key, 4, when=at(5)))
    doc["head"]["seq"] = 40
    assert ingest.handle(TOPIC, json.dumps(doc).encode(), at(5)).result == "forged"
    assert ingest.handle(TOPIC, status_payload(key, 4, when=at(6)), at(6)).result == "stored"


def test_unknown_devices_and_garbage_are_not_kept(index: Index, tmp_path: Path):
    ingest = FleetIngest(tmp_path, index, FleetConfig())
    assert ingest.handle(TOPIC, status_payload(None, 0, when=at(0)), at(0)).result == (
        "unknown_device"
    )
    enroll(tmp_path, DEVICE)
    assert ingest.handle(TOPIC, b"{" * 40, at(0)).result == "malformed"
    assert ingest.handle("linetap/shop-1/up/x/init", b"{}", at(0)).result == "malformed"
    assert FleetStore(index).devices() == []


def signed_call(
    key: Ed25519PrivateKey,
    seq: int,
    prev: str,
    *,
    line: str = "line1",
    levels: Any = None,
    device: str = DEVICE,
) -> dict[str, Any]:
    blob = f"blob-{seq}".encode()
    started = at(-3600 + seq * 60)
    body: dict[str, Any] = {
        "version": 1, "recording_id": f"{device}-rec-{seq}", "device_id": device, "line": line,
        "seq": seq, "prev_manifest_sha256": prev, "started_utc": started.isoformat(),
        "ended_utc": (started + timedelta(seconds=40)).isoformat(), "duration_ms": 40_000,
        "container": "age", "codec": "flac", "blob_sha256": hashlib.sha256(blob).hexdigest(),
        "blob_bytes": len(blob), "recovered": False, "discarded": False,
    }  # fmt: skip
    if levels is not None:
        body["levels"] = levels
    return sign_manifest(body, key)


def silent_levels(silent_windows: int) -> dict[str, Any]:
    return {
        "frames": 320_000, "measured_ms": 40_000, "window_ms": 20, "windows": 2000,
        "silent_windows": silent_windows, "silence_floor_dbfs_x100": -5500, "block_ms": 100,
        "blocks": 400, "rms_dbfs_x100": -7000 if silent_windows > 1900 else -2200,
        "rms_median_dbfs_x100": -7000, "rms_p95_dbfs_x100": -6000, "peak_dbfs_x100": -4000,
        "clipped_samples": 0, "hum_50hz_dbfs_x100": -9000, "hum_60hz_dbfs_x100": -9000,
    }  # fmt: skip


def test_silent_calls_in_the_manifests_raise_silent_line_and_roll_up(index: Index, tmp_path: Path):
    key = enroll(tmp_path, DEVICE)
    ingest = FleetIngest(tmp_path, index, FleetConfig(raise_after_s=0))
    prev = GENESIS_HASH
    for seq, silent in enumerate([100, 1990, 2000, 1995], start=1):  # one talk, three silent
        manifest = signed_call(key, seq, prev, line="line2", levels=silent_levels(silent))
        prev = manifest_hash(manifest)
        index.add(manifest, f"/store/{seq}")
    out = ingest.handle(TOPIC, status_payload(key, 4, when=at(0)), at(0))
    got = {(t.alarm.line, t.alarm.kind): t.alarm for t in out.transitions}
    assert set(got) == {("line2", "silent_line")}
    assert got[("line2", "silent_line")].detail.startswith("3 of the last 4 calls silent")
    # Rolled up by the calls' start hour once settled (stored SETTLE_S ago, by the real
    # clock: index.add stamped them now), each once: a second evaluation adds nothing.
    settled = datetime.now(UTC) + timedelta(seconds=SETTLE_S + 1)
    ingest.tick(settled)
    ingest.tick(settled + timedelta(seconds=60))
    rolled = FleetStore(index).line_hours(DEVICE, at(-7200))
    hours = {at(-3600 + seq * 60).strftime("%Y-%m-%dT%H:00:00+00:00") for seq in (1, 2, 3, 4)}
    assert {h.hour for h in rolled} == hours and {h.line for h in rolled} == {"line2"}
    totals = [sum(getattr(h, f) for h in rolled) for f in ("calls", "judged_calls", "silent_calls")]
    assert totals == [4, 4, 3]


def test_the_last_will_keeps_the_last_state_and_marks_offline(index: Index, tmp_path: Path):
    key = enroll(tmp_path, DEVICE)
    ingest = FleetIngest(tmp_path, index, FleetConfig(raise_after_s=0, clear_after_s=0))
    ingest.handle(TOPIC, status_payload(key, 0, when=at(0), unacked=2), at(0))
    out = ingest.handle(TOPIC, b'{"state":"offline"}', at(5))
    assert [(t.alarm.kind, t.step) for t in out.transitions] == [("offline", "raised")]
    row = FleetStore(index).device(DEVICE)
    assert row is not None and not row.online and row.status is not None
    assert row.status.outbox is not None and row.status.outbox.unacked_count == 2
    back = ingest.handle(TOPIC, status_payload(key, 0, when=at(10)), at(10))
    assert [(t.alarm.kind, t.step) for t in back.transitions] == [("offline", "cleared")]


def test_silence_alone_makes_a_device_offline_at_the_tick(index: Index, tmp_path: Path):
    key = enroll(tmp_path, DEVICE)
    ingest = FleetIngest(tmp_path, index, FleetConfig(offline_after_s=300))
    ingest.handle(TOPIC, status_payload(key, 0, when=at(0)), at(0))
    assert ingest.tick(at(299)) == []
    [t] = ingest.tick(at(300))
    assert (t.alarm.kind, t.step) == ("offline", "raised")
    assert t.alarm.detail.startswith("no telemetry for 5 min")


def test_base64_of_the_enrolled_key_is_what_verifies(tmp_path: Path):
    """The enrolment record the ingest reads is the one enroll writes (raw key, b64)."""
    key = enroll(tmp_path, DEVICE)
    record = json.loads((tmp_path / "devices" / f"{DEVICE}.json").read_text())
    raw = base64.b64decode(record["signing_key"])
    assert len(raw) == 32 and public_key_b64(key.public_key()) == record["signing_key"]
