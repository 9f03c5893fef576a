"""The head-office blob store: parked chunks, assembly, durable commit, locks."""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import headoffice.store as store_mod
from headoffice import parkingdirs
from headoffice.blobstore import StoreError
from headoffice.store import FileBlobStore
from headoffice.storefiles import lock_offset
from sealedrec import durable
from sealedrec.manifest import manifest_hash

DEV = "dev-a"
REC = "4f1c2a9e-0b7d-4c47-9a51-0d2f3b6a7c88"


def manifest_for(
    data: bytes | None, rec: str = REC, started: str = "2026-11-25T10:00:00.000+00:00"
) -> dict[str, Any]:
    return {
        "recording_id": rec,
        "device_id": DEV,
        "seq": 1,
        "started_utc": started,
        "container": "age" if data is not None else None,
        "blob_sha256": hashlib.sha256(data).hexdigest() if data is not None else None,
        "blob_bytes": len(data) if data is not None else 0,
        "signature": {"alg": "ed25519", "key_id": "k", "value": "x"},
    }


def park_all(store: FileBlobStore, data: bytes, size: int, rec: str = REC) -> int:
    chunks = [data[i : i + size] for i in range(0, len(data), size)]
    for i, chunk in enumerate(chunks):
        store.park_chunk(DEV, rec, i, chunk)
    return len(chunks)


@pytest.fixture
def store(tmp_path: Path) -> FileBlobStore:
    return FileBlobStore(tmp_path / "store")


def test_park_is_atomic_and_idempotent(store: FileBlobStore):
    path = store.park_chunk(DEV, REC, 3, b"abc")
    assert path == store.root / "parking" / DEV / REC / "0000003.part"
    assert path.read_bytes() == b"abc"
    before = path.stat()
    store.park_chunk(DEV, REC, 3, b"abc")  # resent: nothing changes
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    store.park_chunk(DEV, REC, 0, b"x")
    assert store.parked(DEV, REC) == {0, 3}
    assert store.parked(DEV, "other") == set()
    # A different resend replaces the chunk whole (the device's latest send wins).
    store.park_chunk(DEV, REC, 3, b"abd")
    assert path.read_bytes() == b"abd"
    assert list((store.root / "tmp").iterdir()) == []


def test_ids_cannot_escape_the_store(store: FileBlobStore):
    for device, rec in ((DEV, "../../etc"), ("..", REC), (DEV, "a/b"), ("", REC)):
        with pytest.raises(StoreError) as err:
            store.park_chunk(device, rec, 0, b"x")
        assert err.value.reason == "id"
    with pytest.raises(StoreError):
        store.park_chunk(DEV, REC, -1, b"x")


def test_assemble_checks_size_and_sha(store: FileBlobStore):
    data = os.urandom(10_000)
    n = park_all(store, data, 3000)
    sha = hashlib.sha256(data).hexdigest()
    blob = store.assemble(DEV, REC, n, len(data), sha)
    assert blob.parent == store.root / "tmp" and blob.read_bytes() == data
    blob.unlink()
    # A chunk with the right size but wrong bytes: the sha256 says so.
    store.park_chunk(DEV, REC, 2, b"\0" * 3000)
    with pytest.raises(StoreError, match="sha256") as err:
        store.assemble(DEV, REC, n, len(data), sha)
    assert err.value.reason == "sha256"
    # A short chunk: the size says so.
    store.park_chunk(DEV, REC, 2, b"\0" * 10)
    with pytest.raises(StoreError, match=r"is 7010 bytes, the init says 10000") as err:
        store.assemble(DEV, REC, n, len(data), sha)
    assert err.value.reason == "size"
    # Missing chunks are listed.
    (store.root / "parking" / DEV / REC / "0000001.part").unlink()
    with pytest.raises(StoreError, match=r"1 of 4 chunks not parked \(1\)") as err:
        store.assemble(DEV, REC, n, len(data), sha)
    assert err.value.reason == "missing" and err.value.missing == (1,)
    assert list((store.root / "tmp").iterdir()) == []  # failures leave no temp file


def test_commit_places_blob_and_manifest_durably(
    store: FileBlobStore, monkeypatch: pytest.MonkeyPatch
):
    synced: list[Path] = []
    real = durable.fsync_dir

    def spy(path: Path) -> None:
        synced.append(Path(path))
        real(path)

    monkeypatch.setattr(store_mod, "fsync_dir", spy)
    monkeypatch.setattr(parkingdirs, "fsync_dir", spy)  # directories made for the day
    monkeypatch.setattr(durable, "fsync_dir", spy)  # files written through durable.atomic_file
    data = os.urandom(5000)
    m = manifest_for(data, started="2026-11-25T23:30:00.000-02:00")  # the 26th in UTC
    blob = store.assemble(DEV, REC, park_all(store, data, 1024), len(data), m["blob_sha256"])
    path = store.commit(DEV, REC, m["started_utc"], "age", blob, m)
    day = store.root / "blobs" / DEV / "2026" / "11" / "26"
    assert path == day / f"{REC}.age"
    assert path.read_bytes() == data and not blob.exists()
    assert store.stored_manifest(path) == m
    # Every new directory's parent, and the directory the files landed in, were fsynced.
    for d in (store.root / "blobs" / DEV, day.parent.parent, day.parent, day):
        assert d.parent in synced, d
    assert synced.count(day) == 1  # once, after the blob's and the manifest's renames
    assert (path.stat().st_mode & 0o777) == 0o600


def test_a_stored_one_chunk_recording_reuses_its_parked_inodes(store: FileBlobStore):
    """The blob is the parked chunk's inode and the manifest the parked init's: a new
    inode is the dearest call of a commit (store module doc)."""
    data = os.urandom(3000)
    m = manifest_for(data)
    store.park_init(DEV, REC, b'{"init": "the upload\'s init message"}')
    init_ino = (store.root / "parking" / DEV / REC / "init.json").stat().st_ino
    chunk_ino = store.park_chunk(DEV, REC, 0, data).stat().st_ino
    blob = store.assemble(DEV, REC, 1, len(data), m["blob_sha256"])
    path = store.commit(DEV, REC, m["started_utc"], "age", blob, m)
    manifest = store.manifest_path(DEV, REC, m["started_utc"])
    assert path.stat().st_ino == chunk_ino and manifest.stat().st_ino == init_ino
    assert store.stored_manifest(path) == m  # emptied before the manifest went in
    # Kept as its canonical JSON: the file hashes to the chain's manifest hash.
    assert hashlib.sha256(manifest.read_bytes()).hexdigest() == manifest_hash(m)
    assert (manifest.stat().st_mode & 0o777) == 0o600
    assert store.parked_init(DEV, REC) is None and list((store.root / "tmp").iterdir()) == []
    # Without a parked init (committed by hand, or the init expired): a new file.
    m2 = manifest_for(data, rec="rec-2")
    blob2 = store.assemble(
        DEV, "rec-2", park_all(store, data, 1024, "rec-2"), 3000, m2["blob_sha256"]
    )
    store.commit(DEV, "rec-2", m2["started_utc"], "age", blob2, m2)
    assert store.stored_manifest(store.manifest_path(DEV, "rec-2", m2["started_utc"])) == m2


def test_commit_is_idempotent_and_refuses_conflicts(store: FileBlobStore):
    data = os.urandom(3000)
    m = manifest_for(data)
    n = park_all(store, data, 1024)
    first = store.commit(
        DEV, REC, m["started_utc"], "age", store.assemble(DEV, REC, n, 3000, m["blob_sha256"]), m
    )
    again_tmp = store.assemble(DEV, REC, n, 3000, m["blob_sha256"])
    assert store.commit(DEV, REC, m["started_utc"], "age", again_tmp, m) == first
    assert not again_tmp.exists()  # the duplicate was dropped, the stored blob kept
    assert store.commit(DEV, REC, m["started_utc"], "age", None, m) == first
    # A crash between blob and manifest: the redo writes the manifest.
    manifest_file = first.with_name(f"{REC}.manifest.json")
    manifest_file.unlink()
    assert store.commit(DEV, REC, m["started_utc"], "age", None, m) == first
    assert store.stored_manifest(first) == m
    # Another blob under the same id: refused, nothing changed.
    other = os.urandom(3000)
    tmp = store.root / "tmp" / "other"
    tmp.write_bytes(other)
    with pytest.raises(StoreError, match="already stored") as err:
        store.commit(DEV, REC, m["started_utc"], "age", tmp, manifest_for(other))
    assert err.value.reason == "conflict" and first.read_bytes() == data
    with pytest.raises(StoreError, match="different manifest"):
        store.commit(DEV, REC, m["started_utc"], "age", None, {**m, "seq": 2})


def test_commit_checks_the_blob_against_the_manifest(store: FileBlobStore):
    data = os.urandom(2000)
    tmp = store.root / "tmp" / "b"
    tmp.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(StoreError, match="sha256") as err:
        store.commit(DEV, REC, "2026-11-25T10:00:00+00:00", "age", tmp, manifest_for(data))
    assert err.value.reason == "sha256"
    assert not (store.root / "blobs" / DEV / "2026").exists() or not any(
        (store.root / "blobs").rglob("*.age")
    )
    with pytest.raises(StoreError, match="needs a blob"):
        store.commit(DEV, REC, "2026-11-25T10:00:00+00:00", "age", None, manifest_for(data))
    with pytest.raises(StoreError, match="not an ISO 8601"):
        store.commit(DEV, REC, "tuesday", "age", tmp, manifest_for(data))


def test_commit_segments_and_no_audio(store: FileBlobStore, tmp_path: Path):
    data = os.urandom(100)
    outside = tmp_path / "seg.bin"  # given from elsewhere: copied in if need be
    outside.write_bytes(data)
    m = {**manifest_for(data), "container": "segments"}
    path = store.commit(DEV, REC, m["started_utc"], "segments", outside, m)
    assert path.name == f"{REC}.segments" and path.read_bytes() == data
    discarded = manifest_for(None, rec="rec-2")
    path2 = store.commit(DEV, "rec-2", discarded["started_utc"], None, None, discarded)
    assert path2.name == "rec-2.manifest.json" and store.stored_manifest(path2) == discarded
    assert not list(path2.parent.glob("rec-2.age"))


def test_drop_parking(store: FileBlobStore):
    park_all(store, b"abcdef", 2)
    store.park_chunk("dev-b", "r2", 0, b"z")
    listed = store.list_parking()
    assert [(d, r) for d, r, _ in listed] == [(DEV, REC), ("dev-b", "r2")]
    assert all(abs(t - time.time()) < 60 for _, _, t in listed)
    store.drop_parking(DEV, REC)
    assert store.parked(DEV, REC) == set()
    assert not (store.root / "parking" / DEV / REC).exists()
    store.drop_parking(DEV, REC)  # idempotent


def test_lock_excludes_threads_and_cleans_up(store: FileBlobStore):
    counter = {"n": 0, "max": 0, "inside": 0}
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(30):
                with store.lock(DEV, REC, timeout=20):
                    counter["inside"] += 1
                    counter["max"] = max(counter["max"], counter["inside"])
                    n = counter["n"]
                    time.sleep(0.0005)
                    counter["n"] = n + 1
                    counter["inside"] -= 1
        except BaseException as exc:
            errors.append(exc)
            raise

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and counter["n"] == 120 and counter["max"] == 1
    # One lock file for every recording: locking makes no file per recording.
    assert [p.name for p in (store.root / "locks").iterdir()] == ["recordings.lock"]


def test_locks_of_recordings_are_bytes_of_one_file(store: FileBlobStore, tmp_path: Path):
    """Another recording's lock is free while one is held (its own byte), and a killed
    holder's lock goes with its process."""
    assert lock_offset(DEV, REC) != lock_offset(DEV, "another-rec")
    assert lock_offset(DEV, REC) == lock_offset(DEV, REC) < 2**56
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; from pathlib import Path; from headoffice.store import FileBlobStore\n"
            f"s = FileBlobStore(Path({str(store.root)!r}))\n"
            f"with s.lock({DEV!r}, {REC!r}):\n"
            "    print('held', flush=True); time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(StoreError, match="still held"), store.lock(DEV, REC, timeout=0.1):
            pass
        with store.lock(DEV, "another-rec", timeout=0.1):
            pass
    finally:
        holder.kill()  # no release: the kernel drops the lock with the process
        holder.wait(10)
        holder.stdout.close()  # type: ignore[union-attr]
    with store.lock(DEV, REC, timeout=2):
        pass


def test_cleanup_removes_unheld_lock_files_of_older_versions(store: FileBlobStore):
    legacy = store.root / "locks" / DEV
    legacy.mkdir()
    (legacy / "old-rec.lock").write_bytes(b"")
    held = legacy / "held-rec.lock"
    held.write_bytes(b"")
    with open(held, "rb") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)  # an older worker finishing it
        with store.lock(DEV, REC):
            assert store.cleanup_locks() == 1  # this version's lock file stays
    assert sorted(p.name for p in legacy.iterdir()) == ["held-rec.lock"]
    assert (store.root / "locks" / "recordings.lock").exists()


def test_lock_times_out_against_another_process(store: FileBlobStore):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from headoffice.store import FileBlobStore\n"
            f"s = FileBlobStore(Path({str(store.root)!r}))\n"
            f"with s.lock({DEV!r}, {REC!r}):\n"
            "    print('held', flush=True); sys.stdin.read()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        start = time.monotonic()
        with (
            pytest.raises(StoreError, match=r"still held after 0\.3 s") as err,
            store.lock(DEV, REC, timeout=0.3),
        ):
            pass
        assert err.value.reason == "lock"
        assert 0.25 < time.monotonic() - start < 3
        with store.lock(DEV, "another-rec", timeout=0.3):
            pass
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(10)
        holder.stdout.close()  # type: ignore[union-attr]
    with store.lock(DEV, REC, timeout=2):
        pass  # free once the holder is gone


def test_cleanup_tmp(store: FileBlobStore):
    old = store.root / "tmp" / "old.tmp"
    old.write_bytes(b"x")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    (store.root / "tmp" / "new.tmp").write_bytes(b"y")
    assert store.cleanup_tmp(3600) == 1
    assert [p.name for p in (store.root / "tmp").iterdir()] == ["new.tmp"]


def test_an_emptied_parking_folder_serves_the_devices_next_upload(store: FileBlobStore):
    """A new folder costs as much as a new file (parkingdirs module doc): the folder a
    stored recording emptied is the next upload's, emptied of anything that rode along."""
    store.park_init(DEV, REC, b"{}")
    store.park_chunk(DEV, REC, 0, b"x")
    folder = store.root / "parking" / DEV / REC
    ino = folder.stat().st_ino
    store.drop_parking(DEV, REC)
    assert not folder.exists()
    (spare,) = (store.root / "parking" / DEV).iterdir()
    assert spare.name.startswith(".spare-") and list(spare.iterdir()) == []
    assert store.list_parking() == []  # a spare is no upload
    (spare / "0000003.part").write_bytes(b"late")  # a late chunk parked as it was retired
    store.park_init(DEV, "rec-2", b'{"next": 1}')
    folder2 = store.root / "parking" / DEV / "rec-2"
    assert folder2.stat().st_ino == ino
    assert sorted(p.name for p in folder2.iterdir()) == ["init.json"]
    assert store.parked(DEV, "rec-2") == set()
    # Another device's upload does not take it; a spare someone removed is made anew.
    store.drop_parking(DEV, "rec-2")
    store.park_init("dev-b", REC, b"{}")
    assert (store.root / "parking" / "dev-b" / REC).stat().st_ino != ino
    for spare in (store.root / "parking" / DEV).iterdir():
        spare.rmdir()
    store.park_init(DEV, "rec-3", b"{}")
    assert store.parked_init(DEV, "rec-3") == b"{}"


def test_spare_parking_folders_are_bounded_and_cleaned(store: FileBlobStore):
    recs = [f"rec-{i}" for i in range(parkingdirs.SPARES_PER_DEVICE + 3)]
    for rec in recs:
        store.park_init(DEV, rec, b"{}")
    for rec in recs:
        store.drop_parking(DEV, rec)
    spares = list((store.root / "parking" / DEV).iterdir())
    assert len(spares) == parkingdirs.SPARES_PER_DEVICE
    old = time.time() - 7200
    os.utime(spares[0], (old, old))
    assert store.cleanup_tmp(3600) == 1  # a stopped worker's spare; the others are fresh
    assert len(list((store.root / "parking" / DEV).iterdir())) == len(spares) - 1


def test_unwritable_root_is_a_store_error(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="cannot create"):
        FileBlobStore(blocker / "store")
