"""The device's MQTT client (paho) of one connection and the events it reports: used by
the uploader and by `linetap check`'s broker probe, which must connect exactly as the
uploader does (so it lives here, below both, not in the uploader).

paho's network loop (``loop_start``) is the only thread besides the upload thread, and it
only feeds a :class:`queue.Queue` of these events (CONNACK, SUBACK, PUBACK, incoming
message, connection gone); :class:`uploader.connection.Link` takes them off the queue in
the upload thread. Every event carries the generation of the connection it belongs to, so
a previous connection's leftovers can be told apart.
"""

from __future__ import annotations

import logging
import queue
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from firmware.config import UploadConfig
from sealedrec import protocol

# The uploader's modules share one logger: log lines name "uploader.client" throughout.
log = logging.getLogger("uploader.client")

ClientFactory = Callable[[], mqtt.Client]


# -- events from paho's network thread ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connack:
    gen: int
    code: int
    reason: str
    session_present: bool
    receive_maximum: int | None
    maximum_packet_size: int | None


@dataclass(frozen=True, slots=True)
class Suback:
    gen: int
    mid: int
    codes: tuple[tuple[int, str], ...]


@dataclass(frozen=True, slots=True)
class Puback:
    gen: int
    mid: int
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Incoming:
    gen: int
    topic: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class Gone:
    gen: int
    reason: str


Event = Connack | Suback | Puback | Incoming | Gone


# An OpenSSL alert from the peer, as in "[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca".
_TLS_ALERT = re.compile(r"((?:tlsv1[0-9]?|sslv3) alert [a-z ]+?)\s*(?:\(|$)", re.IGNORECASE)


def make_client(
    gen: int,
    events: queue.Queue[Event],
    device_id: str,
    settings: UploadConfig,
    client_factory: ClientFactory | None,
) -> mqtt.Client:
    """The paho client of connection ``gen``: options, will, TLS, callbacks → ``events``."""
    s = settings
    if client_factory is not None:
        client = client_factory()
        if client.callback_api_version is not CallbackAPIVersion.VERSION2:
            raise ValueError("client_factory must make clients with CallbackAPIVersion.VERSION2")
    else:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=device_id,
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,
        )
    paho_log = logging.getLogger(f"{log.name}.paho")
    if paho_log.isEnabledFor(logging.DEBUG):
        # Only when debugging: paho 2.2 also logs a spurious ERROR ("Client is not
        # connected") at every clean disconnect.
        client.enable_logger(paho_log)
    client.max_inflight_messages = s.window
    client.will_set(
        protocol.status_topic(device_id),
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

    def on_connect(
        _c: mqtt.Client,
        _u: Any,
        flags: mqtt.ConnectFlags,
        rc: ReasonCode,
        props: Properties | None,
    ) -> None:
        connacked.append(True)
        events.put(
            Connack(
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
        events.put(Suback(gen, mid, tuple((c.value, str(c)) for c in codes)))

    def on_publish(_c: mqtt.Client, _u: Any, mid: int, rc: ReasonCode, _p: Properties) -> None:
        events.put(Puback(gen, mid, rc.value, str(rc)))

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        events.put(Incoming(gen, msg.topic, bytes(msg.payload)))

    # paho reports why a socket failed only through its log: keep the last error, so that
    # a broker refusing our certificate (with TLS 1.3 its alert arrives after the
    # handshake, as a read error) is not reported as a network problem.
    socket_errors: list[str] = []
    connacked: list[bool] = []  # set once the broker accepted the session

    def on_log(_c: mqtt.Client, _u: Any, level: int, text: str) -> None:
        if level == mqtt.MQTT_LOG_ERR:
            socket_errors[:] = [text]

    def on_disconnect(
        _c: mqtt.Client,
        _u: Any,
        flags: mqtt.DisconnectFlags,
        rc: ReasonCode,
        _p: Properties | None,
    ) -> None:
        alert = _TLS_ALERT.search(socket_errors[0]) if socket_errors else None
        if flags.is_disconnect_packet_from_server:
            reason = f"the broker sent DISCONNECT: {rc} (0x{rc.value:02x})"
        elif rc.value == 0:
            reason = "closed"
        elif rc.value == 0x80 and alert:
            reason = (
                f"the broker refused this device's TLS certificate ({alert.group(1)}): "
                "enrol the device ('linetap provision init', 'linetap-office enroll-device') "
                "and install what the office returns ('linetap provision install-cert')"
            )
        elif rc.value == 0x80 and s.tls and not connacked:
            # The alert was not seen (the broker's close can overtake it), but a broker
            # that hangs up between the TLS handshake and CONNACK is refusing us.
            reason = (
                "the broker closed the connection before accepting the session; a refused "
                "device certificate looks like this ('linetap check' tells)"
            )
        elif rc.value == 0x80:  # paho's "connection lost" / socket error
            reason = "the connection broke (broker gone or network down)"
        else:
            reason = f"{rc} (0x{rc.value:02x})"
        events.put(Gone(gen, reason))

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_publish = on_publish
    client.on_message = on_message
    client.on_disconnect = on_disconnect
    client.on_log = on_log
    return client
