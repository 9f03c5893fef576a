"""One contract for every blob store (:class:`headoffice.blobstore.BlobStore`), plus each
store's own failure paths.

The ``store`` fixture yields a :class:`Backend`: the store under test and what the test
needs to look behind it.

* ``file``: :class:`headoffice.store.FileBlobStore` in a temp dir.
* ``s3``: :class:`headoffice.s3store.S3BlobStore` made by ``open_s3_store`` from a
  ``[store]`` config, over a real SeaweedFS (``tests/seaweed.py``, one server per
  session) and a bucket created with Object Lock; each test gets its own key prefix.
  Multipart is set to its minimum part (5 MiB), so a 6 MiB blob goes up in parts.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from headoffice.blobstore import BlobStore, Lifecycle, StoreError
from headoffice.config import OfficeConfig, StoreConfig, load_office_config
from headoffice.s3store import S3BlobStore
from headoffice.store import FileBlobStore
from headoffice.stores import open_s3_store, open_store
from tests.mqtt_broker import free_port
from tests.seaweed import ACCESS_KEY, SECRET_KEY, Seaweed

DEV = "dev-a"
REC = "4f1c2a9e-0b7d-4c47-9a51-0d2f3b6a7c88"
STARTED = "2026-11-25T10:00:00.000+00:00"
LOCKED_BUCKET = "recordings"
PLAIN_BUCKET = "no-object-lock"
MiB = 1024 * 1024


# --------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def seaweed(seaweed_server: Seaweed) -> Seaweed:
    # the session's server (tests/conftest.py)
    seaweed_server.make_bucket(LOCKED_BUCKET, lock=True)
    seaweed_server.make_bucket(PLAIN_BUCKET, lock=False)
    return seaweed_server


def s3_config(weed: Seaweed, **changes: Any) -> StoreConfig:
    values: dict[str, Any] = {
        "backend": "s3",
        "endpoint_url": weed.endpoint,
        "bucket": LOCKED_BUCKET,
        "access_key_id": ACCESS_KEY,
        "secret_access_key": SECRET_KEY,
        "prefix": f"t-{uuid.uuid4().hex[:12]}/",
        "multipart_part_mb": 5,
        "connect_timeout_s": 2,
        "read_timeout_s": 20,
        "max_attempts": 2,
    }
    values.update(changes)
    return StoreConfig.model_validate(values)


@dataclass
class Backend:
    kind: str
    store: BlobStore
    weed: Seaweed | None = None
    prefix: str = ""

    def versions(self, key_prefix: str) -> int:
        """Object versions and delete markers under a key prefix (S3 only)."""
        assert self.weed is not None
        answer = self.weed.client().list_object_versions(
            Bucket=LOCKED_BUCKET, Prefix=self.prefix + key_prefix
        )
        return len(answer.get("Versions", [])) + len(answer.get("DeleteMarkers", []))


@pytest.fixture(params=["file", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path, seaweed: Seaweed) -> Backend:
    # ``seaweed`` is named here, not fetched for "s3" alone: a session fixture set up
    # inside a test would count as the test's leftover child (tests/conftest.py).
    if request.param == "file":
        return Backend("file", FileBlobStore(tmp_path / "store"))
    cfg = s3_config(seaweed)
    return Backend("s3", open_s3_store(cfg, tmp_path / "office"), seaweed, cfg.prefix)


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------
def manifest_for(data: bytes | None, rec: str = REC) -> dict[str, Any]:
    return {
        "recording_id": rec,
        "device_id": DEV,
        "seq": 1,
        "started_utc": STARTED,
        "container": "age" if data is not None else None,
        "blob_sha256": hashlib.sha256(data).hexdigest() if data is not None else None,
        "blob_bytes": len(data) if data is not None else 0,
        "signature": {"alg": "ed25519", "key_id": "k", "value": "x"},
    }


def park_all(store: BlobStore, data: bytes, size: int, rec: str = REC) -> int:
    chunks = [data[i : i + size] for i in range(0, len(data), size)]
    for i, chunk in enumerate(chunks):
        store.park_chunk(DEV, rec, i, chunk)
    return len(chunks)


def store_recording(store: BlobStore, data: bytes, rec: str = REC, chunk: int = 4096) -> str:
    m = manifest_for(data, rec)
    n = park_all(store, data, chunk, rec)
    blob = store.assemble(DEV, rec, n, len(data), m["blob_sha256"])
    return os.fspath(store.commit(DEV, rec, STARTED, "age", blob, m))


def local_bytes(store: BlobStore, stored: str) -> bytes:
    with store.local_blob(stored) as path:
        return path.read_bytes()


def wait_until(when: datetime) -> None:
    pause = (when - datetime.now(UTC)).total_seconds() + 0.2
    if pause > 0:
        time.sleep(pause)


# --------------------------------------------------------------------------------------
# The contract
# --------------------------------------------------------------------------------------
def test_park_init_and_chunks_are_idempotent(backend: Backend):
    store = backend.store
    assert store.parked_init(DEV, REC) is None
    store.park_init(DEV, REC, b'{"init": 1}')
    assert store.parked_init(DEV, REC) == b'{"init": 1}'
    store.park_chunk(DEV, REC, 3, b"abc")
    store.park_chunk(DEV, REC, 0, b"x")
    if backend.kind == "s3":
        before = backend.versions(f"parking/{DEV}/{REC}/0000003")
    store.park_chunk(DEV, REC, 3, b"abc")  # resent: nothing changes
    if backend.kind == "s3":
        assert backend.versions(f"parking/{DEV}/{REC}/0000003") == before == 1
    assert store.parked(DEV, REC) == {0, 3}
    assert store.parked(DEV, "other-rec") == set()
    # A different resend replaces the chunk whole (the device's latest send wins).
    store.park_chunk(DEV, REC, 3, b"abd")
    store.park_chunk(DEV, REC, 1, b"y")
    store.park_chunk(DEV, REC, 2, b"z")
    blob = store.assemble(DEV, REC, 4, 6, hashlib.sha256(b"xyzabd").hexdigest())
    assert blob.read_bytes() == b"xyzabd"
    blob.unlink()


def test_ids_cannot_escape_the_store(backend: Backend):
    for device, rec in ((DEV, "../../etc"), ("..", REC), (DEV, "a/b"), ("", REC)):
        with pytest.raises(StoreError) as err:
            backend.store.park_chunk(device, rec, 0, b"x")
        assert err.value.reason == "id"
    with pytest.raises(StoreError) as err:
        backend.store.park_chunk(DEV, REC, -1, b"x")
    assert err.value.reason == "id"


def test_assemble_checks_size_sha_and_missing_chunks(backend: Backend):
    store = backend.store
    data = os.urandom(10_000)
    n = park_all(store, data, 3000)
    sha = hashlib.sha256(data).hexdigest()
    blob = store.assemble(DEV, REC, n, len(data), sha)
    assert blob.read_bytes() == data
    assert stat.S_IMODE(blob.stat().st_mode) == 0o600
    blob.unlink()
    store.park_chunk(DEV, REC, 2, b"\0" * 3000)  # right size, wrong bytes
    with pytest.raises(StoreError, match="sha256") as err:
        store.assemble(DEV, REC, n, len(data), sha)
    assert err.value.reason == "sha256"
    store.park_chunk(DEV, REC, 2, b"\0" * 10)  # short
    with pytest.raises(StoreError, match=r"is 7010 bytes, the init says 10000") as err:
        store.assemble(DEV, REC, n, len(data), sha)
    assert err.value.reason == "size"
    with pytest.raises(StoreError, match=r"2 of 6 chunks not parked \(4, 5\)") as err:
        store.assemble(DEV, REC, 6, len(data), sha)
    assert err.value.reason == "missing" and err.value.missing == (4, 5)


def test_commit_is_idempotent_and_refuses_conflicts(backend: Backend):
    store = backend.store
    data = os.urandom(3000)
    m = manifest_for(data)
    stored = store_recording(store, data, chunk=1024)
    assert local_bytes(store, stored) == data
    assert store.stored_manifest(stored) == m
    again = store.assemble(DEV, REC, 3, 3000, m["blob_sha256"])
    assert os.fspath(store.commit(DEV, REC, STARTED, "age", again, m)) == stored
    assert not again.exists()  # the duplicate dropped, the stored blob kept
    assert os.fspath(store.commit(DEV, REC, STARTED, "age", None, m)) == stored
    # Another blob under the same id: refused, the first one kept.
    other = os.urandom(3000)
    store.drop_parking(DEV, REC)
    n = park_all(store, other, 1024)
    tmp = store.assemble(DEV, REC, n, 3000, hashlib.sha256(other).hexdigest())
    with pytest.raises(StoreError, match="already stored") as err:
        store.commit(DEV, REC, STARTED, "age", tmp, manifest_for(other))
    assert err.value.reason == "conflict"
    tmp.unlink(missing_ok=True)
    assert local_bytes(store, stored) == data
    if backend.kind == "s3":  # the refused write (If-None-Match) left no version behind
        assert backend.versions(stored) == 1
    with pytest.raises(StoreError, match="different manifest") as err:
        store.commit(DEV, REC, STARTED, "age", None, {**m, "seq": 2})
    assert err.value.reason == "conflict"
    assert store.stored_manifest(stored) == m


def test_commit_checks_the_blob_against_the_manifest(backend: Backend, tmp_path: Path):
    store = backend.store
    data = os.urandom(2000)
    bad = tmp_path / "bad.bin"
    bad.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(StoreError, match="sha256") as err:
        store.commit(DEV, REC, STARTED, "age", bad, manifest_for(data))
    assert err.value.reason == "sha256"
    with pytest.raises(StoreError, match="needs a blob") as err:
        store.commit(DEV, REC, STARTED, "age", None, manifest_for(data))
    assert err.value.reason == "missing"
    with pytest.raises(StoreError, match="not an ISO 8601") as err:
        store.commit(DEV, REC, "tuesday", "age", bad, manifest_for(data))
    assert err.value.reason == "date"


def test_manifest_only_recording(backend: Backend):
    store = backend.store
    m = manifest_for(None, rec="rec-2")
    stored = os.fspath(store.commit(DEV, "rec-2", STARTED, None, None, m))
    assert stored.endswith("rec-2.manifest.json")
    assert store.stored_manifest(stored) == m
    assert store.commit(DEV, "rec-2", STARTED, None, None, m) == store.commit(
        DEV, "rec-2", STARTED, None, None, m
    )
    store.delete(stored)
    with pytest.raises(StoreError) as err:
        store.stored_manifest(stored)
    assert err.value.reason == "missing"


def test_a_large_blob_and_range_reads(backend: Backend):
    store = backend.store
    data = os.urandom(6 * MiB + 1234)  # S3: above the 5 MiB part, so multipart
    stored = store_recording(store, data, chunk=256 * 1024)
    assert store.size(stored) == len(data)
    assert store.read_range(stored, 0, 99) == data[:100]
    assert store.read_range(stored, 5 * MiB - 10, 5 * MiB + 10) == data[5 * MiB - 10 : 5 * MiB + 11]
    assert store.read_range(stored, len(data) - 5, len(data) + 1000) == data[-5:]
    assert store.read_range(stored, 7, 7) == data[7:8]
    for start, end in ((len(data), len(data) + 10), (10, 9), (-1, 5)):
        with pytest.raises(StoreError) as err:
            store.read_range(stored, start, end)
        assert err.value.reason == "range", (start, end)
    with store.local_blob(stored) as path:
        assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(data).digest()
        if backend.kind == "s3":
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
    if backend.kind == "s3":
        assert not path.exists()  # the download is removed when the block ends
    # The redo of a finished large commit changes nothing.
    assert os.fspath(store.commit(DEV, REC, STARTED, "age", None, manifest_for(data))) == stored


def test_list_and_drop_parking(backend: Backend):
    store = backend.store
    park_all(store, b"abcdef", 2)
    store.park_chunk("dev-b", "r2", 0, b"z")
    store.park_chunk(DEV, REC, 0, b"A")  # a replaced chunk: an older version on S3
    listed = store.list_parking()
    assert [(d, r) for d, r, _ in listed] == [(DEV, REC), ("dev-b", "r2")]
    assert all(abs(t - time.time()) < 60 for _, _, t in listed)
    store.drop_parking(DEV, REC)
    assert store.parked(DEV, REC) == set()
    assert [(d, r) for d, r, _ in store.list_parking()] == [("dev-b", "r2")]
    if backend.kind == "s3":
        assert backend.versions(f"parking/{DEV}/{REC}/") == 0  # no version left behind
    store.drop_parking(DEV, REC)  # idempotent


def test_lock_excludes_threads(backend: Backend):
    counter = {"n": 0, "max": 0, "inside": 0}
    errors: list[BaseException] = []
    rounds = 20 if backend.kind == "file" else 5

    def worker() -> None:
        try:
            for _ in range(rounds):
                with backend.store.lock(DEV, REC, timeout=30):
                    counter["inside"] += 1
                    counter["max"] = max(counter["max"], counter["inside"])
                    n = counter["n"]
                    time.sleep(0.002)
                    counter["n"] = n + 1
                    counter["inside"] -= 1
        except StoreError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and counter["n"] == 4 * rounds and counter["max"] == 1


def test_lock_times_out_while_held(backend: Backend):
    store = backend.store
    with store.lock(DEV, REC):
        start = time.monotonic()
        with (
            pytest.raises(StoreError, match=r"still held after 0\.3 s") as err,
            store.lock(DEV, REC, timeout=0.3),
        ):
            pass
        assert err.value.reason == "lock"
        assert 0.25 < time.monotonic() - start < 5
        with store.lock(DEV, "another-rec", timeout=1):
            pass
    with store.lock(DEV, REC, timeout=2):
        pass  # free once released
    assert store.cleanup_locks() == 0


def test_retention_refuses_an_early_delete(backend: Backend):
    store = backend.store
    stored = store_recording(store, os.urandom(5000))
    assert store.lifecycle(stored) == Lifecycle(retain_until=None, legal_hold=False)
    until = datetime.now(UTC) + timedelta(seconds=3)
    store.retain_until(stored, until)
    expected = until.replace(microsecond=0) + timedelta(seconds=1)  # whole seconds, up
    assert store.lifecycle(stored) == Lifecycle(retain_until=expected, legal_hold=False)
    store.retain_until(stored, until)  # the same date again: nothing changes
    with pytest.raises(StoreError, match="only be extended") as err:
        store.retain_until(stored, until - timedelta(seconds=2))
    assert err.value.reason == "retained"
    with pytest.raises(StoreError, match="retained until") as err:
        store.delete(stored)
    assert err.value.reason == "retained"
    assert store.size(stored) == 5000 and store.stored_manifest(stored)["recording_id"] == REC
    wait_until(expected)
    store.delete(stored)
    for read in (store.size, store.stored_manifest):
        with pytest.raises(StoreError) as err:
            read(stored)
        assert err.value.reason == "missing"
    store.delete(stored)  # gone already: nothing to do
    with pytest.raises(StoreError) as err:
        store.retain_until(stored, until)
    assert err.value.reason == "missing"


def test_legal_hold_refuses_a_delete_until_released(backend: Backend):
    store = backend.store
    stored = store_recording(store, os.urandom(5000))
    store.set_legal_hold(stored, True)
    assert store.lifecycle(stored) == Lifecycle(retain_until=None, legal_hold=True)
    with pytest.raises(StoreError, match="legal hold") as err:
        store.delete(stored)
    assert err.value.reason == "held"
    assert store.size(stored) == 5000 and store.stored_manifest(stored)["recording_id"] == REC
    store.set_legal_hold(stored, False)
    assert store.lifecycle(stored).legal_hold is False
    store.delete(stored)
    with pytest.raises(StoreError) as err:
        store.size(stored)
    assert err.value.reason == "missing"


def test_naive_retention_dates_are_refused(backend: Backend):
    stored = store_recording(backend.store, os.urandom(100))
    with pytest.raises(StoreError, match="no time zone") as err:
        backend.store.retain_until(stored, datetime(2030, 1, 1))
    assert err.value.reason == "date"


# --------------------------------------------------------------------------------------
# The filesystem store's own
# --------------------------------------------------------------------------------------
def test_file_registry_survives_a_new_store_and_makes_files_read_only(tmp_path: Path):
    store = FileBlobStore(tmp_path / "store")
    stored = store_recording(store, os.urandom(100))
    store.set_legal_hold(stored, True)
    blob = Path(stored)
    manifest = blob.with_name(f"{REC}.manifest.json")
    assert stat.S_IMODE(blob.stat().st_mode) == 0o400
    assert stat.S_IMODE(manifest.stat().st_mode) == 0o400
    entry = tmp_path / "store" / "lifecycle" / DEV / "2026" / "11" / "25" / f"{REC}.json"
    assert entry.exists()
    reopened = FileBlobStore(tmp_path / "store")
    assert reopened.lifecycle(stored).legal_hold is True
    with pytest.raises(StoreError) as err:
        reopened.delete(stored)
    assert err.value.reason == "held" and blob.exists() and manifest.exists()
    reopened.set_legal_hold(stored, False)
    reopened.delete(stored)
    assert not blob.exists() and not manifest.exists() and not entry.exists()


def test_file_store_refuses_paths_outside_it(tmp_path: Path):
    store = FileBlobStore(tmp_path / "store")
    outside = tmp_path / "elsewhere.age"
    outside.write_bytes(b"x")
    with pytest.raises(StoreError) as err:
        store.delete(str(outside))
    assert err.value.reason == "id" and outside.exists()


def test_open_store_without_s3_is_the_file_store(tmp_path: Path):
    assert isinstance(open_store(None, tmp_path / "a"), FileBlobStore)


# --------------------------------------------------------------------------------------
# The S3 store's own: the bucket refuses, not our code
# --------------------------------------------------------------------------------------
def _first_version(weed: Seaweed, key: str) -> str:
    versions = weed.client().list_object_versions(Bucket=LOCKED_BUCKET, Prefix=key)["Versions"]
    return str([v for v in versions if v["Key"] == key][-1]["VersionId"])


def test_s3_a_held_object_is_refused_by_the_store_itself(seaweed: Seaweed, tmp_path: Path):
    cfg = s3_config(seaweed)
    store = open_s3_store(cfg, tmp_path)
    stored = store_recording(store, os.urandom(5000))
    key = cfg.prefix + stored
    store.set_legal_hold(stored, True)
    raw = seaweed.client()
    head = raw.head_object(Bucket=LOCKED_BUCKET, Key=key)
    assert head.get("ObjectLockLegalHoldStatus") == "ON"
    # The bucket's own credentials, straight to the server, the exact version: refused.
    with pytest.raises(ClientError) as refused:
        raw.delete_object(Bucket=LOCKED_BUCKET, Key=key, VersionId=_first_version(seaweed, key))
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    with pytest.raises(ClientError):
        raw.delete_object(
            Bucket=LOCKED_BUCKET,
            Key=key,
            VersionId=_first_version(seaweed, key),
            BypassGovernanceRetention=True,
        )
    # The store's refusal is that same 403 (no check of its own before it).
    with pytest.raises(StoreError) as err:
        store.delete(stored)
    assert err.value.reason == "held"
    assert isinstance(err.value.__cause__, ClientError)
    # A plain delete only hides it behind a delete marker; the recording still reads.
    raw.delete_object(Bucket=LOCKED_BUCKET, Key=key)
    fresh = open_s3_store(cfg, tmp_path)  # no cached version id
    assert fresh.size(stored) == 5000 and fresh.lifecycle(stored).legal_hold is True
    fresh.set_legal_hold(stored, False)
    fresh.delete(stored)
    assert raw.list_object_versions(Bucket=LOCKED_BUCKET, Prefix=key).get("Versions") is None


def test_s3_compliance_retention_cannot_be_shortened_or_bypassed(seaweed: Seaweed, tmp_path: Path):
    cfg = s3_config(seaweed)
    store = open_s3_store(cfg, tmp_path)
    stored = store_recording(store, os.urandom(500))
    key = cfg.prefix + stored
    store.retain_until(stored, datetime.now(UTC) + timedelta(days=1))
    raw = seaweed.client()
    version = _first_version(seaweed, key)
    retention = raw.get_object_retention(Bucket=LOCKED_BUCKET, Key=key, VersionId=version)
    assert retention["Retention"]["Mode"] == "COMPLIANCE"
    for bypass in (False, True):
        with pytest.raises(ClientError) as refused:
            raw.delete_object(
                Bucket=LOCKED_BUCKET, Key=key, VersionId=version, BypassGovernanceRetention=bypass
            )
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    with pytest.raises(ClientError):
        raw.put_object_retention(
            Bucket=LOCKED_BUCKET,
            Key=key,
            VersionId=version,
            Retention={"Mode": "COMPLIANCE", "RetainUntilDate": datetime.now(UTC)},
            BypassGovernanceRetention=True,
        )
    with pytest.raises(StoreError) as err:
        store.delete(stored)
    assert err.value.reason == "retained" and isinstance(err.value.__cause__, ClientError)


def test_s3_a_later_write_under_the_key_does_not_replace_the_recording(
    seaweed: Seaweed, tmp_path: Path
):
    cfg = s3_config(seaweed)
    store = open_s3_store(cfg, tmp_path)
    data = os.urandom(1000)
    stored = store_recording(store, data)
    raw = seaweed.client()
    with pytest.raises(ClientError) as refused:  # what commit does: refused (412)
        raw.put_object(Bucket=LOCKED_BUCKET, Key=cfg.prefix + stored, Body=b"f", IfNoneMatch="*")
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    # Without If-None-Match: S3 keeps it as a newer version of the key.
    raw.put_object(Bucket=LOCKED_BUCKET, Key=cfg.prefix + stored, Body=b"forged")
    fresh = open_s3_store(cfg, tmp_path)
    assert local_bytes(fresh, stored) == data and fresh.size(stored) == 1000
    assert fresh.read_range(stored, 0, 5) == data[:6]


def test_s3_commit_retention_from_config(seaweed: Seaweed, tmp_path: Path):
    cfg = s3_config(seaweed, commit_retain_days=1, lock_mode="GOVERNANCE")
    store = open_s3_store(cfg, tmp_path)
    stored = store_recording(store, os.urandom(100))
    state = store.lifecycle(stored)
    assert state.legal_hold is False and state.retain_until is not None
    assert abs((state.retain_until - datetime.now(UTC)) - timedelta(days=1)) < timedelta(minutes=1)
    head = seaweed.client().head_object(Bucket=LOCKED_BUCKET, Key=cfg.prefix + stored)
    assert head.get("ObjectLockMode") == "GOVERNANCE"
    manifest_key = cfg.prefix + stored.replace(".age", ".manifest.json")
    head = seaweed.client().head_object(Bucket=LOCKED_BUCKET, Key=manifest_key)
    assert head.get("ObjectLockMode") == "GOVERNANCE"


def test_s3_an_expired_lock_of_a_crashed_worker_is_taken_over(seaweed: Seaweed, tmp_path: Path):
    cfg = s3_config(seaweed)
    client = seaweed.client()
    store = S3BlobStore(client, LOCKED_BUCKET, tmp_path / "tmp", prefix=cfg.prefix, lock_expiry_s=1)
    key = f"{cfg.prefix}locks/{DEV}/{REC}.lock"
    client.put_object(Bucket=LOCKED_BUCKET, Key=key, Body=b"{}")  # a crashed worker's
    with pytest.raises(StoreError) as err, store.lock(DEV, REC, timeout=0.2):
        pass
    assert err.value.reason == "lock"
    start = time.monotonic()
    with store.lock(DEV, REC, timeout=10):
        assert 0.5 < time.monotonic() - start < 8
    client.put_object(Bucket=LOCKED_BUCKET, Key=key, Body=b"{}")
    assert store.cleanup_locks() == 0  # fresh: kept
    time.sleep(2.2)
    assert store.cleanup_locks() == 1
    assert client.list_object_versions(Bucket=LOCKED_BUCKET, Prefix=key).get("Versions") is None


def test_s3_wrong_credentials_are_a_clear_error(seaweed: Seaweed, tmp_path: Path):
    cfg = s3_config(seaweed, secret_access_key="not-the-secret")
    with pytest.raises(StoreError, match="refused the credentials") as err:
        open_s3_store(cfg, tmp_path)
    assert err.value.reason == "config" and "not-the-secret" not in str(err.value)
    cfg = s3_config(seaweed, access_key_id="nobody", secret_access_key="x")
    with pytest.raises(StoreError, match="refused the credentials"):
        open_s3_store(cfg, tmp_path)


def test_s3_credentials_file(seaweed: Seaweed, tmp_path: Path):
    creds = tmp_path / "credentials"
    creds.write_text(
        f"[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"
    )
    cfg = s3_config(seaweed, access_key_id=None, secret_access_key=None, credentials_file=creds)
    store = open_s3_store(cfg, tmp_path)
    stored = store_recording(store, b"hello")
    assert store.read_range(stored, 1, 3) == b"ell"
    creds.write_text("[default]\naws_access_key_id = x\n")
    with pytest.raises(StoreError, match=r"needs a \[default\] section") as err:
        open_s3_store(cfg, tmp_path)
    assert err.value.reason == "config"


def test_s3_bucket_without_object_lock_is_refused(seaweed: Seaweed, tmp_path: Path):
    with pytest.raises(StoreError, match="has no Object Lock") as err:
        open_s3_store(s3_config(seaweed, bucket=PLAIN_BUCKET), tmp_path)
    assert err.value.reason == "config" and "create a new bucket" in str(err.value)
    with pytest.raises(StoreError, match="does not exist") as err:
        open_s3_store(s3_config(seaweed, bucket="no-such-bucket"), tmp_path)
    assert err.value.reason == "config"


def test_s3_unreachable_endpoint_is_a_clear_error_in_bounded_time(seaweed: Seaweed, tmp_path: Path):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    start = time.monotonic()
    with pytest.raises(StoreError, match="unreachable") as err:
        open_s3_store(s3_config(seaweed, endpoint_url=dead), tmp_path)
    assert err.value.reason == "config" and dead in str(err.value)
    assert time.monotonic() - start < 10


def test_s3_config_requires_a_bucket_and_paired_keys():
    with pytest.raises(ValueError, match="needs a bucket"):
        StoreConfig(backend="s3")
    with pytest.raises(ValueError, match="both access_key_id and secret_access_key"):
        StoreConfig.model_validate({"backend": "s3", "bucket": "abc", "access_key_id": "k"})
    cfg = StoreConfig.model_validate(
        {"backend": "s3", "bucket": "abc", "access_key_id": "k", "secret_access_key": "s3cr3t"}
    )
    assert "s3cr3t" not in repr(cfg) and "s3cr3t" not in str(cfg.model_dump())


def test_store_section_of_office_toml(tmp_path: Path):
    conf = tmp_path / "office.toml"
    conf.write_text(
        'root = "office"\n[store]\nbackend = "s3"\nbucket = "recordings"\n'
        'endpoint_url = "http://127.0.0.1:9"\ncredentials_file = "s3.credentials"\n'
    )
    cfg = load_office_config(conf)
    assert cfg.store.backend == "s3" and cfg.store.lock_mode == "COMPLIANCE"
    assert cfg.store.credentials_file == tmp_path / "s3.credentials"  # beside the config
    assert load_office_config_default(tmp_path).store.backend == "file"


def load_office_config_default(tmp_path: Path) -> OfficeConfig:
    conf = tmp_path / "plain.toml"
    conf.write_text('root = "office"\n')
    return load_office_config(conf)
