"""The file store's names, checks and file primitives (:mod:`headoffice.store` has the
layout and the durability argument): what :class:`~headoffice.store.FileBlobStore`
and the S3 store share, and the finishing lock of the file store."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import os
import re
import shutil
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from headoffice.blobstore import StoreError
from sealedrec.durable import write_fd
from sealedrec.manifest import canonical_json

PARKING = "parking"
BLOBS = "blobs"
LOCKS = "locks"
LOCK_FILE = "recordings.lock"  # under LOCKS: one byte per recording (range_lock)
TMP = "tmp"
CHUNK_SUFFIX = ".part"
INIT_FILE = "init.json"
DIR_MODE = 0o700
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
MANIFEST_SUFFIX = ".manifest.json"
BLOB_SUFFIXES = {"age": ".age", "segments": ".segments"}
DEFAULT_LOCK_TIMEOUT_S = 30.0
_LOCK_POLL_S = 0.02
COPY_CHUNK = 1024 * 1024
# The protocol's id grammar: no separators, never "." or "..", so an id is one path part.
# Where os.link fails but a copy works: another filesystem, or one without hard links.
NO_LINK_ERRNOS = frozenset(
    {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP}
)
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
CHUNK_NAME = re.compile(r"^(\d{7})\.part$")


def io_error(exc: OSError, message: str) -> StoreError:
    """``exc`` as a StoreError; a full filesystem gets reason ``full``."""
    if isinstance(exc, StoreError):
        return exc
    full = exc.errno in FULL_ERRNOS
    return StoreError(f"{message} ({exc.strerror or exc})", reason="full" if full else "io")


def sha256_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while block := fh.read(COPY_CHUNK):
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
    sha, size = sha256_file(blob)
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


def check_joined(
    rec: str, tmp: str, size: int, sha: str, *, blob_bytes: int, blob_sha256: str | None
) -> None:
    """The assembled blob ``tmp`` (``size`` bytes, SHA-256 ``sha``) against the init's,
    else remove it and raise StoreError (``size`` / ``sha256``)."""
    problem = None
    if size != blob_bytes:
        problem = StoreError(
            f"recording {rec}: assembled blob is {size} bytes, the init says {blob_bytes}",
            reason="size",
        )
    elif blob_bytes and sha != blob_sha256:
        problem = StoreError(
            f"recording {rec}: assembled blob sha256 {sha[:16]}… differs from the "
            f"init's {str(blob_sha256)[:16]}… (a chunk is corrupt)",
            reason="sha256",
        )
    if problem is not None:
        unlink_quietly(tmp)
        raise problem


def unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return


def empty_folder(directory: str) -> None:
    """Unlink the files of a folder of files, such as a parking folder."""
    for name in os.listdir(directory):
        unlink_quietly(os.path.join(directory, name))


def remove_folder(directory: str) -> None:
    """``rm -r`` of a folder of files, such as a parking folder: unlink them and remove
    it (rmtree's safe walk costs several times more); anything else gets the rmtree."""
    try:
        empty_folder(directory)
        os.rmdir(directory)
    except FileNotFoundError:
        raise
    except OSError:  # a subfolder, or a file parked meanwhile: the thorough way
        shutil.rmtree(directory)


def read_file(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


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
    """A manifest as the store keeps it: its canonical JSON, so the file's SHA-256 is the
    index's ``manifest_sha256`` and the next recording's ``prev`` (``sha256sum`` checks
    it against the chain). Older stores hold it indented; both read the same. (Indented
    JSON also cost ~80 µs a recording: json's indent is pure Python.)"""
    return canonical_json(manifest)


class _Flock(ctypes.Structure):
    """``struct flock`` with 64-bit offsets: what ``F_OFD_SETLK`` takes on every Linux."""

    _fields_ = (
        ("l_type", ctypes.c_short),
        ("l_whence", ctypes.c_short),
        ("l_start", ctypes.c_int64),
        ("l_len", ctypes.c_int64),
        ("l_pid", ctypes.c_int),
    )


def lock_offset(device: str, rec: str) -> int:
    """The byte of the lock file that stands for one recording (56 bits of a hash: two
    recordings share a byte once in 2^56, and then only wait for each other)."""
    key = f"{check_id(device, 'device')}/{check_id(rec, 'recording')}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:7], "big")


@contextmanager
def range_lock(lock_file: str, device: str, rec: str, wait: float) -> Iterator[None]:
    """Exclusive lock of the recording's byte (:func:`lock_offset`) of ``lock_file``,
    across processes and threads: an open-file-description lock (``F_OFD_SETLK``), so
    each call, with its own descriptor, excludes every other, also within one process.
    Polls; raises :class:`StoreError` (``lock``) after ``wait`` seconds instead of
    hanging. Closing the descriptor releases it, also when the process dies.

    One lock file for every recording, made once: a file per recording cost a new inode
    per stored recording and freed it again, the dearest system calls on the receiver's
    path (module doc of :mod:`headoffice.store`). On NFS,
    Linux sends the byte-range lock to the server, so it excludes workers on every
    client."""
    offset = lock_offset(device, rec)
    request = bytes(_Flock(fcntl.F_WRLCK, os.SEEK_SET, offset, 1, 0))
    deadline = time.monotonic() + wait
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        while True:
            try:
                fcntl.fcntl(fd, fcntl.F_OFD_SETLK, request)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            if time.monotonic() >= deadline:
                raise StoreError(
                    f"recording {rec}: lock (byte {offset} of {lock_file}) still held after "
                    f"{wait:g} s (another worker is finishing it, or is stuck)",
                    reason="lock",
                )
            time.sleep(_LOCK_POLL_S)
        yield
    finally:
        os.close(fd)


def cleanup_lock_files(locks: Path) -> int:
    """Remove the per-recording lock files of older versions (``locks/{device}/*.lock``)
    that nobody holds; returns how many. A file is removed only while this call holds
    its ``flock``, so an older worker's lock is never taken away."""
    removed = 0
    for device_dir in locks.iterdir():
        if not device_dir.is_dir():
            continue  # the lock file of this version
        for path in device_dir.glob("*.lock"):
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # held: an older worker is finishing that recording
            else:
                path.unlink(missing_ok=True)
                removed += 1
            finally:
                os.close(fd)
    return removed


class TempFiles:
    """Files being written under the store's ``tmp/``, renamed into place by the caller
    (so no reader ever sees half a file). The parked and synced writes go through bare
    descriptors: a file object and ``mkstemp``'s name generator cost more than the
    write of a small chunk (~70 µs a recording measured)."""

    def __init__(self, tmp_root: str) -> None:
        self.root = tmp_root

    def name(self, prefix: str) -> str:
        """A fresh path under ``tmp/`` (``{prefix}{random}.tmp``), not yet a file."""
        return os.path.join(self.root, f"{prefix}{os.urandom(6).hex()}.tmp")

    def new(self, prefix: str) -> tuple[BinaryIO, Path]:
        """A new empty file (0600), open for writing."""
        fd, path = self._create(prefix)
        return os.fdopen(fd, "w+b"), Path(path)

    def claim(self, path: str, prefix: str) -> tuple[int, str] | None:
        """``path``'s inode moved to a temp name and emptied (descriptor, temp path), or
        None when there is no such file. A new inode is the dearest system call of a
        commit (module doc of :mod:`headoffice.store`); the parked init, 0600 like every
        file of the store, is done with once its manifest is stored, so its inode
        becomes the manifest's."""
        tmp = self.name(prefix)
        try:
            os.rename(path, tmp)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.EXDEV:
                return None  # parking mounted apart from tmp/: a new file then
            raise
        return os.open(tmp, os.O_RDWR | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC), tmp

    def write_parked(self, target: str, data: bytes, prefix: str) -> None:
        """Write ``data`` through a temp file onto ``target``: whole or not at all for
        every reader, but not fsynced (parking is not durable: :mod:`headoffice.store`)."""
        fd, tmp = self._create(prefix)
        try:
            try:
                write_fd(fd, data)
            finally:
                os.close(fd)
            os.replace(tmp, target)
        except BaseException:
            unlink_quietly(tmp)
            raise

    def write_synced(self, data: bytes, prefix: str, *, reuse: str | None = None) -> Path:
        """A temp file holding ``data``, fsynced; the caller renames it into place and
        fsyncs that directory (once for all it places there). It is the file ``reuse``
        (moved and emptied) if that exists, else a new one."""
        claimed = None if reuse is None else self.claim(reuse, prefix)
        fd, tmp = self._create(prefix) if claimed is None else claimed
        try:
            try:
                write_fd(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException:
            unlink_quietly(tmp)
            raise
        return Path(tmp)

    def _create(self, prefix: str) -> tuple[int, str]:
        """A new empty file (0600) under ``tmp/`` on a random name: descriptor, path."""
        while True:
            path = self.name(prefix)
            try:
                return os.open(path, _CREATE_FLAGS, 0o600), path
            except FileExistsError:
                continue  # 2^-48 a name: another go


_CREATE_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
