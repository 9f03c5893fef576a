"""ALSA playback through pyalsaaudio: the recording announcement's output.

:class:`AlsaPlayback` plays interleaved int16 blocks on one PCM. The recorder writes one
block per capture period from its capture loop, which must never wait for the sound
card, so the PCM is opened non-blocking and:

- a full buffer (the card consumes slower than the recorder writes: a clock running
  slow, a wedged device) **drops** what does not fit, counted in ``dropped_frames``.
  Deferring it instead would grow the delay without bound, and every later announcement
  would be heard later than the manifest says; dropping keeps the delay at most one
  buffer;
- an underrun (``-EPIPE``: the recorder was late, the card ran dry) is counted in
  ``underruns`` and recovered: pyalsaaudio has already re-prepared the stream, and the
  prefill of silence is written again before the block, so the delay stays what it was;
- anything else raises :class:`~drivers.errors.AudioDeviceError` naming the setting and
  the device: the caller treats it as a fault, closes and retries later.

At open, ``prefill_frames`` of silence are written first: room for the capture loop to be
that late without an underrun. Sample ``i`` of the stream after an open is therefore the
``i``-th frame written, prefill included: a caller that writes one frame per captured
frame keeps playback and capture in step, offset by the prefill.

``blocking=True`` (for ``linetap check``, which plays a test tone and waits for it) opens
the PCM in blocking mode instead and adds :meth:`drain`.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import re
from collections.abc import Callable
from typing import Any, Protocol

import alsaaudio
import numpy as np

from drivers.audio import Int16Frames
from drivers.errors import AudioDeviceBusyError, AudioDeviceError

# pyalsaaudio appends " [<device>]" to every error text; we name the device ourselves.
_DEVICE_SUFFIX = re.compile(r"\s*\[[^\]]*\]\s*$")


@dataclasses.dataclass(slots=True)
class PlaybackStats:
    """Counters for the status file: frames written, underruns, frames dropped."""

    frames: int = 0
    underruns: int = 0
    dropped_frames: int = 0


class Playback(Protocol):
    """An output stream of interleaved int16 blocks (shape (frames, channels))."""

    @property
    def device(self) -> str: ...

    @property
    def channels(self) -> int: ...

    @property
    def prefill_frames(self) -> int: ...

    @property
    def stats(self) -> PlaybackStats: ...

    def open(self) -> None: ...

    def write(self, block: Int16Frames) -> None: ...

    def close(self) -> None: ...


def _reason(exc: BaseException) -> str:
    text = _DEVICE_SUFFIX.sub("", str(exc)).strip()
    return " ".join(text.split()) or type(exc).__name__


def _default_pcm_opener(**kwargs: Any) -> Any:
    return alsaaudio.PCM(**kwargs)


class AlsaPlayback:
    """Play ``channels`` interleaved S16_LE channels at ``sample_rate`` on ALSA ``device``.

    ``setting`` is the config key that names the device, for the error messages.
    """

    def __init__(
        self,
        *,
        device: str,
        sample_rate: int,
        channels: int,
        period_frames: int,
        periods: int,
        prefill_frames: int,
        setting: str = "announce.device",
        blocking: bool = False,
        pcm_opener: Callable[..., Any] | None = None,
    ) -> None:
        if min(sample_rate, channels, period_frames, periods) <= 0 or prefill_frames < 0:
            raise ValueError(
                "AlsaPlayback needs positive sample_rate, channels, period_frames and periods"
                f" and prefill_frames >= 0; got {sample_rate}, {channels}, {period_frames},"
                f" {periods}, {prefill_frames}"
            )
        self._device = device
        self._rate = sample_rate
        self._channels = channels
        self._period_frames = period_frames
        self._periods = periods
        self._prefill = prefill_frames
        self._setting = setting
        self._blocking = blocking
        self._opener: Callable[..., Any] = pcm_opener or _default_pcm_opener
        self._pcm: Any = None
        self._stats = PlaybackStats()

    @property
    def device(self) -> str:
        return self._device

    @property
    def channels(self) -> int:
        return self._channels

    @property
    def prefill_frames(self) -> int:
        return self._prefill

    @property
    def stats(self) -> PlaybackStats:
        return dataclasses.replace(self._stats)

    @property
    def is_open(self) -> bool:
        return self._pcm is not None

    def open(self) -> None:
        """Open the PCM and write the prefill; :class:`AudioDeviceError` (one line, with
        the fix) if the device cannot be used."""
        self.close()
        where = f"{self._setting} {self._device!r}"
        try:
            pcm = self._opener(
                type=alsaaudio.PCM_PLAYBACK,
                mode=alsaaudio.PCM_NORMAL if self._blocking else alsaaudio.PCM_NONBLOCK,
                device=self._device,
                channels=self._channels,
                rate=self._rate,
                format=alsaaudio.PCM_FORMAT_S16_LE,
                periodsize=self._period_frames,
                periods=self._periods,
            )
        except alsaaudio.ALSAAudioError as exc:
            if os.strerror(errno.EBUSY) in str(exc):
                raise AudioDeviceBusyError(
                    f"{where}: busy (another program plays to it: 'fuser -v /dev/snd/*' shows"
                    " which)"
                ) from exc
            raise AudioDeviceError(
                f"{where}: cannot open playback device ({_reason(exc)}); check that"
                f" 'aplay -L' lists it and set {self._setting} to the HAT's output"
            ) from exc
        try:
            self._check_settings(pcm)
        except BaseException:
            pcm.close()
            raise
        self._pcm = pcm
        self._silence(self._prefill)

    def write(self, block: Int16Frames) -> None:
        """Queue ``block`` (frames, channels); never waits unless opened ``blocking``."""
        if block.ndim != 2 or block.shape[1] != self._channels:
            raise ValueError(f"a playback block is (frames, {self._channels}); got {block.shape}")
        if self._pcm is None:
            raise RuntimeError("AlsaPlayback.write() called without a successful open()")
        frames = int(block.shape[0])
        data = np.ascontiguousarray(block, dtype="<i2").tobytes()
        written = self._write(data, frames)
        if written < 0:  # an underrun: re-prime, then the block
            self._stats.underruns += 1
            self._silence(self._prefill)
            written = max(0, self._write(data, frames))
        self._stats.frames += written
        self._stats.dropped_frames += frames - written

    def drain(self) -> None:
        """Wait until everything written was played (blocking mode only)."""
        if self._pcm is not None:
            self._pcm.drain()

    def close(self) -> None:
        """Release the device; idempotent. What is still queued is dropped."""
        pcm, self._pcm = self._pcm, None
        if pcm is not None:
            pcm.close()

    # -- internals ---------------------------------------------------------------------

    def _silence(self, frames: int) -> None:
        if frames:
            silence = bytes(2 * self._channels * frames)
            self._stats.frames += max(0, self._write(silence, frames))

    def _write(self, data: bytes, frames: int) -> int:
        """Frames written (fewer when the buffer is full), or -1 after an underrun."""
        try:
            result = int(self._pcm.write(data))
        except alsaaudio.ALSAAudioError as exc:
            raise AudioDeviceError(
                f"{self._setting} {self._device!r}: playback failed ({_reason(exc)}); it is"
                " reopened every announce.reopen_s, if this repeats check the HAT and 'dmesg'"
            ) from exc
        if result == -errno.EPIPE:
            return -1
        return min(max(result, 0), frames)

    def _check_settings(self, pcm: Any) -> None:
        """Refuse a PCM that silently picked another rate or channel count."""
        info = pcm.info()
        differences: list[str] = []
        if int(info["rate"]) != self._rate:
            differences.append(f"rate {info['rate']} Hz instead of {self._rate} Hz")
        if int(info["channels"]) != self._channels:
            differences.append(f"{info['channels']} channel(s) instead of {self._channels}")
        if int(info["format"]) != alsaaudio.PCM_FORMAT_S16_LE:
            differences.append(f"format {info.get('format_name', info['format'])} not S16_LE")
        if differences:
            raise AudioDeviceError(
                f"{self._setting} {self._device!r}: the device gave {', '.join(differences)};"
                f" use a PCM that plays what 'aplay -D {self._device} --dump-hw-params' lists"
                " (a plug: PCM converts), or set announce.channels"
            )
