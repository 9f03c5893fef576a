"""The head-office broker: a real MQTT CONNECT over TLS."""

from __future__ import annotations

import queue
import re
import select
import socket
import ssl
import time
from typing import Any

import paho.mqtt.client as mqtt

from firmware.config import (
    UploadConfig,
)
from firmware.mqttlink import Connack, Event, Gone, make_client
from firmware.tools._checks.base import (
    _MQTT_LOOP_S,
    _NOT_AUTHORISED,
    _X509_NAME_MISMATCH,
    BROKER_TIMEOUT_S,
    TLS_VERDICT_S,
    Check,
    Status,
)


def classify_connect_error(exc: BaseException, upload: UploadConfig) -> tuple[str, str]:
    """What a failed TCP/TLS connect means, and what to do about it."""
    where = f"{upload.host}:{upload.port}"
    if isinstance(exc, socket.gaierror):
        return (
            f"DNS: cannot resolve upload.host {upload.host!r} ({exc.strerror or exc})",
            "check the spelling of upload.host, the network ('ip route') and DNS"
            " ('resolvectl status' or /etc/resolv.conf)",
        )
    if isinstance(exc, ConnectionRefusedError):
        return (
            f"connection refused by {where}: nothing listens there",
            "check upload.port and that the broker runs; a firewall may reject the port",
        )
    if isinstance(exc, TimeoutError):
        return (
            f"no answer from {where} within {BROKER_TIMEOUT_S:g} s",
            "a firewall drops the connection, or the host is down or unreachable",
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        if exc.verify_code in _X509_NAME_MISMATCH:
            return (
                f"TLS: the broker's certificate is not valid for the name {upload.host!r}"
                f" ({exc.verify_message})",
                "set upload.host to a name the broker certificate was made for"
                " ('linetap-office init --dns NAME')",
            )
        return (
            f"TLS: the broker's certificate is not trusted by upload.ca_file"
            f" ({exc.verify_message})",
            "upload.ca_file must be a copy of this head office's ca.crt",
        )
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or str(exc)
        alert = _tls_alert(str(exc))
        if alert:
            return f"TLS: {alert[0]}", alert[1]
        return (
            f"TLS handshake with {where} failed ({reason})",
            "check that upload.port is the broker's TLS port (8883) and that upload.tls matches",
        )
    if isinstance(exc, ConnectionResetError):
        return (
            f"{where} closed the connection during the handshake",
            "check that upload.port is the broker's TLS port and upload.tls matches the broker",
        )
    if isinstance(exc, OSError):
        return (
            f"cannot reach {where} ({exc.strerror or exc})",
            "check the network: 'ip route', the gateway and the firewall",
        )
    return f"cannot connect to {where} ({exc})", "check the upload settings"


# OpenSSL's text of a TLS alert received from the peer, e.g. "tlsv1 alert unknown ca".
_TLS_ALERT = re.compile(r"(tlsv1[0-9]? alert [a-z ]+?|sslv3 alert [a-z ]+?)\s*(?:\(|$)", re.I)


def _tls_alert(text: str) -> tuple[str, str] | None:
    """The broker's TLS alert in an error text, as (message, fix); None if there is none."""
    match = _TLS_ALERT.search(text)
    return None if match is None else _refused_certificate(match.group(1))


def _refused_certificate(reason: str) -> tuple[str, str]:
    return (
        f"TLS: the broker refused this device's certificate ({reason})",
        "the device certificate must be issued by this broker's CA and still be valid:"
        " enrol the device at this office ('linetap-office enroll-device')",
    )


def _tls_verdict(sock: ssl.SSLSocket, wait_s: float) -> list[str]:
    """Wait up to ``wait_s`` for the broker's first TLS records after the handshake and
    process them; the reason if they say the broker refused us, else nothing."""
    readable, _, _ = select.select([sock], [], [], wait_s)
    if not readable:
        return []  # TLS 1.2 (the verdict came with the handshake), or a slow broker
    try:
        sock.recv(1)  # session tickets are handled inside; MQTT data cannot come yet
    except ssl.SSLWantReadError:
        return []  # tickets only: the broker accepted the certificate
    except ssl.SSLEOFError:
        return ["it closed the connection right after the handshake"]
    except ssl.SSLError as exc:
        match = _TLS_ALERT.search(str(exc))
        return [match.group(1) if match else str(exc.reason or exc)]
    except OSError as exc:
        return [f"connection closed after the handshake: {exc.strerror or exc}"]
    return []


def check_broker(
    upload: UploadConfig, device_id: str, *, timeout_s: float = BROKER_TIMEOUT_S
) -> Check:
    """A real MQTT CONNECT with the uploader's own client set-up (TLS, client certificate).

    The broker forces the client id to the certificate's CN, so this connection briefly
    takes over the running uploader's session (clean start: nothing is delivered to this
    probe); the uploader reconnects at once and asks again for what it had in flight.
    """
    where = f"{upload.host}:{upload.port}"
    events: queue.Queue[Event] = queue.Queue()
    try:
        client = make_client(0, events, device_id, upload, None)
    except (OSError, ValueError) as exc:
        return Check(
            "broker",
            Status.FAIL,
            f"cannot load the TLS files for {where} ({exc})",
            "see the tls.* checks: ca_file, cert_file and key_file must be readable PEM files"
            " that belong together",
        )
    # A probe must never publish the device's "offline" will over the uploader's status.
    client.will_clear()
    # With TLS 1.3 the broker checks the client certificate after the client's side of
    # the handshake is done, and its refusal (a TLS alert) is lost when the CONNECT is
    # already on its way (the broker's close then resets the connection). So before
    # paho sends the CONNECT, wait for the broker's verdict: its session tickets
    # (accepted) or its alert (refused); an MQTT broker never sends data first.
    refusal: list[str] = []

    def on_socket_open(_client: Any, _userdata: Any, sock: Any) -> None:
        if isinstance(sock, ssl.SSLSocket):
            refusal.extend(_tls_verdict(sock, min(timeout_s, TLS_VERDICT_S)))

    client.on_socket_open = on_socket_open
    client.connect_timeout = timeout_s
    start = time.monotonic()
    try:
        client.connect(upload.host, upload.port, keepalive=upload.keepalive_s, clean_start=True)
    except (OSError, ValueError) as exc:
        message, fix = classify_connect_error(exc, upload)
        return Check("broker", Status.FAIL, message, fix)
    if refusal:
        _close(client, events)
        return Check("broker", Status.FAIL, *_refused_certificate(refusal[0]))
    answer: Connack | Gone | None = None
    try:
        deadline = start + timeout_s
        while answer is None and time.monotonic() < deadline:
            client.loop(timeout=_MQTT_LOOP_S)
            while answer is None and not events.empty():
                ev = events.get_nowait()
                if isinstance(ev, Connack | Gone):
                    answer = ev
    finally:
        _close(client, events)
    took = time.monotonic() - start
    if answer is None:
        return Check(
            "broker",
            Status.FAIL,
            f"{where} accepted the connection but sent no CONNACK within {timeout_s:g} s",
            "is this an MQTT broker? check upload.port and the broker's log",
        )
    if isinstance(answer, Gone):
        return Check(
            "broker",
            Status.FAIL,
            f"{where} closed the connection before its CONNACK ({answer.reason})",
            "the broker's log says why; usually it refused this device's certificate",
        )
    if answer.code >= 0x80:
        if answer.code in _NOT_AUTHORISED:
            return Check(
                "broker",
                Status.FAIL,
                f"{where}: the broker refused this device: {answer.reason} (0x{answer.code:02x})",
                "enrol the device at the office ('linetap-office enroll-device') and check"
                " that it is not blocked in the broker ACL",
            )
        return Check(
            "broker",
            Status.FAIL,
            f"{where}: the broker refused the connection: {answer.reason} (0x{answer.code:02x})",
            "check the broker's log",
        )
    how = "TLS, client certificate accepted" if upload.tls else "no TLS"
    return Check(
        "broker",
        Status.PASS,
        f"{where}: MQTT CONNECT accepted as {device_id} ({how}) in {took:.2f} s",
    )


def _close(client: Any, events: queue.Queue[Any]) -> None:
    """Disconnect cleanly (no will) and give paho a moment to send the DISCONNECT."""
    if client.disconnect() != mqtt.MQTT_ERR_SUCCESS:
        return  # never connected (or gone already): nothing to send
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        client.loop(timeout=_MQTT_LOOP_S)
        while not events.empty():
            if isinstance(events.get_nowait(), Gone):
                return
