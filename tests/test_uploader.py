"""The device uploader (uploader.client / uploader.daemon) against a real mosquitto.

The head-office side is a test responder: a real paho client on ``linetap/+/up/#`` that
reassembles uploads in memory, checks every chunk's sha256 property with
``protocol.check_chunk`` and acks per the protocol (missing on init, stored on a
complete fin). Plain TCP listener; TLS is the broker/enroll tests' business.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from buffers.outbox import Outbox, OutboxEntry, OutboxState
from firmware.config import UploadConfig
from firmware.runstate import read_recorder_status
from sealedrec import protocol
from sealedrec.protocol import Ack, AckStatus, Fin, Init, Kind, ProtocolError
from tests.conftest import REPO, VENV_BIN
from tests.helpers import add_opaque_entry, config_text, reaped
from tests.mqtt_broker import Broker, office_broker_conf, run_mosquitto
from uploader.client import Uploader
from uploader.daemon import main as upload_main

DEVICE = "test-device"  # tests.helpers.config_text's device_id
WAIT_S = 30.0


# -- broker -------------------------------------------------------------------------------


def _conf(data_dir: Path, extra: str) -> Callable[[int], str]:
    def render(port: int) -> str:
        return (
            f"listener {port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {data_dir}/\n"
            "log_dest stdout\n"
            "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
            "connection_messages true\n"
            # Without it mosquitto's small writes (PUBACK, then the ack) wait for the
            # client's delayed ACK: ~100 ms per recording, 200 small ones in 23 s, not 2.
            "set_tcp_nodelay true\n"
            f"{extra}\n"
        )

    return render


@pytest.fixture
def start_broker(tmp_path: Path) -> Iterator[Callable[..., Broker]]:
    with contextlib.ExitStack() as stack:

        def start(extra: str = "", name: str = "mosquitto") -> Broker:
            data = tmp_path / f"{name}-data"
            data.mkdir()
            return stack.enter_context(run_mosquitto(tmp_path, _conf(data, extra), name=name))

        yield start


@pytest.fixture
def broker(start_broker: Callable[..., Broker]) -> Broker:
    return start_broker()


# -- the test-side store ------------------------------------------------------------------


class Responder:
    """Stands in for the head-office receiver (in memory)."""

    def __init__(
        self,
        broker: Broker,
        *,
        reject: set[str] | None = None,
        drop_first_init: set[str] | None = None,
        garbage_acks: bool = False,
        other_sha_in_stored_ack: set[str] | None = None,
        on_chunk: Callable[[Responder, str, int], None] | None = None,
        tls: tuple[Path, Path, Path] | None = None,  # (ca, cert, key)
        client_id: str = "office-test",
    ) -> None:
        self.broker = broker
        self.reject = reject or set()
        self.drop_first_init = drop_first_init or set()
        self.garbage_acks = garbage_acks
        # Recordings whose "stored" ack names another blob's sha256 (a store that kept
        # something else, or an ack for another upload under this id).
        self.other_sha_in_stored_ack = other_sha_in_stored_ack or set()
        self.on_chunk = on_chunk
        self.lock = threading.Lock()
        self.inits: dict[str, Init] = {}
        self.chunks: dict[str, dict[int, bytes]] = {}
        self.received: list[tuple[str, int]] = []  # (rec, index) in arrival order
        self.init_log: list[
            tuple[str, tuple[int, ...] | None]
        ] = []  # (rec, missing); None: dropped
        self.fin_count: Counter[str] = Counter()
        self.stored: dict[str, bytes] = {}
        self.problems: list[str] = []
        self.blobs_changed = threading.Condition(self.lock)
        self.connected = threading.Event()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        if tls is not None:
            client.tls_set(ca_certs=str(tls[0]), certfile=str(tls[1]), keyfile=str(tls[2]))
        client.reconnect_delay_set(1, 2)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        self.client = client

    def __enter__(self) -> Responder:
        self.client.connect(self.broker.host, self.broker.port, keepalive=5)
        sock = self.client.socket()
        assert isinstance(sock, socket.socket)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client.loop_start()
        assert self.connected.wait(10), "responder: no CONNACK + SUBACK"
        return self

    def __exit__(self, *_exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        if not rc.is_failure:
            c.subscribe(protocol.up_filter(), qos=1)

    def _on_subscribe(self, *_args: Any) -> None:
        self.connected.set()

    def _on_disconnect(self, *_args: Any) -> None:
        self.connected.clear()

    def _ack(self, device: str, ack: Ack) -> None:
        if self.garbage_acks:
            topic = protocol.ack_topic(device, ack.recording_id)
            self.client.publish(topic, b"{not json", qos=1)
            self.client.publish(topic, b'{"v": 99, "status": "stored"}', qos=1)
        self.client.publish(protocol.ack_topic(device, ack.recording_id), ack.encode(), qos=1)

    def _missing(self, rec: str, init: Init) -> tuple[int, ...]:
        have = self.chunks.get(rec, {})
        return tuple(i for i in range(init.chunk_count) if i not in have)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            topic = protocol.parse_topic(msg.topic)
        except ProtocolError as exc:
            self.problems.append(str(exc))
            return
        rec = topic.recording
        assert rec is not None
        payload = bytes(msg.payload)
        with self.lock:
            try:
                if topic.kind is Kind.INIT:
                    self._on_init(topic, payload)
                elif topic.kind is Kind.CHUNK:
                    assert topic.index is not None
                    props = getattr(msg.properties, "UserProperty", None)
                    sha = protocol.user_property(props, protocol.SHA256_PROPERTY)
                    protocol.check_chunk(payload, sha, self.inits.get(rec), topic.index)
                    self.chunks.setdefault(rec, {})[topic.index] = payload
                    self.received.append((rec, topic.index))
                elif topic.kind is Kind.FIN:
                    self._on_fin(topic, payload)
            except ProtocolError as exc:
                self.problems.append(str(exc))
            self.blobs_changed.notify_all()
        if topic.kind is Kind.CHUNK and self.on_chunk is not None:
            assert topic.index is not None
            self.on_chunk(self, rec, topic.index)

    def _on_init(self, topic: protocol.Topic, payload: bytes) -> None:
        init = Init.decode(payload, topic)
        rec = init.recording_id
        if rec in self.drop_first_init:
            self.drop_first_init.discard(rec)
            self.init_log.append((rec, None))
            return
        self.inits[rec] = init
        if rec in self.reject:
            self.init_log.append((rec, ()))
            self._ack(topic.device, Ack(rec, AckStatus.REJECTED, reason="test store says no"))
        elif rec in self.stored:
            self.init_log.append((rec, ()))
            self._ack(topic.device, Ack(rec, AckStatus.STORED, blob_sha256=init.blob_sha256))
        else:
            missing = self._missing(rec, init)
            self.init_log.append((rec, missing))
            self._ack(topic.device, Ack(rec, AckStatus.MISSING, missing=missing))

    def _on_fin(self, topic: protocol.Topic, payload: bytes) -> None:
        fin = Fin.decode(payload, topic)
        rec = fin.recording_id
        self.fin_count[rec] += 1
        init = self.inits.get(rec)
        if init is None:
            self.problems.append(f"fin before init for {rec}")
            return
        missing = self._missing(rec, init)
        if missing:
            self._ack(topic.device, Ack(rec, AckStatus.MISSING, missing=missing))
            return
        have = self.chunks.get(rec, {})
        blob = b"".join(have[i] for i in range(init.chunk_count))
        sha = hashlib.sha256(blob).hexdigest() if blob else None
        if sha != init.blob_sha256 or sha != fin.blob_sha256:
            self.problems.append(f"{rec}: assembled blob sha256 {sha} != {init.blob_sha256}")
            self._ack(topic.device, Ack(rec, AckStatus.REJECTED, reason="blob hash mismatch"))
            return
        self.stored[rec] = blob  # "durably stored" before the ack goes out
        if rec in self.other_sha_in_stored_ack:
            sha = hashlib.sha256(b"another blob " + blob).hexdigest()
        self._ack(topic.device, Ack(rec, AckStatus.STORED, blob_sha256=sha))

    def wait_stored(self, recs: set[str], timeout: float = WAIT_S) -> None:
        deadline = time.monotonic() + timeout
        with self.lock:
            while not recs <= self.stored.keys():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"not stored within {timeout} s: {sorted(recs - self.stored.keys())};"
                        f" problems {self.problems}"
                    )
                self.blobs_changed.wait(min(left, 0.5))


# -- outbox and uploader helpers ----------------------------------------------------------


class SpyOutbox(Outbox):
    """Counts mark_acked calls and notes any that come before the store's stored ack."""

    def __init__(self, root: Path, responder: Responder | None = None) -> None:
        super().__init__(root)
        self.responder = responder
        self.acked_calls: Counter[str] = Counter()
        self.premature: list[str] = []

    def mark_acked(self, recording_id: str, acked_at: float | None = None) -> OutboxEntry:
        if self.responder is not None:
            with self.responder.lock:
                if recording_id not in self.responder.stored:
                    self.premature.append(recording_id)
        self.acked_calls[recording_id] += 1
        return super().mark_acked(recording_id, acked_at)


def add_entry(outbox: Outbox, seq: int, size: int, *, device: str = DEVICE) -> tuple[str, bytes]:
    """A synthetic sealed entry: random bytes as the blob (the uploader never decrypts)."""
    rec = str(uuid.UUID(int=random.Random(seq).getrandbits(128)))
    blob = os.urandom(size)
    add_opaque_entry(outbox, seq, rec, blob, device_id=device)
    return rec, blob


def settings(broker: Broker, **overrides: Any) -> UploadConfig:
    values: dict[str, Any] = {
        "host": broker.host,
        "port": broker.port,
        "tls": False,
        "chunk_kib": 64,
        "window": 8,
        "keepalive_s": 5,
        "ack_timeout_s": 10.0,
        "telemetry_s": 30.0,
        "backoff_max_s": 2.0,
    }
    values.update(overrides)
    return UploadConfig(**values)


class Running:
    """An Uploader.run() in a thread; leaving the block sets stop and joins it."""

    def __init__(self, outbox: Outbox, cfg: UploadConfig, **kw: Any) -> None:
        self.stop = threading.Event()
        self.uploader = Uploader(
            outbox, DEVICE, cfg, stop=self.stop, **{"status_source": None, **kw}
        )
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="test-uploader")

    def _run(self) -> None:
        try:
            self.uploader.run()
        except BaseException as exc:
            self.error = exc
            raise

    def __enter__(self) -> Running:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=20)
        assert not self.thread.is_alive(), "Uploader.run() did not return after stop"
        if self.error is not None:
            raise self.error


def wait_until(cond: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def states(outbox: Outbox) -> dict[str, OutboxState]:
    return {e.recording_id: e.state for e in outbox.entries()}


# -- tests: transport ---------------------------------------------------------------------


def test_real_sealed_recordings_end_acked_with_every_byte_and_hash(
    tmp_path: Path, office: tuple[Path, str], broker: Broker
):
    from tests.test_sealing import sealed_replay

    entries, _, out = sealed_replay(
        tmp_path,
        office,
        "1 line1 offhook\n6 line1 onhook\n2 line2 offhook\n8 line2 onhook\n"
        "10 line1 offhook\n14 line1 onhook\n",
        seconds=16,
    )
    assert len(entries) == 3
    blobs = {
        json.loads((e / "manifest.json").read_text())["recording_id"]: (
            e / "recording.age"
        ).read_bytes()
        for e in entries
    }
    order = [json.loads((e / "manifest.json").read_text())["recording_id"] for e in entries]
    outbox = SpyOutbox(out / "outbox")
    with Responder(broker) as store:
        outbox.responder = store
        with Running(outbox, settings(broker, chunk_kib=4, window=4)) as run:
            store.wait_stored(set(blobs))
            wait_until(lambda: run.uploader.stats().acked == 3, "3 acks")
    assert store.stored == blobs  # byte for byte
    assert store.problems == []
    assert sum(len(b) for b in blobs.values()) == sum(
        len(store.chunks[r][i]) for r, i in store.received
    )
    assert states(outbox) == dict.fromkeys(blobs, OutboxState.ACKED)
    assert outbox.premature == [] and set(outbox.acked_calls.values()) == {1}
    # uploaded oldest first
    assert [r for r, _ in store.init_log] == order


def test_a_30_mb_blob_is_chunked_and_the_window_is_kept(tmp_path: Path, broker: Broker):
    outbox = SpyOutbox(tmp_path / "outbox")
    rec, blob = add_entry(outbox, 1, 30 * 1024 * 1024 + 123)
    with Responder(broker) as store:
        outbox.responder = store
        with Running(outbox, settings(broker, chunk_kib=256, window=6)) as run:
            store.wait_stored({rec})
            wait_until(lambda: run.uploader.stats().acked == 1, "the ack")
        stats = run.uploader.stats()
    assert store.stored[rec] == blob
    assert store.problems == []
    assert len(store.received) == protocol.chunk_count(len(blob), 256 * 1024) == 121
    assert stats.receive_maximum == 20  # mosquitto's default max_inflight_messages
    assert stats.max_in_flight == 6  # the window was used, and never exceeded
    assert stats.sent_bytes == len(blob)
    assert states(outbox) == {rec: OutboxState.ACKED}


def test_stop_mid_upload_finishes_the_chunks_in_flight_and_says_offline(
    tmp_path: Path, broker: Broker
):
    outbox = SpyOutbox(tmp_path / "outbox")
    rec, blob = add_entry(outbox, 1, 4 * 1024 * 1024)
    stopped_at: list[float] = []
    running: list[Running] = []

    def stop_uploader(store: Responder, _rec: str, _index: int) -> None:
        if len(store.received) == 10:
            stopped_at.append(time.monotonic())
            running[0].stop.set()

    with Responder(broker, on_chunk=stop_uploader) as store:
        outbox.responder = store
        with Running(outbox, settings(broker, chunk_kib=16, window=4)) as run:
            running.append(run)
            run.thread.join(10)
            assert not run.thread.is_alive()
        assert time.monotonic() - stopped_at[0] < 2
        with StatusWatcher(broker) as watcher:
            last = watcher.wait(lambda _p, r: r, "the retained status")
    assert last == protocol.OFFLINE_PAYLOAD
    sent = len(store.received)
    assert sent < protocol.chunk_count(len(blob), 16 * 1024)
    # every chunk published was PUBACKed before the disconnect: nothing left half-sent
    assert run.uploader.stats().sent_bytes == sent * 16 * 1024
    assert store.fin_count == Counter() and store.stored == {}
    assert states(outbox) == {rec: OutboxState.UPLOADING}  # resumed first next start


def test_the_brokers_receive_maximum_caps_the_window(
    tmp_path: Path, start_broker: Callable[..., Broker]
):
    broker = start_broker("max_inflight_messages 2")
    outbox = Outbox(tmp_path / "outbox")
    rec, blob = add_entry(outbox, 1, 600 * 1024)
    with (
        Responder(broker) as store,
        Running(outbox, settings(broker, chunk_kib=16, window=32)) as run,
    ):
        store.wait_stored({rec})
        wait_until(lambda: run.uploader.stats().acked == 1, "the ack")
    stats = run.uploader.stats()
    assert stats.receive_maximum == 2
    assert stats.max_in_flight == 2
    assert store.stored[rec] == blob


def test_200_small_recordings(tmp_path: Path, broker: Broker, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="uploader")
    outbox = SpyOutbox(tmp_path / "outbox")
    recs = {add_entry(outbox, seq, 1500 + seq)[0] for seq in range(1, 201)}
    t0 = time.monotonic()
    with Responder(broker) as store:
        outbox.responder = store
        with Running(outbox, settings(broker, chunk_kib=1)) as run:
            store.wait_stored(recs, timeout=60)
            wait_until(lambda: run.uploader.stats().acked == 200, "200 acks")
    elapsed = time.monotonic() - t0
    assert set(states(outbox).values()) == {OutboxState.ACKED}
    assert outbox.premature == [] and set(outbox.acked_calls.values()) == {1}
    assert store.problems == []
    assert len(store.received) == 400  # 2 chunks each, none twice
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("backlog:")]
    assert progress and progress[0].startswith("backlog: 200 recordings, 0.")
    assert progress[0].endswith("uploading seq 1 (1/200)")
    assert len(progress) <= elapsed / 5 + 1  # at most every 5 s
    # oldest first
    order = [r for r, _ in store.init_log]
    seqs = {e.recording_id: e.seq for e in outbox.entries()}
    assert [seqs[r] for r in order] == sorted(seqs[r] for r in order)


def test_a_rejected_recording_goes_back_to_sealed_and_the_rest_is_acked(
    tmp_path: Path, broker: Broker, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="uploader")
    outbox = SpyOutbox(tmp_path / "outbox")
    recs = [add_entry(outbox, seq, 20_000)[0] for seq in (1, 2, 3)]
    with Responder(broker, reject={recs[1]}) as store:
        outbox.responder = store
        with Running(outbox, settings(broker, chunk_kib=8)) as run:
            store.wait_stored({recs[0], recs[2]})
            wait_until(lambda: run.uploader.stats().acked == 2, "2 acks")
            time.sleep(1.5)  # an idle rescan or two: the rejected one is not retried at once
    assert states(outbox) == {
        recs[0]: OutboxState.ACKED,
        recs[1]: OutboxState.SEALED,
        recs[2]: OutboxState.ACKED,
    }
    assert run.uploader.stats().rejected == 1
    assert [r for r, _ in store.init_log].count(recs[1]) == 1
    assert recs[1] not in outbox.acked_calls
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("rejected seq 2" in m and "test store says no" in m for m in errors), errors


def test_a_stored_ack_naming_another_sha256_leaves_the_recording_unacked(
    tmp_path: Path, broker: Broker, caplog: pytest.LogCaptureFixture
):
    """Only the store's word that it holds *this* blob may cost the device its copy."""
    caplog.set_level(logging.INFO, logger="uploader")
    outbox = SpyOutbox(tmp_path / "outbox")
    recs = [add_entry(outbox, seq, 20_000)[0] for seq in (1, 2)]
    with Responder(broker, other_sha_in_stored_ack={recs[0]}) as store:
        outbox.responder = store
        with Running(outbox, settings(broker, chunk_kib=8)) as run:
            store.wait_stored(set(recs))
            wait_until(
                lambda: run.uploader.stats().rejected + run.uploader.stats().acked == 2,
                "both answered",
            )
    assert (run.uploader.stats().rejected, run.uploader.stats().acked) == (1, 1)
    assert states(outbox) == {recs[0]: OutboxState.SEALED, recs[1]: OutboxState.ACKED}
    assert recs[0] not in outbox.acked_calls
    assert store.problems == []
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("seq 1" in m and "the store acknowledged blob sha256" in m for m in errors), errors


def test_a_dropped_init_times_out_and_is_sent_again(
    tmp_path: Path, broker: Broker, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="uploader")
    outbox = Outbox(tmp_path / "outbox")
    rec, blob = add_entry(outbox, 7, 50_000)
    with Responder(broker, drop_first_init={rec}) as store:
        t0 = time.monotonic()
        with Running(outbox, settings(broker, ack_timeout_s=1.0)) as run:
            store.wait_stored({rec})
            wait_until(lambda: run.uploader.stats().acked == 1, "the ack")
        elapsed = time.monotonic() - t0
    assert store.stored[rec] == blob
    assert [r for r, _ in store.init_log] == [rec, rec]
    assert elapsed >= 1.0
    assert any("no ack for the init of seq 7" in r.getMessage() for r in caplog.records)


def test_malformed_acks_are_logged_and_ignored(
    tmp_path: Path, broker: Broker, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="uploader")
    outbox = Outbox(tmp_path / "outbox")
    rec, blob = add_entry(outbox, 1, 10_000)
    with Responder(broker, garbage_acks=True) as store, Running(outbox, settings(broker)) as run:
        store.wait_stored({rec})
        wait_until(lambda: run.uploader.stats().acked == 1, "the ack")
    assert store.stored[rec] == blob
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("malformed ack" in m and "not JSON" in m for m in warnings), warnings
    assert any("malformed ack" in m and "protocol version 99" in m for m in warnings), warnings


@pytest.mark.parametrize(
    ("allowed", "refused"),
    [
        ("", "broker refused init of"),  # no upload topic at all
        ("up/+/init\ntopic write linetap/{d}/up/+/fin", "broker refused chunk 0 of"),
        # ... and "resending 1 chunk(s) of … in N s", not a fin with the chunk missing
    ],
    ids=["init", "chunks"],
)
def test_puback_refusals_are_not_taken_for_delivery(
    tmp_path: Path,
    start_broker: Callable[..., Broker],
    caplog: pytest.LogCaptureFixture,
    allowed: str,
    refused: str,
):
    """The broker ACL lets the device read acks and write status, but not (all) upload."""
    caplog.set_level(logging.INFO, logger="uploader")
    acl = tmp_path / "acl"
    acl.write_text(
        "topic read linetap/+/up/#\ntopic write linetap/+/ack/#\n"  # the responder
        f"topic read linetap/{DEVICE}/ack/#\ntopic write linetap/{DEVICE}/status\n"
        + (f"topic write linetap/{DEVICE}/{allowed.format(d=DEVICE)}\n" if allowed else "")
    )
    broker = start_broker(f"acl_file {acl}")
    outbox = SpyOutbox(tmp_path / "outbox")
    rec, _ = add_entry(outbox, 1, 10_000)

    def refusals() -> int:
        return sum(
            refused in r.getMessage() and "Not authorized (0x87)" in r.getMessage()
            for r in caplog.records
        )

    with Responder(broker) as store, Running(outbox, settings(broker, backoff_max_s=1.0)) as run:
        wait_until(lambda: refusals() >= 2, "two refusals, the second after a backoff", 10)
    assert states(outbox) == {rec: OutboxState.UPLOADING}  # resumed first next time
    assert outbox.acked_calls == Counter()
    assert run.uploader.stats().acked == 0
    assert run.uploader.stats().sent_bytes == 0  # a refused chunk is not a sent one
    assert store.received == []
    assert store.fin_count == Counter()


def test_over_tls_with_the_enrolled_certificate_and_the_production_acl(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    """The deployment path: client certificate from enroll, the ACL write_broker_config
    renders (a device may only use its own topics), client id forced to the CN."""
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from headoffice import enroll
    from sealedrec.keys import public_key_b64
    from sealedrec.tlskeys import make_device_csr

    caplog.set_level(logging.INFO, logger="uploader")
    root = tmp_path / "office"
    setup = enroll.init_ca(root, "Test Office")
    key = tmp_path / "device" / "device-tls.key"
    signing = public_key_b64(ed25519.Ed25519PrivateKey.generate().public_key())
    cert = enroll.enroll_device(root, make_device_csr(key, DEVICE), signing)
    office_cert, office_key = enroll.issue_office_client(root)

    outbox = SpyOutbox(tmp_path / "outbox")
    recs = {add_entry(outbox, seq, 300_000)[0] for seq in (1, 2)}
    with run_mosquitto(tmp_path, office_broker_conf(root, tmp_path / "broker-data")) as broker:
        cfg = settings(
            broker, tls=True, ca_file=setup.ca_cert, cert_file=cert, key_file=key, telemetry_s=1.0
        )
        tls = (setup.ca_cert, office_cert, office_key)
        with Responder(broker, tls=tls, client_id=office_cert.stem) as store:
            outbox.responder = store
            with Running(outbox, cfg) as run:
                store.wait_stored(recs)
                wait_until(lambda: run.uploader.stats().acked == 2, "2 acks")
                time.sleep(1.2)  # a periodic telemetry publish too
    assert set(states(outbox).values()) == {OutboxState.ACKED}
    assert outbox.premature == []
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert refused == []  # init, chunks, fin, status: every PUBACK a success
    assert f"as {DEVICE} (p5" in broker.log()


# -- tests: crashes -----------------------------------------------------------------------


def test_broker_killed_mid_upload_and_restarted(tmp_path: Path, broker: Broker):
    outbox = SpyOutbox(tmp_path / "outbox")
    recs = {add_entry(outbox, seq, 2 * 1024 * 1024)[0]: seq for seq in range(1, 5)}
    killed = threading.Event()

    def kill_broker(store: Responder, _rec: str, _index: int) -> None:
        if len(store.received) == 40 and not killed.is_set():  # inside the 2nd recording
            os.kill(store.broker.proc.pid, signal.SIGKILL)
            killed.set()

    with Responder(broker, on_chunk=kill_broker) as store:
        outbox.responder = store
        # The uploader may be back before the responder (paho reconnects it after 1 s):
        # that init goes unanswered and is sent again after ack_timeout_s.
        cfg = settings(broker, chunk_kib=64, window=4, backoff_max_s=1.0, ack_timeout_s=2.0)
        with Running(outbox, cfg) as run:
            assert killed.wait(WAIT_S)
            broker.restart(kill=True)  # reaps the killed one, starts on the same port
            store.wait_stored(set(recs))
            wait_until(lambda: run.uploader.stats().acked == 4, "4 acks")
    assert set(states(outbox).values()) == {OutboxState.ACKED}
    assert outbox.premature == []  # never marked acked before the store said stored
    assert outbox.acked_calls == Counter(dict.fromkeys(recs, 1))  # exactly once each
    assert store.problems == []
    for rec in recs:
        assert hashlib.sha256(store.stored[rec]).hexdigest() == store.inits[rec].blob_sha256
    assert broker.log().count("=== starting mosquitto") == 2


def test_a_frozen_broker_is_given_up_on_and_the_upload_completes_after_it_thaws(
    tmp_path: Path, broker: Broker, caplog: pytest.LogCaptureFixture
):
    """SIGSTOP: the TCP connection stays up but nothing answers (a dead link's symptom)."""
    caplog.set_level(logging.INFO, logger="uploader")
    outbox = SpyOutbox(tmp_path / "outbox")
    rec, blob = add_entry(outbox, 1, 3 * 1024 * 1024)
    frozen = threading.Event()

    def freeze(store: Responder, _rec: str, _index: int) -> None:
        if len(store.received) == 10 and not frozen.is_set():
            os.kill(store.broker.proc.pid, signal.SIGSTOP)
            frozen.set()

    cfg = settings(broker, chunk_kib=16, window=4, ack_timeout_s=1.0, backoff_max_s=1.0)
    with Responder(broker, on_chunk=freeze) as store:
        outbox.responder = store
        try:
            with Running(outbox, cfg) as run:
                assert frozen.wait(WAIT_S)
                wait_until(
                    lambda: any("lost: no PUBACK" in r.getMessage() for r in caplog.records),
                    "the stalled connection given up",
                    timeout=10,
                )
                os.kill(broker.proc.pid, signal.SIGCONT)
                store.wait_stored({rec})
                wait_until(lambda: run.uploader.stats().acked == 1, "the ack")
        finally:
            os.kill(broker.proc.pid, signal.SIGCONT)
    assert store.stored[rec] == blob
    assert outbox.premature == [] and outbox.acked_calls == Counter({rec: 1})


def _daemon_conf(tmp_path: Path, broker: Broker, **upload: Any) -> Path:
    data = tmp_path / "data"
    values: dict[str, Any] = {
        "host": broker.host,
        "port": broker.port,
        "tls": False,
        "keepalive_s": 5,
        "backoff_max_s": 1.0,
        **upload,
    }
    lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in values.items())
    conf = tmp_path / "linetap.toml"
    conf.write_text(
        config_text(tmp_path / "wav", lines=1, data_dir=data) + f"\n[upload]\n{lines}\n"
    )
    return conf


def _start_daemon(
    conf: Path, log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    with log.open("ab") as fh:
        return subprocess.Popen(
            [str(VENV_BIN / "python"), "-m", "uploader.daemon", "--config", str(conf)],
            cwd=REPO,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )


def test_uploader_killed_mid_upload_resumes_without_resending_what_the_store_has(
    tmp_path: Path, broker: Broker
):
    conf = _daemon_conf(tmp_path, broker, chunk_kib=16, window=1)
    outbox = Outbox(tmp_path / "data" / "outbox")
    big, blob = add_entry(outbox, 5, 8 * 1024 * 1024)  # 512 chunks, one at a time
    n_chunks = protocol.chunk_count(len(blob), 16 * 1024)
    log = tmp_path / "uploader.log"
    victim: list[subprocess.Popen[bytes]] = []
    killed = threading.Event()

    def kill_uploader(store: Responder, _rec: str, _index: int) -> None:
        if len(store.received) >= 100 and not killed.is_set():
            victim[0].kill()
            killed.set()

    with Responder(broker, on_chunk=kill_uploader) as store:
        with reaped(_start_daemon(conf, log)) as first:
            victim.append(first)
            assert killed.wait(WAIT_S), log.read_text()
            first.wait(10)
        assert first.returncode == -signal.SIGKILL
        assert states(outbox) == {big: OutboxState.UPLOADING}
        older, _ = add_entry(outbox, 1, 5000)  # sealed, lower seq, but the crash's comes first
        with reaped(_start_daemon(conf, log)) as second:
            store.wait_stored({big, older})
            wait_until(lambda: set(states(outbox).values()) == {OutboxState.ACKED}, "both acked")
            second.send_signal(signal.SIGTERM)
            assert second.wait(15) == 0, log.read_text()
    assert store.stored[big] == blob
    received = Counter(i for r, i in store.received if r == big)
    assert set(received) == set(range(n_chunks))
    assert max(received.values()) == 1, "a chunk the store had was sent again"
    resumed = [missing for r, missing in store.init_log if r == big][1]
    assert resumed is not None and 0 < len(resumed) <= n_chunks - 100, "kill came too late"
    # after the restart exactly the chunks the store lacked were sent
    assert sorted(i for r, i in store.received[n_chunks - len(resumed) :] if r == big) == list(
        resumed
    )
    after_restart = [r for r, _ in store.init_log][1:]
    assert after_restart[:2] == [big, older]  # interrupted upload resumed first
    assert "Traceback" not in log.read_text()


class StatusWatcher:
    """A plain paho subscriber to one device's status topic."""

    def __init__(self, broker: Broker) -> None:
        self.messages: list[tuple[bytes, bool]] = []
        self.cond = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port, keepalive=5)
        self.client.subscribe(protocol.status_topic(DEVICE), qos=1)
        self.client.loop_start()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.cond:
            self.messages.append((bytes(msg.payload), bool(msg.retain)))
            self.cond.notify_all()

    def wait(self, match: Callable[[bytes, bool], bool], what: str, timeout: float = 15) -> bytes:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for payload, retained in self.messages:
                    if match(payload, retained):
                        return payload
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"no status message {what} in {timeout} s: {self.messages}"
                    )
                self.cond.wait(min(left, 0.5))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> StatusWatcher:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _online(payload: bytes, _retained: bool) -> bool:
    return bool(json.loads(payload).get("state") == "online")


def test_telemetry_is_retained_and_the_last_will_says_offline_after_a_sigkill(
    tmp_path: Path, broker: Broker
):
    conf = _daemon_conf(tmp_path, broker, telemetry_s=1.0)
    outbox = Outbox(tmp_path / "data" / "outbox")
    add_entry(outbox, 1, 3000)  # sealed; nobody answers, so it stays unacked
    status_file = tmp_path / "run" / "recorder.json"  # config_text's runtime_dir
    status_file.parent.mkdir(parents=True)
    recorder = {"lines": [{"name": "line1", "state": "idle", "led": "off"}], "faults": {}}
    status_file.write_text(json.dumps(recorder))
    log = tmp_path / "uploader.log"
    with reaped(_start_daemon(conf, log)) as proc:
        with StatusWatcher(broker) as probe:
            probe.wait(_online, "online")
        with StatusWatcher(broker) as late:  # subscribes after the fact: gets the retained one
            payload = late.wait(lambda p, r: r and _online(p, r), "retained online")
            proc.kill()
            proc.wait(10)
            late.wait(lambda p, _r: p == protocol.OFFLINE_PAYLOAD, "offline (the will)")
    doc = json.loads(payload)
    assert doc["device_id"] == DEVICE
    assert doc["time_utc"].endswith("+00:00")
    assert doc["outbox"]["counts"]["sealed"] + doc["outbox"]["counts"]["uploading"] == 1
    assert set(doc["outbox"]) >= {"counts", "bytes", "oldest_unacked_age_s", "last_ack_at"}
    assert doc["upload"]["connected"] is True
    assert doc["upload"]["backlog"] == 1
    assert set(doc["upload"]) == {
        "connected",
        "current",
        "backlog",
        "sent_bytes",
        "acked",
        "rejected",
    }
    assert isinstance(doc["disk_free_bytes"], int) and doc["disk_free_bytes"] > 0
    assert set(doc["clock_sync"]) == {"synchronized", "max_error_us", "est_error_us", "source"}
    assert doc["recorder"] == recorder
    assert set(doc["versions"]) == {"linetap", "python", "paho"}
    with StatusWatcher(broker) as after:
        gone = after.wait(lambda p, r: r, "retained after the kill")
    assert gone == protocol.OFFLINE_PAYLOAD


def _datagrams(sock: socket.socket, seconds: float) -> list[str]:
    got: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            got += sock.recv(4096).decode().splitlines()
        except TimeoutError:
            continue
    return got


def test_sigterm_sends_ready_then_a_retained_offline_status_and_exits_0(
    tmp_path: Path, broker: Broker
):
    conf = _daemon_conf(tmp_path, broker)
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(15)
    log = tmp_path / "uploader.log"
    try:
        env = {"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "1000000"}
        with reaped(_start_daemon(conf, log, env)) as proc:
            first = sock.recv(4096).decode().splitlines()
            assert "READY=1" in first, log.read_text()
            with StatusWatcher(broker) as watcher:
                watcher.wait(_online, "online")
                sock.settimeout(0.2)
                got = _datagrams(sock, 2.0)
                assert got.count("WATCHDOG=1") >= 3  # every 0.5 s
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(15) == 0, log.read_text()
                watcher.wait(lambda p, _r: p == protocol.OFFLINE_PAYLOAD, "offline")
        assert "STOPPING=1" in _datagrams(sock, 0.5)
    finally:
        sock.close()
    text = log.read_text()
    assert "connected to" in text and "uploader stopped" in text and "Traceback" not in text


def test_uploader_keeps_retrying_while_the_broker_is_down(tmp_path: Path, caplog):
    """Nobody listening: one warning, backoff, stop still honoured promptly."""
    caplog.set_level(logging.INFO, logger="uploader")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = UploadConfig(host="127.0.0.1", port=port, tls=False, backoff_max_s=1.0)
    ticks = threading.Event()
    with Running(Outbox(tmp_path / "outbox"), cfg, on_tick=ticks.set) as run:
        assert ticks.wait(10)  # first tick after the first attempt
        time.sleep(2.5)
        t0 = time.monotonic()
        run.stop.set()
        run.thread.join(5)
        assert time.monotonic() - t0 < 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "cannot connect" in warnings[0], warnings
    assert any(r.getMessage().startswith("retrying in") for r in caplog.records)


# -- tests: daemon pieces -----------------------------------------------------------------


def test_missing_tls_files_are_a_config_error_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    conf = tmp_path / "linetap.toml"
    conf.write_text(
        config_text(tmp_path / "wav", lines=1, data_dir=tmp_path / "data")
        + f'\n[upload]\ntls = true\nca_file = "{tmp_path / "nope.pem"}"\n'
    )
    assert upload_main(["--config", str(conf)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"upload.ca_file: {tmp_path / 'nope.pem'} does not exist;")
    assert err[1].startswith("upload.cert_file: required when upload.tls = true;")
    assert err[2].startswith("upload.key_file: required when upload.tls = true;")
    assert all("upload.tls = false" in line for line in err)


def test_recorder_status_file_fresh_stale_missing_and_garbage(tmp_path: Path):
    path = tmp_path / "recorder.json"
    assert read_recorder_status(path)["state"] == "unknown"
    path.write_text('{"lines": []}')
    assert read_recorder_status(path) == {"lines": []}
    old = time.time() - 30
    os.utime(path, (old, old))
    assert read_recorder_status(path)["state"] == "stale"
    path.write_text("{torn")
    assert read_recorder_status(path)["state"] == "unknown"
