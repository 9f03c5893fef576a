"""The head-office receiver logic driven message by message (no broker needed here)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware.errors import LinetapError
from headoffice.index import open_index
from headoffice.receiver import Receiver
from headoffice.store import FileBlobStore
from sealedrec.manifest import GENESIS_HASH, manifest_hash, sign_manifest
from sealedrec.protocol import (
    SHA256_PROPERTY,
    Ack,
    AckStatus,
    Fin,
    Init,
    Kind,
    Topic,
    chunk_topic,
    fin_topic,
    init_topic,
)
from tests.helpers import signed_manifest

DEVICE = "dev1"
CHUNK = 4096


class Device:
    def __init__(self) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.seq = 0
        self.prev = GENESIS_HASH

    def recording(self, size: int) -> tuple[dict[str, Any], bytes]:
        blob = os.urandom(size)
        self.seq += 1
        rec = f"rec-{self.seq:04d}"
        manifest = signed_manifest(
            self.key,
            device_id=DEVICE,
            rec=rec,
            seq=self.seq,
            prev=self.prev,
            blob=blob,
            duration_ms=60_000,
        )
        self.prev = manifest_hash(manifest)
        return manifest, blob


def messages(
    manifest: dict[str, Any], blob: bytes
) -> tuple[tuple[str, bytes, list[tuple[str, str]]], ...]:
    rec = manifest["recording_id"]
    init = Init(rec, manifest, len(blob), manifest["blob_sha256"], CHUNK)
    chunks = []
    for i in range(init.chunk_count):
        data = blob[i * CHUNK : (i + 1) * CHUNK]
        chunks.append(
            (
                chunk_topic(DEVICE, rec, i),
                data,
                [(SHA256_PROPERTY, hashlib.sha256(data).hexdigest())],
            )
        )
    return (
        (init_topic(DEVICE, rec), init.encode(), []),
        *chunks,
        (fin_topic(DEVICE, rec), Fin(rec, init.blob_sha256, init.chunk_count).encode(), []),
    )


def ack_of(replies) -> Ack:
    [reply] = replies
    rec = reply.topic.rsplit("/", 1)[1]
    return Ack.decode(reply.payload, Topic(Kind.ACK, DEVICE, rec))


@pytest.fixture
def office(tmp_path: Path):
    device = Device()
    keys = {DEVICE: device.key.public_key()}

    def device_key(name: str):
        if name not in keys:
            raise LinetapError(f"device {name} unknown")
        return keys[name]

    index = open_index(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    store = FileBlobStore(tmp_path / "store")
    receiver = Receiver(store, index, device_key, fin_grace_s=0)
    yield device, receiver, store, index, tmp_path, device_key
    index.close()


def test_happy_path_and_idempotent_resends(office):
    device, receiver, store, index, _, _ = office
    manifest, blob = device.recording(10_000)
    init, *chunks, fin = messages(manifest, blob)
    ack = ack_of(receiver.handle(*init))
    assert ack.status is AckStatus.MISSING and ack.missing == (0, 1, 2)
    for msg in chunks:
        assert receiver.handle(*msg) == []
    ack = ack_of(receiver.handle(*fin))
    assert ack.status is AckStatus.STORED and ack.blob_sha256 == manifest["blob_sha256"]
    row = index.get(manifest["recording_id"])
    assert row is not None and store.resolve(row.path).read_bytes() == blob
    # Everything again: the same ack, no duplicate, nothing changed.
    for msg in (init, *chunks, fin):
        replies = receiver.handle(*msg)
        if replies:
            assert ack_of(replies).status is AckStatus.STORED
    assert len(index.search(device=DEVICE)) == 1
    assert not store.parked(DEVICE, manifest["recording_id"])


def test_corrupt_chunk_is_refused_and_asked_for_again(office):
    device, receiver, *_ = office
    manifest, blob = device.recording(10_000)
    init, c0, c1, c2, fin = messages(manifest, blob)
    receiver.handle(*init)
    bad = (c1[0], b"x" + c1[1][1:], c1[2])
    for msg in (c0, bad, c2):
        receiver.handle(*msg)
    assert receiver.malformed == 1
    ack = ack_of(receiver.handle(*fin))
    assert ack.status is AckStatus.MISSING and ack.missing == (1,)
    receiver.handle(*c1)
    assert ack_of(receiver.handle(*fin)).status is AckStatus.STORED


def test_rejections_with_reasons(office):
    device, receiver, *_ = office
    manifest, blob = device.recording(5000)
    tampered = {**manifest, "duration_ms": 1}
    init = Init(manifest["recording_id"], tampered, len(blob), manifest["blob_sha256"], CHUNK)
    ack = ack_of(receiver.handle(init_topic(DEVICE, manifest["recording_id"]), init.encode()))
    assert ack.status is AckStatus.REJECTED and "signature does not verify" in ack.reason
    # Fin for an upload the store never saw.
    fin = Fin("rec-9999", manifest["blob_sha256"], 2)
    ack = ack_of(receiver.handle(fin_topic(DEVICE, "rec-9999"), fin.encode()))
    assert ack.status is AckStatus.REJECTED and "send init first" in ack.reason
    # A device nobody enrolled.
    other = {**manifest, "device_id": "ghost"}
    init = Init(manifest["recording_id"], other, len(blob), manifest["blob_sha256"], CHUNK)
    [reply] = receiver.handle(init_topic("ghost", manifest["recording_id"]), init.encode())
    assert (
        json.loads(reply.payload)["status"] == "rejected"
        and "not enrolled" in json.loads(reply.payload)["reason"]
    )


@pytest.mark.parametrize(
    ("topic", "payload"),
    [
        ("linetap/dev1/up/rec-1/init", b"{not json"),
        ("linetap/dev1/up/rec-1/7", b"data"),
        ("nonsense", b""),
        ("linetap/dev1/up/rec-1/fin", b'{"v":1}'),
        ("linetap/dev1/up/rec-1/init", b"\x00" * 10),
    ],
)
def test_malformed_messages_never_crash(office, topic: str, payload: bytes):
    _, receiver, *_ = office
    assert receiver.handle(topic, payload, []) == []
    assert receiver.malformed == 1


def test_two_workers_on_a_shared_subscription(office):
    """Messages alternate between two workers (as Mosquitto's $share does): one store."""
    device, _, _, _, tmp_path, device_key = office
    workers = [
        Receiver(
            FileBlobStore(tmp_path / "store"),
            open_index(f"sqlite:///{tmp_path / 'index.sqlite3'}"),
            device_key,
        )
        for _ in range(2)
    ]
    recordings = [device.recording(9000 + 1000 * i) for i in range(5)]
    stored = 0
    for manifest, blob in recordings:
        for n, msg in enumerate(messages(manifest, blob)):
            for reply in workers[n % 2].handle(*msg):
                stored += ack_of([reply]).status is AckStatus.STORED
    assert stored == 5
    rows = workers[0].index.search(device=DEVICE)
    assert sorted(r.seq for r in rows) == [1, 2, 3, 4, 5]
    assert workers[0].index.gaps() == []
    for w in workers:
        w.index.close()


def test_an_id_clash_is_rejected_not_acked(office):
    """Another device (or other content) under a stored recording id must never get `stored`."""
    device, receiver, _, index, _, _ = office
    manifest, blob = device.recording(6000)
    for msg in messages(manifest, blob):
        receiver.handle(*msg)
    assert index.get(manifest["recording_id"]) is not None
    # The same id again with different content: rejected, and the stored row is unchanged.
    other_blob = os.urandom(6000)
    body = {k: v for k, v in manifest.items() if k != "signature"}
    body["blob_sha256"] = hashlib.sha256(other_blob).hexdigest()
    forged = sign_manifest(body, device.key)
    init = Init(manifest["recording_id"], forged, len(other_blob), forged["blob_sha256"], CHUNK)
    ack = ack_of(receiver.handle(init_topic(DEVICE, manifest["recording_id"]), init.encode()))
    assert ack.status is AckStatus.REJECTED and "already stored" in ack.reason
    assert index.get(manifest["recording_id"]).blob_sha256 == manifest["blob_sha256"]
