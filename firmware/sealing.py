"""The sealing sink: recordings the head office can trust, and nothing plain on disk.

Per recording, a journal directory on the data partition holds, while the call runs:

- ``start.json``: the recording's metadata (no audio);
- ``stream.age.partial``: the recording itself, FLAC or Ogg Opus encoded as it goes and
  age-encrypted to the office's keys on the way out (constant memory);
- ``segments.jrn``: every ``journal_sync_s`` of audio again, as a small FLAC sealed on
  its own and fsynced (:mod:`buffers.journal`): what survives a power cut;
- ``events.jsonl``: consent and line events, fsynced as they happen.

A call that ends normally is sealed from ``stream.age``; one that a crash or power cut
interrupted is sealed at the next start from ``segments.jrn`` (flagged ``recovered``).
Either way the device writes a signed manifest with the next ``seq`` and the hash of the
previous manifest, then moves the directory into the outbox. Every step is idempotent
and ordered so that a crash at any instant neither loses nor duplicates a recording, nor
skips or reuses a ``seq``: see :meth:`SealingSink.seal_dir`.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
import numpy.typing as npt
import soundfile
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from buffers.journal import JournalWriter
from buffers.outbox import Outbox
from firmware.clock import ClockSync, boot_id, read_clock_sync
from firmware.errors import StorageError
from firmware.sinks import (
    PROGRESS_EVENTS,
    RecordingEnd,
    RecordingEvent,
    RecordingStart,
    write_json_atomic,
)
from sealedrec.age import AgeWriter, encrypt_bytes
from sealedrec.durable import fsync_dir, fsync_file
from sealedrec.keys import key_id
from sealedrec.manifest import (
    BLOB_AGE,
    BLOB_FILES,
    BLOB_SEGMENTS,
    GENESIS_HASH,
    MANIFEST_FILE,
    MANIFEST_VERSION,
    manifest_hash,
    sign_manifest,
)
from sealedrec.segments import scan_journal

log = logging.getLogger(__name__)

Codec = Literal["flac", "opus"]

START_FILE = "start.json"
END_FILE = "end.json"
EVENTS_FILE = "events.jsonl"
SEGMENTS_FILE = "segments.jrn"
STREAM_PARTIAL = "stream.age.partial"
STREAM_FILE = "stream.age"
DISCARDED_FILE = "discarded"

# Sealing hashes the finished file in slices of this many bytes per capture period, so a
# 2-hour call never stalls capture (SHA-256 of 256 KiB takes a few ms even on a Pi 3).
SEAL_BYTES_PER_POLL = 256 * 1024
HASH_CHUNK = 64 * 1024
_DONE, _BLOCKED, _WORKING = "done", "blocked", "working"

# libsndfile maps its compression level linearly onto the Opus bitrate between these
# (measured with libsndfile 1.2: level 0 -> ~256 kb/s, level 1 -> ~6 kb/s + Ogg framing).
OPUS_MAX_BPS = 256_000
OPUS_MIN_BPS = 6_000
# Errors that mean "the disk is full", as opposed to a broken disk.
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def opus_compression_level(bitrate: int) -> float:
    level = (OPUS_MAX_BPS - bitrate) / (OPUS_MAX_BPS - OPUS_MIN_BPS)
    return min(1.0, max(0.0, level))


def write_json_durable(path: Path, payload: Any) -> None:
    """Journal and manifest files: compact JSON, written atomically and durably."""
    write_json_atomic(path, payload, indent=None)


def sha256_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def encode_flac(samples: npt.NDArray[np.int16], rate: int) -> bytes:
    buf = io.BytesIO()
    with soundfile.SoundFile(buf, "w", rate, 1, format="FLAC", subtype="PCM_16") as f:
        f.write(samples)
    return buf.getvalue()


class _PlainToAge(io.RawIOBase):
    """What libsndfile writes to, as a seekable file: appends flow into the age stream;
    the encoder's final rewrite of its header (FLAC STREAMINFO) becomes an AgeWriter
    patch of the still-unencrypted first chunk."""

    def __init__(self, age: AgeWriter) -> None:
        super().__init__()
        self._age = age
        self._pos = 0
        self._len = 0
        # libsndfile calls write() through a C callback that cannot carry a Python
        # exception out; the first error is kept here and checked after each call.
        self.error: OSError | None = None

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True  # libsndfile probes; reads return nothing (see read)

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        if self.error is None:
            try:
                if self._pos == self._len:
                    self._age.write(chunk)
                    self._len += len(chunk)
                elif self._pos + len(chunk) <= self._len:
                    self._age.patch(self._pos, chunk)
                else:
                    raise OSError(errno.EINVAL, "encoder wrote across the end of the stream")
            except OSError as exc:
                self.error = exc
        self._pos += len(chunk)
        return len(chunk)

    def read(self, size: int = -1) -> bytes:
        return b""

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._len}[whence]
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos


@dataclass(frozen=True)
class SealingSettings:
    recipients: tuple[X25519PublicKey, ...]
    codec: Codec = "flac"
    opus_bitrate: int = 16_000
    journal_sync_s: float = 1.0
    ram_buffer_bytes: int = 64 * 1024 * 1024


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


class SealingWriter:
    """One recording in progress (see the module docstring for the files)."""

    def __init__(self, sink: SealingSink, directory: Path, start: RecordingStart) -> None:
        self._sink = sink
        self._dir = directory
        self._start = start
        s = sink.settings
        self._rate = start.sample_rate
        self._sync_frames = max(1, round(s.journal_sync_s * self._rate))
        self._pending = np.zeros(self._sync_frames, dtype=np.int16)
        self._pending_n = 0
        self._pcm_hash = hashlib.sha256()
        self._frames = 0
        self._discarded = False
        self._events: list[dict[str, Any]] = []
        self._ram_segments: list[tuple[bytes, int]] = []  # sealed, waiting for disk space
        self._dropped_frames = 0
        self._stream_ok = True
        self._stream_sealed = False
        self._journal_complete = True
        self._end: RecordingEnd | None = None
        directory.mkdir(parents=True, mode=0o700)
        write_json_durable(
            directory / START_FILE, {**asdict(start), "codec": s.codec, "sample_rate": self._rate}
        )
        self._journal = JournalWriter(directory / SEGMENTS_FILE)
        self._stream_fh = open(directory / STREAM_PARTIAL, "w+b")  # noqa: SIM115 - closed in close()
        self._age = AgeWriter(self._stream_fh, s.recipients)
        self._plain = _PlainToAge(self._age)
        if s.codec == "flac":
            self._encoder = soundfile.SoundFile(
                self._plain, "w", self._rate, 1, format="FLAC", subtype="PCM_16"
            )
        else:
            self._encoder = soundfile.SoundFile(
                self._plain,
                "w",
                self._rate,
                1,
                format="OGG",
                subtype="OPUS",
                compression_level=opus_compression_level(s.opus_bitrate),
            )

    @property
    def recording_id(self) -> str:
        return self._start.recording_id

    # -- audio ---------------------------------------------------------------------------
    def write(self, samples: npt.NDArray[np.int16]) -> None:
        if self._discarded or samples.size == 0:
            return
        pcm = np.ascontiguousarray(samples, dtype="<i2")
        self._pcm_hash.update(pcm.tobytes())
        self._frames += pcm.shape[0]
        done = 0
        while done < pcm.shape[0]:
            take = min(pcm.shape[0] - done, self._sync_frames - self._pending_n)
            self._pending[self._pending_n : self._pending_n + take] = pcm[done : done + take]
            self._pending_n += take
            done += take
            if self._pending_n == self._sync_frames:
                self._flush_segment()

    def _flush_segment(self) -> None:
        if self._pending_n == 0:
            return
        frames = self._pending_n
        # The stream encoder gets the audio in the journal's rhythm too: one call per
        # second instead of one per period saves most of soundfile's per-call overhead.
        if self._stream_ok:
            try:
                self._encoder.write(self._pending[:frames])
            except (OSError, RuntimeError) as exc:
                self._stream_failed(exc)
            if self._plain.error is not None and self._stream_ok:
                self._stream_failed(self._plain.error)
        sealed = encrypt_bytes(
            encode_flac(self._pending[:frames], self._rate), self._sink.settings.recipients
        )
        self._pending_n = 0
        self._ram_segments.append((sealed, frames))
        self._drain_ram()

    def _drain_ram(self) -> None:
        """Write RAM-held segments to the journal; keep them in RAM while the disk is full."""
        while self._ram_segments:
            payload, frames = self._ram_segments[0]
            try:
                self._journal.append(payload, frames)
            except OSError as exc:
                if exc.errno not in _FULL_ERRNOS:
                    raise StorageError(
                        f"journal {self._dir}: write failed ({exc.strerror})"
                    ) from exc
                self._hold_in_ram(exc)
                return
            self._ram_segments.pop(0)
        self._sink.storage_ok()

    def _hold_in_ram(self, exc: OSError) -> None:
        held = sum(len(p) for p, _ in self._ram_segments)
        if held > self._sink.settings.ram_buffer_bytes:
            # RAM budget spent: keep what we hold (the older audio), drop the newest.
            _, frames = self._ram_segments.pop()
            self._dropped_frames += frames
        self._sink.storage_failed(
            StorageError(
                f"data partition full ({exc.strerror}) at {self._dir}; holding "
                f"{held // 1024} KiB of sealed audio in RAM until space is freed"
            )
        )
        if self._stream_ok:
            self._stream_failed(exc)

    def _stream_failed(self, exc: BaseException) -> None:
        """Give up the single-file stream (disk full): the journal segments carry the call."""
        self._stream_ok = False
        log.warning(
            "recording %s: stream file abandoned (%s); sealing from journal segments",
            self.recording_id,
            exc,
        )
        self._stream_fh.close()
        (self._dir / STREAM_PARTIAL).unlink(missing_ok=True)

    # -- events / end ------------------------------------------------------------------
    def event(self, event: RecordingEvent) -> None:
        record = {
            "type": event.type,
            "at_ms": round(event.at_s * 1000),
            "audio_ms": round(event.audio_s * 1000),
            **{k: v for k, v in event.data.items()},
        }
        if event.type not in PROGRESS_EVENTS:
            self._events.append(record)
        try:
            with open(self._dir / EVENTS_FILE, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record, sort_keys=True) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            # Kept in RAM (self._events) and written with end.json; only a crash before
            # that would lose the event, not the audio.
            log.warning("recording %s: event not journalled (%s)", self.recording_id, exc.strerror)

    def discard(self) -> None:
        """Opt-out (discard mode): destroy the audio, keep the metadata."""
        self._discarded = True
        self._pending_n = 0
        self._ram_segments.clear()
        self._close_stream(finish=False)
        self._journal.close()
        try:
            # Unlink first: on a full disk that frees the room the marker needs.
            for name in (STREAM_PARTIAL, SEGMENTS_FILE):
                (self._dir / name).unlink(missing_ok=True)
            write_json_durable(self._dir / DISCARDED_FILE, {"discarded": True})
        except OSError as exc:
            raise StorageError(
                f"journal {self._dir}: cannot mark the call discarded ({exc.strerror})"
            ) from exc

    def _close_stream(self, *, finish: bool) -> None:
        if not self._stream_ok:
            return
        self._stream_ok = False
        try:
            if finish:
                self._encoder.close()
                if self._plain.error is not None:
                    raise self._plain.error
                self._age.close()
                self._stream_fh.flush()
                os.fsync(self._stream_fh.fileno())
        finally:
            self._stream_fh.close()

    def close(self, end: RecordingEnd) -> None:
        """End the recording and seal it; on a full disk the sink keeps it and retries."""
        self._end = end
        if not self._discarded:
            self._flush_segment()
        self._journal_complete = self._dropped_frames == 0
        stream_ok = self._stream_ok
        try:
            self._close_stream(finish=True)
        except OSError as exc:
            stream_ok = False
            log.warning("recording %s: finishing the stream failed (%s)", self.recording_id, exc)
        if stream_ok:
            os.replace(self._dir / STREAM_PARTIAL, self._dir / STREAM_FILE)
            fsync_dir(self._dir)
        else:
            (self._dir / STREAM_PARTIAL).unlink(missing_ok=True)
        self._stream_sealed = stream_ok
        self._sink.enqueue(self._dir, self)

    def flush_ended(self) -> bool:
        """Write what RAM still holds and the end record. False while the disk is full."""
        assert self._end is not None
        self._drain_ram()
        if self._ram_segments:
            return False
        self._journal.close()
        if (self._dir / END_FILE).exists():
            return True
        end_record = {
            **asdict(self._end),
            "audio_pcm_sha256": self._pcm_hash.hexdigest() if self._stream_sealed else None,
            "frames_written": self._frames,
            "dropped_frames": self._dropped_frames,
            "events": self._events,
            "journal_complete": self._journal_complete,
        }
        try:
            write_json_durable(self._dir / END_FILE, end_record)
        except OSError as exc:
            if exc.errno in _FULL_ERRNOS:
                return False
            raise StorageError(
                f"recording {self.recording_id}: end record not written ({exc})"
            ) from exc
        return True

    @property
    def ram_bytes(self) -> int:
        return sum(len(p) for p, _ in self._ram_segments)


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
        storage_status: Callable[[StorageError | None], None] | None = None,
    ) -> None:
        self.settings = settings
        self.journal_root = journal_root
        self.outbox = outbox
        self.chain = chain
        self._key = device_key
        self._clock_sync = clock_sync
        self._storage_status = storage_status
        # Ended recordings being sealed, oldest first; poll() advances them.
        self._jobs: list[_SealJob] = []
        self._was_blocked = False
        journal_root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def enqueue(self, directory: Path, writer: SealingWriter | None = None) -> None:
        """Queue an ended recording for sealing; :meth:`poll` does the work in slices."""
        self._jobs.append(_SealJob(directory, writer))

    def poll(self, budget: int = SEAL_BYTES_PER_POLL) -> None:
        """Advance the sealing queue by about ``budget`` bytes of hashing.

        Called once per capture period, so sealing a long call never stalls capture for
        more than a slice; a full disk blocks the queue (and shows as a fault) until
        space is back.
        """
        blocked = False
        while self._jobs and budget > 0:
            job = self._jobs[0]
            try:
                state, used = self._advance(job, budget)
            except OSError as exc:
                if exc.errno not in _FULL_ERRNOS:
                    raise StorageError(f"sealing {job.directory.name}: {exc}") from exc
                state, used = _BLOCKED, 0
            budget -= used
            if state == _BLOCKED:
                blocked = True
                break
            if state == _DONE:
                self._jobs.pop(0)
        if blocked:
            job = self._jobs[0]
            held = job.writer.ram_bytes if job.writer else 0
            self.storage_failed(
                StorageError(
                    f"data partition full: recording {job.directory.name} ended and is held "
                    f"({held // 1024} KiB in RAM) until space is freed"
                )
            )
            self._was_blocked = True
        elif self._was_blocked and not self._jobs:
            self._was_blocked = False
            log.info("all held recordings sealed")
            self.storage_ok()

    @property
    def pending(self) -> int:
        return len(self._jobs)

    def close(self) -> None:
        """Seal everything queued (shutdown); say what a full disk still holds in RAM."""
        self.poll(budget=1 << 62)
        for job in self._jobs:
            held = job.writer.ram_bytes if job.writer else 0
            log.error(
                "recording %s not sealed (disk full): %d KiB in RAM are lost; its journal keeps "
                "what was synced and the next start seals that",
                job.directory.name,
                held // 1024,
            )

    def storage_failed(self, exc: StorageError) -> None:
        if self._storage_status:
            self._storage_status(exc)

    def storage_ok(self) -> None:
        if self._storage_status:
            self._storage_status(None)

    def open(self, start: RecordingStart) -> SealingWriter:
        try:
            return SealingWriter(self, self.journal_root / start.recording_id, start)
        except OSError as exc:
            raise StorageError(
                f"journal {self.journal_root}: cannot start a recording ({exc.strerror})"
            ) from exc

    # -- recovery -----------------------------------------------------------------------
    def recover(self) -> list[str]:
        """Seal whatever a crash left: journal dirs, and finished entries left in outbox tmp/."""
        sealed: list[str] = []
        self._commit_outbox_leftovers()
        self.outbox.cleanup_tmp()
        for directory in sorted(p for p in self.journal_root.iterdir() if p.is_dir()):
            if not (directory / START_FILE).exists() and not (directory / MANIFEST_FILE).exists():
                # Crashed before start.json was durable: no audio could have been synced.
                # (A sealed directory has dropped start.json on its way to the outbox: the
                # manifest marks it, and it must be finished, never removed.)
                shutil.rmtree(directory)
                continue
            job = _SealJob(directory, None)
            while self._advance(job, 1 << 62)[0] != _DONE:
                pass
            sealed.append(directory.name)
        return sealed

    def _commit_outbox_leftovers(self) -> None:
        tmp = self.outbox.root / "tmp"
        if not tmp.is_dir():
            return
        for entry in sorted(tmp.iterdir()):
            manifest = entry / MANIFEST_FILE
            if entry.is_dir() and manifest.exists():
                self.outbox.commit(entry)

    # -- sealing ------------------------------------------------------------------------
    def _chain_head(self) -> tuple[int, str]:
        head = self.chain.read()
        candidates: list[Path] = [d / MANIFEST_FILE for d in self.journal_root.iterdir()]
        top = self.outbox.max_seq()
        if top is not None and top > head[0]:
            entry = next(e for e in self.outbox.entries() if e.seq == top)
            candidates.append(entry.path / MANIFEST_FILE)
        for path in candidates:
            if path.exists():
                m = json.loads(path.read_text())
                if m["seq"] > head[0]:
                    head = (m["seq"], manifest_hash(m))
        return head

    def _advance(self, job: _SealJob, budget: int) -> tuple[str, int]:
        """One slice of sealing ``job``: (_DONE | _BLOCKED | _WORKING, bytes hashed)."""
        if job.writer is not None and not job.writer.flush_ended():
            return _BLOCKED, 0
        if job.blob is None:
            job.blob = self._prepare_blob(job.directory)
            job.reader = open(job.blob.path, "rb") if job.blob.path else None  # noqa: SIM115
        used = 0
        if job.reader is not None:
            while used < budget:
                chunk = job.reader.read(min(HASH_CHUNK, budget - used))
                if not chunk:
                    job.reader.close()
                    job.reader = None
                    break
                job.digest.update(chunk)
                job.size += len(chunk)
                used += len(chunk)
            if job.reader is not None:
                return _WORKING, used
        self._finalize(job)
        return _DONE, used

    def _prepare_blob(self, directory: Path) -> _Blob:
        """Settle which file is the recording. Idempotent: a crash halfway is redone."""
        manifest = directory / MANIFEST_FILE
        if manifest.exists():
            # Already sealed (start.json may be gone already): the manifest says it all.
            m = json.loads(manifest.read_text())
            path = (
                directory / BLOB_FILES[m["container"]] if m.get("container") in BLOB_FILES else None
            )
            return _Blob(
                path,
                m.get("container"),
                m.get("codec"),
                m["audio_frames"],
                m["audio_pcm_sha256"],
                m["recovered"],
            )
        start = json.loads((directory / START_FILE).read_text())
        end_path = directory / END_FILE
        end = json.loads(end_path.read_text()) if end_path.exists() else None
        if (directory / DISCARDED_FILE).exists():
            return _Blob(None, None, None, 0, None, end is None)
        if end is not None and (
            (directory / STREAM_FILE).exists() or (directory / BLOB_AGE).exists()
        ):
            if (directory / STREAM_FILE).exists():
                os.replace(directory / STREAM_FILE, directory / BLOB_AGE)
                fsync_dir(directory)
            return _Blob(
                directory / BLOB_AGE,
                "age",
                start["codec"],
                int(end["frames_written"]),
                end["audio_pcm_sha256"],
                False,
            )
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
            return _Blob(directory / BLOB_SEGMENTS, "segments", "flac", frames, None, not whole)
        # Crashed before the first journal sync: the call is known, its audio is not.
        return _Blob(None, None, None, 0, None, True)

    def _finalize(self, job: _SealJob) -> None:
        """Manifest, chain, clean-up and the move into the outbox (see the module doc).

        Order: (1) the signed manifest with the next seq; (2) the chain state; (3) drop
        journal-only files; (4) move the directory into the outbox. A crash after (1)
        resumes at (2) with the same seq; before (1) it starts over.
        """
        directory = job.directory
        rec_id = directory.name
        manifest_path = directory / MANIFEST_FILE
        if manifest_path.exists():
            manifest = json.loads(manifest_path.read_text())
        else:
            assert job.blob is not None
            manifest = self._manifest(
                directory, job.blob, job.digest.hexdigest() if job.blob.path else None, job.size
            )
            write_json_durable(manifest_path, manifest)
        seq = int(manifest["seq"])
        if self.chain.read()[0] < seq:
            self.chain.write(seq, manifest_hash(manifest))
        keep = {MANIFEST_FILE, BLOB_AGE, BLOB_SEGMENTS}
        for path in directory.iterdir():
            if path.name not in keep:
                path.unlink()
        fsync_dir(directory)
        if self.outbox.find(rec_id) is not None:
            shutil.rmtree(directory)
            return
        staged = self.outbox.stage(seq, rec_id)
        os.rename(directory, staged)  # replaces the empty staged dir atomically
        fsync_dir(self.journal_root)
        self.outbox.commit(staged)
        log.info("sealed recording id=%s seq=%d recovered=%s", rec_id, seq, manifest["recovered"])

    def _manifest(
        self, directory: Path, blob: _Blob, blob_sha: str | None, blob_bytes: int
    ) -> dict[str, Any]:
        start = json.loads((directory / START_FILE).read_text())
        end_path = directory / END_FILE
        end = json.loads(end_path.read_text()) if end_path.exists() else None
        discarded = (directory / DISCARDED_FILE).exists()
        rate = int(start["sample_rate"])
        events = end["events"] if end else _read_events(directory / EVENTS_FILE)
        seq, prev = self._chain_head()
        duration_ms = round(end["duration_s"] * 1000) if end else round(blob.frames * 1000 / rate)
        consent_types = {"pause", "resume", "discard"}
        body: dict[str, Any] = {
            "version": MANIFEST_VERSION,
            "recording_id": start["recording_id"],
            "device_id": start["device_id"],
            "device_key_id": key_id(self._key.public_key()),
            "line": start["line"],
            "channel": start["channel"],
            "seq": seq + 1,
            "prev_manifest_sha256": prev,
            "started_utc": start["started_utc"],
            "ended_utc": end["ended_utc"] if end else None,
            "duration_ms": duration_ms,
            "start_monotonic_ns": int(start.get("started_mono_ns", 0)),
            "end_monotonic_ns": int(end["ended_mono_ns"]) if end else None,
            "boot_id": boot_id(),
            "clock_sync": self._clock_sync().as_dict(),
            "trigger": start["trigger"],
            "end_reason": end["reason"] if end else "recovered",
            "continues": start.get("continues"),
            # Known at the end of a call; a recovered recording (crash) has no end record
            # and rebuilds them from what was journalled as the call went.
            **(_call_facts(end) if end else _recovered_call_facts(start, events)),
            "consent_events": [e for e in events if e["type"] in consent_types],
            "events": [e for e in events if e["type"] not in consent_types | PROGRESS_EVENTS],
            "preroll_ms": round(float(start["preroll_s"]) * 1000),
            "codec": blob.codec,
            "container": blob.container,
            "sample_rate": rate,
            "channels": 1,
            "audio_frames": blob.frames,
            "audio_pcm_sha256": blob.pcm_sha256,
            "blob_sha256": blob_sha,
            "blob_bytes": blob_bytes,
            "recipients": sorted(_recipient_ids(self.settings.recipients)),
            "recovered": blob.recovered and not discarded,
            "discarded": discarded,
            "dropped_frames": int(end.get("dropped_frames", 0)) if end else 0,
        }
        return sign_manifest(body, self._key)


@dataclass(frozen=True, slots=True)
class _Blob:
    path: Path | None
    container: str | None
    codec: str | None
    frames: int
    pcm_sha256: str | None
    recovered: bool


@dataclass(eq=False)
class _SealJob:
    directory: Path
    writer: SealingWriter | None
    blob: _Blob | None = None
    reader: BinaryIO | None = None
    digest: Any = field(default_factory=hashlib.sha256)
    size: int = 0


def _recipient_ids(recipients: Sequence[X25519PublicKey]) -> list[str]:
    from sealedrec.age import format_recipient

    return [format_recipient(r) for r in recipients]


def _call_facts(end: dict[str, Any]) -> dict[str, Any]:
    return {
        "direction": end.get("direction", "unknown"),
        "caller_id": end.get("caller_id"),
        "dialled_digits": end.get("dialled_digits", ""),
        "masked_spans": end.get("masked_spans", []),
    }


def _recovered_call_facts(start: dict[str, Any], events: list[dict[str, Any]]) -> dict[str, Any]:
    """The call facts of a recording without an end record: caller ID and direction from
    its start record, digits and masked spans from its journalled progress events."""
    digits = [e for e in events if e["type"] == "digit"]
    direction = start.get("direction", "unknown")
    if direction == "unknown" and any(e.get("direction") == "outbound" for e in digits):
        direction = "outbound"
    return {
        "direction": direction,
        "caller_id": start.get("caller_id"),
        "dialled_digits": "".join(str(e["digit"]) for e in digits),
        "masked_spans": [
            {"start_ms": int(e["start_ms"]), "end_ms": int(e["end_ms"])}
            for e in events
            if e["type"] == "mask"
        ],
    }


def _read_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line torn by the crash; everything before it is intact
    return events
