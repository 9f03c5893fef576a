"""Workers that share nothing but one PostgreSQL index, one S3 bucket (a real SeaweedFS,
tests/seaweed.py) and the broker: two receivers in process, each with its own directory,
index connection and S3 client.

A worker that never saw an upload's init finishes it, and nothing stays on either's disk;
the S3 store's finishing lock is then the index's PostgreSQL advisory lock (no lock
objects; the receiver's second lock nests; threads and workers exclude each other; the
server hands it over at release; a lost session releases it); what a killed worker left
parked for a stored recording is cleaned up at housekeeping. The same with real
processes, devices and faults: tests/test_office_scaleout.py.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from headoffice.blobstore import StoreError
from headoffice.config import LimitsConfig, OfficeConfig, StoreConfig
from headoffice.index import IndexStoreError, PostgresIndex, open_index
from headoffice.receiver import Receiver
from headoffice.s3store import S3BlobStore
from headoffice.s3support import ObjectLock
from headoffice.stores import IndexFinishLock, open_store
from sealedrec.protocol import AckStatus
from tests.seaweed import ACCESS_KEY, SECRET_KEY, Seaweed
from tests.test_office_index import pg_dsn, reset_pg  # noqa: F401 - fixture
from tests.test_receiver_hostile import CHUNK, Device, ack_of

BUCKET = "scaleout"
LOCK_APP = "linetap-office finish-lock"  # the lock sessions' application_name


@pytest.fixture(scope="module")
def seaweed(seaweed_server: Seaweed) -> Seaweed:
    seaweed_server.make_bucket(BUCKET, lock=True)  # the session's server (tests/conftest.py)
    return seaweed_server


def store_config(weed: Seaweed, prefix: str, **changes: Any) -> StoreConfig:
    values: dict[str, Any] = {
        "backend": "s3",
        "endpoint_url": weed.endpoint,
        "bucket": BUCKET,
        "access_key_id": ACCESS_KEY,
        "secret_access_key": SECRET_KEY,
        "prefix": prefix,
        "connect_timeout_s": 2,
        "read_timeout_s": 20,
        "max_attempts": 2,
    }
    values.update(changes)
    return StoreConfig.model_validate(values)


def versions(weed: Seaweed, prefix: str) -> list[tuple[str, str]]:
    """(key, version id) of every object version and delete marker under ``prefix``."""
    found: list[tuple[str, str]] = []
    pages = (
        weed.client().get_paginator("list_object_versions").paginate(Bucket=BUCKET, Prefix=prefix)
    )
    for page in pages:
        for entry in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]:
            found.append((entry["Key"], str(entry.get("VersionId"))))
    return sorted(found)


def advisory_locks(dsn: str) -> int:
    """Advisory locks granted to the office's lock sessions in this database."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
            "WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = %s "
            "AND a.datname = current_database()",
            (LOCK_APP,),
        ).fetchone()
    assert row is not None
    return int(row[0])


def terminate_lock_sessions(dsn: str) -> int:
    """End every lock session of the office in this database (as a server restart or a
    dropped connection would); waits until they are gone."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
            "WHERE application_name = %s AND datname = current_database()",
            (LOCK_APP,),
        ).fetchall()
    return len(rows)


@dataclass
class Worker:
    root: Path
    index: PostgresIndex
    store: S3BlobStore
    receiver: Receiver


@dataclass
class Pair:
    """Two workers as on two machines: each its own directory, index connection and S3
    client; the same database, bucket and prefix."""

    a: Worker
    b: Worker
    devices: dict[str, Device]

    def enroll(self, name: str) -> Device:
        self.devices[name] = Device(name)
        return self.devices[name]


@pytest.fixture
def pg(pg_dsn: str) -> str:  # noqa: F811 - the imported fixture
    reset_pg(pg_dsn)
    return pg_dsn


def _worker(root: Path, pg: str, cfg: StoreConfig, devices: dict[str, Device]) -> Worker:
    index = open_index(pg)
    assert isinstance(index, PostgresIndex)
    store = open_store(OfficeConfig(root=root, store=cfg), root, index=index)
    assert isinstance(store, S3BlobStore)
    receiver = Receiver(
        store,
        index,
        lambda device: devices[device].key.public_key(),
        LimitsConfig(),
        None,
        fin_grace_s=0,
    )
    return Worker(root, index, store, receiver)


@pytest.fixture
def pair(tmp_path: Path, pg: str, seaweed: Seaweed) -> Iterator[Pair]:
    cfg = store_config(seaweed, f"t-{uuid.uuid4().hex[:12]}/")
    devices: dict[str, Device] = {}
    a = _worker(tmp_path / "worker-a", pg, cfg, devices)
    try:
        b = _worker(tmp_path / "worker-b", pg, cfg, devices)
        try:
            yield Pair(a, b, devices)
        finally:
            b.index.close()
    finally:
        a.index.close()


def local_files(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


# --------------------------------------------------------------------------------------
# Any worker finishes any upload; nothing on a worker's own disk
# --------------------------------------------------------------------------------------
def test_a_worker_that_never_saw_the_init_finishes_the_upload(pair: Pair, seaweed: Seaweed):
    a, b = pair.a, pair.b
    dev = pair.enroll("dev-a")
    blob = os.urandom(5 * CHUNK + 100)
    rec = "rec-split"
    manifest = dev.manifest(rec, blob)
    first = ack_of(a.receiver.handle(*dev.init(manifest, blob)))
    assert first.status is AckStatus.MISSING and list(first.missing) == list(range(6))
    chunks = dev.chunks(rec, blob)
    for chunk in chunks[:3]:
        assert a.receiver.handle(*chunk) == []
    for chunk in chunks[3:]:  # B has seen neither the init nor these chunks' first half
        assert b.receiver.handle(*chunk) == []
    ack = ack_of(b.receiver.handle(*dev.fin(rec, blob)))
    assert ack.status is AckStatus.STORED
    record = a.index.get(rec)
    assert record is not None and record.blob_sha256 == ack.blob_sha256
    with a.store.local_blob(record.path) as path:  # A reads what B stored
        assert path.read_bytes() == blob
    prefix = a.store.prefix
    day = f"{prefix}blobs/dev-a/2026/11/25/{rec}"
    keys = [key for key, _ in versions(seaweed, prefix)]
    assert keys == [f"{day}.age", f"{day}.manifest.json"]  # one version each; no parking, no locks
    assert a.index.uploads() == []
    for worker in (a, b):  # the temp directory is all a worker has on its disk, and it is empty
        assert [p.name for p in worker.root.iterdir()] == ["tmp"]
        assert local_files(worker.root) == []


# --------------------------------------------------------------------------------------
# The finishing lock: PostgreSQL's advisory lock
# --------------------------------------------------------------------------------------
def test_the_s3_store_finishes_under_the_advisory_lock(pair: Pair, pg: str, seaweed: Seaweed):
    a, b = pair.a, pair.b
    assert isinstance(a.store.finish_lock, IndexFinishLock)
    with a.store.lock("dev-a", "rec-1"):
        # The receiver takes the store's lock, then the index's: one lock, nested.
        with a.index.finish_lock("dev-a", "rec-1", timeout=0.2):
            assert advisory_locks(pg) == 1
        start = time.monotonic()
        with pytest.raises(StoreError) as err, b.store.lock("dev-a", "rec-1", timeout=0.3):
            pass
        assert 0.25 < time.monotonic() - start < 2.5
        assert err.value.reason == "lock" and "still held after 0.3 s" in str(err.value)
        with b.store.lock("dev-a", "rec-2", timeout=0.3):
            assert advisory_locks(pg) == 2  # another recording: free
    assert advisory_locks(pg) == 0
    with b.store.lock("dev-a", "rec-1", timeout=0.3):
        pass
    assert versions(seaweed, a.store.prefix) == []  # no lock object was ever made
    assert a.store.cleanup_locks() == 0


def test_without_postgresql_the_s3_store_keeps_its_lock_object(tmp_path: Path, seaweed: Seaweed):
    cfg = store_config(seaweed, f"t-{uuid.uuid4().hex[:12]}/")
    with open_index(f"sqlite:///{tmp_path / 'index.sqlite3'}") as index:
        store = open_store(OfficeConfig(root=tmp_path, store=cfg), tmp_path, index=index)
        assert isinstance(store, S3BlobStore) and isinstance(store.finish_lock, ObjectLock)
        with store.lock("dev-a", "rec-1"):
            assert [key for key, _ in versions(seaweed, f"{cfg.prefix}locks/")] == [
                f"{cfg.prefix}locks/dev-a/rec-1.lock"
            ]


def test_a_waiting_worker_gets_the_lock_as_soon_as_it_is_released(
    pair: Pair,
):
    a, b = pair.a, pair.b
    released = threading.Event()
    acquired_at: list[float] = []

    def waiter() -> None:
        with b.index.finish_lock("dev-a", "rec-1", timeout=10):
            acquired_at.append(time.monotonic())

    with a.index.finish_lock("dev-a", "rec-1"):
        thread = threading.Thread(target=waiter)
        thread.start()
        time.sleep(0.5)
        assert acquired_at == []
        released.set()
    released_at = time.monotonic()
    thread.join(10)
    assert len(acquired_at) == 1
    assert acquired_at[0] - released_at < 0.25  # handed over by the server, not polled for


def test_threads_of_one_worker_exclude_each_other(pair: Pair):
    a = pair.a
    held, done = threading.Event(), threading.Event()

    def holder() -> None:
        with a.index.finish_lock("dev-a", "rec-1"):
            held.set()
            done.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert held.wait(10)
        with (
            pytest.raises(IndexStoreError, match="finish lock still held"),
            a.index.finish_lock("dev-a", "rec-1", timeout=0.2),
        ):
            pass
    finally:
        done.set()
        thread.join(10)
    with a.index.finish_lock("dev-a", "rec-1", timeout=1):
        pass


def test_a_session_lost_while_holding_releases_the_lock(
    pair: Pair, pg: str, caplog: pytest.LogCaptureFixture
):
    a, b = pair.a, pair.b
    with caplog.at_level(logging.WARNING, logger="headoffice.index.pglock"):
        with a.index.finish_lock("dev-a", "rec-1"):
            assert terminate_lock_sessions(pg) == 1  # the server restarted, or the link broke
            with b.index.finish_lock("dev-a", "rec-1", timeout=2):
                pass  # the server released A's lock with its session
        # A's release does not raise: its work is done either way.
        assert "its database session ended while it was held" in caplog.text
    with a.index.finish_lock("dev-a", "rec-1", timeout=1):
        pass  # a new session


def test_a_pooled_session_that_died_while_idle_is_replaced(pair: Pair, pg: str):
    a = pair.a
    with a.index.finish_lock("dev-a", "rec-1"):
        pass
    assert terminate_lock_sessions(pg) == 1  # the idle one in A's pool
    with a.index.finish_lock("dev-a", "rec-1", timeout=1):
        assert advisory_locks(pg) == 1


# --------------------------------------------------------------------------------------
# What a killed worker leaves behind
# --------------------------------------------------------------------------------------
def test_what_is_parked_for_a_stored_recording_is_dropped_at_housekeeping(
    pair: Pair, seaweed: Seaweed
):
    a, b = pair.a, pair.b
    dev = pair.enroll("dev-a")
    blob = os.urandom(2 * CHUNK)
    manifest = dev.manifest("rec-done", blob)
    init_topic, init = dev.init(manifest, blob)
    a.receiver.handle(init_topic, init)
    for chunk in dev.chunks("rec-done", blob):
        a.receiver.handle(*chunk)
    assert ack_of(a.receiver.handle(*dev.fin("rec-done", blob))).status is AckStatus.STORED
    # A worker killed between the index commit and its clean-up leaves this behind (the
    # device's resend then got "stored" from the index, and nothing removed it):
    a.store.park_init("dev-a", "rec-done", init)
    a.store.park_chunk("dev-a", "rec-done", 0, blob[:CHUNK])
    a.index.note_upload("dev-a", "rec-done", json.loads(init), 2, 1)
    # An upload in progress, as young: it stays.
    other = os.urandom(CHUNK)
    assert a.receiver.handle(*dev.init(dev.manifest("rec-open", other), other))
    assert b.receiver.expire() == 1
    parked = {key.split("/")[3] for key, _ in versions(seaweed, f"{a.store.prefix}parking/")}
    assert parked == {"rec-open"}
    assert [u.recording_id for u in a.index.uploads()] == ["rec-open"]
    assert a.index.get("rec-done") is not None
