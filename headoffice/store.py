"""The head office's blob store: a directory tree shared by every worker on one machine
(or one NFS export).

Layout under ``root``::

    parking/{device}/{rec}/init.json          the upload's init (signed manifest): parked first
    parking/{device}/{rec}/{index:07d}.part   chunks received so far (any worker parks them)
    parking/{device}/.spare-{random}/         an emptied parking folder a worker keeps
                                              for the device's next upload (parkingdirs)
    blobs/{device}/{yyyy}/{mm}/{dd}/{rec}.age            the sealed recording, byte for byte
    blobs/{device}/{yyyy}/{mm}/{dd}/{rec}.segments       (container "segments")
    blobs/{device}/{yyyy}/{mm}/{dd}/{rec}.manifest.json  its signed manifest
    locks/recordings.lock                     one byte per recording, locked by the worker
                                              finishing it (storefiles.range_lock)
    lifecycle/{device}/{yyyy}/{mm}/{dd}/{rec}.json  retention date and legal hold
    tmp/                                      files being written; renamed into place

The date is the recording's ``started_utc``. Every file is written to ``tmp/`` and
renamed into place, so no reader ever sees half a file. Every operation is idempotent: a
resent chunk or a second ``commit`` of the same blob changes nothing.

Durability — what is on disk when the receiver acks ``stored`` (it acks only after
:meth:`FileBlobStore.commit` has returned and the index transaction has committed):

- :meth:`~FileBlobStore.commit` fsyncs the blob's data, then the manifest's data (both
  still under ``tmp/``), renames both into the day's directory and fsyncs that directory
  once; a directory it had to create has its parent fsynced as well (the first recording
  of a device and day). Three fsyncs per recording; one more per new directory. The
  receiver then commits the index row (with the audit leaf and the end of the upload's
  row) in one synced transaction: SQLite fdatasyncs its WAL once. The upload's row
  noted at init is committed unsynced (bookkeeping the device's resend rebuilds).
- Parking (init, chunks, their folders, dropping them) is *not* fsynced. It is a cache
  of what the device still holds: the device deletes nothing before the ``stored`` ack,
  so a parked file a crash loses or truncates is only asked for again. A torn chunk
  cannot be stored: :meth:`~FileBlobStore.assemble` checks the joined blob's size and
  SHA-256 against the signed init (the receiver then drops the parking and asks for
  every chunk again); a torn init fails to decode, goes unanswered, and the device's
  next init (sent after any unanswered request) replaces it.
  Renames still make each parked file appear whole to other workers at once, and no
  parked file is ever written in place: a one-chunk blob is its parked chunk's inode
  (hard-linked by :meth:`~FileBlobStore.assemble`, then fsynced by ``commit``).

New inodes — the dearest system calls on the receiver's path: creating a file or folder
cost 20 µs to 0.85 ms of kernel time here (ext4 without a journal skips the inodes
freed in the last seconds, so a create after many deletions scans), a rename or link
~20 µs. A stored one-chunk recording makes two, its blob and its manifest: the blob is
the parked chunk's inode (above), ``commit`` writes the manifest into the parked init's
inode (moved to ``tmp/`` and emptied: the init is done with once the manifest is stored,
and a crash after that move only costs the device a resent init), the parking folder
is an emptied one renamed (:mod:`headoffice.parkingdirs`), and the finishing lock is a
byte of one lock file, not a file per recording. It frees none, so it does not slow
its own creations either.

Everything under the root is the office's alone: directories 0700, files 0600 (the
manifests carry caller numbers and names). A write that fails for want of space is a
:class:`StoreError` with reason ``full``, so the receiver can refuse and keep serving.

A chunk is parked whole or not at all, so the parked files are the truth about an
upload's progress; :meth:`FileBlobStore.assemble` joins them and checks size and SHA-256
against the init message before :meth:`FileBlobStore.commit` moves the result into place.
:class:`FileBlobStore` implements the :class:`~headoffice.blobstore.BlobStore` protocol;
retention and legal hold live in a registry (:mod:`headoffice.store_lifecycle`).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from headoffice.blobstore import Lifecycle, StoreError, check_range
from headoffice.parkingdirs import SpareFolders, is_spare, makedirs_durable, remove_stale_spares
from headoffice.store_lifecycle import FileLifecycle
from headoffice.storefiles import (
    BLOB_SUFFIXES,
    BLOBS,
    CHUNK_NAME,
    CHUNK_SUFFIX,
    COPY_CHUNK,
    DEFAULT_LOCK_TIMEOUT_S,
    DIR_MODE,
    FULL_ERRNOS,
    INIT_FILE,
    LOCK_FILE,
    LOCKS,
    MANIFEST_SUFFIX,
    NO_LINK_ERRNOS,
    PARKING,
    TMP,
    TempFiles,
    blob_date,
    check_all_parked,
    check_blob_file,
    check_id,
    check_joined,
    cleanup_lock_files,
    io_error,
    manifest_bytes,
    range_lock,
    read_file,
    sha256_file,
    unlink_quietly,
)
from sealedrec.durable import fsync_dir

# Names other modules import from here (the layout's suffixes, the temp folder).
__all__ = ["BLOB_SUFFIXES", "MANIFEST_SUFFIX", "TMP", "FileBlobStore"]


class FileBlobStore:
    """Filesystem blob store shared by all workers on one machine or NFS export."""

    def __init__(self, root: Path, *, lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S) -> None:
        self.root = Path(root)
        self._parking_root = os.fspath(self.root / PARKING)
        self._blobs_root = os.fspath(self.root / BLOBS)
        self._lock_file = os.path.join(self.root, LOCKS, LOCK_FILE)
        self._spares = SpareFolders()
        self._tmp = TempFiles(os.fspath(self.root / TMP))
        self.lock_timeout = lock_timeout
        self.registry = FileLifecycle(self.root, self.root / TMP)
        try:
            for sub in (PARKING, BLOBS, LOCKS, TMP):
                makedirs_durable(self.root / sub)
            for directory in (
                self.root,
                *(self.root / sub for sub in (PARKING, BLOBS, LOCKS, TMP)),
            ):
                if directory.stat().st_mode & 0o077:
                    # Older stores were 0750: recordings' metadata is for the office user.
                    directory.chmod(DIR_MODE)
        except OSError as exc:
            raise StoreError(
                f"blob store {self.root}: cannot create its directories ({exc.strerror or exc})",
                reason="full" if exc.errno in FULL_ERRNOS else "io",
            ) from exc

    # -- paths ---------------------------------------------------------------------------
    def parking_dir(self, device: str, rec: str) -> Path:
        return Path(self._parking(device, rec))

    def _parking(self, device: str, rec: str) -> str:
        # Strings, not Paths, on the paths every message takes (Path joins cost more
        # than the system calls they name).
        return os.path.join(
            self._parking_root, check_id(device, "device"), check_id(rec, "recording")
        )

    def _parked_init_path(self, device: str, rec: str) -> str:
        return os.path.join(self._parking(device, rec), INIT_FILE)

    def blob_dir(self, device: str, started_utc: str) -> Path:
        return Path(self._blob_day(device, started_utc))

    def _blob_day(self, device: str, started_utc: str) -> str:
        return os.path.join(self._blobs_root, check_id(device, "device"), *blob_date(started_utc))

    def blob_path(self, device: str, rec: str, started_utc: str, container: str | None) -> Path:
        """Where :meth:`commit` puts the blob (the manifest for a recording without one)."""
        return Path(self._blob_files(device, rec, started_utc, container)[1])

    def manifest_path(self, device: str, rec: str, started_utc: str) -> Path:
        return Path(self._blob_files(device, rec, started_utc, None)[2])

    def _blob_files(
        self, device: str, rec: str, started_utc: str, container: str | None
    ) -> tuple[str, str, str]:
        """(day directory, blob path, manifest path) of a recording, as strings; the
        blob path is the manifest's for a recording without a container."""
        directory = self._blob_day(device, started_utc)
        manifest = os.path.join(directory, f"{check_id(rec, 'recording')}{MANIFEST_SUFFIX}")
        if container is None:
            return directory, manifest, manifest
        if container not in BLOB_SUFFIXES:
            raise StoreError(f"recording {rec}: unknown container {container!r}", reason="id")
        return directory, os.path.join(directory, f"{rec}{BLOB_SUFFIXES[container]}"), manifest

    def resolve(self, path: str | Path) -> Path:
        """An index's stored path (absolute, or relative to the store root) as a path."""
        p = Path(path)
        return p if p.is_absolute() else self.root / p

    # -- chunks --------------------------------------------------------------------------
    def park_chunk(self, device: str, rec: str, index: int, data: bytes) -> Path:
        """Park chunk ``index`` (whole, not fsynced: module doc). The same bytes again change nothing; different
        bytes replace the chunk (the device's latest send wins; assembly checks the
        whole blob's SHA-256 anyway)."""
        if not 0 <= index <= 9_999_999:
            raise StoreError(f"chunk index {index} out of range", reason="id")
        directory = self._parking(device, rec)
        target = os.path.join(directory, f"{index:07d}{CHUNK_SUFFIX}")
        try:
            self._spares.ensure(directory)
            try:
                if os.stat(target).st_size == len(data) and read_file(target) == data:
                    return Path(target)
            except FileNotFoundError:
                pass
            self._tmp.write_parked(target, data, f"chunk-{index:07d}-")
        except OSError as exc:
            raise io_error(exc, f"recording {rec}: cannot park chunk {index}") from exc
        return Path(target)

    def park_init(self, device: str, rec: str, data: bytes) -> None:
        """Park an upload's init message (its signed manifest): the first thing parked,
        and the only licence to park chunks for it."""
        directory = self._parking(device, rec)
        try:
            self._spares.ensure(directory)
            self._tmp.write_parked(os.path.join(directory, INIT_FILE), data, "init-")
        except OSError as exc:
            raise io_error(exc, f"recording {rec}: cannot park its init") from exc

    def parked_init(self, device: str, rec: str) -> bytes | None:
        """The parked init message of an upload, or None when there is none."""
        path = self._parked_init_path(device, rec)
        try:
            return read_file(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise io_error(exc, f"recording {rec}: cannot read its parked init") from exc

    def parked(self, device: str, rec: str) -> set[int]:
        directory = self._parking(device, rec)
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return set()
        except OSError as exc:
            raise StoreError(f"{directory}: cannot list parked chunks ({exc.strerror})") from exc
        found = set()
        for name in names:
            m = CHUNK_NAME.match(name)
            if m:
                found.add(int(m.group(1)))
        return found

    def assemble(
        self, device: str, rec: str, chunk_count: int, blob_bytes: int, blob_sha256: str | None
    ) -> Path:
        """Join the parked chunks 0..chunk_count-1 into a temp file under ``tmp/`` and
        check it against the init's size and SHA-256. The caller passes the returned
        path to :meth:`commit` (which fsyncs it) or deletes it."""
        directory = self._parking(device, rec)
        check_all_parked(rec, chunk_count, self.parked(device, rec))
        if chunk_count == 1:
            linked = self._assemble_one(directory, rec, blob_bytes, blob_sha256)
            if linked is not None:
                return linked
        fh, tmp = self._tmp.new(f"blob-{rec}-")
        digest = hashlib.sha256()
        size = 0
        try:
            with fh:
                for index in range(chunk_count):
                    with open(os.path.join(directory, f"{index:07d}{CHUNK_SUFFIX}"), "rb") as part:
                        while block := part.read(COPY_CHUNK):
                            digest.update(block)
                            size += len(block)
                            fh.write(block)
        except FileNotFoundError as exc:
            tmp.unlink(missing_ok=True)
            raise StoreError(
                f"recording {rec}: a parked chunk vanished while assembling ({exc.filename})",
                reason="missing",
            ) from exc
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise io_error(exc, f"recording {rec}: cannot assemble") from exc
        sha = digest.hexdigest()
        check_joined(rec, os.fspath(tmp), size, sha, blob_bytes=blob_bytes, blob_sha256=blob_sha256)
        return tmp

    def list_parking(self) -> list[tuple[str, str, float]]:
        """Every upload with parked chunks: (device, recording, mtime of its newest
        entry) — for clearing uploads abandoned, or finished while a late duplicate
        chunk was being parked."""
        found = []
        for device_dir in sorted((self.root / PARKING).iterdir()):
            if not device_dir.is_dir():
                continue
            for rec_dir in sorted(device_dir.iterdir()):
                if is_spare(rec_dir.name):
                    continue  # an emptied folder kept for the next upload
                try:
                    newest = max(
                        [rec_dir.stat().st_mtime, *(p.stat().st_mtime for p in rec_dir.iterdir())]
                    )
                except FileNotFoundError:
                    continue  # dropped meanwhile
                found.append((device_dir.name, rec_dir.name, newest))
        return found

    def _assemble_one(
        self, directory: str, rec: str, blob_bytes: int, blob_sha256: str | None
    ) -> Path | None:
        """:meth:`assemble` of a one-chunk blob: the parked chunk is the blob, so the temp
        file is a hard link to it, not a copy (a new file costs more than its bytes).
        Parked files are never changed in place (replaced by rename), so the link keeps
        exactly the bytes checked here. None where no link can be made: copy instead."""
        part = os.path.join(directory, f"{0:07d}{CHUNK_SUFFIX}")
        tmp = self._tmp.name(f"blob-{rec}-")
        try:
            os.link(part, tmp)
            data = read_file(tmp)
        except FileNotFoundError as exc:
            unlink_quietly(tmp)
            raise StoreError(
                f"recording {rec}: a parked chunk vanished while assembling ({exc.filename})",
                reason="missing",
            ) from exc
        except OSError as exc:
            unlink_quietly(tmp)
            if exc.errno in NO_LINK_ERRNOS:
                return None  # tmp/ on another filesystem, or one without hard links
            raise io_error(exc, f"recording {rec}: cannot assemble") from exc
        sha = hashlib.sha256(data).hexdigest()
        check_joined(rec, tmp, len(data), sha, blob_bytes=blob_bytes, blob_sha256=blob_sha256)
        return Path(tmp)

    def drop_parking(self, device: str, rec: str) -> None:
        directory = self._parking(device, rec)
        try:
            self._spares.retire(directory)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StoreError(f"{directory}: cannot remove parked chunks ({exc.strerror})") from exc

    # -- finished recordings -------------------------------------------------------------
    def commit(  # noqa: PLR0917 - the receiver's call mirrors the init message
        self,
        device: str,
        rec: str,
        started_utc: str,
        container: str | None,
        blob_tmp: Path | None,
        manifest: Mapping[str, Any],
    ) -> Path:
        """Move the blob into place unchanged and write its manifest beside it; return the
        blob's path (the manifest's when the recording has no audio).

        Idempotent: a blob already in place with the manifest's SHA-256 is kept (and
        ``blob_tmp`` removed); a missing manifest is written. A different blob or
        manifest already stored under this id is a :class:`StoreError` (``conflict``).
        """
        if manifest.get("recording_id") != rec or manifest.get("device_id") != device:
            raise StoreError(
                f"recording {rec}: manifest is for {manifest.get('device_id')}/"
                f"{manifest.get('recording_id')}",
                reason="conflict",
            )
        day, target, manifest_file = self._blob_files(device, rec, started_utc, container)
        want_sha = manifest.get("blob_sha256")
        want_bytes = manifest.get("blob_bytes")
        if container is None and blob_tmp is not None:
            raise StoreError(
                f"recording {rec}: a blob was given, but the manifest has no container",
                reason="conflict",
            )
        try:
            if not os.path.isdir(day):
                makedirs_durable(Path(day))
            if container is not None:
                self._place_blob(rec, Path(target), blob_tmp, want_sha, want_bytes)
            reuse = self._parked_init_path(device, rec)
            self._place_manifest(rec, manifest_file, manifest, reuse=reuse)
            # One directory fsync makes both renames durable; also when both files were
            # there already: a worker killed between its renames and this fsync left
            # them in the page cache only.
            fsync_dir(day)
        except OSError as exc:
            raise io_error(exc, f"recording {rec}: cannot store") from exc
        return Path(target)

    def _place_blob(
        self, rec: str, target: Path, blob_tmp: Path | None, want_sha: Any, want_bytes: Any
    ) -> None:
        """Rename the checked, fsynced blob onto ``target`` (kept when there already).
        The caller fsyncs the directory."""
        if target.exists():
            sha, _ = sha256_file(target)
            if sha != want_sha:
                raise StoreError(
                    f"recording {rec}: {target} is already stored with sha256 {sha[:16]}…, "
                    f"not {str(want_sha)[:16]}…",
                    reason="conflict",
                )
            if blob_tmp is not None and blob_tmp.resolve() != target.resolve():
                blob_tmp.unlink(missing_ok=True)
            return
        if blob_tmp is None:
            raise StoreError(
                f"recording {rec}: container {target.suffix[1:]!r} needs a blob and none is "
                "stored or given",
                reason="missing",
            )
        check_blob_file(rec, blob_tmp, want_sha, want_bytes)
        with open(blob_tmp, "rb") as fh:
            os.fsync(fh.fileno())
        try:
            os.rename(blob_tmp, target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            # Given a file on another filesystem: copy it in (durably) first.
            tmp_fh, tmp = self._tmp.new(f"blob-{rec}-")
            try:
                with tmp_fh, open(blob_tmp, "rb") as src:
                    shutil.copyfileobj(src, tmp_fh, COPY_CHUNK)
                    tmp_fh.flush()
                    os.fsync(tmp_fh.fileno())
                os.rename(tmp, target)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            blob_tmp.unlink()

    def _place_manifest(
        self, rec: str, path: str, manifest: Mapping[str, Any], *, reuse: str
    ) -> None:
        """Write the manifest (fsynced) onto ``path`` unless it is there already, in the
        inode of the parked init ``reuse`` when there is one. The caller fsyncs the
        directory."""
        data = manifest_bytes(manifest)
        try:
            existing = read_file(path)
        except FileNotFoundError:
            tmp = self._tmp.write_synced(data, f"manifest-{rec}-", reuse=reuse)
            try:
                os.replace(tmp, path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            return
        if existing == data:
            return
        try:
            same = json.loads(existing) == dict(manifest)
        except ValueError:
            same = False
        if not same:
            raise StoreError(
                f"recording {rec}: {path} already holds a different manifest", reason="conflict"
            )

    @contextmanager
    def local_blob(self, stored: str) -> Iterator[Path]:
        """The stored blob's own file (it is local already)."""
        yield self.resolve(stored)

    def stored_manifest(self, path: str | Path) -> dict[str, Any]:
        """The manifest stored beside a blob (``path`` as the index keeps it)."""
        blob = self.resolve(path)
        name = blob.name
        for suffix in (*BLOB_SUFFIXES.values(), MANIFEST_SUFFIX):
            if name.endswith(suffix):
                name = name[: -len(suffix)]
                break
        manifest_file = blob.with_name(name + MANIFEST_SUFFIX)
        try:
            data = json.loads(manifest_file.read_text(encoding="utf-8"))
        except OSError as exc:
            raise StoreError(
                f"{manifest_file}: manifest unreadable ({exc.strerror or exc})", reason="missing"
            ) from exc
        except ValueError as exc:
            raise StoreError(f"{manifest_file}: not JSON ({exc})", reason="conflict") from exc
        if not isinstance(data, dict):
            raise StoreError(f"{manifest_file}: not a JSON object", reason="conflict")
        return data

    def read_range(self, stored: str, start: int, end: int) -> bytes:
        """Bytes ``start``..``end`` (inclusive) of the stored blob; see the protocol."""
        path = self.resolve(stored)
        try:
            with open(path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                first, last = check_range(stored, start, end, size)
                fh.seek(first)
                return fh.read(last - first + 1)
        except FileNotFoundError:
            raise StoreError(f"{stored}: no such stored blob", reason="missing") from None
        except OSError as exc:
            raise io_error(exc, f"{stored}: cannot read") from exc

    def size(self, stored: str) -> int:
        try:
            return self.resolve(stored).stat().st_size
        except FileNotFoundError:
            raise StoreError(f"{stored}: no such stored blob", reason="missing") from None
        except OSError as exc:
            raise io_error(exc, f"{stored}: cannot read") from exc

    # -- lifecycle (the registry is the enforcement; headoffice/store_lifecycle.py) -------
    def _recording(self, stored: str) -> tuple[str, list[Path]]:
        """(registry key, [blob, manifest] or [manifest]) of a stored path."""
        path = Path(os.path.abspath(self.resolve(stored)))
        try:
            rel = path.relative_to(os.path.abspath(self.root / BLOBS))
        except ValueError:
            raise StoreError(
                f"{stored}: not a recording of the store at {self.root}", reason="id"
            ) from None
        name = rel.name
        for suffix in (*BLOB_SUFFIXES.values(), MANIFEST_SUFFIX):
            if name.endswith(suffix):
                base = name[: -len(suffix)]
                break
        else:
            raise StoreError(f"{stored}: not a blob or manifest name", reason="id")
        check_id(base, "recording")
        manifest = path.with_name(base + MANIFEST_SUFFIX)
        files = [manifest] if path == manifest else [path, manifest]
        return str(rel.parent / base), files

    def retain_until(self, stored: str, until: datetime) -> None:
        key, files = self._recording(stored)
        self.registry.retain_until(key, files, stored, until)

    def set_legal_hold(self, stored: str, on: bool) -> None:
        key, files = self._recording(stored)
        self.registry.set_legal_hold(key, files, stored, on)

    def lifecycle(self, stored: str) -> Lifecycle:
        key, files = self._recording(stored)
        return self.registry.lifecycle(key, files, stored)

    def delete(self, stored: str) -> None:
        key, files = self._recording(stored)
        self.registry.delete(key, files, stored, datetime.now(UTC))

    # -- locking -------------------------------------------------------------------------
    def lock(
        self, device: str, rec: str, timeout: float | None = None
    ) -> AbstractContextManager[None]:
        """Exclusive lock of the recording's byte of ``locks/recordings.lock`` across
        processes and threads, :class:`StoreError` (``lock``) after ``timeout`` seconds
        (see :func:`~headoffice.storefiles.range_lock`, also for NFS)."""
        wait = self.lock_timeout if timeout is None else timeout
        return range_lock(self._lock_file, device, rec, wait)

    # -- housekeeping --------------------------------------------------------------------
    def cleanup_locks(self) -> int:
        """Remove older versions' per-recording lock files nobody holds; returns how many
        (this version's one lock file holds no state once its holders are gone)."""
        return cleanup_lock_files(self.root / LOCKS)

    def cleanup_tmp(self, older_than_s: float = 3600.0) -> int:
        """Remove temp files left by crashed workers, and spare parking folders left by
        stopped ones; returns how many."""
        removed = remove_stale_spares(self.root / PARKING, older_than_s)
        cutoff = time.time() - older_than_s
        for entry in (self.root / TMP).iterdir():
            try:
                if entry.stat().st_mtime < cutoff:
                    entry.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed
