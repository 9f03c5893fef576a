"""The in-call writer: a recording as the call runs, and nothing plain on disk.

Per recording, a journal directory on the data partition holds, while the call runs:

- ``start.json``: the recording's metadata (no audio);
- ``stream.age.partial``: the recording itself, FLAC or Ogg Opus encoded as it goes and
  age-encrypted to the office's keys on the way out (constant memory);
- ``segments.jrn``: about every ``journal_sync_s``, the FLAC frames encoded since the
  last record, in an age file of their own (all under one file key per call) and
  fsynced (:mod:`buffers.journal`, :mod:`sealedrec.segments`): what survives a power
  cut;
- ``events.jsonl``: consent and line events, fsynced as they happen.

:meth:`SealingWriter.close` ends the recording (``stream.age``, and ``end.json`` once
the disk takes it) and returns a :class:`SealJob`: what the after-call sealer
(:mod:`firmware.sealing`) needs to sign the recording and hand it to the outbox. The
writer knows nothing of the sealer.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt
import soundfile
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from buffers.journal import JournalWriter
from firmware.dsp.calllevels import CallLevelMeter
from firmware.errors import StorageError
from firmware.flacstream import FlacStreamEncoder, journal_blocksize
from firmware.sinks import (
    PROGRESS_EVENTS,
    RecordingEnd,
    RecordingEvent,
    RecordingStart,
    write_json_atomic,
)
from sealedrec.age import AgeWriter, SegmentSealer
from sealedrec.durable import fsync_dir

log = logging.getLogger(__name__)

Codec = Literal["flac", "opus"]

START_FILE = "start.json"
END_FILE = "end.json"
EVENTS_FILE = "events.jsonl"
SEGMENTS_FILE = "segments.jrn"
STREAM_PARTIAL = "stream.age.partial"
STREAM_FILE = "stream.age"
DISCARDED_FILE = "discarded"

# libsndfile maps its compression level linearly onto the Opus bitrate between these
# (measured with libsndfile 1.2: level 0 -> ~256 kb/s, level 1 -> ~6 kb/s + Ogg framing).
OPUS_MAX_BPS = 256_000
OPUS_MIN_BPS = 6_000
# Errors that mean "the disk is full", as opposed to a broken disk.
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)

StorageStatus = Callable[[StorageError | None], None]  # a fault, or None: storage works


def opus_compression_level(bitrate: int) -> float:
    level = (OPUS_MAX_BPS - bitrate) / (OPUS_MAX_BPS - OPUS_MIN_BPS)
    return min(1.0, max(0.0, level))


def write_json_durable(path: Path, payload: Any) -> None:
    """Journal and manifest files: compact JSON, written atomically and durably."""
    write_json_atomic(path, payload, indent=None)


class _PlainToAge(io.RawIOBase):
    """What libsndfile's Opus encoder writes to, as a seekable file: appends flow into
    the age stream; a rewrite of its header becomes an AgeWriter patch of the
    still-unencrypted first chunk."""

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


class EndFlush(Protocol):
    """What an ended recording may still have to write (RAM held on a full disk)."""

    def flush_ended(self) -> bool:
        """Write what RAM holds and the end record; False while the disk is full."""
        ...

    @property
    def ram_bytes(self) -> int: ...


@dataclass(frozen=True, slots=True)
class SealJob:
    """An ended recording for the sealer: its journal directory, and for one that just
    ended, what is still to be written first (None: all on disk, e.g. found at start)."""

    directory: Path
    pending: EndFlush | None = None


class SealingWriter:
    """One recording in progress (see the module docstring for the files)."""

    def __init__(
        self,
        directory: Path,
        start: RecordingStart,
        settings: SealingSettings,
        *,
        storage_status: StorageStatus | None = None,
    ) -> None:
        self._dir = directory
        self._start = start
        self._settings = s = settings
        self._storage_status = storage_status
        self._rate = start.sample_rate
        self._sync_frames = max(1, round(s.journal_sync_s * self._rate))
        block = journal_blocksize(self._sync_frames)
        # The encoder emits a block only once the next one has begun, so its frames lag
        # the input by up to one block; a record due a block early keeps the audio not
        # yet durable within one sync interval, as a record per sync of input did.
        self._record_frames = max(1, self._sync_frames - block)
        self._record = bytearray()  # FLAC emitted since the last record
        self._record_n = 0  # samples in it
        # Opus only: its (libsndfile) encoder is fed a sync interval at a time.
        self._pending = np.zeros(self._sync_frames if s.codec == "opus" else 0, dtype=np.int16)
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
        # Levels of what is stored (masked, paused spans cut), as it is stored.
        self._levels = CallLevelMeter(self._rate)
        self._levels_summary: dict[str, Any] | None = None
        directory.mkdir(parents=True, mode=0o700)
        write_json_durable(
            directory / START_FILE, {**asdict(start), "codec": s.codec, "sample_rate": self._rate}
        )
        self._journal = JournalWriter(directory / SEGMENTS_FILE)
        # One file key and header for all the call's segments: one X25519 exchange per
        # call, each segment still a standard age file (see SegmentSealer).
        self._segment_sealer = SegmentSealer(s.recipients)
        self._stream_fh = open(directory / STREAM_PARTIAL, "w+b")  # noqa: SIM115 - closed in close()
        self._age = AgeWriter(self._stream_fh, s.recipients)
        self._plain = _PlainToAge(self._age)
        self._opus = (
            soundfile.SoundFile(
                self._plain,
                "w",
                self._rate,
                1,
                format="OGG",
                subtype="OPUS",
                compression_level=opus_compression_level(s.opus_bitrate),
            )
            if s.codec == "opus"
            else None
        )
        # The call's one FLAC encoder: its frames make the journal's records and, for a
        # FLAC recording, the stream too (the same bytes, encoded once).
        self._flac = FlacStreamEncoder(self._rate, block, self._on_flac, self._on_flac_patch)

    @property
    def recording_id(self) -> str:
        return self._start.recording_id

    # -- audio ---------------------------------------------------------------------------
    def write(self, samples: npt.NDArray[np.int16]) -> None:
        if self._discarded or samples.size == 0:
            return
        pcm = np.ascontiguousarray(samples, dtype="<i2")
        self._pcm_hash.update(pcm.tobytes())
        self._levels.update(pcm)
        self._frames += pcm.shape[0]
        self._flac.process(pcm)
        if self._record_n >= self._record_frames:
            self._flush_record()
        if self._opus is not None:
            self._feed_opus(pcm)

    # -- the FLAC encoder's output -------------------------------------------------------
    def _on_flac(self, data: bytes, samples: int) -> None:
        self._record += data
        self._record_n += samples
        if self._opus is None and self._stream_ok:
            try:
                self._age.write(data)
            except OSError as exc:
                self._stream_failed(exc)

    def _on_flac_patch(self, offset: int, data: bytes) -> None:
        """libFLAC's final rewrite of STREAMINFO: the stream's copy only (the journal's
        records are durable already; the office fills their total in)."""
        if self._opus is None and self._stream_ok:
            self._age.patch(offset, data)

    def _flush_record(self) -> None:
        if self._record_n == 0:
            return
        sealed = self._segment_sealer.seal(self._record)
        self._ram_segments.append((sealed, self._record_n))
        self._record = bytearray()
        self._record_n = 0
        self._drain_ram()

    def _feed_opus(self, pcm: npt.NDArray[np.int16]) -> None:
        done = 0
        while done < pcm.shape[0]:
            take = min(pcm.shape[0] - done, self._sync_frames - self._pending_n)
            self._pending[self._pending_n : self._pending_n + take] = pcm[done : done + take]
            self._pending_n += take
            done += take
            if self._pending_n == self._sync_frames:
                self._flush_opus()

    def _flush_opus(self) -> None:
        # A sync interval per call instead of one per period saves most of soundfile's
        # per-call overhead.
        if self._pending_n == 0 or self._opus is None:
            return
        if self._stream_ok:
            try:
                self._opus.write(self._pending[: self._pending_n])
            except (OSError, RuntimeError) as exc:
                self._stream_failed(exc)
            if self._plain.error is not None and self._stream_ok:
                self._stream_failed(self._plain.error)
        self._pending_n = 0

    def _drain_ram(self) -> None:
        """Write RAM-held segments to the journal; keep them in RAM while the disk is full."""
        while self._ram_segments:
            payload, frames = self._ram_segments[0]
            try:
                self._journal.append(payload, frames)
            except OSError as exc:
                if exc.errno not in FULL_ERRNOS:
                    raise StorageError(
                        f"journal {self._dir}: write failed ({exc.strerror})"
                    ) from exc
                self._hold_in_ram(exc)
                return
            self._ram_segments.pop(0)
        self._report(None)

    def _hold_in_ram(self, exc: OSError) -> None:
        held = sum(len(p) for p, _ in self._ram_segments)
        if held > self._settings.ram_buffer_bytes:
            # RAM budget spent: keep what we hold (the older audio), drop the newest.
            _, frames = self._ram_segments.pop()
            self._dropped_frames += frames
        self._report(
            StorageError(
                f"data partition full ({exc.strerror}) at {self._dir}; holding "
                f"{held // 1024} KiB of sealed audio in RAM until space is freed"
            )
        )
        if self._stream_ok:
            self._stream_failed(exc)

    def _report(self, fault: StorageError | None) -> None:
        if self._storage_status:
            self._storage_status(fault)

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
        self._flac.close()
        self._record = bytearray()
        self._record_n = 0
        self._ram_segments.clear()
        self._segment_sealer.forget()
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
                if self._opus is not None:
                    self._opus.close()
                    if self._plain.error is not None:
                        raise self._plain.error
                self._age.close()
                self._stream_fh.flush()
                os.fsync(self._stream_fh.fileno())
        finally:
            self._stream_fh.close()

    def close(self, end: RecordingEnd) -> SealJob:
        """End the recording; the job says what the sealer takes (on a full disk the
        end record is still to be written: the sealer retries :meth:`flush_ended`)."""
        self._end = end
        if not self._discarded:
            self._flac.finish()
            self._flush_record()
            self._flush_opus()
            summary = self._levels.summary()
            self._levels_summary = summary.model_dump() if summary is not None else None
        self._segment_sealer.forget()  # the call's last segment is sealed
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
        return SealJob(self._dir, self)

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
            "levels": self._levels_summary,
        }
        try:
            write_json_durable(self._dir / END_FILE, end_record)
        except OSError as exc:
            if exc.errno in FULL_ERRNOS:
                return False
            raise StorageError(
                f"recording {self.recording_id}: end record not written ({exc})"
            ) from exc
        return True

    @property
    def ram_bytes(self) -> int:
        return sum(len(p) for p, _ in self._ram_segments)
