"""`linetap-office serve`: the receiver on MQTT.

One paho client; messages are handled in the client's callback, so a chunk is parked
before its PUBACK goes out (not fsynced: the device keeps everything until ``stored``;
see :mod:`headoffice.store`), and an ack is published only after the store and the
index are durable. Several workers share the load through an MQTT 5 shared
subscription (``$share/{group}/linetap/+/up/#``); none keeps state in memory.

Each message is isolated: whatever goes wrong handling it is logged with its device and
topic, raised as an alarm, and the next message is handled. Nothing a device sends stops
serve. A second thread, the housekeeper, answers fins that wait for chunks (so a fin
never holds the message thread), and drops uploads past their expiry.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from headoffice.brokerconf import office_share_filter
from headoffice.config import OfficeConfig
from headoffice.fleet.runner import FleetRunner
from headoffice.index import Index
from headoffice.officeroot import CaLayout, DeviceSigningKeys
from headoffice.receiver import FIN_POLL_S, Receiver, Reply
from headoffice.stores import open_store
from runtime.errors import ConfigError
from runtime.process import stop_on_signals
from sealedrec.errors import LinetapError
from sealedrec.protocol import QOS, ProtocolError, parse_topic, up_filter

log = logging.getLogger(__name__)


def make_client(cfg: OfficeConfig) -> mqtt.Client:
    b = cfg.broker
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=b.client_id,
        protocol=mqtt.MQTTv5,
    )
    if b.tls:
        missing = [k for k in ("ca_file", "cert_file", "key_file") if getattr(b, k) is None]
        if missing:
            raise ConfigError(
                [f"broker.{k}: needed with broker.tls = true (from enroll)" for k in missing]
            )
        client.tls_set(
            ca_certs=str(b.ca_file),
            certfile=str(b.cert_file),
            keyfile=str(b.key_file),
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    return client


def subscription(cfg: OfficeConfig) -> str:
    """A shared subscription whose group name is the office's secret (see brokerconf:
    mosquitto does not check SUBSCRIBE against the ACL, so a known group could be joined
    by a device and starve the office of messages); plain when sharing is off."""
    return office_share_filter(cfg.root) if cfg.broker.shared else up_filter()


def attach(
    client: mqtt.Client, cfg: OfficeConfig, receiver: Receiver, fleet: FleetRunner | None = None
) -> None:
    """Route uploads to ``receiver`` and, with ``fleet``, telemetry (``linetap/+/status``,
    subscribed plainly: every worker sees all of it) to fleet health."""
    topic = subscription(cfg)

    def on_connect(c: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        if reason.is_failure:
            log.error("broker refused the connection: %s", reason)
            return
        log.info("connected to %s:%d; subscribing %s", cfg.broker.host, cfg.broker.port, topic)
        sock = c.socket()
        if isinstance(sock, socket.socket):  # ssl.SSLSocket is one too
            # Every upload step is a small request/answer; without this each ack waits for
            # a delayed TCP ACK (~40 ms): 110 instead of 58 recordings/s measured.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.subscribe(topic, qos=QOS)
        if fleet is not None:
            c.subscribe(fleet.topic, qos=QOS)

    def on_disconnect(_c: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        log.warning("disconnected from the broker: %s", reason)

    def on_message(c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if fleet is not None and fleet.wants(msg.topic):
            fleet.handle(msg.topic, bytes(msg.payload))
            return
        props = getattr(msg.properties, "UserProperty", None) if msg.properties else None
        replies = handle_isolated(receiver, msg.topic, bytes(msg.payload), props)
        for reply in replies:
            c.publish(reply.topic, reply.payload, qos=QOS)

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.on_message = on_message


def handle_isolated(
    receiver: Receiver, topic: str, payload: bytes, props: list[tuple[str, str]] | None
) -> list[Reply]:
    """One message through the receiver; no failure of it reaches the caller."""
    try:
        return receiver.handle(topic, payload, props)
    except LinetapError as exc:
        # Storage or index trouble: no ack, the device asks again after its timeout.
        log.error("could not process %s: %s", topic[:120], exc)
    except Exception as exc:  # noqa: BLE001 - one message must never stop serve
        receiver.count("errors")
        device = _device_of(topic)
        log.error(
            "error handling device=%s topic=%s: %s: %s",
            device,
            topic[:120],
            type(exc).__name__,
            str(exc)[:300],
        )
        receiver.alarms.raise_alarm(
            device, "receiver_error", f"a message on {topic[:120]} failed: {type(exc).__name__}"
        )
    return []


def _device_of(topic: str) -> str:
    try:
        return parse_topic(topic).device
    except ProtocolError:
        return "?"


IDLE_S = 1.0  # how long the housekeeper sleeps when no fin waits (also: stop noticed)
NETWORK_CHECK_S = 1.0  # serve: how often the main thread looks at stop and the network thread


class Housekeeper(threading.Thread):
    """Answers waiting fins every ``FIN_POLL_S`` while any wait (woken when one parks),
    and expires uploads every ``limits.housekeeping_s``; publishes through ``publish``
    (paho's is thread-safe)."""

    def __init__(self, receiver: Receiver, publish: Callable[[Reply], None]) -> None:
        super().__init__(name="housekeeper", daemon=True)
        self.receiver = receiver
        self.publish = publish

    def run(self) -> None:
        r = self.receiver
        next_expiry = r.clock()
        while not r.stop.is_set():
            if r.waiting:
                r.fin_parked.wait(FIN_POLL_S)  # set when a waiting fin's chunk comes here
            else:
                # Nothing waits: sleep until a fin parks (or stop, noticed within IDLE_S).
                r.fin_parked.wait(min(IDLE_S, max(0.0, next_expiry - r.clock())))
            r.fin_parked.clear()
            self._guarded(lambda: [self.publish(reply) for reply in r.answer_waiting()])
            if r.clock() >= next_expiry:
                next_expiry = r.clock() + r.limits.housekeeping_s
                self._guarded(r.expire)
        self._guarded(lambda: [self.publish(reply) for reply in r.poll_waiting()])

    def _guarded(self, work: Callable[[], object]) -> None:
        try:
            work()
        except LinetapError as exc:
            log.error("housekeeping: %s", exc)
        except Exception as exc:  # noqa: BLE001 - housekeeping must outlive a bad upload
            log.error("housekeeping failed: %s: %s", type(exc).__name__, str(exc)[:300])


def office_recipients(cfg: OfficeConfig) -> frozenset[str] | None:
    """The recipients every manifest must name: the config's, else the office identity's
    public key (``keys/office.pub``, from ``linetap-office init``); None (not checked, a
    warning) when neither is there."""
    if cfg.recipients is not None:
        return frozenset(cfg.recipients)
    try:
        text = CaLayout(cfg.root).office_pub.read_text(encoding="utf-8")
    except OSError as exc:
        log.warning(
            "recipients not checked: no 'recipients' in the config and %s (%s)",
            CaLayout(cfg.root).office_pub,
            exc.strerror,
        )
        return None
    return frozenset(line.strip() for line in text.splitlines() if line.strip())


def build_receiver(cfg: OfficeConfig, index: Index) -> Receiver:
    """The receiver ``serve`` runs: the config's store (an S3 store finishing under the
    index's advisory lock when the index is PostgreSQL), limits and recipients."""
    return Receiver(
        open_store(cfg, cfg.root, index=index),
        index,
        DeviceSigningKeys(cfg.root),
        cfg.limits,
        office_recipients(cfg),
    )


def prepare_store(receiver: Receiver) -> None:
    """At start: remove what killed workers left (temp files, unheld locks) and expired
    or init-less uploads; says how much in one line."""
    tmp = receiver.store.cleanup_tmp()
    locks = receiver.store.cleanup_locks()
    expired = receiver.expire()
    log.info(
        "store cleaned at start: %d stale temp file(s), %d lock file(s), %d expired upload(s)",
        tmp,
        locks,
        expired,
    )


def run_network_thread(client: mqtt.Client, stop: threading.Event) -> None:
    """paho's own network thread (``loop_start``) until ``stop``, then a clean disconnect.

    Not ``loop_forever`` in this thread: then paho has no network thread of its own, and
    a ``publish`` from another thread (the housekeeper's acks) writes to the TLS socket
    itself while the loop reads from it. OpenSSL then fails the connection ("decryption
    failed or bad record mac" in mosquitto's log) and the messages in flight are lost: a
    device waited out its 30 s ack timeout (bench/upload_receiver_capacity.py, two
    workers). With the network thread running, ``publish`` only queues the packet."""
    before = set(threading.enumerate())
    client.loop_start()
    network = set(threading.enumerate()) - before
    while not stop.wait(NETWORK_CHECK_S):
        if not any(t.is_alive() for t in network):
            log.error("MQTT network thread ended unexpectedly; stopping")
            stop.set()
    client.disconnect()
    client.loop_stop()


def serve(cfg: OfficeConfig, receiver: Receiver) -> int:
    client = make_client(cfg)
    fleet = FleetRunner.start(cfg, receiver.index, receiver.stop)
    attach(client, cfg, receiver, fleet)
    prepare_store(receiver)

    def publish(reply: Reply) -> None:
        client.publish(reply.topic, reply.payload, qos=QOS)

    housekeeper = Housekeeper(receiver, publish)
    with stop_on_signals(receiver.stop, log=log, on_stop=client.disconnect):
        housekeeper.start()
        client.connect_async(cfg.broker.host, cfg.broker.port, keepalive=cfg.broker.keepalive_s)
        run_network_thread(client, receiver.stop)
    receiver.stop.set()
    housekeeper.join(timeout=10)
    fleet.close()
    c = receiver.counts
    log.info(
        "receiver stopped: %d stored, %d rejected, %d busy, %d malformed, %d errors, %d expired",
        c.stored,
        c.rejected,
        c.busy,
        c.malformed,
        c.errors,
        c.expired,
    )
    return 0
