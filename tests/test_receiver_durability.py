"""What the receiver makes durable before it acks ``stored``, and how many fsyncs that costs.

Driven through the real :class:`Receiver`, :class:`FileBlobStore` and SQLite index, with
``os.fsync`` / ``os.fdatasync`` wrapped to record what each call synced (the inode, and
for a directory the names it held at that moment) and where it fell relative to the
index insert. The durability argument is in :mod:`headoffice.store`'s docstring.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from headoffice.index import AddResult, IndexStoreError, open_index
from headoffice.receiver import Receiver
from headoffice.store import FileBlobStore
from sealedrec.protocol import AckStatus
from tests.conftest import REPO
from tests.test_receiver import DEVICE, Device, ack_of, messages

MAX_FSYNCS_PER_RECORDING = 4


@dataclass(frozen=True)
class Synced:
    inode: int
    names: frozenset[str]  # a directory's entries when it was synced (else empty)


@dataclass
class Journal:
    """fsyncs and index inserts, in the order they happened."""

    events: list[Synced | str]

    def fsyncs(self) -> list[Synced]:
        return [e for e in self.events if isinstance(e, Synced)]


@pytest.fixture
def journal(monkeypatch: pytest.MonkeyPatch) -> Journal:
    journal = Journal([])

    def wrap(real: Callable[[int], None]) -> Callable[[int], None]:
        def synced(fd: int) -> None:
            info = os.fstat(fd)
            names: frozenset[str] = frozenset()
            if stat.S_ISDIR(info.st_mode):
                names = frozenset(os.listdir(f"/proc/self/fd/{fd}"))
            journal.events.append(Synced(info.st_ino, names))
            real(fd)

        return synced

    monkeypatch.setattr(os, "fsync", wrap(os.fsync))
    monkeypatch.setattr(os, "fdatasync", wrap(os.fdatasync))
    return journal


@pytest.fixture
def office(tmp_path: Path, journal: Journal):
    device = Device()
    index = open_index(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    real_add = index.add

    def add(*args: Any, **kwargs: Any) -> AddResult:
        journal.events.append("index.add")
        return real_add(*args, **kwargs)

    index.add = add  # type: ignore[method-assign]
    store = FileBlobStore(tmp_path / "store")
    receiver = Receiver(store, index, lambda _name: device.key.public_key(), fin_grace_s=0)
    yield device, receiver, store, index
    index.close()


def store_one(receiver: Receiver, device: Device, size: int) -> tuple[str, str]:
    """Upload one recording message by message; (recording id, its started_utc)."""
    manifest, blob = device.recording(size)
    replies = []
    for msg in messages(manifest, blob):
        replies = receiver.handle(*msg)
    ack = ack_of(replies)
    assert ack.status is AckStatus.STORED, ack
    return manifest["recording_id"], manifest["started_utc"]


def test_at_most_four_fsyncs_per_stored_recording(office, journal: Journal):
    device, receiver, _store, _index = office
    store_one(receiver, device, 5_000)  # the first of its day also creates directories
    for size in (40_000, 100):  # 10 chunks, one chunk
        journal.events.clear()
        store_one(receiver, device, size)
        assert len(journal.fsyncs()) <= MAX_FSYNCS_PER_RECORDING, (size, journal.events)


def test_blob_manifest_and_their_directory_are_synced_before_the_index_insert(
    office, journal: Journal
):
    device, receiver, store, index = office
    store_one(receiver, device, 3_000)
    journal.events.clear()
    rec, _started = store_one(receiver, device, 40_000)
    row = index.get(rec)
    assert row is not None
    blob = store.resolve(row.path)
    manifest = blob.with_name(f"{rec}.manifest.json")
    day = blob.parent
    insert = journal.events.index("index.add")
    before = [e for e in journal.events[:insert] if isinstance(e, Synced)]
    inodes = {e.inode for e in before}
    assert blob.stat().st_ino in inodes, "blob data not fsynced before the index insert"
    assert manifest.stat().st_ino in inodes, "manifest data not fsynced before the index insert"
    # The day's directory fsynced once both names were in it: the renames are durable.
    assert any(
        e.inode == day.stat().st_ino and {blob.name, manifest.name} <= e.names for e in before
    ), "the directory holding blob and manifest was not fsynced after both renames"


def test_an_index_failure_after_the_commit_keeps_the_upload_parked(
    office, monkeypatch: pytest.MonkeyPatch
):
    """``commit`` makes the parked init's inode the manifest: when the index then fails
    (no ack), a fin sent again must still find its upload, not be told "unknown"."""
    device, receiver, store, index = office
    manifest, blob = device.recording(3_000)
    init, *chunks, fin = messages(manifest, blob)
    rec = manifest["recording_id"]
    real_add = index.add

    def failing_add(*_args: Any, **_kwargs: Any) -> AddResult:
        raise IndexStoreError("index sqlite: disk I/O error")

    monkeypatch.setattr(index, "add", failing_add)
    for msg in (init, *chunks):
        receiver.handle(*msg)
    with pytest.raises(IndexStoreError):
        receiver.handle(*fin)
    assert store.parked_init(DEVICE, rec) is not None
    assert index.get(rec) is None
    monkeypatch.setattr(index, "add", real_add)
    ack = ack_of(receiver.handle(*fin))  # the same fin again, the index back
    assert ack.status is AckStatus.STORED, ack
    assert index.get(rec) is not None and store.parked_init(DEVICE, rec) is None


def test_a_torn_parked_chunk_is_asked_for_again_not_stored(office):
    """Parking is not fsynced: a chunk a crash truncated must never reach the store."""
    device, receiver, store, index = office
    manifest, blob = device.recording(10_000)
    init, *chunks, fin = messages(manifest, blob)
    rec = manifest["recording_id"]
    receiver.handle(*init)
    for msg in chunks[:-1]:
        receiver.handle(*msg)
    (store.parking_dir(DEVICE, rec) / "0000001.part").write_bytes(b"")  # what a cut may leave
    receiver.handle(*chunks[-1])  # completes the set: the store checks it
    assert index.get(rec) is None
    ack = ack_of(receiver.handle(*fin))
    assert ack.status is AckStatus.MISSING and ack.missing == (0, 1, 2)
    assert index.get(rec) is None
    for msg in chunks:
        receiver.handle(*msg)
    ack = ack_of(receiver.handle(*fin))
    assert ack.status is AckStatus.STORED
    row = index.get(rec)
    assert row is not None and store.resolve(row.path).read_bytes() == blob


# The whole process's fsync-family syscalls (SQLite's WAL commits included, which the
# os.fsync wrapper above cannot see), per recording, by strace.
STRACE_SCRIPT = """
import os, sys, tempfile
from pathlib import Path
from headoffice.index import AddResult, IndexStoreError, open_index
from headoffice.receiver import Receiver
from headoffice.store import FileBlobStore
from tests.test_receiver import Device, messages
n, size = int(sys.argv[1]), int(sys.argv[2])
tmp = Path(tempfile.mkdtemp(dir=sys.argv[3]))
device = Device()
index = open_index(f"sqlite:///{tmp / 'index.sqlite3'}")
receiver = Receiver(
    FileBlobStore(tmp / "store"), index, lambda _n: device.key.public_key(), fin_grace_s=0
)
for msg in messages(*device.recording(size)):  # the first makes the day's directories
    receiver.handle(*msg)
os.write(2, b"=== START\\n")
for _ in range(n):
    for msg in messages(*device.recording(size)):
        receiver.handle(*msg)
os.write(2, b"=== END\\n")
assert len(index.all_for_device("dev1")) == n + 1
"""


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_the_whole_process_syncs_at_most_four_times_per_recording(tmp_path: Path):
    n = 10
    trace = tmp_path / "trace.txt"
    subprocess.run(
        [
            "strace",
            "-f",
            "-e",
            "trace=fsync,fdatasync,sync_file_range,syncfs,sync,write",
            "-o",
            trace,
            sys.executable,
            "-c",
            STRACE_SCRIPT,
            str(n),
            "20000",
            tmp_path,
        ],
        check=True,
        cwd=REPO,
        capture_output=True,
    )
    lines = trace.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if "=== START" in line)
    end = next(i for i, line in enumerate(lines) if "=== END" in line)
    syncs = [line for line in lines[start:end] if re.search(r"\b(f(data)?sync|sync\w*)\(", line)]
    assert len(syncs) <= MAX_FSYNCS_PER_RECORDING * n, "\n".join(syncs)


def test_waiting_fins_are_answered_one_by_one_not_as_a_batch(tmp_path: Path):
    """Fins that overtook their last chunk (another worker parks it) wait in the receiver;
    once their chunks are in, the first one's ack is out before the next is stored."""
    device = Device()
    index = open_index(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    receiver = Receiver(
        FileBlobStore(tmp_path / "store"), index, lambda _n: device.key.public_key()
    )
    uploads = [messages(*device.recording(5_000)) for _ in range(3)]
    for init, *chunks, fin in uploads:
        receiver.handle(*init)
        for msg in chunks[:-1]:
            receiver.handle(*msg)
        assert receiver.handle(*fin) == []  # the last chunk is not in: the fin waits
    assert len(receiver.waiting) == 3
    for _init, *chunks, _fin in uploads:
        receiver.handle(*chunks[-1])
    answers = receiver.answer_waiting()
    first = ack_of([next(answers)])
    assert first.status is AckStatus.STORED
    assert len(index.all_for_device(DEVICE)) == 1, "the first ack waited for the others"
    rest = [ack_of([reply]).status for reply in answers]
    assert rest == [AckStatus.STORED, AckStatus.STORED]
    index.close()
