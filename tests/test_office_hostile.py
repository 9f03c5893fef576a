"""A hostile but enrolled device attacks the head office over the real mTLS chain.

An appliance's TLS key and signing key sit on an SD card anyone can pull, so the attacker
(device H, :class:`tests.office_harness.HostileDevice`) holds a valid client certificate
(confined by the broker ACL to ``linetap/{H}/...``) and can sign manifests. The office is
the real thing: mosquitto with the project's TLS + ACL config, ``linetap-office serve``
as a subprocess with small ``[limits]``. Device B is honest: a real ``linetap upload``
shipping signed, chained outbox entries (tests/test_office_e2e.py's ``_synthetic``).

Every attack ends with :meth:`World.office_still_serves`: the serve process is still
running, B's next recording is acked within a bounded time (B uploads before the attack
as a baseline and again after it), and no ack H received names an office file path.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from buffers.outbox import Outbox, OutboxState
from headoffice.index import open_index
from headoffice.officeroot import CaLayout
from sealedrec.manifest import manifest_hash
from tests.mqtt_broker import Broker, office_broker_conf, run_mosquitto
from tests.office_harness import (
    DeviceKeys,
    HostileDevice,
    enroll_hostile,
    hostile_manifest,
    parked_bytes,
    part_files,
    random_rec,
    stored_files,
    up_topic,
)
from tests.test_office_e2e import DEVICE, Setup, _add, _synthetic, wait_for

HOSTILE = "intruder-9"
KIB = 1024
MIB = 1024 * KIB
MAX_OPEN_UPLOADS = 4
MAX_PARKED_BYTES = 8 * MIB
LIMITS = (
    f"\n[limits]\nmax_open_uploads = {MAX_OPEN_UPLOADS}\nmax_parked_bytes = {MAX_PARKED_BYTES}\n"
)
B_ACK_TIMEOUT_S = 30.0  # B's recording after an attack: acked within this
ACK_WAIT_S = 10.0  # H's acks: the office answers within this (when it answers)
SMALL_ACK_BYTES = 4096
REPO = Path(__file__).resolve().parent.parent


@dataclass
class World:
    """The office under attack: broker, serve, honest B (uploader running), hostile H."""

    s: Setup
    broker: Broker
    serve: subprocess.Popen[bytes]
    h: HostileDevice
    hkeys: DeviceKeys
    b_seq: int = 1
    b_prev: str = "0" * 64
    b_ids: list[str] = field(default_factory=list)

    @property
    def root(self) -> Path:
        return self.s.root

    @property
    def index_url(self) -> str:
        return f"sqlite:///{self.root / 'index.sqlite3'}"

    def log_tail(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in self.s.logs
            if p.exists()
        )

    def alive(self) -> None:
        rc = self.serve.poll()
        if rc is not None:
            raise AssertionError(f"linetap-office serve exited with status {rc}\n{self.log_tail()}")

    def b_upload(self, sizes: list[int] | None = None) -> list[str]:
        """Put new recordings into B's outbox (the running uploader picks them up)."""
        made = _synthetic(self.s, sizes or [3_000], first_seq=self.b_seq, prev=self.b_prev)
        self.b_prev = manifest_hash(json.loads(made[-1][1]["manifest.json"]))
        self.b_seq += len(made)
        ids = _add(self.s, made)
        self.b_ids += ids
        return ids

    def wait_b_acked(self, timeout: float) -> float:
        """Wait until every recording B ever had is acked; returns the seconds it took."""
        t0 = time.monotonic()

        def done() -> bool:
            self.alive()
            return self.s.acked() == len(self.b_ids)

        wait_for(done, timeout, f"device B's {len(self.b_ids)} recordings acked", self.s.logs)
        return time.monotonic() - t0

    def office_still_serves(self, b_timeout: float = B_ACK_TIMEOUT_S) -> None:
        """(a) serve runs, (b) B's next recording is acked in time, (c) no ack H got
        names an office path. B's ack also tells that serve has worked through every
        message H published before it (one subscriber, broker order)."""
        self.alive()
        self.b_upload()
        self.wait_b_acked(b_timeout)
        self.alive()
        time.sleep(0.3)  # acks to H published before B's are delivered by now
        self.assert_no_paths_leaked()

    def assert_no_paths_leaked(self) -> None:
        needles = {str(self.root), str(self.root.resolve()), "parking/", "blobs/", "locks/"}
        leaks = self.h.payload_leaks(needles)
        assert not leaks, f"acks to {HOSTILE} name office paths: {leaks[:5]}"

    def h_acks(self, rec: str) -> list[dict[str, Any]]:
        return self.h.acks_for(rec)

    def wait_h_acks(self, recs: list[str], *, count: int = 1, timeout: float = ACK_WAIT_S) -> bool:
        return self.h.wait_acks(recs, timeout, count=count, alive=self.alive)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    s = Setup(tmp_path)
    hkeys = enroll_hostile(s.root, tmp_path / "hostile", HOSTILE)
    with run_mosquitto(tmp_path, office_broker_conf(s.root, tmp_path / "broker-data")) as broker:
        conf = s.device_config(broker.port)
        s.enroll_device(conf, in_process=True)
        office_conf = s.office_config(broker.port)
        office_conf.write_text(office_conf.read_text() + LIMITS)
        with s.receiver(office_conf) as serve:
            wait_for(
                lambda: serve.poll() is not None or "subscribing" in s.logs[0].read_text(),
                20,
                "serve to subscribe",
                s.logs,
            )
            assert serve.poll() is None, s.logs[0].read_text()[-3000:]
            time.sleep(0.3)  # SUBSCRIBE -> SUBACK
            with (
                s.uploader(conf),
                HostileDevice.connect(broker, hkeys, CaLayout(s.root).broker_ca) as h,
            ):
                w = World(s, broker, serve, h, hkeys)
                w.b_upload()  # baseline: the chain works before the attack
                w.wait_b_acked(B_ACK_TIMEOUT_S)
                yield w


def _statuses(acks: list[dict[str, Any]]) -> list[str]:
    return [str(a.get("status")) for a in acks]


def _send_upload(
    w: World,
    rec: str,
    blob: bytes,
    *,
    chunk_size: int = 1 * KIB,
    seq: int = 1,
    drop: tuple[str, ...] = (),
    chunks: bool = True,
    fin: bool = True,
    **changes: Any,
) -> None:
    """A whole upload of ``blob`` by H: signed init (manifest with ``changes``), its
    chunks, fin."""
    sha = hashlib.sha256(blob).hexdigest()
    manifest = hostile_manifest(
        w.hkeys.signing_key, HOSTILE, rec, blob=blob, seq=seq, drop=drop, **changes
    )
    w.h.init(rec, manifest, blob_bytes=len(blob), blob_sha256=sha, chunk_size=chunk_size)
    count = -(-len(blob) // chunk_size)
    if chunks:
        for i in range(count):
            w.h.chunk(rec, i, blob[i * chunk_size : (i + 1) * chunk_size])
    if fin:
        w.h.fin(rec, sha, count)


# --------------------------------------------------------------------------- 1. deep nesting


def test_deeply_nested_json_gets_no_answer_and_kills_nothing(world: World):
    """``[`` × 5,000 used to end serve with RecursionError inside json.loads."""
    w = world
    garbage = [random_rec("nest") for _ in range(3)]
    for rec in garbage:
        w.h.publish(up_topic(HOSTILE, rec, "init"), b"[" * 5000)
        w.h.publish(up_topic(HOSTILE, rec, "fin"), b"[" * 5000)
    closed = random_rec("nest")  # valid JSON, 5,000 deep, not an object
    w.h.publish(up_topic(HOSTILE, closed, "init"), b"[" * 5000 + b"]" * 5000)
    w.h.publish(up_topic(HOSTILE, closed, "fin"), b'{"v":1,"x":' + b"[" * 5000 + b"]" * 5000 + b"}")
    w.office_still_serves()
    for rec in garbage:
        assert w.h_acks(rec) == [], "no ack for a payload that does not parse"
    assert all(a.get("status") == "rejected" for a in w.h_acks(closed)), w.h_acks(closed)


# --------------------------------------------------------------------------- 2. huge integer


def test_five_thousand_digit_chunk_count(world: World):
    """int('9' * 5000) is over Python's int-string limit: ValueError, not JSONDecodeError."""
    w = world
    rec = random_rec("digits")
    blob = os.urandom(2 * KIB)
    sha = hashlib.sha256(blob).hexdigest()
    manifest = hostile_manifest(w.hkeys.signing_key, HOSTILE, rec, blob=blob)
    init = json.dumps(
        {
            "v": 1,
            "recording_id": rec,
            "manifest": manifest,
            "blob_bytes": len(blob),
            "blob_sha256": sha,
            "chunk_size": KIB,
            "chunk_count": "@COUNT@",
        }
    ).replace('"@COUNT@"', "9" * 5000)
    for _ in range(2):
        w.h.publish(up_topic(HOSTILE, rec, "init"), init.encode())
        w.h.publish(
            up_topic(HOSTILE, rec, "fin"),
            f'{{"v":1,"recording_id":"{rec}","blob_sha256":"{sha}","chunk_count":{"9" * 5000}}}'.encode(),
        )
    w.office_still_serves()
    acks = w.h_acks(rec)
    assert all(a.get("status") == "rejected" and a.get("reason") for a in acks), acks


# --------------------------------------------------------------------------- 3. huge upload


def test_a_million_four_mib_chunks_is_refused_with_a_small_ack(world: World):
    """A validly signed init for 10^6 chunks of 4 MiB: the old answer listed all 10^6
    missing chunks (~6.9 MB, over the broker's max packet size), which got the receiver
    disconnected for good. Now: refused, with a reason, in a small ack."""
    w = world
    rec = random_rec("huge")
    size, count = 4 * MIB, 1_000_000
    sha = hashlib.sha256(b"not really").hexdigest()
    manifest = hostile_manifest(
        w.hkeys.signing_key, HOSTILE, rec, blob_bytes=size * count, blob_sha256=sha
    )
    w.h.init(rec, manifest, blob_bytes=size * count, blob_sha256=sha, chunk_size=size)
    answered = w.wait_h_acks([rec])
    w.office_still_serves()
    assert answered, f"no ack for the oversized init\n{w.log_tail()}"
    ack_msgs = [m for m in w.h.ack_payloads() if m.topic.endswith(f"/ack/{rec}")]
    assert all(len(m.payload) < SMALL_ACK_BYTES for m in ack_msgs), [
        len(m.payload) for m in ack_msgs
    ]
    for ack in w.h_acks(rec):
        assert ack.get("status") in ("rejected", "busy"), ack
        assert ack.get("reason"), ack
    assert part_files(w.root, HOSTILE) == []


# --------------------------------------------------------------------------- 4. bad fields

BAD_FIELDS: dict[str, dict[str, Any]] = {
    "no-started-utc": {"drop": ("started_utc",)},
    "started-utc-year-1-plus-23h59": {"started_utc": "0001-01-01T00:00:00+23:59"},
    "seq-2-pow-63": {"seq": 2**63},
    "duration-2-pow-63": {"duration_ms": 2**63},
    "nul-in-line": {"line": "line1\x00; DROP TABLE recordings"},
    "caller-name-1-mb": {
        "caller_id": {"number": "02075550123", "name": "A" * 1_000_000, "source": "bellcore"}
    },
}


@pytest.mark.parametrize("case", list(BAD_FIELDS))
def test_signed_manifest_with_a_bad_field_is_rejected_and_stores_nothing(world: World, case: str):
    """Each resent 3 times, as a whole upload (init, chunks, fin). Expected: ``rejected``
    with a reason, nothing under blobs/ for H, no index row.

    The 1 MB caller name makes an init over the protocol's JSON size limit: that one may
    also go unanswered (a payload that is not parsed gets no ack), but must never be
    answered with anything but ``rejected``."""
    w = world
    spec = dict(BAD_FIELDS[case])
    drop = tuple(spec.pop("drop", ()))
    if "seq" not in spec:
        spec["seq"] = 1
    rec = random_rec(case[:12])
    blob = os.urandom(2 * KIB)
    for _ in range(3):
        _send_upload(w, rec, blob, drop=drop, **spec)
    oversized = case == "caller-name-1-mb"
    if not oversized:
        assert w.wait_h_acks([rec], count=3), f"{case}: fewer than 3 acks: {w.h_acks(rec)}"
    w.office_still_serves()
    acks = w.h_acks(rec)
    assert acks or oversized, f"{case}: no ack at all"
    for ack in acks:
        assert ack.get("status") == "rejected", f"{case}: {ack}"
        assert ack.get("reason"), f"{case}: a rejection without a reason: {ack}"
    assert stored_files(w.root, HOSTILE) == [], f"{case}: written to blobs/"
    index = open_index(w.index_url)
    try:
        assert index.get(rec) is None, f"{case}: indexed"
        assert index.search(device=HOSTILE) == []
    finally:
        index.close()


# --------------------------------------------------------------------------- 5. chunks, no init


def test_chunks_without_an_init_are_not_parked(world: World):
    """300 chunks of 64 KiB (valid sha256 property) for recordings never announced."""
    w = world
    recs = [random_rec("noinit") for _ in range(30)]
    for n in range(300):
        w.h.chunk(recs[n % 30], n // 30, os.urandom(64 * KIB))
    w.office_still_serves()
    assert part_files(w.root, HOSTILE) == [], f"{len(part_files(w.root, HOSTILE))} chunks parked"
    assert parked_bytes(w.root, HOSTILE) < 64 * KIB


# --------------------------------------------------------------------------- 6. open uploads


def test_never_finished_uploads_hit_the_quota_and_raise_an_alarm(world: World):
    """50 validly signed inits of 1 MiB each and a few chunks each, never finished:
    past ``max_open_uploads`` the office answers ``busy`` naming the quota, parks no
    more than ``max_parked_bytes`` for H, and raises a quota alarm."""
    w = world
    chunk = 64 * KIB
    recs = [f"open-{n:03d}" for n in range(50)]
    blobs = {rec: os.urandom(MIB) for rec in recs}
    prev = "0" * 64
    for seq, rec in enumerate(recs, start=1):
        blob = blobs[rec]
        manifest = hostile_manifest(
            w.hkeys.signing_key, HOSTILE, rec, blob=blob, seq=seq, prev=prev
        )
        prev = manifest_hash(manifest)
        w.h.init(
            rec,
            manifest,
            blob_bytes=len(blob),
            blob_sha256=hashlib.sha256(blob).hexdigest(),
            chunk_size=chunk,
        )
    assert w.wait_h_acks(recs, timeout=20), (
        f"not every init answered: {[r for r in recs if not w.h_acks(r)][:5]}…\n{w.log_tail()}"
    )
    for rec in recs:  # some chunks for every one of them, accepted or not
        for i in range(3):
            w.h.chunk(rec, i, blobs[rec][i * chunk : (i + 1) * chunk])
    w.office_still_serves()

    first = {rec: w.h_acks(rec)[0] for rec in recs}
    accepted = [r for r in recs if first[r].get("status") == "missing"]
    refused = [r for r in recs if r not in accepted]
    assert 1 <= len(accepted) <= MAX_OPEN_UPLOADS, _statuses(list(first.values()))
    for rec in refused:
        ack = first[rec]
        assert ack.get("status") == "busy", ack
        assert "quota" in str(ack.get("reason", "")).lower(), ack
        assert isinstance(ack.get("retry_after_s", 0), int), ack
    parked_for = {p.parent.name for p in part_files(w.root, HOSTILE)}
    assert parked_for <= set(accepted), (
        f"chunks parked for refused uploads: {parked_for - set(accepted)}"
    )
    assert parked_bytes(w.root, HOSTILE) <= MAX_PARKED_BYTES
    index = open_index(w.index_url)
    try:
        alarms = index.alarms(device=HOSTILE)
    finally:
        index.close()
    assert any("quota" in a.kind for a in alarms), [(a.kind, a.message) for a in alarms]


# --------------------------------------------------------------------------- 7. fin burst


def test_a_burst_of_fins_does_not_stall_other_devices(world: World):
    """100 fins for one incomplete upload: each used to hold the single receiver thread
    for its 0.5 s grace wait, so B waited ~50 s. B's recording: acked within 10 s."""
    w = world
    rec = random_rec("stall")
    blob = os.urandom(4 * 64 * KIB)
    _send_upload(w, rec, blob, chunk_size=64 * KIB, chunks=False, fin=False)
    w.h.chunk(rec, 0, blob[: 64 * KIB])
    sha = hashlib.sha256(blob).hexdigest()
    for _ in range(100):
        w.h.fin(rec, sha, 4)
    w.b_upload()
    took = w.wait_b_acked(10.0)
    assert took <= 10.0
    w.office_still_serves()


# --------------------------------------------------------------------------- 8. no paths


def test_refusals_name_no_office_paths(world: World):
    """Assorted bad uploads whose refusals come from the store or the index (where error
    messages carry paths): no ack to H names the store root or a store directory.
    (:meth:`World.office_still_serves` checks the same after every other attack.)"""
    w = world
    blob = os.urandom(3 * KIB)
    sha = hashlib.sha256(blob).hexdigest()
    unknown = random_rec("nofin")
    w.h.fin(unknown, sha, 3)  # fin without init
    mismatch = random_rec("mismatch")
    _send_upload(w, mismatch, blob, fin=False)
    w.h.fin(mismatch, "0" * 64, 3)  # fin disagrees with its init
    corrupt = random_rec("corrupt")
    _send_upload(w, corrupt, blob, chunks=False, fin=False)
    w.h.chunk(corrupt, 0, blob[:KIB], sha256="f" * 64)  # wrong sha256 property
    w.h.chunk(corrupt, 7, blob[:KIB])  # index past the end
    w.h.fin(corrupt, sha, 3)
    replay = random_rec("replay")  # B's recording id, from H
    _send_upload(w, w.b_ids[0], blob)
    _send_upload(w, replay, blob, started_utc="9999-12-31T23:59:59.999+00:00")
    w.office_still_serves()
    for rec in (unknown, mismatch, replay, w.b_ids[0]):
        assert all(a.get("status") != "stored" for a in w.h_acks(rec)), (rec, w.h_acks(rec))
    assert w.h.ack_payloads(), "the office answered none of these"
    w.assert_no_paths_leaked()
    outbox = Outbox(w.s.data / "outbox")
    assert sorted(e.recording_id for e in outbox.entries(OutboxState.ACKED)) == sorted(w.b_ids)
    index = open_index(w.index_url)
    try:
        assert sorted(r.recording_id for r in index.search(device=DEVICE)) == sorted(w.b_ids)
        assert index.search(device=HOSTILE) == []
    finally:
        index.close()


# --------------------------------------------------------------------------- the bench


@pytest.mark.slow
def test_office_flood_bench_quick_runs(tmp_path: Path):
    """``bench/office_flood.py --quick`` runs to the end and prints its figures (~13 s
    here, so in the slow suite: the default one keeps to its time budget; the full bench
    is ``make bench`` material, this only keeps it working)."""
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "office_flood.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "flood/no-flood" in done.stdout
    assert "parking" in done.stdout
