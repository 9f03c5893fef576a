"""ALSA capture through pyalsaaudio: the line-tap HAT as a :class:`CaptureSource`.

One ``pcm.read()`` returns one period (blocking up to one period on real hardware).
Overruns do not raise: pyalsaaudio 0.11 already re-prepares the stream when
``snd_pcm_readi`` fails with ``-EPIPE`` and reports it as ``(-EPIPE, b"")``; 0.10 (the
image's) re-prepares silently, so the stream's state is checked before each read. We count
the xrun and, because the frames discarded by the driver are gone for good, estimate
how many were lost from the clock and put that gap on the stream timeline, so that
every later frame keeps its true position in time.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import re
import time
from collections.abc import Callable
from typing import Any

import alsaaudio

from drivers.audio import AudioBlock, CaptureStats, Int16Frames
from drivers.audio.formats import SampleFormat
from drivers.audio.pcm import frames_from_bytes
from drivers.errors import AudioDeviceBusyError, AudioDeviceError

_NS_PER_S = 1_000_000_000

_ALSA_FORMATS: dict[SampleFormat, int] = {
    SampleFormat.S16_LE: alsaaudio.PCM_FORMAT_S16_LE,
    SampleFormat.S32_LE: alsaaudio.PCM_FORMAT_S32_LE,
}

# pyalsaaudio appends " [<device>]" to every error text; we name the device ourselves.
_DEVICE_SUFFIX = re.compile(r"\s*\[[^\]]*\]\s*$")

# A blocking capture PCM should never return zero frames; if it keeps doing so for this
# many periods (and at least _EMPTY_READ_MIN_NS) the device is wedged, and raising lets
# the recorder reopen it instead of spinning here forever.
_EMPTY_READ_PERIODS = 10
_EMPTY_READ_MIN_NS = _NS_PER_S


def _reason(exc: BaseException) -> str:
    """alsa-lib's error text without pyalsaaudio's device suffix, on one line."""
    text = _DEVICE_SUFFIX.sub("", str(exc)).strip()
    return " ".join(text.split()) or type(exc).__name__


def _default_pcm_opener(**kwargs: Any) -> Any:
    return alsaaudio.PCM(**kwargs)


class AlsaCapture:
    """Capture ``channels`` interleaved lines from ALSA ``device``.

    The stream timeline and the stats survive ``close()`` / ``open()``: the recorder
    reopens the same object after a device error, and the frames lost while the device
    was away are estimated from the clock and reported as ``gap_frames`` on the first
    block after the reopen, like an overrun (without counting as one).
    """

    def __init__(
        self,
        *,
        device: str,
        sample_rate: int,
        channels: int,
        sample_format: SampleFormat,
        period_frames: int,
        periods: int,
        clock: Callable[[], int] = time.monotonic_ns,
        pcm_opener: Callable[..., Any] | None = None,
    ) -> None:
        if sample_rate <= 0 or channels <= 0 or period_frames <= 0 or periods <= 0:
            raise ValueError(
                f"AlsaCapture needs positive sample_rate, channels, period_frames and "
                f"periods; got {sample_rate}, {channels}, {period_frames}, {periods}"
            )
        self._device = device
        self._rate = sample_rate
        self._channels = channels
        self._format = SampleFormat(sample_format)
        self._period_frames = period_frames
        self._periods = periods
        self._clock = clock
        self._opener: Callable[..., Any] = pcm_opener or _default_pcm_opener

        self._pcm: Any = None
        self._ever_opened = False
        # Only close() makes read() return None; a read() without a working open() is a
        # caller bug and must not look like the end of the stream.
        self._closed = False
        self._stats = CaptureStats()
        # Stream timeline: index of the next frame we expect, and the clock reading at
        # the end of the last good block (the anchor the next gap is measured from).
        self._next_frame = 0
        self._anchor_ns: int | None = None
        # Set by an overrun (or a reopen): the next good block measures the gap.
        self._resync = False

    # -- CaptureSource -----------------------------------------------------------------

    @property
    def sample_rate(self) -> int:
        return self._rate

    @property
    def channels(self) -> int:
        return self._channels

    @property
    def device(self) -> str:
        return self._device

    @property
    def stats(self) -> CaptureStats:
        # A snapshot: callers (telemetry) must not be able to change our counters.
        return dataclasses.replace(self._stats)

    def open(self) -> None:
        """Open the PCM; raise :class:`AudioDeviceError` (one line, with the fix) if not."""
        if self._pcm is not None:
            self._close_pcm()
        try:
            pcm = self._opener(
                type=alsaaudio.PCM_CAPTURE,
                mode=alsaaudio.PCM_NORMAL,
                device=self._device,
                channels=self._channels,
                rate=self._rate,
                format=_ALSA_FORMATS[self._format],
                periodsize=self._period_frames,
                periods=self._periods,
            )
        except alsaaudio.ALSAAudioError as exc:
            # pyalsaaudio gives alsa-lib's strerror text, not the errno.
            if os.strerror(errno.EBUSY) in str(exc):
                raise AudioDeviceBusyError(
                    f"audio.device {self._device!r}: busy (another process is capturing "
                    f"from it: 'fuser -v /dev/snd/*' shows which)"
                ) from exc
            raise AudioDeviceError(
                f"audio.device {self._device!r}: cannot open capture device "
                f"({_reason(exc)}); check that 'arecord -L' lists it and that the HAT's "
                f"overlay is enabled"
            ) from exc
        try:
            self._check_settings(pcm)
        except BaseException:
            # Do not leave the device held open (and busy) behind a failed open().
            pcm.close()
            raise
        self._pcm = pcm
        now = self._clock()
        if self._ever_opened:
            # Reopen: whatever the line carried while we were away is lost.
            self._resync = True
            if self._anchor_ns is None:
                self._anchor_ns = now
        else:
            # The stream starts at the first read, which the recorder issues right after
            # open(); this anchor only matters if that very first read overruns.
            self._anchor_ns = now
        self._ever_opened = True
        self._closed = False

    def read(self) -> AudioBlock | None:
        """The next period; ``None`` once closed. Overruns become ``gap_frames``."""
        pcm = self._pcm
        if pcm is None:
            if self._closed:
                return None
            raise RuntimeError("AlsaCapture.read() called without a successful open()")
        empty_since: int | None = None
        while True:
            try:
                if pcm.state() == alsaaudio.PCM_STATE_XRUN:
                    # pyalsaaudio 0.10 (Debian trixie, the image) re-prepares an overrun
                    # stream inside read() and returns the next period as if nothing
                    # happened; only the state before the read tells. Count it, drop the
                    # stale frames and measure the gap on the next block, as for -EPIPE.
                    self._stats.xruns += 1
                    self._resync = True
                    pcm.drop()
                size, data = pcm.read()
            except alsaaudio.ALSAAudioError as exc:
                raise AudioDeviceError(
                    f"audio.device {self._device!r}: capture failed ({_reason(exc)}); "
                    f"the device is reopened, if this repeats check the HAT's seating "
                    f"and 'dmesg' for I2S errors"
                ) from exc
            if size == -errno.EPIPE:
                # Overrun: pyalsaaudio has already called snd_pcm_prepare(), so the next
                # read restarts the stream. The gap is measured on the next good block,
                # which also accounts for the frames between the restart and then.
                self._stats.xruns += 1
                self._resync = True
                continue
            if size < 0:
                # pyalsaaudio raises for every other negative result; be safe anyway.
                raise AudioDeviceError(
                    f"audio.device {self._device!r}: capture failed "
                    f"({errno.errorcode.get(-size, str(-size))}); the device is reopened, "
                    f"if this repeats check the HAT's seating and 'dmesg' for I2S errors"
                )
            samples = frames_from_bytes(data, self._format, self._channels)
            if samples.shape[0] == 0:
                # EAGAIN (pyalsaaudio turns it into size 0): no data yet, read again.
                now = self._clock()
                if empty_since is None:
                    empty_since = now
                elif now - empty_since > self._empty_read_limit_ns():
                    raise AudioDeviceError(
                        f"audio.device {self._device!r}: capture delivers no audio; the "
                        f"device is reopened, if this repeats check the HAT's clock "
                        f"(overlay and 'dmesg')"
                    )
                continue
            return self._block(samples)

    def close(self) -> None:
        """Release the device; idempotent. ``read()`` returns ``None`` afterwards."""
        self._closed = True
        if self._pcm is not None:
            self._close_pcm()

    # -- internals ---------------------------------------------------------------------

    def _block(self, samples: Int16Frames) -> AudioBlock:
        frames = int(samples.shape[0])
        now = self._clock()
        gap = 0
        if self._resync:
            self._resync = False
            anchor = self._anchor_ns if self._anchor_ns is not None else now
            # Frames that should have arrived since the end of the last good block,
            # rounded to the nearest frame, minus the ones this block actually holds.
            expected = ((now - anchor) * self._rate + _NS_PER_S // 2) // _NS_PER_S
            gap = max(0, expected - frames)
            self._stats.lost_frames += gap
        start = self._next_frame + gap
        duration_ns = frames * _NS_PER_S // self._rate
        self._next_frame = start + frames
        self._anchor_ns = now
        self._stats.blocks += 1
        self._stats.frames += frames
        return AudioBlock(
            samples=samples, start_frame=start, t_start_ns=now - duration_ns, gap_frames=gap
        )

    def _empty_read_limit_ns(self) -> int:
        period_ns = self._period_frames * _NS_PER_S // self._rate
        return max(_EMPTY_READ_MIN_NS, _EMPTY_READ_PERIODS * period_ns)

    def _check_settings(self, pcm: Any) -> None:
        """Refuse a PCM that silently picked another rate, channel count or format."""
        info = pcm.info()
        differences: list[str] = []
        if int(info["rate"]) != self._rate:
            differences.append(f"rate {info['rate']} Hz instead of {self._rate} Hz")
        if int(info["channels"]) != self._channels:
            differences.append(f"{info['channels']} channel(s) instead of {self._channels}")
        if int(info["format"]) != _ALSA_FORMATS[self._format]:
            differences.append(
                f"format {info.get('format_name', info['format'])} instead of {self._format.value}"
            )
        if differences:
            raise AudioDeviceError(
                f"audio.device {self._device!r}: the device gave {', '.join(differences)}; "
                f"set audio.sample_rate, audio.channels and audio.sample_format to values "
                f"listed by 'arecord -D {self._device} --dump-hw-params'"
            )

    def _close_pcm(self) -> None:
        pcm, self._pcm = self._pcm, None
        # pyalsaaudio's close() ignores snd_pcm_close()'s result and does not raise.
        pcm.close()
