"""Test helper: a private mosquitto on a free port, with its own config, that can be
stopped, killed and restarted on the same port and persistence directory.

    with run_mosquitto(tmp_path, lambda port: conf_for(port)) as broker:
        ...connect to broker.host, broker.port...
        broker.restart(kill=True)   # crash it mid-upload; same port, same data dir

``conf_text`` is either a callable ``port -> config text`` or a string containing the
placeholder ``{port}`` (the helper picks the port). It must log to stderr or stdout (the
default of ``render_mosquitto_conf``): that output goes to ``broker.log_path`` and is
quoted when mosquitto fails to start. No mosquitto outlives the ``with`` block.

Started as root, mosquitto drops to the user ``mosquitto``, which cannot write a
persistence directory under pytest's root-only tmp dirs (it fails silently, at save
time). So a config without a ``user`` line gets ``user <the test's own user>``.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import pwd
import queue
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from headoffice import brokerconf

MOSQUITTO = "/usr/sbin/mosquitto"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
HOST = "127.0.0.1"


class BrokerError(RuntimeError):
    """mosquitto did not start (the message quotes its log)."""


def free_port(host: str = HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


@dataclass
class Broker:
    host: str
    port: int
    proc: subprocess.Popen[bytes]
    conf_path: Path
    log_path: Path
    _starts: int = field(default=1, repr=False)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM (mosquitto saves its persistence file) or SIGKILL (a crash); then reap."""
        _stop(self.proc, kill=kill)

    def start(self) -> None:
        """Start again on the same port with the same config (and so the same data dir)."""
        if self.running():
            raise BrokerError(f"mosquitto (pid {self.proc.pid}) is still running; stop it first")
        self._starts += 1
        self.proc = _launch(self.conf_path, self.log_path, self.host, self.port)

    def reload(self) -> None:
        """SIGHUP: mosquitto re-reads its config and ACL file (takes effect at once)."""
        marker = self.log().count("Reloading config.")
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + START_TIMEOUT_S
        while self.log().count("Reloading config.") <= marker:
            if time.monotonic() > deadline or not self.running():
                raise BrokerError(f"mosquitto did not reload; its log:\n{self.log()[-4000:]}")
            time.sleep(0.02)

    def restart(self, *, kill: bool = False) -> None:
        self.stop(kill=kill)
        self.start()


def _stop(proc: subprocess.Popen[bytes], *, kill: bool) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=STOP_TIMEOUT_S)


def _launch(conf: Path, log_path: Path, host: str, port: int) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        log.write(f"=== starting mosquitto -c {conf} (port {port})\n".encode())
        log.flush()
        proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while True:
            if proc.poll() is not None:
                raise BrokerError(
                    f"mosquitto -c {conf} exited with status {proc.returncode} before"
                    f" listening on {host}:{port}; its log ({log_path}):\n"
                    f"{log_path.read_text(errors='replace')[-4000:]}"
                )
            if _accepts(host, port):
                return proc
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"mosquitto -c {conf} is not accepting connections on {host}:{port} after"
                    f" {START_TIMEOUT_S:.0f} s; its log ({log_path}):\n"
                    f"{log_path.read_text(errors='replace')[-4000:]}"
                )
            time.sleep(0.02)
    except BaseException:
        _stop(proc, kill=True)
        raise


@contextlib.contextmanager
def run_mosquitto(
    tmp_path: Path,
    conf_text: str | Callable[[int], str],
    *,
    name: str = "mosquitto",
    attempts: int = 3,
) -> Iterator[Broker]:
    """Start mosquitto with ``conf_text`` on a free port; stop (and reap) it on exit."""
    if isinstance(conf_text, str) and "{port}" not in conf_text:
        raise ValueError(
            "run_mosquitto: conf_text must contain '{port}' (the helper picks a free port)"
            " or be a callable port -> config text"
        )
    workdir = tmp_path / name
    workdir.mkdir(parents=True, exist_ok=True)
    conf_path = workdir / "mosquitto.conf"
    log_path = workdir / "mosquitto.log"
    proc: subprocess.Popen[bytes] | None = None
    port = 0
    for attempt in range(attempts):
        port = free_port()
        text = conf_text(port) if callable(conf_text) else conf_text.replace("{port}", str(port))
        if not re.search(r"(?m)^\s*user\s", text):
            user = pwd.getpwuid(os.geteuid()).pw_name
            text += f"\n# added by tests/mqtt_broker.py: keep the test's user\nuser {user}\n"
        conf_path.write_text(text)
        try:
            proc = _launch(conf_path, log_path, HOST, port)
            break
        except BrokerError:
            # Another process may have taken the port between free_port() and the bind.
            if attempt == attempts - 1 or "Address already in use" not in _tail(log_path):
                raise
    assert proc is not None
    broker = Broker(HOST, port, proc, conf_path, log_path)
    try:
        yield broker
    finally:
        broker.stop()


def office_broker_conf(office_root: Path, persistence: Path) -> Callable[[int], str]:
    """``conf_text`` for :func:`run_mosquitto`: the config the head office deploys for its
    broker (headoffice.enroll: TLS, client certificates, the per-device ACL), bound to
    127.0.0.1 and run as the test's own user (maybe root), persisting in ``persistence``."""

    def render(port: int) -> str:
        return brokerconf.write_broker_config(
            office_root,
            port,
            persistence_location=persistence,
            bind_address="127.0.0.1",
            run_as_user=getpass.getuser(),
        ).read_text()

    return render


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-2000:]
    except OSError:
        return ""


# --------------------------------------------------------------------------- MQTT client probe


class ConnectFailed(RuntimeError):
    """The broker refused the connection (TLS or CONNACK), or did not answer in time."""


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    properties: list[tuple[str, str]]


class MqttProbe:
    """A paho-mqtt 2.x MQTT v5 client over TLS for tests, every wait bounded.

    ``publish`` and ``subscribe`` wait for the broker's PUBACK / SUBACK and return its
    reason code(s); received messages queue up for :meth:`get`. Use it as a context
    manager: leaving it disconnects and joins paho's network thread.
    """

    def __init__(
        self,
        broker: Broker,
        *,
        ca: Path,
        cert: Path | None = None,
        key: Path | None = None,
        client_id: str = "",
        clean_start: bool = True,
        session_expiry_s: int | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.broker = broker
        self.timeout = timeout
        self.messages: queue.Queue[Received] = queue.Queue()
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.connack: ReasonCode | None = None
        self.disconnect_reason: ReasonCode | None = None
        self._cond = threading.Condition()
        self._pubacks: dict[int, ReasonCode] = {}
        self._subacks: dict[int, list[ReasonCode]] = {}
        self._clean_start = clean_start
        self._connect_props: Properties | None = None
        if session_expiry_s is not None:
            self._connect_props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            self._connect_props.SessionExpiryInterval = session_expiry_s
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,
        )
        client.tls_set(
            ca_certs=str(ca),
            certfile=str(cert) if cert else None,
            keyfile=str(key) if key else None,
        )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self.client = client
        self._started = False

    # paho callbacks (network thread)
    def _on_connect(
        self,
        _c: mqtt.Client,
        _u: Any,
        _f: mqtt.ConnectFlags,
        rc: ReasonCode,
        _p: Properties | None,
    ) -> None:
        self.connack = rc
        if rc.is_failure:
            self.disconnected.set()
        else:
            self.connected.set()

    def _on_disconnect(
        self,
        _c: mqtt.Client,
        _u: Any,
        _f: mqtt.DisconnectFlags,
        rc: ReasonCode,
        _p: Properties | None,
    ) -> None:
        self.disconnect_reason = rc
        self.connected.clear()
        self.disconnected.set()

    def _on_publish(
        self, _c: mqtt.Client, _u: Any, mid: int, rc: ReasonCode, _p: Properties
    ) -> None:
        with self._cond:
            self._pubacks[mid] = rc
            self._cond.notify_all()

    def _on_subscribe(
        self, _c: mqtt.Client, _u: Any, mid: int, rcs: list[ReasonCode], _p: Properties
    ) -> None:
        with self._cond:
            self._subacks[mid] = list(rcs)
            self._cond.notify_all()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        props = getattr(msg.properties, "UserProperty", None) or []
        self.messages.put(
            Received(
                msg.topic,
                bytes(msg.payload),
                bool(msg.retain),
                [(str(k), str(v)) for k, v in props],
            )
        )

    # test-facing API
    def connect(self) -> MqttProbe:
        """Connect and wait for a successful CONNACK, else raise :class:`ConnectFailed`."""
        self.connected.clear()
        self.disconnected.clear()
        try:
            self.client.connect(
                self.broker.host,
                self.broker.port,
                keepalive=30,
                clean_start=self._clean_start,
                properties=self._connect_props,
            )
        except OSError as exc:  # ssl.SSLError, ConnectionResetError, refused…
            raise ConnectFailed(f"connect: {type(exc).__name__}: {exc}") from exc
        if not self._started:
            self.client.loop_start()
            self._started = True
        deadline = time.monotonic() + self.timeout
        while not self.connected.is_set():
            if self.disconnected.is_set():
                raise ConnectFailed(
                    f"connection closed before a successful CONNACK (connack={self.connack},"
                    f" disconnect={self.disconnect_reason})"
                )
            if time.monotonic() > deadline:
                raise ConnectFailed(f"no CONNACK within {self.timeout} s")
            self.connected.wait(0.02)
        return self

    def _wait_for(self, mid: int, table: dict[int, Any], what: str) -> Any:
        deadline = time.monotonic() + self.timeout
        with self._cond:
            while mid not in table:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {what} for message id {mid} within {self.timeout} s")
                self._cond.wait(left)
            return table.pop(mid)

    def publish(
        self,
        topic: str,
        payload: bytes = b"",
        *,
        qos: int = 1,
        retain: bool = False,
        user_properties: list[tuple[str, str]] | None = None,
    ) -> ReasonCode | None:
        """Publish; for QoS 1 wait for the PUBACK and return its reason code."""
        props = None
        if user_properties:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.UserProperty = user_properties
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise ConnectFailed(f"publish {topic}: {mqtt.error_string(info.rc)}")
        if qos == 0:
            return None
        rc: ReasonCode = self._wait_for(info.mid, self._pubacks, "PUBACK")
        return rc

    def subscribe(self, *filters: str, qos: int = 1) -> list[ReasonCode]:
        """Subscribe and return the SUBACK reason codes, one per filter."""
        rc, mid = self.client.subscribe([(f, qos) for f in filters])
        if rc != mqtt.MQTT_ERR_SUCCESS or mid is None:
            raise ConnectFailed(f"subscribe {filters}: {mqtt.error_string(rc)}")
        codes: list[ReasonCode] = self._wait_for(mid, self._subacks, "SUBACK")
        return codes

    def get(self, timeout: float | None = None) -> Received:
        try:
            return self.messages.get(timeout=self.timeout if timeout is None else timeout)
        except queue.Empty:
            raise TimeoutError(
                f"no message within {self.timeout if timeout is None else timeout} s"
            ) from None

    def drain(self) -> list[Received]:
        out = []
        while not self.messages.empty():
            out.append(self.messages.get_nowait())
        return out

    def close(self) -> None:
        try:
            if self.connected.is_set():
                self.client.disconnect()
        finally:
            if self._started:
                self.client.loop_stop()
                self._started = False

    def __enter__(self) -> MqttProbe:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
