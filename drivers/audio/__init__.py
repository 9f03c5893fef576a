"""Audio capture: one interleaved stream, one channel per phone line.

Backends implement :class:`CaptureSource`; :func:`drivers.audio.factory.open_capture`
picks one from the ``[audio]`` config section. All backends deliver the same thing:
:class:`AudioBlock` s of int16 frames stamped on one stream timeline, so the recorder
never knows which backend it runs on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

Int16Frames = npt.NDArray[np.int16]


@dataclass(frozen=True, slots=True)
class AudioBlock:
    """One period of captured audio.

    ``samples`` has shape ``(frames, channels)``, dtype int16. It may be a view of a
    buffer the source reuses: consumers copy what they keep before the next ``read()``.

    ``start_frame`` is the index of the first frame on the stream timeline, which counts
    lost frames too: after an overrun, ``gap_frames`` frames were lost just before this
    block, and ``start_frame`` already includes them. ``t_start_ns`` is the monotonic
    time (``time.monotonic_ns`` domain, or the virtual clock of a fast replay) of the
    first frame.
    """

    samples: Int16Frames
    start_frame: int
    t_start_ns: int
    gap_frames: int = 0

    @property
    def frames(self) -> int:
        return int(self.samples.shape[0])

    @property
    def end_frame(self) -> int:
        return self.start_frame + self.frames


@dataclass(slots=True)
class CaptureStats:
    """Counters a source keeps for telemetry and the installer tools."""

    blocks: int = 0
    frames: int = 0
    xruns: int = 0
    lost_frames: int = 0


class CaptureSource(Protocol):
    """A source of interleaved int16 audio blocks.

    ``open()`` raises :class:`drivers.errors.AudioDeviceError` naming the device when it
    cannot be used. ``read()`` returns the next block, waiting at most about one period,
    or ``None`` at the end of a finite source (a file) or when the stop event is set.
    """

    @property
    def sample_rate(self) -> int: ...

    @property
    def channels(self) -> int: ...

    @property
    def stats(self) -> CaptureStats: ...

    def open(self) -> None: ...

    def read(self) -> AudioBlock | None: ...

    def close(self) -> None: ...
