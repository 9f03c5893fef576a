"""A cheap load for the office's receivers: the upload protocol replayed from bytes made
before the clock starts.

``linetap upload`` spends about as much CPU per recording as one receiver (outbox state
changes, a file read and a SHA-256 per chunk, its own bookkeeping), so on a small machine
a bench driven by uploaders measures the machine, not the receiver. This process speaks
the same protocol for several devices at once (each with its own certificate and MQTT
connection, as the broker's ACL demands) from payloads prepared at start: per device,
init → ack → the chunks the office asks for → fin → ack, then the next recording. The
office sees exactly what uploaders send; only the sender's own work is gone.

Usage (from bench/upload_receiver_capacity.py ``--load replay``)::

    replay_load.py --host H --port P --ca CA --chunk-kib 256 \\
        --device ID,CERT,KEY,OUTBOX [--device ...]

It prints ``ready`` once every connection is subscribed to its acks, starts on a line
on stdin, and prints ``done N`` when the office has acked every recording ``stored``.
An init or fin unanswered for 30 s is sent again as init (as the uploader does, counted
in ``resends=``); a refusal, an unexpected ack or 90 s of silence is an error (exit 1,
the reason on stderr).
"""

from __future__ import annotations

import argparse
import socket
import ssl
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties

from buffers.outbox import Outbox, OutboxState
from sealedrec import protocol
from sealedrec.protocol import Ack, AckStatus, Fin
from uploader.transfer import chunk_properties, prepare

SILENCE_S = 90.0
ACK_TIMEOUT_S = 30.0  # the uploader's default [upload] ack_timeout_s: then init again
MAX_FIN_ROUNDS = 3  # "missing" after this many fins waits for the ack timeout


@dataclass(frozen=True)
class Upload:
    """One recording's messages, made before the clock starts."""

    rec: str
    init: tuple[str, bytes]
    chunks: tuple[tuple[str, bytes, Properties], ...]
    fin: tuple[str, bytes]
    blob_sha256: str | None


@dataclass
class DeviceLoad:
    device: str
    uploads: deque[Upload]
    client: mqtt.Client | None = None
    subscribed: threading.Event = field(default_factory=threading.Event)
    fin_rounds: int = 0  # fins sent for the current upload
    last_ack: float = 0.0  # time.monotonic() of the last ack (or of the start)


def uploads_of(outbox: Path, device: str, chunk_size: int) -> deque[Upload]:
    """Every sealed entry of the outbox as the messages ``linetap upload`` sends."""
    found: deque[Upload] = deque()
    for entry in Outbox(outbox).entries(OutboxState.SEALED):
        job = prepare(entry, device, chunk_size)
        init = job.init
        blob = job.blob.read_bytes() if job.blob is not None else b""
        chunks = []
        for index in range(init.chunk_count):
            data = blob[index * chunk_size : (index + 1) * chunk_size]
            chunks.append(
                (protocol.chunk_topic(device, job.rec, index), data, chunk_properties(data))
            )
        fin = Fin(job.rec, init.blob_sha256, init.chunk_count).encode()
        found.append(
            Upload(
                job.rec,
                (protocol.init_topic(device, job.rec), init.encode()),
                tuple(chunks),
                (protocol.fin_topic(device, job.rec), fin),
                init.blob_sha256,
            )
        )
    return found


class Replay:
    def __init__(self, loads: list[DeviceLoad]) -> None:
        self.loads = loads
        self.remaining = sum(len(d.uploads) for d in loads)
        self.stored = 0
        self.finished = threading.Event()
        self.error: str | None = None
        self.resends = 0  # inits sent again after ACK_TIMEOUT_S without an ack
        self.progress = threading.Event()
        self._mutex = threading.Lock()

    def connect(self, host: str, port: int, ca: str, certs: dict[str, tuple[str, str]]) -> None:
        for load in self.loads:
            client = mqtt.Client(
                callback_api_version=CallbackAPIVersion.VERSION2,
                client_id=f"replay-{load.device}",
                protocol=mqtt.MQTTv5,
            )
            cert, key = certs[load.device]
            client.tls_set(
                ca_certs=ca, certfile=cert, keyfile=key, tls_version=ssl.PROTOCOL_TLS_CLIENT
            )
            client.max_inflight_messages_set(64)
            client.on_connect = self._on_connect(load)
            client.on_subscribe = lambda *_a, load=load: load.subscribed.set()
            client.on_message = self._on_message(load)
            load.client = client
            client.connect(host, port, keepalive=60)
            client.loop_start()
        for load in self.loads:
            if not load.subscribed.wait(30):
                raise SystemExit(f"replay: {load.device} not subscribed within 30 s")

    def _on_connect(self, load: DeviceLoad):  # type: ignore[no-untyped-def]
        def on_connect(client: mqtt.Client, *_args: object) -> None:
            sock = client.socket()
            if isinstance(sock, socket.socket):  # as the uploader: no Nagle on request-response
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client.subscribe(protocol.ack_filter(load.device), qos=1)

        return on_connect

    def _on_message(self, load: DeviceLoad):  # type: ignore[no-untyped-def]
        def on_message(client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
            self.progress.set()
            load.last_ack = time.monotonic()
            upload = load.uploads[0] if load.uploads else None
            try:
                ack = Ack.decode(bytes(msg.payload), protocol.parse_topic(msg.topic))
            except protocol.ProtocolError as exc:
                self.fail(f"{load.device}: unreadable ack on {msg.topic}: {exc}")
                return
            if upload is None or ack.recording_id != upload.rec:
                return  # a late duplicate answer
            if ack.status is AckStatus.STORED and ack.blob_sha256 == upload.blob_sha256:
                load.uploads.popleft()
                load.fin_rounds = 0
                self._stored()
                self.start(load)
            elif ack.status is AckStatus.MISSING:
                if load.fin_rounds >= MAX_FIN_ROUNDS:
                    return  # no loop at network speed: the ack timeout sends init again
                for index in ack.missing:
                    topic, data, props = upload.chunks[index]
                    client.publish(topic, data, qos=1, properties=props)
                client.publish(*upload.fin, qos=1)
                load.fin_rounds += 1
            else:
                self.fail(f"{load.device}: {upload.rec} answered {ack.status} ({ack.reason})")

        return on_message

    def _stored(self) -> None:
        with self._mutex:
            self.stored += 1
            if self.stored == self.remaining:
                self.finished.set()

    def start(self, load: DeviceLoad) -> None:
        if load.uploads and load.client is not None:
            load.client.publish(*load.uploads[0].init, qos=1)

    def fail(self, reason: str) -> None:
        self.error = reason
        self.finished.set()

    def run(self) -> None:
        start = time.monotonic()
        for load in self.loads:
            load.last_ack = start
            self.start(load)
        last_progress = start
        while not self.finished.wait(1.0):
            now = time.monotonic()
            if self.progress.is_set():
                self.progress.clear()
                last_progress = now
            elif now - last_progress > SILENCE_S:
                self.fail(f"no ack for {SILENCE_S:g} s ({self.stored} of {self.remaining} stored)")
            for load in self.loads:
                if load.uploads and now - load.last_ack > ACK_TIMEOUT_S:
                    # What the uploader does when its init or fin goes unanswered.
                    load.last_ack = now
                    load.fin_rounds = 0
                    self.resends += 1
                    self.start(load)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--chunk-kib", type=int, default=256)
    parser.add_argument("--device", action="append", required=True, help="ID,CERT,KEY,OUTBOX")
    args = parser.parse_args(argv)
    loads, certs = [], {}
    for spec in args.device:
        device, cert, key, outbox = spec.split(",")
        certs[device] = (cert, key)
        loads.append(DeviceLoad(device, uploads_of(Path(outbox), device, args.chunk_kib * 1024)))
    replay = Replay(loads)
    replay.connect(args.host, args.port, args.ca, certs)
    print("ready", flush=True)
    sys.stdin.readline()
    replay.run()
    for load in loads:
        if load.client is not None:
            load.client.loop_stop()
    if replay.error is not None:
        print(f"replay: {replay.error}", file=sys.stderr)
        return 1
    print(f"done {replay.stored} resends={replay.resends}", flush=True)
    sys.stdin.readline()  # stay until the bench is done with the run (it stops us)
    return 0


if __name__ == "__main__":
    sys.exit(main())
