"""The device side of the upload: outbox → head office over MQTT v5, plus telemetry.

One :class:`Uploader` runs in the caller's thread; paho's network loop (``loop_start``)
is the only other thread, and it only feeds a :class:`queue.Queue` of events (CONNACK,
SUBACK, PUBACK, incoming message, connection gone). Everything else — the connection,
the in-flight window, the current upload, the counters — belongs to the caller's thread.

Per recording (oldest first; entries a crash left in ``uploading/`` before any sealed
one), following :mod:`uploader.protocol`::

    claim → init → ack(missing) → chunks (≤ window in flight, each PUBACK checked)
          → fin → ack(stored, same blob sha256) → mark_acked
                  ack(missing)  → those chunks again, fin again
                  ack(rejected) → release to sealed, skip it for a while (never delete)
                  no ack within ack_timeout_s → init again (the store says where it stands)

A lost connection abandons the round; after reconnecting, the entry (still in
``uploading/``) is resumed by sending init again, so only the chunks the store lacks
travel twice. A recording is marked acked only on a ``stored`` ack whose blob sha256 is
the manifest's.

Each connection is a fresh paho client (client id = device id, clean_start = False and
a session expiry, so acks published while the device was away are delivered on
reconnect). paho's own reconnect is off: this module reconnects with exponential
backoff and jitter, waiting on the stop event.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import queue
import random
import shutil
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal

import paho.mqtt
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

import firmware
from buffers.outbox import (
    Outbox,
    OutboxEntry,
    OutboxEntryNotFound,
    OutboxError,
    OutboxState,
    OutboxStateError,
)
from firmware.clock import read_clock_sync
from firmware.config import UploadConfig
from uploader import protocol
from uploader.protocol import Ack, AckStatus, Fin, Init, Kind, ProtocolError

log = logging.getLogger(__name__)

# Blob file of an outbox entry by manifest["container"] (None: a discarded call, no blob).
BLOB_FILES = {"age": "recording.age", "segments": "recording.segments"}
MANIFEST_FILE = "manifest.json"

SESSION_EXPIRY_S = 7 * 24 * 3600  # broker keeps our session (and queued acks) a week
BACKOFF_MIN_S = 0.5  # first reconnect / resend delay; doubles up to backoff_max_s
STABLE_CONNECTION_S = 10.0  # a connection up this long resets the reconnect backoff
CONNECT_TIMEOUT_S = 10.0  # TCP/TLS connect, then CONNACK + SUBACK, each at most this
DISCONNECT_WAIT_S = 3.0  # clean disconnect: wait this long for paho to close the socket
STOP_DRAIN_S = 5.0  # on stop: wait this long for PUBACKs of what is in flight
POLL_S = 0.25  # longest single wait on the event queue (stop, watchdog in between)
IDLE_RESCAN_S = 1.0  # nothing to upload: look at the outbox again this often
STATUS_MIN_INTERVAL_S = 1.0  # state-change telemetry at most this often
BACKLOG_LOG_INTERVAL_S = 5.0  # "backlog: …" progress line at most this often
SKIP_AFTER_REJECT_S = 3600.0  # a rejected / locally broken entry is retried after this
TICK_INTERVAL_S = 1.0  # on_tick (watchdog) at least this often while waiting

ClientFactory = Callable[[], mqtt.Client]


# -- events from paho's network thread ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Connack:
    gen: int
    code: int
    reason: str
    session_present: bool
    receive_maximum: int | None
    maximum_packet_size: int | None


@dataclass(frozen=True, slots=True)
class _Suback:
    gen: int
    mid: int
    codes: tuple[tuple[int, str], ...]


@dataclass(frozen=True, slots=True)
class _Puback:
    gen: int
    mid: int
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class _Incoming:
    gen: int
    topic: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class _Gone:
    gen: int
    reason: str


_Event = _Connack | _Suback | _Puback | _Incoming | _Gone


class _Lost(Exception):
    """The connection is gone (or unusable); the caller reconnects with backoff."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Stopping(Exception):
    """The stop event is set."""


class _LocalProblem(Exception):
    """An outbox entry this device cannot upload as it is (bad manifest, blob mismatch)."""


# -- state owned by the upload thread -------------------------------------------------


@dataclass(slots=True)
class _Sent:
    kind: Literal["init", "chunk", "fin", "status"]
    rec: str | None = None
    index: int = -1
    nbytes: int = 0


class _Connection:
    def __init__(self, gen: int, client: mqtt.Client, window: int) -> None:
        self.gen = gen
        self.client = client
        self.limit = window
        self.connacked = False
        self.ready = False  # CONNACK ok and the ack subscription granted
        self.sub_mid: int | None = None
        self.ready_at = 0.0
        self.receive_maximum: int | None = None
        self.session_present = False
        self.gone = False  # paho reported the connection closed
        self.inflight: dict[int, _Sent] = {}
        self.last_puback = time.monotonic()

    def chunks_in_flight(self) -> int:
        return sum(1 for s in self.inflight.values() if s.kind == "chunk")


@dataclass(frozen=True, slots=True)
class _Job:
    entry: OutboxEntry
    manifest: dict[str, Any]
    blob: Path | None
    init: Init

    @property
    def rec(self) -> str:
        return self.entry.recording_id


@dataclass(frozen=True, slots=True)
class UploadStats:
    """A snapshot of the uploader's counters (safe to read from any thread)."""

    connected: bool
    current: str | None
    backlog: int
    sent_bytes: int
    acked: int
    rejected: int
    max_in_flight: int
    receive_maximum: int | None


class Uploader:
    """Ships sealed outbox entries to the head office; see the module docstring."""

    def __init__(
        self,
        outbox: Outbox,
        device_id: str,
        settings: UploadConfig,
        *,
        status_source: Callable[[], dict[str, Any]] | None,
        stop: threading.Event,
        client_factory: ClientFactory | None = None,
        on_tick: Callable[[], None] | None = None,
    ) -> None:
        """``client_factory`` (tests only) makes one paho client per connection attempt;
        it must use CallbackAPIVersion.VERSION2, MQTT v5 and reconnect_on_failure=False.
        ``on_tick`` (the daemon's watchdog) is called from the upload loop at least every
        second, the first time after the first connection attempt has finished.
        """
        protocol.status_topic(device_id)  # validates the id (ProtocolError)
        self._outbox = outbox
        self._device = device_id
        self._settings = settings
        self._status_source = status_source
        self._stop = stop
        self._client_factory = client_factory
        self._on_tick = on_tick
        self._chunk_size = settings.chunk_kib * 1024
        self._events: queue.Queue[_Event] = queue.Queue()
        self._gen = 0
        self._conn: _Connection | None = None
        self._acks: deque[Ack] = deque()
        self._current: _Job | None = None
        self._request_failed: str | None = None
        self._failed_chunks: list[int] = []
        self._skip: dict[str, float] = {}
        self._queue: deque[OutboxEntry] = deque()
        self._drain_total = 0
        self._drain_done = 0
        self._connect_attempts = 0
        self._send_failures = 0
        self._outbox_failures = 0
        self._last_failure: str | None = None
        self._status_dirty = True
        self._next_status = 0.0
        self._last_status = -STATUS_MIN_INTERVAL_S
        self._last_backlog_log = -BACKLOG_LOG_INTERVAL_S
        self._in_tick = False
        self._lock = threading.Lock()  # guards the counters read by stats()
        self._backlog = 0
        self._sent_bytes = 0
        self._acked = 0
        self._rejected = 0
        self._max_in_flight = 0
        self._receive_maximum: int | None = None  # from the last CONNACK

    # -- public -------------------------------------------------------------------------

    def stats(self) -> UploadStats:
        with self._lock:
            conn = self._conn
            return UploadStats(
                connected=conn is not None and conn.ready,
                current=self._current.rec if self._current else None,
                backlog=self._backlog,
                sent_bytes=self._sent_bytes,
                acked=self._acked,
                rejected=self._rejected,
                max_in_flight=self._max_in_flight,
                receive_maximum=self._receive_maximum,
            )

    def run(self) -> None:
        """Upload until the stop event is set; then disconnect cleanly and return."""
        s = self._settings
        log.info(
            "uploader starting: device %s, broker %s:%d (%s), chunks %d KiB, window %d, outbox %s",
            self._device,
            s.host,
            s.port,
            "TLS" if s.tls else "plain TCP",
            s.chunk_kib,
            s.window,
            self._outbox.root,
        )
        first_attempt = True
        try:
            while not self._stop.is_set():
                try:
                    if self._conn is None:
                        connected = self._connect()
                        if first_attempt:
                            first_attempt = False
                            self._tick()
                        if not connected:
                            self._wait(self._backoff("connect"))
                            continue
                    self._work()
                except _Lost as lost:
                    self._connection_lost(lost.reason)
                    self._wait(self._backoff("connect"))
                except OutboxError as exc:
                    log.error("outbox problem: %s", exc)
                    self._queue.clear()
                    self._wait(self._backoff("outbox"))
                else:
                    self._outbox_failures = 0
        except _Stopping:
            pass
        finally:
            self._shutdown()

    def telemetry(self) -> dict[str, Any]:
        """The status document published (retained) on ``linetap/{device}/status``."""
        now = time.time()
        outbox: dict[str, Any]
        stats = self.stats()
        backlog = stats.backlog
        try:
            st = self._outbox.stats(now)
            outbox = {
                "counts": {state.value: n for state, n in st.counts.items()},
                "bytes": {state.value: n for state, n in st.bytes.items()},
                "unacked_count": st.unacked_count,
                "unacked_bytes": st.unacked_bytes,
                "oldest_unacked_age_s": (
                    round(st.oldest_unacked_age_s, 1)
                    if st.oldest_unacked_age_s is not None
                    else None
                ),
                "last_ack_at": _iso(st.last_ack_at) if st.last_ack_at is not None else None,
            }
            backlog = st.unacked_count
        except OutboxError as exc:
            outbox = {"error": str(exc)}
        try:
            free: int | None = shutil.disk_usage(self._outbox.root).free
        except OSError:
            free = None
        return {
            "state": "online",
            "device_id": self._device,
            "time_utc": _iso(now),
            "outbox": outbox,
            "upload": {
                "connected": stats.connected,
                "current": stats.current,
                "backlog": backlog,
                "sent_bytes": stats.sent_bytes,
                "acked": stats.acked,
                "rejected": stats.rejected,
            },
            "disk_free_bytes": free,
            "clock_sync": read_clock_sync().as_dict(),
            "recorder": self._recorder_status(),
            "versions": {
                "linetap": firmware.__version__,
                "python": platform.python_version(),
                "paho": paho.mqtt.__version__,
            },
        }

    # -- connection ---------------------------------------------------------------------

    def _make_client(self, gen: int) -> mqtt.Client:
        s = self._settings
        if self._client_factory is not None:
            client = self._client_factory()
            if client.callback_api_version is not CallbackAPIVersion.VERSION2:
                raise ValueError(
                    "client_factory must make clients with CallbackAPIVersion.VERSION2"
                )
        else:
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=self._device,
                protocol=mqtt.MQTTv5,
                reconnect_on_failure=False,
            )
        paho_log = logging.getLogger(f"{__name__}.paho")
        if paho_log.isEnabledFor(logging.DEBUG):
            # Only when debugging: paho 2.2 also logs a spurious ERROR ("Client is not
            # connected") at every clean disconnect.
            client.enable_logger(paho_log)
        client.max_inflight_messages = s.window
        client.will_set(
            protocol.status_topic(self._device),
            protocol.OFFLINE_PAYLOAD,
            qos=protocol.QOS,
            retain=True,
        )
        if s.tls:
            client.tls_set(
                ca_certs=str(s.ca_file) if s.ca_file else None,
                certfile=str(s.cert_file) if s.cert_file else None,
                keyfile=str(s.key_file) if s.key_file else None,
            )
        events = self._events

        def on_connect(
            _c: mqtt.Client,
            _u: Any,
            flags: mqtt.ConnectFlags,
            rc: ReasonCode,
            props: Properties | None,
        ) -> None:
            events.put(
                _Connack(
                    gen,
                    rc.value,
                    str(rc),
                    flags.session_present,
                    getattr(props, "ReceiveMaximum", None),
                    getattr(props, "MaximumPacketSize", None),
                )
            )

        def on_subscribe(
            _c: mqtt.Client, _u: Any, mid: int, codes: list[ReasonCode], _p: Properties | None
        ) -> None:
            events.put(_Suback(gen, mid, tuple((c.value, str(c)) for c in codes)))

        def on_publish(_c: mqtt.Client, _u: Any, mid: int, rc: ReasonCode, _p: Properties) -> None:
            events.put(_Puback(gen, mid, rc.value, str(rc)))

        def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
            events.put(_Incoming(gen, msg.topic, bytes(msg.payload)))

        def on_disconnect(
            _c: mqtt.Client,
            _u: Any,
            flags: mqtt.DisconnectFlags,
            rc: ReasonCode,
            _p: Properties | None,
        ) -> None:
            if flags.is_disconnect_packet_from_server:
                reason = f"the broker sent DISCONNECT: {rc} (0x{rc.value:02x})"
            elif rc.value == 0:
                reason = "closed"
            elif rc.value == 0x80:  # paho's "connection lost" / socket error
                reason = "the connection broke (broker gone or network down)"
            else:
                reason = f"{rc} (0x{rc.value:02x})"
            events.put(_Gone(gen, reason))

        client.on_connect = on_connect
        client.on_subscribe = on_subscribe
        client.on_publish = on_publish
        client.on_message = on_message
        client.on_disconnect = on_disconnect
        return client

    def _connect(self) -> bool:
        """One connection attempt: connect, CONNACK, subscribe to acks, SUBACK."""
        s = self._settings
        self._gen += 1
        where = f"{s.host}:{s.port}"
        try:
            client = self._make_client(self._gen)
            client.connect_timeout = CONNECT_TIMEOUT_S
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = SESSION_EXPIRY_S
            client.connect(
                s.host, s.port, keepalive=s.keepalive_s, clean_start=False, properties=props
            )
        except (OSError, ValueError) as exc:
            self._attempt_failed(f"cannot connect to {where}: {_describe(exc)}")
            return False
        _no_delay(client)
        conn = _Connection(self._gen, client, s.window)
        with self._lock:
            self._conn = conn
        client.loop_start()
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        try:
            while not conn.ready:
                if self._stop.is_set():
                    raise _Stopping
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    what = "SUBACK" if conn.connacked else "CONNACK"
                    raise _Lost(f"no {what} from {where} within {CONNECT_TIMEOUT_S:g} s")
                self._pump(min(remaining, POLL_S))
        except _Lost as lost:
            self._teardown(conn)
            self._attempt_failed(f"cannot connect to {where}: {lost.reason}")
            return False
        return True

    def _on_connack(self, conn: _Connection, ev: _Connack) -> None:
        if ev.code >= 0x80:
            hint = ""
            if ev.code in (0x86, 0x87, 0x8C):
                hint = " (check the device certificate / broker ACL for this device id)"
            raise _Lost(f"broker refused the connection: {ev.reason} (0x{ev.code:02x}){hint}")
        conn.connacked = True
        conn.receive_maximum = ev.receive_maximum
        with self._lock:
            self._receive_maximum = ev.receive_maximum
        if ev.receive_maximum is not None:
            conn.limit = max(1, min(self._settings.window, ev.receive_maximum))
        if ev.maximum_packet_size is not None and ev.maximum_packet_size < self._chunk_size + 1024:
            log.error(
                "broker accepts packets of at most %d bytes, but upload.chunk_kib = %d "
                "needs %d: lower upload.chunk_kib or raise max_packet_size on the broker",
                ev.maximum_packet_size,
                self._settings.chunk_kib,
                self._chunk_size + 1024,
            )
        conn.session_present = ev.session_present
        rc, mid = conn.client.subscribe(protocol.ack_filter(self._device), qos=protocol.QOS)
        if rc != mqtt.MQTT_ERR_SUCCESS or mid is None:
            raise _Lost(f"subscribe failed: {mqtt.error_string(rc)}")
        conn.sub_mid = mid

    def _on_suback(self, conn: _Connection, ev: _Suback) -> None:
        if ev.mid != conn.sub_mid:
            return
        bad = [(code, name) for code, name in ev.codes if code >= 0x80]
        if bad or not ev.codes:
            code, name = bad[0] if bad else (0x80, "no reason code")
            raise _Lost(
                f"broker refused the subscription to {protocol.ack_filter(self._device)}: "
                f"{name} (0x{code:02x}); the broker ACL must let this device read its acks"
            )
        conn.ready = True
        conn.ready_at = time.monotonic()
        self._last_failure = None
        s = self._settings
        log.info(
            "connected to %s:%d as %s (session present: %s; receive maximum %s; window %d)",
            s.host,
            s.port,
            self._device,
            "yes" if conn.session_present else "no",
            conn.receive_maximum if conn.receive_maximum is not None else "not set",
            conn.limit,
        )
        self._status_dirty = True

    def _attempt_failed(self, reason: str) -> None:
        if reason != self._last_failure:
            log.warning("%s", reason)
            self._last_failure = reason
        else:
            log.debug("%s (again)", reason)

    def _connection_lost(self, reason: str) -> None:
        conn = self._conn
        if conn is None:
            return
        s = self._settings
        if conn.ready:
            log.warning("connection to %s:%d lost: %s", s.host, s.port, reason)
            if time.monotonic() - conn.ready_at >= STABLE_CONNECTION_S:
                self._connect_attempts = 0
            self._last_failure = None
        else:
            self._attempt_failed(f"cannot connect to {s.host}:{s.port}: {reason}")
        self._teardown(conn)
        self._queue.clear()  # re-list: the interrupted entry (uploading/) comes first
        self._acks.clear()
        self._status_dirty = True

    def _teardown(self, conn: _Connection, *, clean: bool = False) -> None:
        """Disconnect (if still connected) and stop paho's thread; bounded.

        Unless ``clean`` (stopping), the DISCONNECT asks the broker to publish our will
        ("offline"): a connection given up on (stalled, refused) is not a clean exit.
        """
        client = conn.client
        reason = None
        if not clean:
            reason = ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message")
        gone = conn.gone or client.disconnect(reason) == mqtt.MQTT_ERR_NO_CONN
        deadline = time.monotonic() + DISCONNECT_WAIT_S
        while not gone and time.monotonic() < deadline:
            try:
                ev = self._events.get(timeout=min(POLL_S, max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                continue
            gone = isinstance(ev, _Gone) and ev.gen == conn.gen
        if not gone:
            sock = client.socket()
            if isinstance(sock, socket.socket):
                # Wakes paho's select() with EOF so its thread ends now, not at keepalive.
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError as exc:
                    log.debug("socket shutdown: %s", exc)
        client.loop_stop()
        with self._lock:
            if self._conn is conn:
                self._conn = None

    def _backoff(self, what: Literal["connect", "outbox", "send"]) -> float:
        """The next delay of one exponential backoff (with jitter), counting the attempt."""
        if what == "connect":
            attempts = self._connect_attempts
            self._connect_attempts += 1
        elif what == "outbox":
            attempts = self._outbox_failures
            self._outbox_failures += 1
        else:
            attempts = self._send_failures
            self._send_failures += 1
        base = min(self._settings.backoff_max_s, BACKOFF_MIN_S * 2.0 ** min(attempts, 30))
        delay = base / 2 + random.uniform(0, base / 2)
        if what != "send":
            # Once at the ceiling the delay no longer changes: say so once, not every time.
            ceiling = self._settings.backoff_max_s
            capped = attempts > 0 and BACKOFF_MIN_S * 2.0 ** min(attempts - 1, 30) >= ceiling
            log.log(logging.DEBUG if capped else logging.INFO, "retrying in %.1f s", delay)
        return delay

    def _wait(self, seconds: float) -> None:
        """Wait on the stop event, ticking; raises _Stopping when it is set."""
        deadline = time.monotonic() + seconds
        while True:
            remaining = deadline - time.monotonic()
            if self._stop.wait(min(TICK_INTERVAL_S, max(0.0, remaining))):
                raise _Stopping
            self._tick()
            if remaining <= TICK_INTERVAL_S:
                return

    # -- events -------------------------------------------------------------------------

    def _pump(self, timeout: float) -> None:
        """Handle network events: wait up to ``timeout`` for one, then take all queued."""
        try:
            ev = self._events.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return
        while True:
            self._handle(ev)
            try:
                ev = self._events.get_nowait()
            except queue.Empty:
                return

    def _handle(self, ev: _Event) -> None:
        conn = self._conn
        if conn is None or ev.gen != conn.gen:
            return  # a previous connection's leftovers
        if isinstance(ev, _Gone):
            conn.gone = True
            raise _Lost(ev.reason)
        if isinstance(ev, _Connack):
            self._on_connack(conn, ev)
        elif isinstance(ev, _Suback):
            self._on_suback(conn, ev)
        elif isinstance(ev, _Puback):
            self._on_puback(conn, ev)
        else:
            self._on_incoming(ev)

    def _on_puback(self, conn: _Connection, ev: _Puback) -> None:
        sent = conn.inflight.pop(ev.mid, None)
        if sent is None:
            return
        conn.last_puback = time.monotonic()
        if ev.code >= 0x80:
            what = sent.kind if sent.index < 0 else f"chunk {sent.index}"
            log.warning(
                "broker refused %s%s: %s (0x%02x)",
                what,
                f" of {sent.rec}" if sent.rec else "",
                ev.reason,
                ev.code,
            )
            if sent.kind == "chunk":
                self._failed_chunks.append(sent.index)
            elif sent.kind in ("init", "fin"):
                self._request_failed = f"{ev.reason} (0x{ev.code:02x})"
            return
        if sent.kind == "chunk":
            with self._lock:
                self._sent_bytes += sent.nbytes

    def _on_incoming(self, ev: _Incoming) -> None:
        try:
            topic = protocol.parse_topic(ev.topic)
        except ProtocolError as exc:
            log.warning("ignoring message on %s: %s", ev.topic[:120], exc)
            return
        if topic.kind is not Kind.ACK or topic.device != self._device:
            log.debug("ignoring message on %s", ev.topic)
            return
        try:
            ack = Ack.decode(ev.payload, topic)
        except ProtocolError as exc:
            log.warning("malformed ack on %s ignored: %s", ev.topic, exc)
            return
        job = self._current
        if job is None or ack.recording_id != job.rec:
            log.debug(
                "ack %s for %s ignored (not the current upload)", ack.status, ack.recording_id
            )
            return
        self._acks.append(ack)

    # -- publishing ---------------------------------------------------------------------

    def _publish(
        self,
        topic: str,
        payload: bytes,
        sent: _Sent,
        *,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> None:
        conn = self._conn
        if conn is None or not conn.ready:
            raise _Lost("not connected")
        deadline = time.monotonic() + self._settings.ack_timeout_s
        while len(conn.inflight) >= conn.limit:
            if time.monotonic() > deadline:
                raise _Lost(f"no PUBACK from the broker for {self._settings.ack_timeout_s:g} s")
            self._pump(POLL_S)
        info = conn.client.publish(
            topic, payload, qos=protocol.QOS, retain=retain, properties=properties
        )
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise _Lost(f"publish failed: {mqtt.error_string(info.rc)}")
        if not conn.inflight:
            conn.last_puback = time.monotonic()
        conn.inflight[info.mid] = sent
        if len(conn.inflight) > self._max_in_flight:
            with self._lock:
                self._max_in_flight = len(conn.inflight)

    def _tick(self) -> None:
        """Watchdog callback and telemetry when due (not re-entrant)."""
        if self._in_tick:
            return
        self._in_tick = True
        try:
            now = time.monotonic()
            if self._on_tick is not None:
                self._on_tick()
            conn = self._conn
            if conn is None or not conn.ready or self._stop.is_set():
                return
            due = now >= self._next_status
            if due or (self._status_dirty and now - self._last_status >= STATUS_MIN_INTERVAL_S):
                self._status_dirty = False
                self._last_status = now
                self._next_status = now + self._settings.telemetry_s
                payload = json.dumps(self.telemetry(), sort_keys=True).encode()
                self._publish(
                    protocol.status_topic(self._device), payload, _Sent("status"), retain=True
                )
        finally:
            self._in_tick = False

    def _recorder_status(self) -> dict[str, Any]:
        if self._status_source is None:
            return {"state": "unknown"}
        try:
            return self._status_source()
        except (OSError, ValueError, TypeError, KeyError) as exc:
            return {"state": "unknown", "error": str(exc)[:200]}

    # -- the upload loop ----------------------------------------------------------------

    def _work(self) -> None:
        entry = self._next_entry()
        if entry is None:
            deadline = time.monotonic() + IDLE_RESCAN_S
            while (remaining := deadline - time.monotonic()) > 0:
                if self._stop.is_set():
                    raise _Stopping
                self._tick()
                self._pump(min(remaining, POLL_S))
            return
        self._upload(entry)

    def _next_entry(self) -> OutboxEntry | None:
        if not self._queue:
            now = time.monotonic()
            for rec, until in list(self._skip.items()):
                if until <= now:
                    del self._skip[rec]
            unacked = [
                *self._outbox.entries(OutboxState.UPLOADING),
                *self._outbox.entries(OutboxState.SEALED),
            ]
            todo = [e for e in unacked if e.recording_id not in self._skip]
            with self._lock:
                self._backlog = len(unacked)
            self._queue.extend(todo)
            self._drain_total = len(todo)
            self._drain_done = 0
        if not self._queue:
            return None
        entry = self._queue.popleft()
        self._drain_done += 1
        now = time.monotonic()
        if self._drain_total > 1 and now - self._last_backlog_log >= BACKLOG_LOG_INTERVAL_S:
            self._last_backlog_log = now
            left = [entry, *self._queue]
            log.info(
                "backlog: %d recordings, %.1f MB; uploading seq %d (%d/%d)",
                len(left),
                sum(e.bytes for e in left) / 1e6,
                entry.seq,
                self._drain_done,
                self._drain_total,
            )
        return entry

    def _upload(self, entry: OutboxEntry) -> None:
        rec = entry.recording_id
        try:
            claimed = self._outbox.claim(rec)
        except OutboxStateError:
            log.debug("%s is already acked", rec)
            return
        except OutboxEntryNotFound:
            log.debug("%s left the outbox before its upload", rec)
            return
        try:
            job = self._prepare(claimed)
        except _LocalProblem as exc:
            log.error(
                "cannot upload seq %d (%s): %s; keeping it, retrying in %.0f min",
                claimed.seq,
                rec,
                exc,
                SKIP_AFTER_REJECT_S / 60,
            )
            self._set_aside(rec)
            return
        self._set_current(job)
        try:
            if job.blob is None:
                self._transfer(job, None)
            else:
                try:
                    fh = job.blob.open("rb")
                except OSError as exc:
                    raise _LocalProblem(f"cannot open {job.blob}: {exc}") from exc
                with fh:
                    self._transfer(job, fh)
        except _LocalProblem as exc:
            log.error("cannot upload seq %d (%s): %s; keeping it", claimed.seq, rec, exc)
            self._set_aside(rec)
        finally:
            self._set_current(None)

    def _prepare(self, entry: OutboxEntry) -> _Job:
        path = entry.path / MANIFEST_FILE
        try:
            manifest = json.loads(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise _LocalProblem(f"manifest {path} unreadable: {exc}") from exc
        if not isinstance(manifest, dict):
            raise _LocalProblem(f"manifest {path} is not a JSON object")
        try:
            protocol.init_topic(self._device, entry.recording_id)
        except ProtocolError as exc:
            raise _LocalProblem(str(exc)) from exc
        if manifest.get("recording_id") != entry.recording_id:
            raise _LocalProblem(
                f"manifest {path} is for recording {manifest.get('recording_id')!r}"
            )
        if manifest.get("device_id") != self._device:
            raise _LocalProblem(
                f"manifest device_id {manifest.get('device_id')!r} is not this uploader's "
                f"device id {self._device!r}: set device_id in linetap.toml to the id the "
                "recorder used (the broker only lets a device publish under its own id)"
            )
        container = manifest.get("container")
        blob: Path | None = None
        size = 0
        sha: str | None = None
        if container is not None:
            name = BLOB_FILES.get(container) if isinstance(container, str) else None
            if name is None:
                raise _LocalProblem(
                    f"manifest container {container!r} is not one of {list(BLOB_FILES)}"
                )
            blob = entry.path / name
            try:
                size = blob.stat().st_size
            except OSError as exc:
                raise _LocalProblem(f"blob {blob}: {exc}") from exc
            if size != manifest.get("blob_bytes"):
                raise _LocalProblem(
                    f"blob {blob} is {size} bytes, the manifest says {manifest.get('blob_bytes')!r}"
                )
            sha = manifest.get("blob_sha256")
            if not isinstance(sha, str) or len(sha) != 64:
                raise _LocalProblem("manifest blob_sha256 missing or not a SHA-256")
        init = Init(entry.recording_id, manifest, size, sha, self._chunk_size)
        if len(init.encode()) > protocol.MAX_JSON_BYTES:
            raise _LocalProblem(
                f"manifest too large for an init ({protocol.MAX_JSON_BYTES} bytes max)"
            )
        return _Job(entry, manifest, blob, init)

    def _transfer(self, job: _Job, fh: BinaryIO | None) -> None:
        """init / chunks / fin rounds until the store says stored or rejected."""
        ack: Ack | None = None
        after_fin = False  # is ``ack`` the answer to a fin?
        fin_rounds = 0
        while True:
            if ack is None:
                ack = self._request(job, "init")
                after_fin = False
                continue
            if ack.status is AckStatus.STORED:
                if ack.blob_sha256 != job.init.blob_sha256:
                    self._rejected_by_store(
                        job,
                        f"the store acknowledged blob sha256 {ack.blob_sha256}, "
                        f"the manifest says {job.init.blob_sha256}",
                    )
                    return
                entry = self._outbox.mark_acked(job.rec)
                with self._lock:
                    self._acked += 1
                    self._backlog = max(0, self._backlog - 1)
                self._send_failures = 0
                self._status_dirty = True
                log.info(
                    "seq %d stored by the head office: %s (%d bytes); marked acked",
                    entry.seq,
                    job.rec,
                    job.init.blob_bytes,
                )
                return
            if ack.status is AckStatus.REJECTED:
                self._rejected_by_store(job, ack.reason or "no reason given")
                return
            wanted = [i for i in ack.missing if i < job.init.chunk_count]
            if len(wanted) != len(ack.missing):
                log.warning(
                    "store asked for chunks of %s beyond its %d chunks; ignoring those",
                    job.rec,
                    job.init.chunk_count,
                )
            if after_fin:
                fin_rounds += 1
                if fin_rounds > 1 or not wanted:
                    # The store keeps missing chunks it had every chance to get: do not
                    # loop at network speed (a store problem shows in its own logs).
                    delay = self._backoff("send")
                    log.warning(
                        "store still lacks %d chunk(s) of %s after fin (round %d); "
                        "resending in %.1f s",
                        len(wanted),
                        job.rec,
                        fin_rounds,
                        delay,
                    )
                    self._wait(delay)
            if wanted:
                assert fh is not None  # chunk_count > 0 means there is a blob
                self._send_chunks(job, fh, wanted)
            ack = self._request(job, "fin")
            after_fin = True

    def _request(self, job: _Job, what: Literal["init", "fin"]) -> Ack | None:
        """Publish init or fin and wait for the store's ack; None: ask again with init."""
        self._acks.clear()
        self._request_failed = None
        if what == "init":
            topic = protocol.init_topic(self._device, job.rec)
            payload = job.init.encode()
        else:
            topic = protocol.fin_topic(self._device, job.rec)
            payload = Fin(job.rec, job.init.blob_sha256, job.init.chunk_count).encode()
        self._publish(topic, payload, _Sent(what, job.rec))
        timeout = self._settings.ack_timeout_s
        deadline = time.monotonic() + timeout
        while True:
            if self._stop.is_set():
                raise _Stopping
            if self._acks:
                return self._acks.popleft()
            if self._request_failed is not None:
                delay = self._backoff("send")
                log.info("resending init of %s in %.1f s", job.rec, delay)
                self._wait(delay)
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.warning(
                    "no ack for the %s of seq %d (%s) within %g s; sending init again",
                    what,
                    job.entry.seq,
                    job.rec,
                    timeout,
                )
                return None
            self._tick()
            self._pump(min(remaining, POLL_S))

    def _send_chunks(self, job: _Job, fh: BinaryIO, indices: Iterable[int]) -> None:
        """Publish the chunks, ≤ window in flight, until every one has a good PUBACK."""
        conn = self._conn
        if conn is None:
            raise _Lost("not connected")
        pending = deque(sorted(set(indices)))
        self._failed_chunks.clear()
        timeout = self._settings.ack_timeout_s
        while pending or self._failed_chunks or conn.chunks_in_flight():
            if self._stop.is_set():
                raise _Stopping
            if self._failed_chunks:
                pending = deque(sorted(set(pending).union(self._failed_chunks)))
                self._failed_chunks.clear()
                delay = self._backoff("send")
                log.info("resending %d chunk(s) of %s in %.1f s", len(pending), job.rec, delay)
                self._wait(delay)
            self._tick()
            while pending and len(conn.inflight) < conn.limit:
                index = pending.popleft()
                data = self._read_chunk(job, fh, index)
                props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                props.UserProperty = [(protocol.SHA256_PROPERTY, hashlib.sha256(data).hexdigest())]
                self._publish(
                    protocol.chunk_topic(self._device, job.rec, index),
                    data,
                    _Sent("chunk", job.rec, index, len(data)),
                    properties=props,
                )
            if conn.inflight and time.monotonic() - conn.last_puback > timeout:
                raise _Lost(f"no PUBACK from the broker for {timeout:g} s")
            self._pump(POLL_S)

    def _read_chunk(self, job: _Job, fh: BinaryIO, index: int) -> bytes:
        size = job.init.chunk_size
        expected = min(size, job.init.blob_bytes - index * size)
        try:
            fh.seek(index * size)
            data = fh.read(expected)
        except OSError as exc:
            raise _LocalProblem(f"reading chunk {index} of {job.blob}: {exc}") from exc
        if len(data) != expected:
            raise _LocalProblem(
                f"{job.blob} changed: chunk {index} is {len(data)} bytes, expected {expected}"
            )
        return data

    def _rejected_by_store(self, job: _Job, reason: str) -> None:
        log.error(
            "head office rejected seq %d (%s): %s; keeping it unacked (retry in %.0f min)",
            job.entry.seq,
            job.rec,
            reason,
            SKIP_AFTER_REJECT_S / 60,
        )
        with self._lock:
            self._rejected += 1
        self._set_aside(job.rec)

    def _set_aside(self, rec: str) -> None:
        """Back to sealed/ and skipped for a while; never deleted, never acked."""
        self._skip[rec] = time.monotonic() + SKIP_AFTER_REJECT_S
        self._outbox.release(rec)
        self._status_dirty = True

    def _set_current(self, job: _Job | None) -> None:
        with self._lock:
            self._current = job
        self._acks.clear()
        self._status_dirty = True

    # -- stopping -----------------------------------------------------------------------

    def _shutdown(self) -> None:
        conn = self._conn
        if conn is not None:
            if conn.ready:
                try:
                    self._drain(conn, STOP_DRAIN_S)
                    self._publish(
                        protocol.status_topic(self._device),
                        protocol.OFFLINE_PAYLOAD,
                        _Sent("status"),
                        retain=True,
                    )
                    self._drain(conn, STOP_DRAIN_S)
                except _Lost as lost:
                    log.info("connection closed while stopping: %s", lost.reason)
            self._teardown(conn, clean=True)
        s = self.stats()
        log.info(
            "uploader stopped: %d acked, %d rejected, %d bytes of chunks sent",
            s.acked,
            s.rejected,
            s.sent_bytes,
        )

    def _drain(self, conn: _Connection, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while conn.inflight and (remaining := deadline - time.monotonic()) > 0:
            self._pump(min(remaining, POLL_S))
        if conn.inflight:
            log.warning("stopping with %d publish(es) unacknowledged", len(conn.inflight))


def _no_delay(client: mqtt.Client) -> None:
    """TCP_NODELAY: init/ack/fin is request-response with small packets, and Nagle plus
    delayed ACKs would add ~40 ms to every exchange (paho does not set it)."""
    sock = client.socket()
    if isinstance(sock, socket.socket):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            log.debug("TCP_NODELAY not set: %s", exc)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, OSError) else f"{type(exc).__name__}: {text}"
