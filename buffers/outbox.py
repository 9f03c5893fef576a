"""Durable on-disk outbox of sealed recordings, shared by the recorder and the uploader.

Layout under ``root`` (``/var/lib/linetap/outbox`` on a device)::

    tmp/        entries being built by the recorder (never uploaded; removed after a crash)
    sealed/     committed, waiting for upload
    uploading/  claimed by the uploader
    acked/      the head office confirmed a durable store; deletable by retention
    deleted/    the highest-seq deleted entry, emptied of its payload (see max_seq)
    .lock       flock(2) file serialising multi-step operations (below)

An entry is one directory ``{seq:012d}-{recording_id}`` holding the sealer's files (e.g.
``recording.age``, ``manifest.json``) plus two small files of the outbox's own
(``.outbox-sealed-at``, ``.outbox-acked-at``; the ``.outbox-`` prefix is reserved). Its
state is the directory it sits in. Every transition is one atomic ``os.rename`` of the
entry directory followed by an fsync of both parent directories, and every file is
fsynced before the entry leaves ``tmp/``, so after a power cut an entry is in exactly
one state with all of its files, or (if it never left ``tmp/``) not in the outbox at all.

Two processes use the outbox at once and share nothing else: the recorder hands sealed
directories over (:meth:`Outbox.hand_over`), recovers what a crash left staged
(:meth:`Outbox.recover_staged`) and asks for the newest manifest to continue its chain
(:meth:`Outbox.highest_manifest`); the uploader claims, releases and acks; retention
deletes. An exclusive flock on
``.lock`` protects each "look up the entry, check its state, rename it" sequence, so:

* commit's "does this recording id already exist?" check cannot miss an entry that the
  uploader is moving at the same moment (no duplicate after a re-commit);
* a state check (delete only acked, claim only sealed) still holds when the rename runs.

Listings take the lock shared, so they never see an entry twice or miss one mid-move.
Staging and writing files in ``tmp/`` happen without the lock (the caller owns its
staged directory), and so do the fsyncs of the staged files, so a long commit does not
stall the uploader. Renames that still hit ``FileNotFoundError`` (a process not using the
lock) are retried after looking the entry up again.

Disk full: acking and deleting write no new file data (the ack time overwrites a
placeholder written at commit; a delete only renames and unlinks), so the uploader can
still ack and retention can still free space when the partition is full. The one
exception is a state directory that must grow by a block to take one more name (ext4);
``deleted/`` never holds more than two names, so deletes are not affected.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from buffers.errors import StorageError
from buffers.outbox_files import (
    RESERVED_PREFIX,
    explain,
    fsync_tree,
    payload_bytes,
    read_time,
    rmtree,
    write_all,
)
from sealedrec.durable import fsync_dir
from sealedrec.manifest import MANIFEST_FILE, manifest_hash

log = logging.getLogger(__name__)

SEALED_AT_FILE = ".outbox-sealed-at"
ACKED_AT_FILE = ".outbox-acked-at"
# Fixed size of the ack-time file: written as a placeholder at commit and overwritten in
# place at ack, so acking needs no new block on a full disk. repr(float) is <= 24 chars.
_ACK_RECORD_LEN = 32
_UNACKED = b"unacked".ljust(_ACK_RECORD_LEN - 1) + b"\n"
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
_NAME_RE = re.compile(r"([0-9]{12,})-([A-Za-z0-9][A-Za-z0-9._-]{0,199})")
DEFAULT_LOCK_TIMEOUT_S = 30.0
_MOVE_ATTEMPTS = 3


class OutboxState(StrEnum):
    """State of a committed entry; the value is the name of its directory."""

    SEALED = "sealed"
    UPLOADING = "uploading"
    ACKED = "acked"


_STATES = (OutboxState.SEALED, OutboxState.UPLOADING, OutboxState.ACKED)
_UNACKED_STATES = (OutboxState.SEALED, OutboxState.UPLOADING)


class OutboxError(StorageError):
    """The outbox cannot do what was asked (disk full, I/O error, permissions, lock)."""


class OutboxEntryNotFound(OutboxError, FileNotFoundError):
    """No entry with that recording id is in the outbox (or a staged dir is missing)."""


class OutboxStateError(OutboxError):
    """The entry is in a state that does not allow the operation (e.g. deleting unacked)."""


@dataclass(frozen=True)
class OutboxEntry:
    recording_id: str
    seq: int
    state: OutboxState
    path: Path
    bytes: int  # sum of the sealer's file sizes (the outbox's own small files excluded)
    sealed_at: float  # wall clock at commit
    acked_at: float | None  # wall clock at ack; None unless state is ACKED


@dataclass(frozen=True)
class OutboxStats:
    counts: Mapping[OutboxState, int]
    bytes: Mapping[OutboxState, int]
    oldest_unacked_age_s: float | None  # from sealed_at; None when nothing is waiting
    last_ack_at: float | None  # newest ack among acked entries and the deleted marker

    @property
    def unacked_count(self) -> int:
        return sum(self.counts[s] for s in _UNACKED_STATES)

    @property
    def unacked_bytes(self) -> int:
        return sum(self.bytes[s] for s in _UNACKED_STATES)


@dataclass(frozen=True)
class ManifestHead:
    """The newest manifest the outbox has seen: the highest seq in any state or deleted."""

    seq: int
    sha256: str | None  # its manifest's hash; None once retention deleted it (seq is kept)


def entry_name(seq: int, recording_id: str) -> str:
    """Directory name of an entry; raises ValueError for a bad seq or recording id."""
    if seq < 0:
        raise ValueError(f"outbox seq must be >= 0, got {seq}")
    if not _ID_RE.fullmatch(recording_id):
        raise ValueError(
            f"outbox recording id {recording_id!r} is not usable as a directory name: "
            "use 1-200 characters of A-Z a-z 0-9 . _ - starting with a letter or digit"
        )
    return f"{seq:012d}-{recording_id}"


def parse_entry_name(name: str) -> tuple[int, str] | None:
    """``(seq, recording_id)`` of an entry directory name, None if it is not one."""
    m = _NAME_RE.fullmatch(name)
    return (int(m.group(1)), m.group(2)) if m else None


class Outbox:
    def __init__(self, root: Path, *, lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S) -> None:
        self._root = Path(root)
        self._lock_timeout_s = lock_timeout_s
        self._tmp = self._root / "tmp"
        self._deleted = self._root / "deleted"
        self._lock_path = self._root / ".lock"
        try:
            self._root.mkdir(mode=0o700, parents=True, exist_ok=True)
            created = False
            for d in (self._tmp, self._deleted, *(self._dir(s) for s in _STATES)):
                # exist_ok: the other process may be creating the same directory right now.
                if not d.is_dir():
                    d.mkdir(mode=0o700, exist_ok=True)
                    created = True
            if not self._lock_path.exists():
                os.close(os.open(self._lock_path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
                created = True
            if created:
                fsync_dir(self._root)
        except OSError as e:
            raise self._error(e, "creating", self._root) from e

    @property
    def root(self) -> Path:
        return self._root

    def state_dir(self, state: OutboxState) -> Path:
        return self._dir(state)

    # -- recorder side ------------------------------------------------------------------

    def stage(self, seq: int, recording_id: str) -> Path:
        """A fresh, empty directory under ``tmp/`` for the sealer to fill, then ``commit``.

        A leftover directory of the same name (a crash before commit) is replaced.
        """
        path = self._tmp / entry_name(seq, recording_id)
        try:
            if path.exists():
                rmtree(path)
            path.mkdir(mode=0o700)
        except OSError as e:
            raise self._error(e, "staging", path) from e
        return path

    def write_file(self, staged: Path, name: str, data: bytes) -> Path:
        """Write one file into a staged entry (commit fsyncs it); errors become OutboxError."""
        self._parse_staged(staged)
        if "/" in name or name in {"", ".", ".."} or name.startswith(RESERVED_PREFIX):
            raise ValueError(
                f"outbox file name {name!r} must be a plain file name not starting with "
                f"{RESERVED_PREFIX!r}"
            )
        path = staged / name
        try:
            write_all(path, data, os.O_TRUNC)
        except OSError as e:
            raise self._error(e, "writing", path) from e
        return path

    def discard(self, staged: Path) -> None:
        """Remove a staged directory that will not be committed (missing is fine)."""
        self._parse_staged(staged)
        try:
            rmtree(staged)
        except OSError as e:
            raise self._error(e, "discarding", staged) from e

    def commit(self, staged: Path, *, sealed_at: float | None = None) -> OutboxEntry:
        """Make a staged entry durable and move it into ``sealed/``.

        Idempotent by recording id: if an entry with that id is already in any state (a
        crash between a commit and the caller noting it, then a re-seal), the staged
        directory is removed and the existing entry returned; compare its ``seq`` if that
        matters. On failure (e.g. ENOSPC writing the outbox's small files) the staged
        directory stays in ``tmp/``: retry ``commit`` after freeing space, or ``discard``.
        """
        seq, recording_id = self._parse_staged(staged)
        when = time.time() if sealed_at is None else sealed_at
        if staged.is_dir():
            # Write and fsync outside the lock: this is the slow part (the whole
            # recording), and the uploader should not wait for it.
            try:
                write_all(staged / SEALED_AT_FILE, f"{when!r}\n".encode(), os.O_TRUNC)
                write_all(staged / ACKED_AT_FILE, _UNACKED, os.O_TRUNC)
                fsync_tree(staged)
            except OSError as e:
                raise self._error(e, "committing", staged) from e
        with self._lock(exclusive=True):
            existing = self._find_locked(recording_id)
            if existing is not None:
                try:
                    rmtree(staged)
                except OSError as e:
                    raise self._error(e, "removing the duplicate", staged) from e
                return existing
            if not staged.is_dir():
                raise OutboxEntryNotFound(
                    f"outbox {self._root}: cannot commit {staged}: it does not exist and no "
                    f"entry {recording_id!r} is in the outbox; stage() and write it again"
                )
            target = self._dir(OutboxState.SEALED) / staged.name
            try:
                os.rename(staged, target)
                fsync_dir(self._tmp)
                fsync_dir(target.parent)
            except OSError as e:
                raise self._error(e, "committing", staged) from e
            return self._read_entry(target, OutboxState.SEALED, seq, recording_id)

    def hand_over(self, directory: Path, seq: int, recording_id: str) -> OutboxEntry | None:
        """Move a sealed directory (the sealer's, on this filesystem, its files fsynced)
        into the outbox and commit it: :meth:`stage`, one rename over the staged
        directory, :meth:`commit`. Returns the new entry.

        Idempotent by recording id: if the outbox holds the recording already (a crash
        after an earlier hand-over), ``directory`` is removed and None returned.
        """
        if self.find(recording_id) is not None:
            try:
                rmtree(directory)
            except OSError as e:
                raise self._error(e, "removing the duplicate", directory) from e
            return None
        staged = self.stage(seq, recording_id)
        try:
            os.rename(directory, staged)  # replaces the empty staged dir atomically
            fsync_dir(directory.parent)
        except OSError as e:
            raise self._error(e, "handing over", directory) from e
        return self.commit(staged)

    def recover_staged(self) -> list[OutboxEntry]:
        """At recorder start (nothing being staged): commit every staged entry a crash left
        complete (it holds its ``manifest.json``, the sealer's last file), then remove the
        rest (:meth:`cleanup_tmp`). Returns the entries committed."""
        try:
            names = sorted(os.listdir(self._tmp))
        except OSError as e:
            raise self._error(e, "listing", self._tmp) from e
        committed: list[OutboxEntry] = []
        for name in names:
            staged = self._tmp / name
            if parse_entry_name(name) and staged.is_dir() and (staged / MANIFEST_FILE).exists():
                committed.append(self.commit(staged))
        self.cleanup_tmp()
        return committed

    def add(
        self,
        seq: int,
        recording_id: str,
        files: Mapping[str, bytes],
        *,
        sealed_at: float | None = None,
    ) -> OutboxEntry:
        """Stage, write ``files`` and commit in one call; on failure nothing stays in tmp/."""
        staged = self.stage(seq, recording_id)
        try:
            for name, data in files.items():
                self.write_file(staged, name, data)
            return self.commit(staged, sealed_at=sealed_at)
        except BaseException:
            # Free what the partial add took (it matters most on ENOSPC), then report the
            # original error; a failing discard must not hide it.
            with contextlib.suppress(OSError):
                rmtree(staged)
            raise

    def cleanup_tmp(self) -> int:
        """Remove leftovers in ``tmp/`` (partial adds from a crash); returns how many.

        Call it at recorder start, while nothing is being staged: staging is not under the
        lock, so an entry some thread is building right now would be removed too. Also
        finishes deletes that a crash interrupted (payload left in ``deleted/``).
        """
        with self._lock(exclusive=True):
            removed = 0
            try:
                for name in sorted(os.listdir(self._tmp)):
                    rmtree(self._tmp / name)
                    removed += 1
                if removed:
                    fsync_dir(self._tmp)
                self._prune_deleted()
            except OSError as e:
                raise self._error(e, "cleaning", self._tmp) from e
            return removed

    # -- uploader side ------------------------------------------------------------------

    def claim(self, recording_id: str) -> OutboxEntry:
        """sealed → uploading. Already uploading: returned as is. Acked: OutboxStateError."""
        return self._transition(recording_id, "claiming", self._claim_step)

    def release(self, recording_id: str) -> OutboxEntry:
        """uploading → sealed (the upload was abandoned). Sealed or acked: returned as is."""
        return self._transition(recording_id, "releasing", self._release_step)

    def mark_acked(self, recording_id: str, acked_at: float | None = None) -> OutboxEntry:
        """sealed|uploading → acked, recording the ack time durably first.

        Already acked: returned unchanged (its first ack time is kept).
        """
        when = time.time() if acked_at is None else acked_at

        def step(entry: OutboxEntry) -> OutboxEntry | None:
            if entry.state is OutboxState.ACKED:
                return entry
            # Overwrite the placeholder in place (no new block on a full disk). A crash
            # before the rename leaves the time in an unacked entry, where it is ignored
            # and overwritten by the next ack.
            fd = os.open(entry.path / ACKED_AT_FILE, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.pwrite(fd, f"{when!r}".encode().ljust(_ACK_RECORD_LEN - 1) + b"\n", 0)
                os.fsync(fd)
            finally:
                os.close(fd)
            fsync_dir(entry.path)  # in case the placeholder was missing and just created
            return self._move(entry, OutboxState.ACKED)

        return self._transition(recording_id, "acking", step)

    # -- retention side -----------------------------------------------------------------

    def delete(self, recording_id: str) -> bool:
        """Delete an acked entry; False if there is none with that id (already deleted).

        Refuses (OutboxStateError) to delete an entry that is not acked: an unacknowledged
        recording is never lost. The entry leaves ``acked/`` with one atomic rename into
        ``deleted/``, then its files are removed; the highest-seq deleted entry stays
        there, emptied, so :meth:`max_seq` never goes back when retention has deleted the
        newest recordings (the recorder must never reuse a seq).
        """
        with self._lock(exclusive=True):
            entry = self._find_locked(recording_id)
            if entry is None:
                return False
            if entry.state is not OutboxState.ACKED:
                raise OutboxStateError(
                    f"outbox {self._root}: refusing to delete {entry.path}: it is "
                    f"{entry.state.value}, not acked; only recordings the head office has "
                    "confirmed may be deleted (mark_acked first)"
                )
            target = self._deleted / entry.path.name
            try:
                if target.exists():  # the same id deleted before, re-added and acked again
                    rmtree(target)
                os.rename(entry.path, target)
                fsync_dir(entry.path.parent)
                fsync_dir(self._deleted)
                self._prune_deleted()
            except OSError as e:
                raise self._error(e, "deleting", entry.path) from e
            return True

    # -- queries ------------------------------------------------------------------------

    def entries(self, state: OutboxState | None = None) -> list[OutboxEntry]:
        """Committed entries (of one state, or all), sorted by seq then recording id."""
        with self._lock(exclusive=False):
            return self._entries_locked(_STATES if state is None else (state,))

    def find(self, recording_id: str) -> OutboxEntry | None:
        with self._lock(exclusive=False):
            return self._find_locked(recording_id)

    def max_seq(self) -> int | None:
        """Highest seq ever committed and still known: every state plus the deleted marker.

        ``tmp/`` is not counted: a staged entry that was never committed does not exist.
        """
        with self._lock(exclusive=False):
            seqs = [
                seq
                for d in (*(self._dir(s) for s in _STATES), self._deleted)
                for _, seq, _ in self._list(d)
            ]
        return max(seqs, default=None)

    def highest_manifest(self) -> ManifestHead | None:
        """Seq and manifest hash of the highest seq committed and still known (every state
        plus the deleted marker, as :meth:`max_seq`); None when the outbox is empty."""
        with self._lock(exclusive=False):
            found = [
                (seq, d / name)
                for d in (*(self._dir(s) for s in _STATES), self._deleted)
                for name, seq, _ in self._list(d)
            ]
            if not found:
                return None
            seq, path = max(found, key=lambda f: f[0])  # the first of a seq: a state dir
            try:
                data = (path / MANIFEST_FILE).read_bytes()
            except FileNotFoundError:
                return ManifestHead(seq, None)  # the deleted marker keeps only the seq
            except OSError as e:
                raise self._error(e, "reading", path / MANIFEST_FILE) from e
        return ManifestHead(seq, manifest_hash(json.loads(data)))

    def stats(self, now: float) -> OutboxStats:
        with self._lock(exclusive=False):
            entries = self._entries_locked(_STATES)
            acks = self._deleted_ack_times()
        counts = dict.fromkeys(_STATES, 0)
        sizes = dict.fromkeys(_STATES, 0)
        for e in entries:
            counts[e.state] += 1
            sizes[e.state] += e.bytes
        unacked_sealed = [e.sealed_at for e in entries if e.state in _UNACKED_STATES]
        acks.extend(e.acked_at for e in entries if e.acked_at is not None)
        return OutboxStats(
            counts=counts,
            bytes=sizes,
            oldest_unacked_age_s=max(0.0, now - min(unacked_sealed)) if unacked_sealed else None,
            last_ack_at=max(acks, default=None),
        )

    # -- internals ----------------------------------------------------------------------

    def _dir(self, state: OutboxState) -> Path:
        return self._root / state.value

    def _parse_staged(self, staged: Path) -> tuple[int, str]:
        parsed = parse_entry_name(staged.name)
        if parsed is None or staged.parent != self._tmp:
            raise ValueError(
                f"{staged} is not a staged outbox entry (expected {self._tmp}/<seq>-<id> "
                "from Outbox.stage)"
            )
        return parsed

    def _list(self, directory: Path) -> list[tuple[str, int, str]]:
        """``(name, seq, recording_id)`` of the entries in one directory."""
        out: list[tuple[str, int, str]] = []
        try:
            names = os.listdir(directory)
        except OSError as e:
            raise self._error(e, "listing", directory) from e
        for name in names:
            parsed = parse_entry_name(name)
            if parsed is None:
                log.warning("outbox: ignoring %s (not an entry directory)", directory / name)
                continue
            out.append((name, *parsed))
        return out

    def _entries_locked(self, states: tuple[OutboxState, ...]) -> list[OutboxEntry]:
        out = [
            self._read_entry(self._dir(s) / name, s, seq, rid)
            for s in states
            for name, seq, rid in self._list(self._dir(s))
        ]
        out.sort(key=lambda e: (e.seq, e.recording_id))
        return out

    def _find_locked(self, recording_id: str) -> OutboxEntry | None:
        for s in _STATES:
            for name, seq, rid in self._list(self._dir(s)):
                if rid == recording_id:
                    return self._read_entry(self._dir(s) / name, s, seq, rid)
        return None

    def _read_entry(self, path: Path, state: OutboxState, seq: int, rid: str) -> OutboxEntry:
        try:
            size = payload_bytes(path)
            sealed_at = read_time(path / SEALED_AT_FILE)
            if sealed_at is None:
                # Only an entry put there by hand lacks it; its directory time is the best
                # stand-in and keeps the oldest-unacked age meaningful.
                sealed_at = path.stat().st_mtime
            acked_at: float | None = None
            if state is OutboxState.ACKED:
                acked_at = read_time(path / ACKED_AT_FILE)
                if acked_at is None:
                    acked_at = path.stat().st_mtime
        except OSError as e:
            raise self._error(e, "reading", path) from e
        return OutboxEntry(rid, seq, state, path, size, sealed_at, acked_at)

    def _transition(
        self, recording_id: str, doing: str, step: Callable[[OutboxEntry], OutboxEntry | None]
    ) -> OutboxEntry:
        """Look the entry up and apply ``step`` under the lock, retrying if it moved.

        ``step`` returns the resulting entry; it raises FileNotFoundError when the entry
        moved under it (only a process that ignores the lock can do that).
        """
        with self._lock(exclusive=True):
            for _ in range(_MOVE_ATTEMPTS):
                entry = self._find_locked(recording_id)
                if entry is None:
                    raise OutboxEntryNotFound(
                        f"outbox {self._root}: no entry {recording_id!r} while {doing} it "
                        "(never committed, or acked and deleted by retention)"
                    )
                try:
                    result = step(entry)
                except OutboxError:
                    raise
                except FileNotFoundError:
                    continue
                except OSError as e:
                    raise self._error(e, doing, entry.path) from e
                if result is not None:
                    return result
            raise OutboxError(
                f"outbox {self._root}: entry {recording_id!r} kept moving while {doing} it; "
                f"is a process changing {self._root} without taking {self._lock_path}?"
            )

    def _claim_step(self, entry: OutboxEntry) -> OutboxEntry:
        if entry.state is OutboxState.ACKED:
            raise OutboxStateError(
                f"outbox {self._root}: cannot claim {entry.path}: it is already acked "
                "(nothing to upload)"
            )
        if entry.state is OutboxState.UPLOADING:
            return entry
        return self._move(entry, OutboxState.UPLOADING)

    def _release_step(self, entry: OutboxEntry) -> OutboxEntry:
        if entry.state is OutboxState.UPLOADING:
            return self._move(entry, OutboxState.SEALED)
        return entry

    def _move(self, entry: OutboxEntry, to: OutboxState) -> OutboxEntry:
        """Rename the entry into another state dir and make the rename durable."""
        target = self._dir(to) / entry.path.name
        os.rename(entry.path, target)
        fsync_dir(entry.path.parent)
        fsync_dir(target.parent)
        return self._read_entry(target, to, entry.seq, entry.recording_id)

    def _prune_deleted(self) -> None:
        """Keep only the highest-seq marker in ``deleted/``, emptied of its payload.

        Runs after every delete and at cleanup, so a delete interrupted by a crash (entry
        renamed, files not yet removed) is finished later. Caller holds the lock.
        """
        markers = sorted(self._list(self._deleted), key=lambda m: (m[1], m[2]))
        if not markers:
            return
        for name, _, _ in markers[:-1]:
            rmtree(self._deleted / name)
        keep = self._deleted / markers[-1][0]
        removed = False
        with os.scandir(keep) as it:
            children = list(it)
        for child in children:
            if not child.name.startswith(RESERVED_PREFIX):
                rmtree(Path(child.path))
                removed = True
        if removed:
            fsync_dir(keep)
        if len(markers) > 1:
            fsync_dir(self._deleted)

    def _deleted_ack_times(self) -> list[float]:
        out: list[float] = []
        for name, _, _ in self._list(self._deleted):
            try:
                t = read_time(self._deleted / name / ACKED_AT_FILE)
            except OSError:
                # A marker being pruned right now by a process that ignores the lock;
                # it only ever refines last_ack_at, so skipping it is harmless.
                continue
            if t is not None:
                out.append(t)
        return out

    @contextlib.contextmanager
    def _lock(self, *, exclusive: bool) -> Iterator[None]:
        """flock on ``.lock``: exclusive for changes, shared for listings.

        A new open file description per call, so threads of one process exclude each
        other too. Not re-entrant: internal helpers called under it never take it again.
        Polls with LOCK_NB so a stuck holder becomes an error, not a hang.
        """
        try:
            fd = os.open(self._lock_path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise self._error(e, "locking", self._lock_path) from e
        try:
            op = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
            deadline = time.monotonic() + self._lock_timeout_s
            delay = 0.0005
            while True:
                try:
                    fcntl.flock(fd, op)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise OutboxError(
                            f"outbox {self._root}: {self._lock_path} still locked after "
                            f"{self._lock_timeout_s:g} s; a recorder or uploader process is "
                            "stuck holding it (restart linetap-recorder / linetap-uploader)"
                        ) from None
                    time.sleep(delay)
                    delay = min(delay * 2, 0.02)
            yield
        finally:
            os.close(fd)  # closing the only descriptor releases the flock

    def _error(self, exc: OSError, doing: str, path: Path) -> OutboxError:
        reason, fix = explain(exc, self._root)
        cls = OutboxEntryNotFound if isinstance(exc, FileNotFoundError) else OutboxError
        err = cls(f"outbox {self._root}: {reason} while {doing} {path}; {fix}")
        # Keep errno so callers can still test for ENOSPC; strerror stays unset so the
        # message above is what str() shows.
        err.errno = exc.errno
        return err
