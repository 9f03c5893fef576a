"""After the call: sealing, chaining and the hand-over to the outbox.

The in-call writer (:mod:`firmware.sealwriter`) leaves a journal directory and, when the
call ends, a :class:`~firmware.sealwriter.SealJob`. A call that ended normally is sealed
from ``stream.age``; one that a crash or power cut interrupted is sealed at the next
start from ``segments.jrn`` (flagged ``recovered``). Either way the device writes a
signed manifest (:mod:`firmware.sealmanifest`) with the next ``seq`` and the hash of the
previous manifest, then hands the directory to the outbox (:meth:`Outbox.hand_over`).
Every step is idempotent and ordered so that a crash at any instant neither loses nor
duplicates a recording, nor skips or reuses a ``seq``: see :meth:`SealingSink._finalize`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from buffers.outbox import Outbox
from firmware.clock import ClockSync, read_clock_sync
from firmware.errors import StorageError
from firmware.headfile import HeadFile
from firmware.sealmanifest import Blob, build_manifest, read_json
from firmware.sealwriter import (
    DISCARDED_FILE,
    END_FILE,
    FULL_ERRNOS,
    SEGMENTS_FILE,
    START_FILE,
    STREAM_FILE,
    Codec,
    SealingSettings,
    SealingWriter,
    SealJob,
    StorageStatus,
    write_json_durable,
)
from firmware.sinks import RecordingEnd, RecordingEvent, RecordingStart, RecordingWriter
from sealedrec.durable import fsync_dir, fsync_file
from sealedrec.manifest import (
    BLOB_AGE,
    BLOB_FILES,
    BLOB_SEGMENTS,
    GENESIS_HASH,
    MANIFEST_FILE,
    manifest_hash,
)
from sealedrec.segments import scan_journal

# Codec and SealingSettings configure the sink (firmware.app, benches).
__all__ = ["ChainState", "Codec", "SealingSettings", "SealingSink"]

log = logging.getLogger(__name__)

# The finished file is hashed on a thread of its own (hashlib lets go of the GIL), so a
# 2-hour call never stalls capture. A poll waits for the hash to the end only when its
# budget covers the whole blob: a blob of at most this many bytes, or close() and
# recover() (an unbounded budget).
SEAL_BYTES_PER_POLL = 256 * 1024
# Otherwise a poll waits up to this long for the hash in progress: a call of some minutes
# hashes in a few ms, so it reaches the outbox in the poll after its close rather than a
# capture period later (100 ms by default: most of the hang-up -> ack time), and a long
# call holds capture up no longer than this (the ALSA buffer holds 8 periods).
HASH_WAIT_S = 0.020
HASH_CHUNK = 1024 * 1024
_DONE, _BLOCKED, _WORKING = "done", "blocked", "working"


class ChainState:
    """The last (seq, manifest hash) this device signed; survives crashes.

    The file is advanced after each manifest is written; after a crash the head is the
    highest of this file, manifests still in journal directories and the outbox, so a
    seq is never reused nor skipped.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> tuple[int, str]:
        try:
            data = json.loads(self.path.read_text())
            return int(data["seq"]), str(data["manifest_sha256"])
        except FileNotFoundError:
            return 0, GENESIS_HASH
        except (ValueError, KeyError, TypeError) as exc:
            raise StorageError(
                f"{self.path}: chain state unreadable ({exc}); restore it from the outbox "
                "(highest manifest) before recording, or seq would restart"
            ) from exc

    def write(self, seq: int, digest: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_json_durable(self.path, {"seq": seq, "manifest_sha256": digest})


class _Recording:
    """The writer the recorder gets: a :class:`SealingWriter` whose job goes, at close,
    into the sink's queue (the writer itself knows nothing of the sink)."""

    def __init__(self, writer: SealingWriter, enqueue: Callable[[SealJob], None]) -> None:
        self._writer = writer
        self._enqueue = enqueue

    @property
    def recording_id(self) -> str:
        return self._writer.recording_id

    def write(self, samples: npt.NDArray[np.int16]) -> None:
        self._writer.write(samples)

    def event(self, event: RecordingEvent) -> None:
        self._writer.event(event)

    def discard(self) -> None:
        self._writer.discard()

    def close(self, end: RecordingEnd) -> None:
        self._enqueue(self._writer.close(end))


@dataclass(eq=False)
class _Progress:
    """A job being sealed: the blob settled, and its hashing (on ``hashing``'s thread)."""

    job: SealJob
    blob: Blob | None = None
    hashing: threading.Thread | None = None
    error: OSError | None = None  # what the hashing thread met
    blob_bytes: int = 0  # the settled blob's size (the hash's whole work)
    digest: Any = field(default_factory=hashlib.sha256)
    size: int = 0

    def hash_blob(self, path: Path) -> None:
        """The hashing thread: ``digest`` and ``size`` of the blob (or ``error``)."""
        try:
            with open(path, "rb") as fh:
                while block := fh.read(HASH_CHUNK):
                    self.digest.update(block)
                    self.size += len(block)
        except OSError as exc:
            self.error = exc


class SealingSink:
    """RecordingSink that journals, seals, signs and queues recordings in the outbox."""

    def __init__(
        self,
        settings: SealingSettings,
        *,
        journal_root: Path,
        outbox: Outbox,
        chain: ChainState,
        device_key: Ed25519PrivateKey,
        clock_sync: Callable[[], ClockSync] = read_clock_sync,
        storage_status: StorageStatus | None = None,
        head: HeadFile | None = None,
    ) -> None:
        """``head``: where the signed device head goes after each sealed recording
        (:mod:`firmware.headfile`; the daemon and replay have one, benches none)."""
        self.settings = settings
        self.journal_root = journal_root
        self.outbox = outbox
        self.chain = chain
        self._key = device_key
        self._clock_sync = clock_sync
        self._storage_status = storage_status
        self._head = head
        # Ended recordings being sealed, oldest first; poll() advances them.
        self._jobs: list[_Progress] = []
        self._was_blocked = False
        journal_root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def enqueue(self, job: SealJob) -> None:
        """Queue an ended recording for sealing; :meth:`poll` does the work in slices."""
        self._jobs.append(_Progress(job))

    def poll(self, budget: int = SEAL_BYTES_PER_POLL, wait_s: float = HASH_WAIT_S) -> None:
        """Advance the sealing queue; wait for a blob's hash if ``budget`` (bytes) covers
        the whole blob, else up to ``wait_s``, then leave it to its thread and look again
        next time.

        Called once per capture period, so sealing a long call never stalls capture; a
        full disk blocks the queue (and shows as a fault) until
        space is back.
        """
        blocked = False
        while self._jobs and budget > 0:
            job = self._jobs[0]
            try:
                state, used = self._advance(job, budget, wait_s)
            except OSError as exc:
                if exc.errno not in FULL_ERRNOS:
                    raise StorageError(f"sealing {job.job.directory.name}: {exc}") from exc
                state, used = _BLOCKED, 0
            budget -= used
            if state == _BLOCKED:
                blocked = True
                break
            if state == _WORKING:  # hashing in the background
                break
            self._jobs.pop(0)
        if blocked:
            job = self._jobs[0]
            self._report(
                StorageError(
                    f"data partition full: recording {job.job.directory.name} ended and is "
                    f"held ({_held(job.job) // 1024} KiB in RAM) until space is freed"
                )
            )
            self._was_blocked = True
        elif self._was_blocked and not self._jobs:
            self._was_blocked = False
            log.info("all held recordings sealed")
            self._report(None)

    @property
    def pending(self) -> int:
        return len(self._jobs)

    def close(self) -> None:
        """Seal everything queued (shutdown); say what a full disk still holds in RAM."""
        self.poll(budget=1 << 62)
        for job in self._jobs:
            log.error(
                "recording %s not sealed (disk full): %d KiB in RAM are lost; its journal keeps "
                "what was synced and the next start seals that",
                job.job.directory.name,
                _held(job.job) // 1024,
            )

    def _report(self, fault: StorageError | None) -> None:
        if self._storage_status:
            self._storage_status(fault)

    def open(self, start: RecordingStart) -> RecordingWriter:
        try:
            writer = SealingWriter(
                self.journal_root / start.recording_id,
                start,
                self.settings,
                storage_status=self._storage_status,
            )
        except OSError as exc:
            raise StorageError(
                f"journal {self.journal_root}: cannot start a recording ({exc.strerror})"
            ) from exc
        return _Recording(writer, self.enqueue)

    # -- recovery -----------------------------------------------------------------------
    def recover(self) -> list[str]:
        """Seal whatever a crash left: journal dirs, and finished entries left staged."""
        sealed: list[str] = []
        self.outbox.recover_staged()
        for directory in sorted(p for p in self.journal_root.iterdir() if p.is_dir()):
            if not (directory / START_FILE).exists() and not (directory / MANIFEST_FILE).exists():
                # Crashed before start.json was durable: no audio could have been synced.
                # (A sealed directory has dropped start.json on its way to the outbox: the
                # manifest marks it, and it must be finished, never removed.)
                shutil.rmtree(directory)
                continue
            job = _Progress(SealJob(directory))
            while self._advance(job, 1 << 62, 0.0)[0] != _DONE:
                pass
            sealed.append(directory.name)
        return sealed

    def refresh_head(self) -> None:
        """At start, after :meth:`recover`: make the signed head name the chain's head
        (a crash may have come between a hand-over and the head's write)."""
        if self._head is None:
            return
        try:
            seq, digest = self._chain_head()
            entries = self.outbox.entries()
            recording_id = next((e.recording_id for e in entries if e.seq == seq), None)
            self._head.ensure(seq, digest, recording_id)
        except OSError as exc:
            # Never a reason not to record: a chain problem stops the next sealing with
            # its own message; the head follows with the next sealed recording.
            log.warning("device head %s not written (%s)", self._head.path, exc)

    # -- sealing ------------------------------------------------------------------------
    def _chain_head(self) -> tuple[int, str]:
        head = self.chain.read()
        for path in (d / MANIFEST_FILE for d in self.journal_root.iterdir()):
            if path.exists():
                m = read_json(path)
                if m["seq"] > head[0]:
                    head = (m["seq"], manifest_hash(m))
        top = self.outbox.highest_manifest()
        if top is not None and top.seq > head[0]:
            if top.sha256 is None:
                raise StorageError(
                    f"{self.chain.path}: chain state at seq {head[0]} is behind the outbox, "
                    f"whose newest recording (seq {top.seq}) retention has deleted; set the "
                    "chain state to that seq and the hash of its manifest (the head office "
                    "has it) before recording, or seq would be reused"
                )
            head = (top.seq, top.sha256)
        return head

    def _advance(self, job: _Progress, budget: int, wait_s: float) -> tuple[str, int]:
        """One slice of sealing ``job``: (_DONE | _BLOCKED | _WORKING, bytes hashed)."""
        if job.job.pending is not None and not job.job.pending.flush_ended():
            return _BLOCKED, 0
        if job.blob is None:
            job.blob = self._prepare_blob(job.job.directory)
            if job.blob.path:
                job.blob_bytes = job.blob.path.stat().st_size
                job.hashing = threading.Thread(
                    target=job.hash_blob, args=(job.blob.path,), name="seal-hash", daemon=True
                )
                job.hashing.start()
                if budget < job.blob_bytes and wait_s <= 0:
                    # No wait: the hash is looked at from the next poll on, however fast
                    # the thread is (each poll a predictable step: a crash between
                    # settling and manifest can be staged).
                    return _WORKING, 0
        used = 0
        if job.hashing is not None:
            if job.hashing.is_alive():
                if budget < job.blob_bytes:
                    job.hashing.join(wait_s)
                    if job.hashing.is_alive():
                        return _WORKING, 0
                job.hashing.join()
                used = job.size
            job.hashing = None
        if job.error is not None:
            error, job.error = job.error, None
            job.blob, job.digest, job.size = None, hashlib.sha256(), 0  # start over
            raise error
        self._finalize(job)
        return _DONE, used

    def _prepare_blob(self, directory: Path) -> Blob:
        """Settle which file is the recording. Idempotent: a crash halfway is redone."""
        manifest = directory / MANIFEST_FILE
        if manifest.exists():
            # Already sealed (start.json may be gone already): the manifest says it all.
            m = read_json(manifest)
            path = (
                directory / BLOB_FILES[m["container"]] if m.get("container") in BLOB_FILES else None
            )
            return Blob(
                path,
                m.get("container"),
                m.get("codec"),
                m["audio_frames"],
                m["audio_pcm_sha256"],
                m["recovered"],
            )
        start = read_json(directory / START_FILE)
        end_path = directory / END_FILE
        end = read_json(end_path) if end_path.exists() else None
        if (directory / DISCARDED_FILE).exists():
            return Blob(None, None, None, 0, None, end is None)
        if end is not None and (
            (directory / STREAM_FILE).exists() or (directory / BLOB_AGE).exists()
        ):
            if (directory / STREAM_FILE).exists():
                os.replace(directory / STREAM_FILE, directory / BLOB_AGE)
                fsync_dir(directory)
            return Blob(
                directory / BLOB_AGE,
                "age",
                start["codec"],
                int(end["frames_written"]),
                end["audio_pcm_sha256"],
                False,
            )
        return _segments_blob(directory, end)

    def _finalize(self, job: _Progress) -> None:
        """Manifest, chain, clean-up and the hand-over to the outbox.

        Order: (1) the signed manifest with the next seq; (2) the chain state; (3) drop
        journal-only files; (4) hand the directory over to the outbox. A crash after (1)
        resumes at (2) with the same seq; before (1) it starts over.
        """
        directory = job.job.directory
        manifest_path = directory / MANIFEST_FILE
        if manifest_path.exists():
            manifest = read_json(manifest_path)
        else:
            assert job.blob is not None
            manifest = build_manifest(
                directory,
                job.blob,
                blob_sha=job.digest.hexdigest() if job.blob.path else None,
                blob_bytes=job.size,
                head=self._chain_head(),
                key=self._key,
                clock_sync=self._clock_sync,
                recipients=self.settings.recipients,
            )
            write_json_durable(manifest_path, manifest)
        seq = int(manifest["seq"])
        digest = manifest_hash(manifest)
        if self.chain.read()[0] < seq:
            self.chain.write(seq, digest)
        keep = {MANIFEST_FILE, BLOB_AGE, BLOB_SEGMENTS}
        for path in directory.iterdir():
            if path.name not in keep:
                path.unlink()
        fsync_dir(directory)
        if self.outbox.hand_over(directory, seq, directory.name) is not None:
            log.info(
                "sealed recording id=%s seq=%d recovered=%s",
                directory.name,
                seq,
                manifest["recovered"],
            )
        if self._head is not None:
            try:
                self._head.advance(seq, digest, str(manifest["recording_id"]))
            except OSError as exc:
                # The recording is sealed and in the outbox: a head not written now (a
                # full disk) is written with the next recording, or at the next start.
                log.warning("device head %s not written (%s)", self._head.path, exc)


def _segments_blob(directory: Path, end: dict[str, Any] | None) -> Blob:
    """The journal as the recording: cut at its last valid record, renamed once."""
    if (directory / SEGMENTS_FILE).exists():
        scan = scan_journal(directory / SEGMENTS_FILE)
        os.truncate(directory / SEGMENTS_FILE, scan.valid_bytes)
        fsync_file(directory / SEGMENTS_FILE)
        os.replace(directory / SEGMENTS_FILE, directory / BLOB_SEGMENTS)
        fsync_dir(directory)
    if (directory / BLOB_SEGMENTS).exists():
        frames = scan_journal(directory / BLOB_SEGMENTS).frames
        # A call that ended normally but whose stream could not be finished (disk
        # full) is whole if its journal is: sealed from segments, not recovered.
        whole = end is not None and bool(end.get("journal_complete", False))
        return Blob(directory / BLOB_SEGMENTS, "segments", "flac", frames, None, not whole)
    # Crashed before the first journal sync: the call is known, its audio is not.
    return Blob(None, None, None, 0, None, True)


def _held(job: SealJob) -> int:
    """Bytes of sealed audio a job's writer still holds in RAM (disk full)."""
    return job.pending.ram_bytes if job.pending else 0
