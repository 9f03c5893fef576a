"""The head office's blob store: a directory tree shared by every worker on one machine
(or one NFS export).

Layout under ``root``::

    parking/{device}/{rec}/init.json          the upload's init (signed manifest): parked first
    parking/{device}/{rec}/{index:07d}.part   chunks received so far (any worker parks them)
    blobs/{device}/{yyyy}/{mm}/{dd}/{rec}.age            the sealed recording, byte for byte
    blobs/{device}/{yyyy}/{mm}/{dd}/{rec}.segments       (container "segments")
    blobs/{device}/{yyyy}/{mm}/{dd}/{rec}.manifest.json  its signed manifest
    locks/{device}/{rec}.lock                 flock'ed by the worker finishing a recording
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
  Renames still make each parked file appear whole to other workers at once.

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
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from headoffice.blobstore import Lifecycle, StoreError, check_range
from headoffice.store_lifecycle import FileLifecycle
from sealedrec.durable import fsync_dir

PARKING = "parking"
BLOBS = "blobs"
LOCKS = "locks"
TMP = "tmp"
CHUNK_SUFFIX = ".part"
INIT_FILE = "init.json"
DIR_MODE = 0o700
_FULL = (errno.ENOSPC, errno.EDQUOT)
MANIFEST_SUFFIX = ".manifest.json"
BLOB_SUFFIXES = {"age": ".age", "segments": ".segments"}
DEFAULT_LOCK_TIMEOUT_S = 30.0
_LOCK_POLL_S = 0.02
_COPY_CHUNK = 1024 * 1024
# The protocol's id grammar: no separators, never "." or "..", so an id is one path part.
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_CHUNK_NAME = re.compile(r"^(\d{7})\.part$")


def _io_error(exc: OSError, message: str) -> StoreError:
    """``exc`` as a StoreError; a full filesystem gets reason ``full``."""
    if isinstance(exc, StoreError):
        return exc
    full = exc.errno in _FULL
    return StoreError(f"{message} ({exc.strerror or exc})", reason="full" if full else "io")


def _makedirs_durable(path: Path, *, durable: bool = True) -> None:
    """``mkdir -p`` (mode 0700) that fsyncs the parent of every directory it creates
    (with ``durable`` False: not, for parking)."""
    missing: list[Path] = []
    p = path
    while not p.is_dir():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue  # another worker made it; it fsyncs the parent
        if durable:
            fsync_dir(d.parent)


def _sha256_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while block := fh.read(_COPY_CHUNK):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def check_all_parked(rec: str, chunk_count: int, parked: set[int]) -> None:
    """A StoreError (``missing``, naming the chunks) unless chunks 0..chunk_count-1 are
    all in ``parked``: what every store checks before it assembles."""
    missing = tuple(sorted(set(range(chunk_count)) - parked))
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" …" if len(missing) > 10 else "")
        raise StoreError(
            f"recording {rec}: {len(missing)} of {chunk_count} chunks not parked ({shown})",
            reason="missing",
            missing=missing,
        )


def check_blob_file(rec: str, blob: Path, want_sha: object, want_bytes: object) -> str:
    """``blob``'s SHA-256 when its size and hash are the manifest's (``blob_sha256``,
    ``blob_bytes``), else a StoreError (``size`` / ``sha256``): what every store checks
    before it commits a blob."""
    sha, size = _sha256_file(blob)
    if size != want_bytes:
        raise StoreError(
            f"recording {rec}: blob is {size} bytes, the manifest says {want_bytes}",
            reason="size",
        )
    if sha != want_sha:
        raise StoreError(
            f"recording {rec}: blob sha256 {sha[:16]}… differs from the manifest's "
            f"{str(want_sha)[:16]}…",
            reason="sha256",
        )
    return sha


def check_id(value: str, what: str) -> str:
    if not isinstance(value, str) or not _ID.match(value):
        raise StoreError(f"{what} {str(value)[:80]!r} is not a valid id", reason="id")
    return value


def blob_date(started_utc: str) -> tuple[str, str, str]:
    """(yyyy, mm, dd) of a manifest's ``started_utc`` in UTC."""
    try:
        when = datetime.fromisoformat(started_utc)
    except (TypeError, ValueError):
        raise StoreError(
            f"started_utc {str(started_utc)[:40]!r} is not an ISO 8601 time", reason="date"
        ) from None
    if when.tzinfo is not None:
        when = when.astimezone(UTC)
    return f"{when.year:04d}", f"{when.month:02d}", f"{when.day:02d}"


def manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


class FileBlobStore:
    """Filesystem blob store shared by all workers on one machine or NFS export."""

    def __init__(self, root: Path, *, lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S) -> None:
        self.root = Path(root)
        self.lock_timeout = lock_timeout
        self.registry = FileLifecycle(self.root, self.root / TMP)
        try:
            for sub in (PARKING, BLOBS, LOCKS, TMP):
                _makedirs_durable(self.root / sub)
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
                reason="full" if exc.errno in _FULL else "io",
            ) from exc

    # -- paths ---------------------------------------------------------------------------
    def parking_dir(self, device: str, rec: str) -> Path:
        return self.root / PARKING / check_id(device, "device") / check_id(rec, "recording")

    def blob_dir(self, device: str, started_utc: str) -> Path:
        return self.root / BLOBS / check_id(device, "device") / Path(*blob_date(started_utc))

    def blob_path(self, device: str, rec: str, started_utc: str, container: str | None) -> Path:
        """Where :meth:`commit` puts the blob (the manifest for a recording without one)."""
        directory = self.blob_dir(device, started_utc)
        check_id(rec, "recording")
        if container is None:
            return directory / f"{rec}{MANIFEST_SUFFIX}"
        if container not in BLOB_SUFFIXES:
            raise StoreError(f"recording {rec}: unknown container {container!r}", reason="id")
        return directory / f"{rec}{BLOB_SUFFIXES[container]}"

    def manifest_path(self, device: str, rec: str, started_utc: str) -> Path:
        return self.blob_dir(device, started_utc) / f"{check_id(rec, 'recording')}{MANIFEST_SUFFIX}"

    def resolve(self, path: str | Path) -> Path:
        """An index's stored path (absolute, or relative to the store root) as a path."""
        p = Path(path)
        return p if p.is_absolute() else self.root / p

    def _tmp_file(self, prefix: str) -> tuple[BinaryIO, Path]:
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=self.root / TMP)
        return os.fdopen(fd, "w+b"), Path(name)

    def _write_parked(self, target: Path, data: bytes, prefix: str) -> None:
        """Write ``data`` through a temp file under ``tmp/`` onto ``target``: whole or not
        at all for every reader, but not fsynced (parking is not durable: module doc)."""
        fh, tmp = self._tmp_file(prefix)
        try:
            with fh:
                fh.write(data)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _write_synced(self, data: bytes, prefix: str) -> Path:
        """A new temp file under ``tmp/`` holding ``data``, fsynced; the caller renames
        it into place and fsyncs that directory (once for all it places there)."""
        fh, tmp = self._tmp_file(prefix)
        try:
            with fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    # -- chunks --------------------------------------------------------------------------
    def park_chunk(self, device: str, rec: str, index: int, data: bytes) -> Path:
        """Park chunk ``index`` (whole, not fsynced: module doc). The same bytes again change nothing; different
        bytes replace the chunk (the device's latest send wins; assembly checks the
        whole blob's SHA-256 anyway)."""
        if not 0 <= index <= 9_999_999:
            raise StoreError(f"chunk index {index} out of range", reason="id")
        directory = self.parking_dir(device, rec)
        target = directory / f"{index:07d}{CHUNK_SUFFIX}"
        try:
            _makedirs_durable(directory, durable=False)
            try:
                if target.stat().st_size == len(data) and target.read_bytes() == data:
                    return target
            except FileNotFoundError:
                pass
            self._write_parked(target, data, f"chunk-{index:07d}-")
        except OSError as exc:
            raise _io_error(exc, f"recording {rec}: cannot park chunk {index}") from exc
        return target

    def park_init(self, device: str, rec: str, data: bytes) -> None:
        """Park an upload's init message (its signed manifest): the first thing parked,
        and the only licence to park chunks for it."""
        directory = self.parking_dir(device, rec)
        try:
            _makedirs_durable(directory, durable=False)
            self._write_parked(directory / INIT_FILE, data, "init-")
        except OSError as exc:
            raise _io_error(exc, f"recording {rec}: cannot park its init") from exc

    def parked_init(self, device: str, rec: str) -> bytes | None:
        """The parked init message of an upload, or None when there is none."""
        path = self.parking_dir(device, rec) / INIT_FILE
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _io_error(exc, f"recording {rec}: cannot read its parked init") from exc

    def parked(self, device: str, rec: str) -> set[int]:
        directory = self.parking_dir(device, rec)
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return set()
        except OSError as exc:
            raise StoreError(f"{directory}: cannot list parked chunks ({exc.strerror})") from exc
        found = set()
        for name in names:
            m = _CHUNK_NAME.match(name)
            if m:
                found.add(int(m.group(1)))
        return found

    def assemble(
        self, device: str, rec: str, chunk_count: int, blob_bytes: int, blob_sha256: str | None
    ) -> Path:
        """Join the parked chunks 0..chunk_count-1 into a temp file under ``tmp/`` and
        check it against the init's size and SHA-256. The caller passes the returned
        path to :meth:`commit` (which fsyncs it) or deletes it."""
        directory = self.parking_dir(device, rec)
        check_all_parked(rec, chunk_count, self.parked(device, rec))
        fh, tmp = self._tmp_file(f"blob-{rec}-")
        digest = hashlib.sha256()
        size = 0
        try:
            with fh:
                for index in range(chunk_count):
                    with open(directory / f"{index:07d}{CHUNK_SUFFIX}", "rb") as part:
                        while block := part.read(_COPY_CHUNK):
                            digest.update(block)
                            size += len(block)
                            fh.write(block)
            if size != blob_bytes:
                raise StoreError(
                    f"recording {rec}: assembled blob is {size} bytes, the init says {blob_bytes}",
                    reason="size",
                )
            sha = digest.hexdigest()
            if blob_bytes and sha != blob_sha256:
                raise StoreError(
                    f"recording {rec}: assembled blob sha256 {sha[:16]}… differs from the "
                    f"init's {str(blob_sha256)[:16]}… (a chunk is corrupt)",
                    reason="sha256",
                )
        except FileNotFoundError as exc:
            tmp.unlink(missing_ok=True)
            raise StoreError(
                f"recording {rec}: a parked chunk vanished while assembling ({exc.filename})",
                reason="missing",
            ) from exc
        except StoreError:
            tmp.unlink(missing_ok=True)
            raise
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise _io_error(exc, f"recording {rec}: cannot assemble") from exc
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
                try:
                    newest = max(
                        [rec_dir.stat().st_mtime, *(p.stat().st_mtime for p in rec_dir.iterdir())]
                    )
                except FileNotFoundError:
                    continue  # dropped meanwhile
                found.append((device_dir.name, rec_dir.name, newest))
        return found

    def drop_parking(self, device: str, rec: str) -> None:
        directory = self.parking_dir(device, rec)
        try:
            shutil.rmtree(directory)
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
        target = self.blob_path(device, rec, started_utc, container)
        manifest_file = self.manifest_path(device, rec, started_utc)
        want_sha = manifest.get("blob_sha256")
        want_bytes = manifest.get("blob_bytes")
        if container is None and blob_tmp is not None:
            raise StoreError(
                f"recording {rec}: a blob was given, but the manifest has no container",
                reason="conflict",
            )
        try:
            _makedirs_durable(target.parent)
            if container is not None:
                self._place_blob(rec, target, blob_tmp, want_sha, want_bytes)
            self._place_manifest(rec, manifest_file, manifest)
            # One directory fsync makes both renames durable; also when both files were
            # there already: a worker killed between its renames and this fsync left
            # them in the page cache only.
            fsync_dir(target.parent)
        except OSError as exc:
            raise _io_error(exc, f"recording {rec}: cannot store") from exc
        return target

    def _place_blob(
        self, rec: str, target: Path, blob_tmp: Path | None, want_sha: Any, want_bytes: Any
    ) -> None:
        """Rename the checked, fsynced blob onto ``target`` (kept when there already).
        The caller fsyncs the directory."""
        if target.exists():
            sha, _ = _sha256_file(target)
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
            tmp_fh, tmp = self._tmp_file(f"blob-{rec}-")
            try:
                with tmp_fh, open(blob_tmp, "rb") as src:
                    shutil.copyfileobj(src, tmp_fh, _COPY_CHUNK)
                    tmp_fh.flush()
                    os.fsync(tmp_fh.fileno())
                os.rename(tmp, target)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            blob_tmp.unlink()

    def _place_manifest(self, rec: str, path: Path, manifest: Mapping[str, Any]) -> None:
        """Write the manifest (fsynced) onto ``path`` unless it is there already.
        The caller fsyncs the directory."""
        data = manifest_bytes(manifest)
        try:
            existing = path.read_bytes()
        except FileNotFoundError:
            tmp = self._write_synced(data, f"manifest-{rec}-")
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
            raise _io_error(exc, f"{stored}: cannot read") from exc

    def size(self, stored: str) -> int:
        try:
            return self.resolve(stored).stat().st_size
        except FileNotFoundError:
            raise StoreError(f"{stored}: no such stored blob", reason="missing") from None
        except OSError as exc:
            raise _io_error(exc, f"{stored}: cannot read") from exc

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
    @contextmanager
    def lock(self, device: str, rec: str, timeout: float | None = None) -> Iterator[None]:
        """Exclusive ``flock`` on ``locks/{device}/{rec}.lock`` across processes and
        threads (each call opens its own file description). Polls; raises
        :class:`StoreError` (``lock``) after ``timeout`` seconds instead of hanging.
        The lock file is removed on release; a waiter that locked the removed file
        notices (its inode is no longer the path's) and tries again.

        On NFS, Linux turns ``flock`` into a POSIX lock: it still excludes processes
        on every client, but no longer threads of one process — run one finishing
        thread per worker process there (the index's finish lock covers PostgreSQL)."""
        directory = self.root / LOCKS / check_id(device, "device")
        path = directory / f"{check_id(rec, 'recording')}.lock"
        wait = self.lock_timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        fd = -1
        while fd < 0:
            directory.mkdir(parents=True, exist_ok=True)
            candidate = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(candidate, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(candidate)
                if time.monotonic() >= deadline:
                    raise StoreError(
                        f"recording {rec}: lock {path} still held after {wait:g} s "
                        "(another worker is finishing it, or is stuck)",
                        reason="lock",
                    ) from None
                time.sleep(_LOCK_POLL_S)
                continue
            try:
                same = os.fstat(candidate).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                fd = candidate
            else:
                os.close(candidate)  # locked a file its holder just removed: retry
        try:
            yield
        finally:
            try:
                path.unlink(missing_ok=True)
            finally:
                os.close(fd)

    # -- housekeeping --------------------------------------------------------------------
    def cleanup_locks(self) -> int:
        """Remove lock files nobody holds (left by killed workers); returns how many.
        A file is removed only while this call holds its lock, so a live holder's lock
        is never taken away."""
        removed = 0
        for device_dir in (self.root / LOCKS).iterdir():
            for path in device_dir.glob("*.lock"):
                try:
                    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
                except FileNotFoundError:
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # held: a worker is finishing that recording
                else:
                    path.unlink(missing_ok=True)
                    removed += 1
                finally:
                    os.close(fd)
        return removed

    def cleanup_tmp(self, older_than_s: float = 3600.0) -> int:
        """Remove temp files left by crashed workers; returns how many."""
        removed = 0
        cutoff = time.time() - older_than_s
        for entry in (self.root / TMP).iterdir():
            try:
                if entry.stat().st_mtime < cutoff:
                    entry.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed
