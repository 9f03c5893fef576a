"""The head office's blob store in an S3 bucket with Object Lock (``[store] backend =
"s3"``), shared by workers on any number of machines.

Keys under the configured ``prefix``::

    parking/{device}/{rec}/init.json          the upload's init, parked first
    parking/{device}/{rec}/{index:07d}.part   chunks received so far (small objects)
    blobs/{device}/{yyyy}/{mm}/{dd}/{rec}.age            the sealed recording, byte for byte
    blobs/{device}/{yyyy}/{mm}/{dd}/{rec}.segments       (container "segments")
    blobs/{device}/{yyyy}/{mm}/{dd}/{rec}.manifest.json  its signed manifest
    locks/{device}/{rec}.lock                 a worker finishing the recording

``stored`` (what the index keeps) is the blob's key without the prefix, as the
filesystem store's path relative to its root.

**Chunks are parked as small objects, not as multipart parts**: S3 requires every part
but the last to be at least 5 MiB, and a device sends 256 KiB chunks (in any order, to
any worker). :meth:`S3BlobStore.assemble` downloads them in order into a local temp file
and checks size and SHA-256; :meth:`S3BlobStore.commit` then uploads the blob in one PUT
with ``If-None-Match: *`` and its SHA-256 as ``x-amz-checksum-sha256`` (the server
checks it) — or, above ``multipart_part_mb``, in parts of that size with
``If-None-Match: *`` on the completion. A blob is written once: a second writer's PUT
is refused (412), and the one stored is compared with what was to be stored.

**Object Lock.** The bucket keeps versions; a recording's blob and manifest are the
first version written under their keys, and every read takes that version, so a later
write under the same key (only possible with the bucket's keys, bypassing
If-None-Match) cannot stand in for a recording. Retention (``lock_mode``, COMPLIANCE by
default) and legal hold are set on those versions; :meth:`S3BlobStore.delete` deletes
version by version and the store itself refuses a held or retained one (403), which is
reported as ``held`` / ``retained``. Retention and hold are set blob first, then
manifest, and released manifest first, then blob; a delete removes the blob first: a
crash in between never leaves a deletable blob with a protected manifest.

Object Lock binds only what goes through the S3 API. A server's side doors do not
honour it: on SeaweedFS the filer's own HTTP API (port 8888, no credentials by default)
deletes a COMPLIANCE-retained object (tried on 4.48). Where the lock is to hold against
the office's own administrators, only the S3 port may be reachable from their machines
(filer, master and volume ports firewalled to the storage hosts, or the filer's JWT
signing turned on), and the storage hosts are someone else's to administer.

**Lock** (the :class:`~headoffice.s3support.FinishLock` seam, chosen by
:func:`headoffice.stores.open_store`): with a PostgreSQL index its advisory lock
(:mod:`headoffice.index.pglock`); otherwise :class:`headoffice.s3support.ObjectLock`, a
conditional-create lock object with an expiry.

Nothing a worker keeps on its own disk outlives a message but the temp file of an
assembly (or a read), under ``root/tmp``: the init and the chunks are parked in the
bucket, progress is in the index, so any worker can finish an upload whose init or
chunks another worker received.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from botocore.exceptions import ClientError

from headoffice.blobstore import Lifecycle, StoreError, check_range, retention_date
from headoffice.s3objects import S3Transfer, b64_sha256
from headoffice.s3support import FinishLock, ObjectLock, error_code, http_status, translated
from headoffice.storefiles import (
    BLOB_SUFFIXES,
    CHUNK_SUFFIX,
    DEFAULT_LOCK_TIMEOUT_S,
    INIT_FILE,
    MANIFEST_SUFFIX,
    blob_date,
    check_all_parked,
    check_blob_file,
    check_id,
    manifest_bytes,
)

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

_CHUNK_KEY = re.compile(r"/(\d{7})\.part$")
_ID = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"
_STORED = re.compile(
    rf"^blobs/({_ID})/\d{{4}}/\d{{2}}/\d{{2}}/({_ID}?)(\.age|\.segments|\.manifest\.json)$"
)
_ABSENT_LOCK = {"ObjectLockConfigurationNotFoundError", "NoSuchObjectLockConfiguration"}
_ABSENT_HOLD = {"NoSuchObjectLegalHold", *_ABSENT_LOCK}
_VERSION_CACHE = 4096
LockMode = Literal["COMPLIANCE", "GOVERNANCE"]


class S3BlobStore:
    """Blob store in an S3 bucket with Object Lock; see the module docstring."""

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        tmp_dir: Path,
        *,
        prefix: str = "",
        where: str = "S3",
        lock_mode: LockMode = "COMPLIANCE",
        commit_retain_days: int = 0,
        multipart_part_bytes: int = 64 * 1024 * 1024,
        lock_expiry_s: float = 900.0,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S,
        finish_lock: FinishLock | None = None,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.where = where
        self.lock_mode = lock_mode
        self.commit_retain_days = commit_retain_days
        self.lock_timeout = lock_timeout
        self.tmp_dir = Path(tmp_dir)
        self.transfer = S3Transfer(client, bucket, where, multipart_part_bytes)
        self.finish_lock: FinishLock = finish_lock or ObjectLock(
            client, bucket, prefix, where, lock_expiry_s
        )
        self._versions: dict[str, tuple[str, int]] = {}
        self._versions_mutex = threading.Lock()
        try:
            self.tmp_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"S3 store: cannot create its temp directory {self.tmp_dir} "
                f"({exc.strerror or exc})",
                reason="io",
            ) from exc

    # -- keys ----------------------------------------------------------------------------
    def _parking(self, device: str, rec: str) -> str:
        return f"{self.prefix}parking/{check_id(device, 'device')}/{check_id(rec, 'recording')}/"

    def blob_key(self, device: str, rec: str, started_utc: str, container: str | None) -> str:
        """Where :meth:`commit` puts the blob (the manifest for a recording without
        one), without the prefix: the ``stored`` value."""
        yyyy, mm, dd = blob_date(started_utc)
        base = f"blobs/{check_id(device, 'device')}/{yyyy}/{mm}/{dd}/{check_id(rec, 'recording')}"
        if container is None:
            return base + MANIFEST_SUFFIX
        if container not in BLOB_SUFFIXES:
            raise StoreError(f"recording {rec}: unknown container {container!r}", reason="id")
        return base + BLOB_SUFFIXES[container]

    def _keys(self, stored: str) -> list[str]:
        """[blob, manifest] (or [manifest]) keys, with the prefix, of a stored value."""
        match = _STORED.match(stored)
        if match is None:
            raise StoreError(f"{stored[:200]!r} is not a key of this S3 store", reason="id")
        manifest = stored[: -len(match.group(3))] + MANIFEST_SUFFIX
        keys = [manifest] if manifest == stored else [stored, manifest]
        return [self.prefix + key for key in keys]

    # -- the version a key stands for ----------------------------------------------------
    def _first_version(self, key: str) -> tuple[str, int] | None:
        """(version id, size) of the oldest version of ``key`` (listed newest first), or
        None when there is none; cached, as that version never changes until deleted."""
        with self._versions_mutex:
            cached = self._versions.get(key)
        if cached is not None:
            return cached
        found: tuple[str, int] | None = None
        with translated(f"listing versions of {key}", self.where):
            pages = self.client.get_paginator("list_object_versions").paginate(
                Bucket=self.bucket, Prefix=key
            )
            for page in pages:
                for version in page.get("Versions", []):
                    if version.get("Key") == key:
                        found = (str(version.get("VersionId") or "null"), version.get("Size", 0))
        if found is not None:
            with self._versions_mutex:
                if len(self._versions) >= _VERSION_CACHE:
                    self._versions.clear()
                self._versions[key] = found
        return found

    def _forget(self, key: str) -> None:
        with self._versions_mutex:
            self._versions.pop(key, None)

    def _pinned(self, key: str, stored: str) -> tuple[str, int]:
        found = self._first_version(key)
        if found is None:
            raise StoreError(f"{stored}: no such stored recording", reason="missing")
        return found

    # -- uploads in progress -------------------------------------------------------------
    def park_init(self, device: str, rec: str, data: bytes) -> None:
        key = self._parking(device, rec) + INIT_FILE
        with translated(f"recording {rec}: cannot park its init", self.where):
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data)

    def parked_init(self, device: str, rec: str) -> bytes | None:
        key = self._parking(device, rec) + INIT_FILE
        with translated(f"recording {rec}: cannot read its parked init", self.where):
            try:
                return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            except ClientError as exc:
                if http_status(exc) == 404:
                    return None
                raise

    def park_chunk(self, device: str, rec: str, index: int, data: bytes) -> str:
        """Park chunk ``index``; the same bytes again change nothing (its SHA-256, which
        the server checked on the PUT, is compared), different bytes replace it."""
        if not 0 <= index <= 9_999_999:
            raise StoreError(f"chunk index {index} out of range", reason="id")
        key = f"{self._parking(device, rec)}{index:07d}{CHUNK_SUFFIX}"
        digest = b64_sha256(data)
        with translated(f"recording {rec}: cannot park chunk {index}", self.where):
            try:
                head = self.client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
                if head.get("ContentLength") == len(data) and head.get("ChecksumSHA256") == digest:
                    return key
            except ClientError as exc:
                if http_status(exc) != 404:
                    raise
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ChecksumSHA256=digest)
        return key

    def _list(self, prefix: str, what: str) -> Iterator[tuple[str, datetime]]:
        with translated(what, self.where):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            for page in pages:
                for entry in page.get("Contents", []):
                    yield entry["Key"], entry["LastModified"]

    def parked(self, device: str, rec: str) -> set[int]:
        found = set()
        for key, _ in self._list(self._parking(device, rec), f"recording {rec}: listing chunks"):
            match = _CHUNK_KEY.search(key)
            if match:
                found.add(int(match.group(1)))
        return found

    def list_parking(self) -> list[tuple[str, str, float]]:
        newest: dict[tuple[str, str], float] = {}
        root = f"{self.prefix}parking/"
        for key, modified in self._list(root, "listing parked uploads"):
            parts = key[len(root) :].split("/")
            if len(parts) == 3:
                upload = (parts[0], parts[1])
                newest[upload] = max(newest.get(upload, 0.0), modified.timestamp())
        return [(device, rec, when) for (device, rec), when in sorted(newest.items())]

    def drop_parking(self, device: str, rec: str) -> None:
        """Remove every version of the upload's parked objects (the bucket keeps versions:
        a plain delete would only hide them)."""
        self.transfer.delete_all_versions(self._parking(device, rec), f"recording {rec}")

    # -- finishing a recording -----------------------------------------------------------
    def lock(
        self, device: str, rec: str, timeout: float | None = None
    ) -> AbstractContextManager[None]:
        name = f"{check_id(device, 'device')}/{check_id(rec, 'recording')}"
        return self.finish_lock.hold(name, self.lock_timeout if timeout is None else timeout)

    def _tmp_file(self, prefix: str) -> tuple[int, Path]:
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=self.tmp_dir)
        return fd, Path(name)

    def assemble(
        self, device: str, rec: str, chunk_count: int, blob_bytes: int, blob_sha256: str | None
    ) -> Path:
        """The parked chunks, downloaded in order into a local temp file (0600) and
        checked against the init's size and SHA-256."""
        check_all_parked(rec, chunk_count, self.parked(device, rec))
        fd, tmp = self._tmp_file(f"blob-{rec}-")
        keys = [f"{self._parking(device, rec)}{i:07d}{CHUNK_SUFFIX}" for i in range(chunk_count)]
        try:
            with os.fdopen(fd, "wb") as fh:
                sha, size = self.transfer.download_concat(keys, fh, f"recording {rec}")
            if size != blob_bytes:
                raise StoreError(
                    f"recording {rec}: assembled blob is {size} bytes, the init says {blob_bytes}",
                    reason="size",
                )
            if blob_bytes and sha != blob_sha256:
                raise StoreError(
                    f"recording {rec}: assembled blob sha256 {sha[:16]}… differs from the "
                    f"init's {str(blob_sha256)[:16]}… (a chunk is corrupt)",
                    reason="sha256",
                )
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def commit(  # noqa: PLR0917 - the receiver's call mirrors the init message
        self,
        device: str,
        rec: str,
        started_utc: str,
        container: str | None,
        blob_tmp: Path | None,
        manifest: Mapping[str, Any],
    ) -> str:
        """Upload the blob once (``If-None-Match: *``) and its manifest; the ``stored``
        key. The same recording again changes nothing; another one is a ``conflict``."""
        if manifest.get("recording_id") != rec or manifest.get("device_id") != device:
            raise StoreError(
                f"recording {rec}: manifest is for {manifest.get('device_id')}/"
                f"{manifest.get('recording_id')}",
                reason="conflict",
            )
        stored = self.blob_key(device, rec, started_utc, container)
        keys = self._keys(stored)
        if container is None and blob_tmp is not None:
            raise StoreError(
                f"recording {rec}: a blob was given, but the manifest has no container",
                reason="conflict",
            )
        lock = self._commit_lock()
        if container is not None:
            self._place_blob(rec, keys[0], blob_tmp, manifest, lock)
        self._place_manifest(rec, keys[-1], manifest, lock)
        return stored

    def _commit_lock(self) -> dict[str, Any]:
        if not self.commit_retain_days:
            return {}
        until = retention_date(datetime.now(UTC) + timedelta(days=self.commit_retain_days))
        return {"ObjectLockMode": self.lock_mode, "ObjectLockRetainUntilDate": until}

    def _place_blob(
        self,
        rec: str,
        key: str,
        blob_tmp: Path | None,
        manifest: Mapping[str, Any],
        lock: dict[str, Any],
    ) -> None:
        want_sha, want_bytes = manifest.get("blob_sha256"), manifest.get("blob_bytes")
        if blob_tmp is not None:
            sha = check_blob_file(rec, blob_tmp, want_sha, want_bytes)
            self.transfer.put_once(key, blob_tmp, sha, lock, f"recording {rec}")
        found = self._first_version(key)
        if found is None:
            raise StoreError(
                f"recording {rec}: container needs a blob and none is stored or given",
                reason="missing",
            )
        stored_sha = self.transfer.version_sha256(key, found[0], f"recording {rec}")
        if stored_sha != want_sha or found[1] != want_bytes:
            raise StoreError(
                f"recording {rec}: {key} is already stored with sha256 {stored_sha[:16]}…, "
                f"not {str(want_sha)[:16]}…",
                reason="conflict",
            )
        if blob_tmp is not None:
            blob_tmp.unlink(missing_ok=True)

    def _place_manifest(
        self, rec: str, key: str, manifest: Mapping[str, Any], lock: dict[str, Any]
    ) -> None:
        data = manifest_bytes(manifest)
        self.transfer.put_bytes_once(key, data, lock, f"recording {rec}")
        found = self._first_version(key)
        if found is None:
            raise StoreError(f"recording {rec}: manifest {key} vanished", reason="io")
        existing = self.transfer.read_json(key, found[0], f"recording {rec}")
        if existing != dict(manifest):
            raise StoreError(
                f"recording {rec}: {key} already holds a different manifest", reason="conflict"
            )

    # -- reading what is stored ----------------------------------------------------------
    def stored_manifest(self, stored: str) -> dict[str, Any]:
        key = self._keys(stored)[-1]
        version, _ = self._pinned(key, stored)
        return self.transfer.read_json(key, version, stored)

    @contextmanager
    def local_blob(self, stored: str) -> Iterator[Path]:
        """The stored blob downloaded to a private temp file (0600), removed afterwards."""
        key = self._keys(stored)[0]
        version, _ = self._pinned(key, stored)
        fd, tmp = self._tmp_file("read-")
        try:
            with os.fdopen(fd, "wb") as fh:
                self.transfer.download_version(key, version, fh, stored)
            yield tmp
        finally:
            tmp.unlink(missing_ok=True)

    def read_range(self, stored: str, start: int, end: int) -> bytes:
        key = self._keys(stored)[0]
        version, size = self._pinned(key, stored)
        first, last = check_range(stored, start, end, size)
        return self.transfer.get_range(key, version, first, last, stored)

    def size(self, stored: str) -> int:
        return self._pinned(self._keys(stored)[0], stored)[1]

    # -- lifecycle (Object Lock) ---------------------------------------------------------
    def _retention(
        self, key: str, version: str, what: str
    ) -> tuple[LockMode | None, datetime | None]:
        with translated(f"{what}: reading its retention", self.where):
            try:
                got = self.client.get_object_retention(
                    Bucket=self.bucket, Key=key, VersionId=version
                )
            except ClientError as exc:
                if error_code(exc) in _ABSENT_LOCK:
                    return None, None
                raise
        retention = got.get("Retention", {})
        until = retention.get("RetainUntilDate")
        return retention.get("Mode"), until.astimezone(UTC) if until else None

    def _hold(self, key: str, version: str, what: str) -> bool:
        with translated(f"{what}: reading its legal hold", self.where):
            try:
                got = self.client.get_object_legal_hold(
                    Bucket=self.bucket, Key=key, VersionId=version
                )
            except ClientError as exc:
                if error_code(exc) in _ABSENT_HOLD:
                    return False
                raise
        return got.get("LegalHold", {}).get("Status") == "ON"

    def retain_until(self, stored: str, until: datetime) -> None:
        until = retention_date(until)
        for key in self._keys(stored):  # blob first, then manifest
            version, _ = self._pinned(key, stored)
            mode, current = self._retention(key, version, stored)
            if current is not None and until < current:
                raise StoreError(
                    f"{stored}: retained until {current.isoformat()}; a retention date can "
                    f"only be extended, not shortened to {until.isoformat()}",
                    reason="retained",
                )
            if current == until:
                continue
            with translated(f"{stored}: setting its retention", self.where):
                try:
                    self.client.put_object_retention(
                        Bucket=self.bucket,
                        Key=key,
                        VersionId=version,
                        # A mode once set stays (COMPLIANCE cannot be changed anyway).
                        Retention={"Mode": mode or self.lock_mode, "RetainUntilDate": until},
                    )
                except ClientError as exc:
                    if http_status(exc) == 403:
                        raise StoreError(
                            f"{stored}: the S3 store refused retention until "
                            f"{until.isoformat()} ({error_code(exc)})",
                            reason="retained",
                        ) from exc
                    raise

    def set_legal_hold(self, stored: str, on: bool) -> None:
        keys = self._keys(stored)
        for key in keys if on else list(reversed(keys)):  # placed blob-first, lifted last
            version, _ = self._pinned(key, stored)
            with translated(f"{stored}: setting its legal hold", self.where):
                self.client.put_object_legal_hold(
                    Bucket=self.bucket,
                    Key=key,
                    VersionId=version,
                    LegalHold={"Status": "ON" if on else "OFF"},
                )

    def lifecycle(self, stored: str) -> Lifecycle:
        key = self._keys(stored)[0]
        version, _ = self._pinned(key, stored)
        _, until = self._retention(key, version, stored)
        return Lifecycle(retain_until=until, legal_hold=self._hold(key, version, stored))

    def delete(self, stored: str) -> None:
        """Delete every version of the blob, then of the manifest, the recording's own
        (first) version first. No check here: the bucket's Object Lock refuses a held or
        retained version (403), and only then is it asked why, for the message."""
        for key in self._keys(stored):
            first = self._first_version(key)
            if first is not None:
                self._delete_version(stored, key, first[0])
            self._forget(key)
            self.transfer.delete_all_versions(key, stored, exact=True)

    def _delete_version(self, stored: str, key: str, version: str) -> None:
        try:
            with translated(f"{stored}: deleting", self.where):
                try:
                    self.client.delete_object(Bucket=self.bucket, Key=key, VersionId=version)
                except ClientError as exc:
                    if http_status(exc) != 403:
                        raise
                    held = self._hold(key, version, stored)
                    _, until = self._retention(key, version, stored)
                    if held:
                        raise StoreError(
                            f"{stored}: the S3 store refused the delete: on legal hold",
                            reason="held",
                        ) from exc
                    if until is not None and until > datetime.now(UTC):
                        raise StoreError(
                            f"{stored}: the S3 store refused the delete: retained until "
                            f"{until.isoformat()}",
                            reason="retained",
                        ) from exc
                    raise
        finally:
            self._forget(key)

    # -- housekeeping --------------------------------------------------------------------
    def cleanup_tmp(self, older_than_s: float = 3600.0) -> int:
        removed = 0
        cutoff = time.time() - older_than_s
        for entry in self.tmp_dir.iterdir():
            try:
                if entry.stat().st_mtime < cutoff:
                    entry.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    def cleanup_locks(self) -> int:
        return self.finish_lock.cleanup()
