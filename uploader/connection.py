"""The uploader's connection to the broker: connect, the in-flight window, reconnect backoff.

Each connection is a fresh paho client (client id = device id, clean_start = False and
a session expiry, so acks published while the device was away are delivered on
reconnect). paho's own reconnect is off: the uploader reconnects with exponential
backoff and jitter (:class:`Backoff`), waiting on the stop event.

Everything here runs in the upload thread; paho's thread only feeds the event queue
(:mod:`firmware.mqttlink`), which :meth:`Link.pump` drains. :meth:`Link.wake` (any
thread: the outbox watch) puts a :class:`Wakeup` in the same queue, so a wait in
:meth:`Link.pump` ends the moment a recording is sealed.
"""

from __future__ import annotations

import logging
import queue
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, cast

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from firmware.config import UploadConfig
from firmware.mqttlink import (
    ClientFactory,
    Connack,
    Event,
    Gone,
    Puback,
    Suback,
    make_client,
)
from sealedrec import protocol

# The uploader's modules share one logger: log lines name "uploader.client" throughout.
log = logging.getLogger("uploader.client")

SESSION_EXPIRY_S = 7 * 24 * 3600  # broker keeps our session (and queued acks) a week
BACKOFF_MIN_S = 0.5  # first reconnect / resend delay; doubles up to backoff_max_s
STABLE_CONNECTION_S = 10.0  # a connection up this long resets the reconnect backoff
CONNECT_TIMEOUT_S = 10.0  # TCP/TLS connect, then CONNACK + SUBACK, each at most this
DISCONNECT_WAIT_S = 3.0  # clean disconnect: wait this long for paho to close the socket
POLL_S = 0.25  # longest single wait on the event queue (stop, watchdog in between)


class Lost(Exception):
    """The connection is gone (or unusable); the caller reconnects with backoff."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Stopping(Exception):
    """The stop event is set."""


@dataclass(frozen=True, slots=True)
class Wakeup:
    """Queued by :meth:`Link.wake`: the outbox has something new."""


# -- state owned by the upload thread -------------------------------------------------


@dataclass(slots=True)
class Sent:
    kind: Literal["init", "chunk", "fin", "status"]
    rec: str | None = None
    index: int = -1
    nbytes: int = 0


class Connection:
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
        self.inflight: dict[int, Sent] = {}
        self.last_puback = time.monotonic()

    def chunks_in_flight(self) -> int:
        return sum(1 for s in self.inflight.values() if s.kind == "chunk")


class Backoff:
    """One exponential backoff (with jitter): BACKOFF_MIN_S doubling up to backoff_max_s."""

    def __init__(self, settings: UploadConfig, *, announce: bool) -> None:
        """``announce``: log each delay ("retrying in …"; not for resends)."""
        self._settings = settings
        self._announce = announce
        self.attempts = 0

    def next(self) -> float:
        """The next delay, counting the attempt."""
        attempts = self.attempts
        self.attempts += 1
        base = min(self._settings.backoff_max_s, BACKOFF_MIN_S * 2.0 ** min(attempts, 30))
        delay = base / 2 + random.uniform(0, base / 2)
        if self._announce:
            # Once at the ceiling the delay no longer changes: say so once, not every time.
            ceiling = self._settings.backoff_max_s
            capped = attempts > 0 and BACKOFF_MIN_S * 2.0 ** min(attempts - 1, 30) >= ceiling
            log.log(logging.DEBUG if capped else logging.INFO, "retrying in %.1f s", delay)
        return delay

    def reset(self) -> None:
        self.attempts = 0


class Link:
    """The broker connection (at most one at a time), its events and its in-flight window.

    ``lock`` guards ``conn`` and the counters (``sent_bytes``, ``max_in_flight``,
    ``receive_maximum``) that other threads read through the uploader's stats.
    ``on_refused(sent, reason)`` hears of every publish the broker refused (after it is
    logged), ``on_message(topic, payload)`` of every incoming message.
    """

    def __init__(
        self,
        device_id: str,
        settings: UploadConfig,
        *,
        stop: threading.Event,
        lock: threading.Lock,
        client_factory: ClientFactory | None,
        on_refused: Callable[[Sent, str], None],
        on_message: Callable[[str, bytes], None],
        on_wait: Callable[[], None] = lambda: None,
    ) -> None:
        self.device = device_id
        # Called while waiting for the broker (CONNACK, a full window), so the daemon's
        # watchdog keeps being fed however long the broker takes.
        self._on_wait = on_wait
        self._settings = settings
        self._stop = stop
        self._lock = lock
        self._client_factory = client_factory
        self._on_refused = on_refused
        self._on_message = on_message
        self._chunk_size = settings.chunk_kib * 1024
        self._events: queue.Queue[Event | Wakeup] = queue.Queue()
        # Set by a Wakeup, cleared by the uploader when it lists the outbox.
        self.woken = False
        self._gen = 0
        self.conn: Connection | None = None
        self.backoff = Backoff(settings, announce=True)  # between connection attempts
        self._last_failure: str | None = None
        self.sent_bytes = 0
        self.max_in_flight = 0
        self.receive_maximum: int | None = None  # from the last CONNACK

    # -- connecting -------------------------------------------------------------------

    def connect(self) -> bool:
        """One connection attempt: connect, CONNACK, subscribe to acks, SUBACK."""
        s = self._settings
        self._gen += 1
        where = f"{s.host}:{s.port}"
        try:
            # paho's thread puts only Events; the queue also carries our Wakeups.
            events = cast("queue.Queue[Event]", self._events)
            client = make_client(
                self._gen, events, self.device, self._settings, self._client_factory
            )
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
        conn = Connection(self._gen, client, s.window)
        with self._lock:
            self.conn = conn
        client.loop_start()
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        try:
            while not conn.ready:
                if self._stop.is_set():
                    raise Stopping
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    what = "SUBACK" if conn.connacked else "CONNACK"
                    raise Lost(f"no {what} from {where} within {CONNECT_TIMEOUT_S:g} s")
                self._on_wait()
                self.pump(min(remaining, POLL_S))
        except Lost as lost:
            self.teardown(conn)
            self._attempt_failed(f"cannot connect to {where}: {lost.reason}")
            return False
        return True

    def _on_connack(self, conn: Connection, ev: Connack) -> None:
        if ev.code >= 0x80:
            hint = ""
            if ev.code in (0x86, 0x87, 0x8C):
                hint = " (check the device certificate / broker ACL for this device id)"
            raise Lost(f"broker refused the connection: {ev.reason} (0x{ev.code:02x}){hint}")
        conn.connacked = True
        conn.receive_maximum = ev.receive_maximum
        with self._lock:
            self.receive_maximum = ev.receive_maximum
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
        rc, mid = conn.client.subscribe(protocol.ack_filter(self.device), qos=protocol.QOS)
        if rc != mqtt.MQTT_ERR_SUCCESS or mid is None:
            raise Lost(f"subscribe failed: {mqtt.error_string(rc)}")
        conn.sub_mid = mid

    def _on_suback(self, conn: Connection, ev: Suback) -> None:
        if ev.mid != conn.sub_mid:
            return
        bad = [(code, name) for code, name in ev.codes if code >= 0x80]
        if bad or not ev.codes:
            code, name = bad[0] if bad else (0x80, "no reason code")
            raise Lost(
                f"broker refused the subscription to {protocol.ack_filter(self.device)}: "
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
            self.device,
            "yes" if conn.session_present else "no",
            conn.receive_maximum if conn.receive_maximum is not None else "not set",
            conn.limit,
        )

    def _attempt_failed(self, reason: str) -> None:
        if reason != self._last_failure:
            log.warning("%s", reason)
            self._last_failure = reason
        else:
            log.debug("%s (again)", reason)

    # -- losing it --------------------------------------------------------------------

    def lost(self, reason: str) -> bool:
        """Give up the current connection (logged); False if there is none."""
        conn = self.conn
        if conn is None:
            return False
        s = self._settings
        if conn.ready:
            log.warning("connection to %s:%d lost: %s", s.host, s.port, reason)
            if time.monotonic() - conn.ready_at >= STABLE_CONNECTION_S:
                self.backoff.reset()
            self._last_failure = None
        else:
            self._attempt_failed(f"cannot connect to {s.host}:{s.port}: {reason}")
        self.teardown(conn)
        return True

    def teardown(self, conn: Connection, *, clean: bool = False) -> None:
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
            gone = isinstance(ev, Gone) and ev.gen == conn.gen
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
            if self.conn is conn:
                self.conn = None

    # -- events -----------------------------------------------------------------------

    def pump(self, timeout: float) -> None:
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

    def wake(self) -> None:
        """Make the upload thread's current or next :meth:`pump` return with
        :attr:`woken` set (thread-safe)."""
        self._events.put(Wakeup())

    def _handle(self, ev: Event | Wakeup) -> None:
        if isinstance(ev, Wakeup):
            self.woken = True
            return
        conn = self.conn
        if conn is None or ev.gen != conn.gen:
            return  # a previous connection's leftovers
        if isinstance(ev, Gone):
            conn.gone = True
            raise Lost(ev.reason)
        if isinstance(ev, Connack):
            self._on_connack(conn, ev)
        elif isinstance(ev, Suback):
            self._on_suback(conn, ev)
        elif isinstance(ev, Puback):
            self._on_puback(conn, ev)
        else:
            self._on_message(ev.topic, ev.payload)

    def _on_puback(self, conn: Connection, ev: Puback) -> None:
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
            self._on_refused(sent, f"{ev.reason} (0x{ev.code:02x})")
            return
        if sent.kind == "chunk":
            with self._lock:
                self.sent_bytes += sent.nbytes

    # -- publishing -------------------------------------------------------------------

    def publish(
        self,
        topic: str,
        payload: bytes,
        sent: Sent,
        *,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> None:
        conn = self.conn
        if conn is None or not conn.ready:
            raise Lost("not connected")
        deadline = time.monotonic() + self._settings.ack_timeout_s
        while len(conn.inflight) >= conn.limit:
            if time.monotonic() > deadline:
                raise Lost(f"no PUBACK from the broker for {self._settings.ack_timeout_s:g} s")
            self._on_wait()
            self.pump(POLL_S)
        info = conn.client.publish(
            topic, payload, qos=protocol.QOS, retain=retain, properties=properties
        )
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise Lost(f"publish failed: {mqtt.error_string(info.rc)}")
        if not conn.inflight:
            conn.last_puback = time.monotonic()
        conn.inflight[info.mid] = sent
        if len(conn.inflight) > self.max_in_flight:
            with self._lock:
                self.max_in_flight = len(conn.inflight)

    def drain(self, conn: Connection, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while conn.inflight and (remaining := deadline - time.monotonic()) > 0:
            self.pump(min(remaining, POLL_S))
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


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, OSError) else f"{type(exc).__name__}: {text}"
