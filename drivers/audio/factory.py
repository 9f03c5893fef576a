"""Pick the capture backend named by the ``[audio]`` config section."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from drivers.audio import CaptureSource
from firmware.config import AudioConfig


def open_capture(
    audio: AudioConfig,
    *,
    stop: threading.Event | None = None,
    clock: Callable[[], int] = time.monotonic_ns,
) -> CaptureSource:
    """A capture source for ``audio`` (not yet opened: the recorder opens and reopens it)."""
    if audio.backend == "alsa":
        from drivers.audio.alsa import AlsaCapture

        return AlsaCapture(
            device=audio.device,
            sample_rate=audio.sample_rate,
            channels=audio.channels,
            sample_format=audio.sample_format,
            period_frames=audio.period_frames,
            periods=audio.periods,
            clock=clock,
        )
    from drivers.audio.filesource import FileCapture

    assert audio.file is not None, "validated by config: backend 'file' needs audio.file"
    return FileCapture(
        path=audio.file,
        sample_rate=audio.sample_rate,
        channels=audio.channels,
        period_frames=audio.period_frames,
        realtime=audio.file_realtime,
        stop_event=stop,
        clock=clock,
        raw_format=audio.sample_format if audio.file.suffix in (".raw", ".pcm", ".s16") else None,
    )
