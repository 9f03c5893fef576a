"""Play an audio file as if it were the line: the ``file`` capture backend.

WAV, FLAC (and whatever else libsndfile reads) go through ``soundfile``; raw files are
interleaved little-endian PCM whose rate and channel count come from the config. The
file is read one period at a time into a reused buffer, so memory stays constant
whatever its length.

Fast mode replays as fast as the consumer reads, on a virtual clock that starts at 0.
Realtime mode paces the blocks like a live line: each block is returned when its last
frame "has been spoken", measured from the clock reading at ``open()``.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf

from drivers.audio import AudioBlock, CaptureStats, Int16Frames
from drivers.audio.formats import SampleFormat
from drivers.audio.pcm import frames_from_bytes
from drivers.errors import AudioFileError

_NS_PER_S = 1_000_000_000

RAW_SUFFIXES = frozenset({".raw", ".pcm", ".s16"})


class FileCapture:
    """A finite :class:`CaptureSource` reading ``path``; ``read()`` gives ``None`` at its end.

    ``open()`` after ``close()`` replays the file from the start, on a fresh timeline.
    """

    def __init__(
        self,
        *,
        path: Path,
        sample_rate: int,
        channels: int,
        period_frames: int,
        realtime: bool,
        stop_event: threading.Event | None = None,
        clock: Callable[[], int] = time.monotonic_ns,
        raw_format: SampleFormat | None = None,
    ) -> None:
        if sample_rate <= 0 or channels <= 0 or period_frames <= 0:
            raise ValueError(
                f"FileCapture needs positive sample_rate, channels and period_frames; "
                f"got {sample_rate}, {channels}, {period_frames}"
            )
        self._path = Path(path)
        self._rate = sample_rate
        self._channels = channels
        self._period_frames = period_frames
        self._realtime = realtime
        # Realtime pacing always waits on an event (never time.sleep) so that a stop
        # request ends the wait at once; without a caller's event, a private one that
        # nobody sets makes wait() a plain timed wait.
        self._stop = stop_event if stop_event is not None else threading.Event()
        self._clock = clock
        self._raw_format: SampleFormat | None = None
        if raw_format is not None:
            self._raw_format = SampleFormat(raw_format)
        elif self._path.suffix.lower() in RAW_SUFFIXES:
            self._raw_format = SampleFormat.S16_LE

        self._sound: sf.SoundFile | None = None
        self._raw: BinaryIO | None = None
        self._buf: Int16Frames = np.zeros((period_frames, channels), dtype=np.int16)
        # Only close() makes read() return None; a read() without a working open() is a
        # caller bug and must not look like the end of the file.
        self._closed = False
        self._eof = False
        self._t0_ns = 0
        self._next_frame = 0
        self._stats = CaptureStats()

    # -- CaptureSource -----------------------------------------------------------------

    @property
    def sample_rate(self) -> int:
        return self._rate

    @property
    def channels(self) -> int:
        return self._channels

    @property
    def path(self) -> Path:
        return self._path

    @property
    def stats(self) -> CaptureStats:
        return dataclasses.replace(self._stats)

    def open(self) -> None:
        """Open the file; raise :class:`AudioFileError` (one line) if it cannot be played."""
        self._release()
        if not self._path.is_file():
            reason = "it is not a file" if self._path.exists() else "no such file"
            raise AudioFileError(
                f"audio file {self._path}: {reason}; set audio.file to a WAV, FLAC or raw recording"
            )
        if self._raw_format is not None:
            try:
                self._raw = self._path.open("rb")
            except OSError as exc:
                raise AudioFileError(
                    f"audio file {self._path}: cannot read it ({exc.strerror or exc})"
                ) from exc
        else:
            self._sound = self._open_sound()
        self._closed = False
        self._eof = False
        self._next_frame = 0
        self._stats = CaptureStats()
        self._t0_ns = self._clock() if self._realtime else 0

    def read(self) -> AudioBlock | None:
        """The next period (the last one may be shorter); ``None`` at the end or on stop."""
        if self._sound is None and self._raw is None:
            if self._closed:
                return None
            raise RuntimeError("FileCapture.read() called without a successful open()")
        if self._eof or self._stop.is_set():
            return None
        samples = self._read_period()
        frames = int(samples.shape[0])
        if frames == 0:
            self._eof = True
            return None
        start = self._next_frame
        end = start + frames
        if self._realtime and not self._wait_until(self._t0_ns + end * _NS_PER_S // self._rate):
            return None
        self._next_frame = end
        self._stats.blocks += 1
        self._stats.frames += frames
        return AudioBlock(
            samples=samples,
            start_frame=start,
            t_start_ns=self._t0_ns + start * _NS_PER_S // self._rate,
        )

    def close(self) -> None:
        """Close the file; idempotent. ``read()`` returns ``None`` afterwards."""
        self._closed = True
        self._release()

    # -- internals ---------------------------------------------------------------------

    def _release(self) -> None:
        sound, self._sound = self._sound, None
        raw, self._raw = self._raw, None
        if sound is not None:
            sound.close()
        if raw is not None:
            raw.close()

    def _open_sound(self) -> sf.SoundFile:
        try:
            sound = sf.SoundFile(str(self._path))
        except (sf.SoundFileError, OSError) as exc:
            raise AudioFileError(
                f"audio file {self._path}: cannot read it as WAV or FLAC ({_sf_reason(exc)}); "
                f"give a WAV/FLAC file, or a raw one named *.raw, *.pcm or *.s16"
            ) from exc
        if sound.samplerate != self._rate or sound.channels != self._channels:
            sound.close()
            raise AudioFileError(
                f"audio file {self._path} is {sound.samplerate} Hz, "
                f"{sound.channels} channel(s); the config expects "
                f"audio.sample_rate = {self._rate} and audio.channels = {self._channels}"
            )
        return sound

    def _read_period(self) -> Int16Frames:
        if self._sound is not None:
            try:
                # Into the reused buffer: no allocation per block, constant memory.
                block: Int16Frames = self._sound.read(
                    self._period_frames, dtype="int16", always_2d=True, out=self._buf
                )
            except (sf.SoundFileError, OSError) as exc:
                raise AudioFileError(
                    f"audio file {self._path}: read failed at frame {self._next_frame} "
                    f"({_sf_reason(exc)})"
                ) from exc
            return block
        assert self._raw is not None
        fmt = self._raw_format or SampleFormat.S16_LE
        try:
            data = self._raw.read(self._period_frames * self._channels * fmt.bytes_per_sample)
        except OSError as exc:
            raise AudioFileError(
                f"audio file {self._path}: read failed at frame {self._next_frame} "
                f"({exc.strerror or exc})"
            ) from exc
        # A trailing partial frame (a truncated file) is dropped by frames_from_bytes.
        return frames_from_bytes(data, fmt, self._channels)

    def _wait_until(self, deadline_ns: int) -> bool:
        """Wait for the clock to reach ``deadline_ns``; ``False`` if stopped meanwhile."""
        while True:
            remaining = deadline_ns - self._clock()
            if remaining <= 0:
                return not self._stop.is_set()
            # The loop re-checks the clock: wait() may return early, and an injected
            # clock need not run at the speed of the event's own timer.
            if self._stop.wait(remaining / _NS_PER_S):
                return False


def _sf_reason(exc: BaseException) -> str:
    """libsndfile's own words (e.g. 'Format not recognised.') without the path prefix."""
    text = getattr(exc, "error_string", None) or str(exc)
    return " ".join(str(text).split()).rstrip(".")
