"""`linetap-office serve`: the receiver on MQTT.

One paho client, one thread: messages are handled in the client's callback, so a
chunk is parked (fsynced) before its PUBACK goes out, and an ack is published only after
the store and the index are durable. Several workers share the load through an MQTT 5
shared subscription (``$share/{group}/linetap/+/up/#``); none keeps state in memory.
"""

from __future__ import annotations

import logging
import socket
import ssl
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from firmware.errors import ConfigError, LinetapError
from firmware.process import stop_on_signals
from headoffice.config import OfficeConfig
from headoffice.enroll import office_share_filter
from headoffice.receiver import Receiver
from uploader.protocol import QOS, up_filter

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
    """A shared subscription whose group name is the office's secret (see enroll:
    mosquitto does not check SUBSCRIBE against the ACL, so a known group could be joined
    by a device and starve the office of messages); plain when sharing is off."""
    return office_share_filter(cfg.root) if cfg.broker.shared else up_filter()


def attach(client: mqtt.Client, cfg: OfficeConfig, receiver: Receiver) -> None:
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

    def on_disconnect(_c: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        log.warning("disconnected from the broker: %s", reason)

    def on_message(c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        props = getattr(msg.properties, "UserProperty", None) if msg.properties else None
        try:
            replies = receiver.handle(msg.topic, bytes(msg.payload), props)
        except LinetapError as exc:
            # Storage trouble: no ack, the device asks again after its timeout.
            log.error("could not process %s: %s", msg.topic[:120], exc)
            return
        for reply in replies:
            c.publish(reply.topic, reply.payload, qos=QOS)

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.on_message = on_message


def serve(cfg: OfficeConfig, receiver: Receiver) -> int:
    client = make_client(cfg)
    attach(client, cfg, receiver)

    with stop_on_signals(receiver.stop, log=log, on_stop=client.disconnect):
        client.connect_async(cfg.broker.host, cfg.broker.port, keepalive=cfg.broker.keepalive_s)
        client.loop_forever(retry_first_connection=True)
    log.info(
        "receiver stopped: %d stored, %d rejected, %d malformed",
        receiver.stored,
        receiver.rejected,
        receiver.malformed,
    )
    return 0
