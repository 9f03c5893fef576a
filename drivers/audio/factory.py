"""Pick the capture backend named by ``audio.backend``.

Like the GPIO and serial factories this takes plain arguments, so the drivers know
nothing of linetap's config; ``firmware.app.capture_source`` passes the ``[audio]``
section in.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from drivers.audio import CaptureSource
from drivers.audio.formats import SampleFormat
from drivers.errors import AudioDeviceError, AudioFileError

BACKENDS = ("alsa", "file")
# A file with one of these suffixes holds headerless PCM in ``sample_format``.
RAW_SUFFIXES = (".raw", ".pcm", ".s16")


def open_capture(
    backend: str,
    *,
    sample_rate: int,
    channels: int,
    period_frames: int,
    sample_format: str = SampleFormat.S16_LE,
    device: str = "default",
    periods: int = 8,
    file: Path | None = None,
    file_realtime: bool = True,
    stop: threading.Event | None = None,
    clock: Callable[[], int] = time.monotonic_ns,
) -> CaptureSource:
    """The backend ``backend`` ("alsa" or "file"), not yet opened: the recorder opens and
    reopens it.

    ``device`` and ``periods`` (periods in the ALSA buffer) are for alsa only; ``file``,
    ``file_realtime`` and ``stop`` (ends a real-time playback early) for file only, where
    ``sample_format`` applies to raw PCM files (``RAW_SUFFIXES``) only.
    """
    if backend not in BACKENDS:
        raise AudioDeviceError(
            f"audio.backend '{backend}' is unknown; use one of: {', '.join(BACKENDS)}"
        )
    try:
        fmt = SampleFormat(sample_format)
    except ValueError:
        raise AudioDeviceError(
            f"audio.sample_format '{sample_format}' is unknown; use one of:"
            f" {', '.join(SampleFormat)}"
        ) from None
    # Backends are imported only when chosen: a missing ALSA binding never stops file
    # playback, and an appliance that records from ALSA never loads the file decoders.
    if backend == "alsa":
        from drivers.audio.alsa import AlsaCapture

        return AlsaCapture(
            device=device,
            sample_rate=sample_rate,
            channels=channels,
            sample_format=fmt,
            period_frames=period_frames,
            periods=periods,
            clock=clock,
        )
    if file is None:
        raise AudioFileError('audio.backend = "file" plays audio.file; set audio.file')
    from drivers.audio.filesource import FileCapture

    return FileCapture(
        path=file,
        sample_rate=sample_rate,
        channels=channels,
        period_frames=period_frames,
        realtime=file_realtime,
        stop_event=stop,
        clock=clock,
        raw_format=fmt if file.suffix in RAW_SUFFIXES else None,
    )
