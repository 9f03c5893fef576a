"""A hostile but enrolled device for head-office attack tests and the flood bench.

The threat: an appliance's TLS key and Ed25519 signing key sit on an SD card anyone can
pull. The attacker then holds a valid client certificate (the broker ACL still confines
it to ``linetap/{its id}/...``) and can sign manifests. :class:`HostileDevice` is that
attacker: an :class:`~tests.mqtt_broker.MqttProbe` connected with the device's
certificate, publishing raw payloads (built here by hand, not with the protocol's
dataclasses, so they can be anything) and keeping every ack the office sends it.

    keys = enroll_hostile(office_root, tmp_path / "hostile", "intruder-9")
    with HostileDevice.connect(broker, keys, ca_file) as h:
        h.init(rec, manifest, blob_bytes=..., blob_sha256=..., chunk_size=65536)
        h.wait_acks([rec], timeout=10)
        h.acks_for(rec)  # decoded JSON of every ack for rec, oldest first
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from headoffice import enroll
from sealedrec.keys import create_device_key, public_key_b64
from sealedrec.manifest import GENESIS_HASH, SIGNATURE_FIELD, sign_manifest
from sealedrec.tlskeys import make_device_csr
from tests.helpers import signed_manifest
from tests.mqtt_broker import Broker, MqttProbe, Received

PROTOCOL_VERSION = 1  # the wire format every deployed device speaks
SHA256_PROPERTY = "sha256"
ROOT = "linetap"


@dataclass(frozen=True)
class DeviceKeys:
    device_id: str
    signing_key: Ed25519PrivateKey
    cert: Path
    tls_key: Path


def enroll_hostile(office_root: Path, data: Path, device_id: str) -> DeviceKeys:
    """Enroll ``device_id`` at the office the way an installer does (a TLS key and CSR
    made with ``cryptography``, the Ed25519 signing key registered by
    :func:`headoffice.enroll.enroll_device`): these are the keys an attacker finds on
    the SD card."""
    keys = data / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    signing = create_device_key(keys / "device.key")
    csr = make_device_csr(keys / "device-tls.key", device_id)
    cert = enroll.enroll_device(office_root, csr, public_key_b64(signing.public_key()))
    (keys / "device.crt").write_bytes(cert.read_bytes())
    return DeviceKeys(device_id, signing, keys / "device.crt", keys / "device-tls.key")


# --------------------------------------------------------------------------- payloads


def resign(
    manifest: Mapping[str, Any],
    key: Ed25519PrivateKey,
    *,
    drop: Iterable[str] = (),
    **changes: Any,
) -> dict[str, Any]:
    """``manifest`` with fields dropped or changed, signed again with ``key`` (the
    attacker holds the device key, so a bad field still carries a valid signature)."""
    body = {k: v for k, v in manifest.items() if k != SIGNATURE_FIELD}
    for name in drop:
        body.pop(name, None)
    body.update(changes)
    return sign_manifest(body, key)


def hostile_manifest(
    key: Ed25519PrivateKey,
    device_id: str,
    rec: str,
    *,
    blob: bytes = b"",
    seq: int = 1,
    prev: str = GENESIS_HASH,
    drop: Iterable[str] = (),
    **changes: Any,
) -> dict[str, Any]:
    """A manifest like tests.helpers.signed_manifest's, with ``changes`` applied and
    ``drop`` removed, validly signed by ``key``."""
    base = signed_manifest(key, device_id=device_id, rec=rec, seq=seq, prev=prev, blob=blob)
    return resign(base, key, drop=drop, **changes)


def dump(data: Mapping[str, Any]) -> bytes:
    return json.dumps({"v": PROTOCOL_VERSION, **data}, separators=(",", ":")).encode()


def init_payload(
    rec: str,
    manifest: Mapping[str, Any],
    *,
    blob_bytes: int,
    blob_sha256: str | None,
    chunk_size: int,
    chunk_count: int | None = None,
) -> bytes:
    count = -(-blob_bytes // chunk_size) if chunk_count is None else chunk_count
    return dump(
        {
            "recording_id": rec,
            "manifest": dict(manifest),
            "blob_bytes": blob_bytes,
            "blob_sha256": blob_sha256,
            "chunk_size": chunk_size,
            "chunk_count": count,
        }
    )


def fin_payload(rec: str, blob_sha256: str | None, chunk_count: int) -> bytes:
    return dump({"recording_id": rec, "blob_sha256": blob_sha256, "chunk_count": chunk_count})


def up_topic(device: str, rec: str, tail: str | int) -> str:
    return f"{ROOT}/{device}/up/{rec}/{tail}"


def ack_filter(device: str) -> str:
    return f"{ROOT}/{device}/ack/+"


def random_rec(prefix: str) -> str:
    return f"{prefix}-{os.urandom(6).hex()}"


# --------------------------------------------------------------------------- store views


def part_files(root: Path, device: str) -> list[Path]:
    """Chunks parked for ``device`` in the office store (``parking/{device}/*/*.part``)."""
    parking = root / "parking" / device
    return sorted(parking.rglob("*.part")) if parking.exists() else []


def parked_bytes(root: Path, device: str | None = None) -> int:
    """Bytes of every file under the store's ``parking/`` (or one device's part of it)."""
    parking = root / "parking" if device is None else root / "parking" / device
    if not parking.exists():
        return 0
    total = 0
    for path in parking.rglob("*"):
        try:
            if path.is_file():
                total += path.stat().st_size
        except OSError:
            continue  # removed while we looked
    return total


def stored_files(root: Path, device: str) -> list[Path]:
    blobs = root / "blobs" / device
    return sorted(p for p in blobs.rglob("*") if p.is_file()) if blobs.exists() else []


# --------------------------------------------------------------------------- the attacker


class HostileDevice:
    """An enrolled device's stolen identity on the broker: raw publishes, every ack kept.

    All acks received go to :attr:`received` (nothing is ever dropped, so a test can
    check every payload the office sent this device); :meth:`acks_for` decodes them."""

    def __init__(self, probe: MqttProbe, device_id: str) -> None:
        self.probe = probe
        self.device_id = device_id
        self.received: list[Received] = []
        self._lock = threading.Lock()

    @classmethod
    def connect(
        cls, broker: Broker, keys: DeviceKeys, ca_file: Path, *, timeout: float = 10.0
    ) -> HostileDevice:
        probe = MqttProbe(broker, ca=ca_file, cert=keys.cert, key=keys.tls_key, timeout=timeout)
        try:
            probe.connect()
            sock = probe.client.socket()
            if isinstance(sock, socket.socket):  # no ~40 ms delayed-ACK wait per PUBACK
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            codes = probe.subscribe(ack_filter(keys.device_id))
            if any(c.is_failure for c in codes):
                raise RuntimeError(f"subscribe to the acks refused: {codes}")
        except BaseException:
            probe.close()
            raise
        return cls(probe, keys.device_id)

    def close(self) -> None:
        self.pump()
        self.probe.close()

    def __enter__(self) -> HostileDevice:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # publishing (QoS 1: each waits for the broker's PUBACK, not for the office)
    def publish(
        self, topic: str, payload: bytes, user_properties: list[tuple[str, str]] | None = None
    ) -> None:
        rc = self.probe.publish(topic, payload, user_properties=user_properties)
        if rc is not None and rc.is_failure:
            raise RuntimeError(f"broker refused the publish on {topic[:80]}: {rc}")

    def init(
        self,
        rec: str,
        manifest: Mapping[str, Any],
        *,
        blob_bytes: int,
        blob_sha256: str | None,
        chunk_size: int,
        chunk_count: int | None = None,
    ) -> None:
        payload = init_payload(
            rec,
            manifest,
            blob_bytes=blob_bytes,
            blob_sha256=blob_sha256,
            chunk_size=chunk_size,
            chunk_count=chunk_count,
        )
        self.publish(up_topic(self.device_id, rec, "init"), payload)

    def chunk(self, rec: str, index: int, data: bytes, sha256: str | None = None) -> None:
        sha = hashlib.sha256(data).hexdigest() if sha256 is None else sha256
        self.publish(up_topic(self.device_id, rec, index), data, [(SHA256_PROPERTY, sha)])

    def fin(self, rec: str, blob_sha256: str | None, chunk_count: int) -> None:
        self.publish(
            up_topic(self.device_id, rec, "fin"), fin_payload(rec, blob_sha256, chunk_count)
        )

    # acks
    def pump(self) -> None:
        got = self.probe.drain()
        with self._lock:
            self.received.extend(got)

    def acks_for(self, rec: str) -> list[dict[str, Any]]:
        """Every ack received for ``rec`` so far, decoded (undecodable ones as
        ``{"status": "<not JSON>", "raw": ...}``)."""
        self.pump()
        topic = f"{ROOT}/{self.device_id}/ack/{rec}"
        out = []
        with self._lock:
            mine = [m for m in self.received if m.topic == topic]
        for msg in mine:
            try:
                data = json.loads(msg.payload)
            except ValueError:
                data = {"status": "<not JSON>", "raw": msg.payload[:200]}
            out.append(data if isinstance(data, dict) else {"status": "<not an object>"})
        return out

    def ack_payloads(self) -> list[Received]:
        self.pump()
        with self._lock:
            return list(self.received)

    def wait_acks(
        self,
        recs: Iterable[str],
        timeout: float,
        *,
        count: int = 1,
        alive: Callable[[], None] | None = None,
    ) -> bool:
        """Wait until every rec in ``recs`` has at least ``count`` acks; False on timeout.
        ``alive`` is called while waiting (to fail fast when the office has died)."""
        wanted = list(recs)
        deadline = time.monotonic() + timeout
        while True:
            if all(len(self.acks_for(r)) >= count for r in wanted):
                return True
            if alive is not None:
                alive()
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)

    def payload_leaks(self, needles: Iterable[str]) -> list[tuple[str, str]]:
        """(topic, needle) for every received payload that contains one of ``needles``."""
        found: list[tuple[str, str]] = []
        for msg in self.ack_payloads():
            text = msg.payload.decode("utf-8", errors="replace")
            found.extend((msg.topic, n) for n in needles if n and n in text)
        return found
