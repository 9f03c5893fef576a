"""The receiver's memory of the inits it parked (headoffice/parked_inits.py): it spares
the decoding and checking of an upload's parked init, never the parked bytes' truth."""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path

import pytest

from headoffice.blobstore import StoreError
from headoffice.parked_inits import MAX_ENTRY_BYTES, ParkedInits
from headoffice.receiver import Receiver
from sealedrec.model import check_manifest
from sealedrec.protocol import AckStatus, Init, Kind, Topic
from tests.test_receiver import (
    DEVICE,
    Device,
    ack_of,
    messages,
    office,  # noqa: F401 - the fixture
)

Message = tuple[str, bytes, list[tuple[str, str]]]


def _upload(device: Device, size: int = 10_000) -> tuple[str, Message, list[Message], Message]:
    """One new recording's messages: its id, init, chunks and fin."""
    manifest, blob = device.recording(size)
    init, *chunks, fin = messages(manifest, blob)
    return manifest["recording_id"], init, chunks, fin


def _init_of(payload: bytes, rec: str) -> Init:
    return Init.decode(payload, Topic(Kind.INIT, DEVICE, rec))


def test_an_upload_decodes_its_parked_init_only_on_arrival(office, monkeypatch):  # noqa: F811
    device, receiver, _, index, _, _ = office
    rec, init, chunks, fin = _upload(device)
    assert ack_of(receiver.handle(*init)).status is AckStatus.MISSING
    decoded: list[bytes] = []
    real = Init.decode.__func__  # type: ignore[attr-defined]

    def counting(cls: type[Init], payload: bytes, topic: Topic) -> Init:
        decoded.append(payload)
        return real(cls, payload, topic)  # type: ignore[no-any-return]

    monkeypatch.setattr(Init, "decode", classmethod(counting))
    for msg in chunks:
        assert receiver.handle(*msg) == []
    assert ack_of(receiver.handle(*fin)).status is AckStatus.STORED
    assert decoded == []  # the chunks and the fin used what the init checked
    assert len(receiver.parked_inits) == 0  # forgotten once stored
    assert index.get(rec) is not None


def _tamper(store, rec: str, **changes: object) -> None:
    """Rewrite the parked init.json with manifest fields changed (as anyone with access
    to the store, or an older office version, might have left it)."""
    path = store.parking_dir(DEVICE, rec) / "init.json"
    data = json.loads(path.read_bytes())
    data["manifest"].update(changes)
    path.write_bytes(json.dumps(data).encode())


def test_a_parked_init_altered_after_its_check_is_checked_again(office):  # noqa: F811
    device, receiver, store, index, _, _ = office
    rec, init, chunks, fin = _upload(device)
    receiver.handle(*init)
    for msg in chunks:
        receiver.handle(*msg)
    # After the init was checked and remembered, its parked copy no longer passes.
    _tamper(store, rec, duration_ms=-5)
    ack = ack_of(receiver.handle(*fin))
    assert ack.status is AckStatus.REJECTED and "duration_ms" in ack.reason
    assert index.get(rec) is None
    assert not store.parked(DEVICE, rec)  # dropped, as a bad parked copy always was
    assert [a.kind for a in index.alarms(DEVICE)] == ["manifest"]


def test_a_parked_init_from_another_worker_is_checked_at_the_fin(office):  # noqa: F811
    device, receiver, store, index, _, device_key = office
    rec, init, chunks, fin = _upload(device)
    receiver.handle(*init)
    _tamper(store, rec, line="")  # a copy this worker never saw
    other = Receiver(store, index, device_key, fin_grace_s=0)  # a fresh memory
    for msg in chunks:
        other.handle(*msg)
    ack = ack_of(other.handle(*fin))
    assert ack.status is AckStatus.REJECTED and "line" in ack.reason
    assert index.get(rec) is None


def test_the_memory_is_bounded_in_entries_and_bytes(office):  # noqa: F811
    device, *_ = office
    memory = ParkedInits(max_entries=3, max_bytes=10**9)
    payloads = []
    for k in range(5):
        manifest, blob = device.recording(2_000)
        payload = messages(manifest, blob)[0][1]
        payloads.append((manifest["recording_id"], payload))
        memory.remember(
            DEVICE, manifest["recording_id"], payload, _init_of(payload, f"rec-{k + 1:04d}"), None
        )
    assert len(memory) == 3
    # The least recently used went first; the newest three are kept.
    kept = [rec for rec, payload in payloads if memory.lookup(DEVICE, rec, payload)]
    assert kept == [rec for rec, _ in payloads[2:]]
    assert memory.held_bytes == sum(len(p) for _, p in payloads[2:])
    # In bytes: room for two inits at most.
    small = ParkedInits(max_entries=100, max_bytes=2 * len(payloads[0][1]) + 10)
    for rec, payload in payloads:
        small.remember(DEVICE, rec, payload, _init_of(payload, rec), None)
    assert len(small) == 2 and small.held_bytes <= small.max_bytes
    # An init too large to keep is handed back, never kept.
    big = b" " * (MAX_ENTRY_BYTES + 1)
    rec, payload = payloads[0]
    entry = small.remember(DEVICE, "rec-big", big, _init_of(payload, rec), None)
    assert entry.init.recording_id == rec and small.lookup(DEVICE, "rec-big", big) is None


def test_a_remembered_check_names_the_bytes_it_was_made_from(office):  # noqa: F811
    device, *_ = office
    memory = ParkedInits()
    manifest, blob = device.recording(2_000)
    rec = manifest["recording_id"]
    payload = messages(manifest, blob)[0][1]
    entry = memory.remember(DEVICE, rec, payload, _init_of(payload, rec), None)
    assert memory.lookup(DEVICE, rec, payload) == entry
    assert memory.lookup(DEVICE, rec, payload + b" ") is None  # other bytes: not known
    assert memory.lookup("dev2", rec, payload) is None  # another device's upload
    checked = check_manifest(manifest)
    memory.with_checked(DEVICE, rec, entry, checked)
    found = memory.lookup(DEVICE, rec, payload)
    assert found is not None and found.checked == checked
    # A check made on bytes since replaced is not kept for the new ones.
    newer = memory.remember(DEVICE, rec, payload + b"\n", entry.init, None)
    memory.with_checked(DEVICE, rec, entry, checked)
    assert memory.lookup(DEVICE, rec, payload + b"\n") == newer
    memory.forget(DEVICE, rec)
    assert len(memory) == 0 and memory.held_bytes == 0


@pytest.mark.parametrize("size", [1, 4096])  # one chunk exactly, and the smallest blob
def test_a_one_chunk_blob_is_stored_from_its_parked_chunk(office, size: int):  # noqa: F811
    device, receiver, store, index, tmp_path, _ = office
    manifest, blob = device.recording(size)
    rec = manifest["recording_id"]
    init, chunk, fin = messages(manifest, blob)
    receiver.handle(*init)
    receiver.handle(*chunk)
    assert ack_of(receiver.handle(*fin)).status is AckStatus.STORED
    row = index.get(rec)
    assert row is not None and store.resolve(row.path).read_bytes() == blob
    assert store.resolve(row.path).stat().st_nlink == 1  # the parked link is gone
    assert list((Path(tmp_path) / "store" / "tmp").iterdir()) == []


@pytest.mark.parametrize(("given", "reason"), [(b"y" * 3000, "sha256"), (b"x" * 2999, "size")])
def test_a_one_chunk_blob_is_checked_like_any_other(office, given: bytes, reason: str):  # noqa: F811
    _, _, store, _, tmp_path, _ = office
    want = b"x" * 3000
    store.park_chunk(DEVICE, "rec-one", 0, given)  # what a torn or swapped park leaves
    with pytest.raises(StoreError) as err:
        store.assemble(DEVICE, "rec-one", 1, len(want), hashlib.sha256(want).hexdigest())
    assert err.value.reason == reason
    assert list((Path(tmp_path) / "store" / "tmp").iterdir()) == []  # no link left behind
    assert store.parked(DEVICE, "rec-one") == {0}  # the parked chunk itself untouched


def test_a_one_chunk_blob_is_copied_where_no_link_can_be_made(office, monkeypatch):  # noqa: F811
    _, _, store, _, tmp_path, _ = office
    blob = b"z" * 3000

    def no_link(src: object, dst: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    store.park_chunk(DEVICE, "rec-one", 0, blob)
    tmp = store.assemble(DEVICE, "rec-one", 1, len(blob), hashlib.sha256(blob).hexdigest())
    assert tmp.read_bytes() == blob and tmp.parent == Path(tmp_path) / "store" / "tmp"
    assert tmp.stat().st_nlink == 1  # a copy of its own
