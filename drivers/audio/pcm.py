"""Captured PCM bytes to the int16 frames the recorder uses (see
:mod:`drivers.audio.formats` for the formats)."""

from __future__ import annotations

import numpy as np

from drivers.audio import Int16Frames
from drivers.audio.formats import SampleFormat

# The little-endian dtype each format is read as.
_DTYPES: dict[SampleFormat, np.dtype[np.signedinteger]] = {
    SampleFormat.S16_LE: np.dtype("<i2"),
    SampleFormat.S32_LE: np.dtype("<i4"),
}

# Right shift that keeps the most significant 16 bits of a 32-bit sample.
_S32_TO_S16_SHIFT = 16


def frames_from_bytes(data: bytes, fmt: SampleFormat, channels: int) -> Int16Frames:
    """Interleaved little-endian PCM bytes -> int16 array of shape (frames, channels).

    S16_LE input is returned as a read-only view of ``data`` (no copy).
    """
    frame_bytes = fmt.bytes_per_sample * channels
    usable = len(data) - len(data) % frame_bytes
    raw = np.frombuffer(data, dtype=_DTYPES[fmt], count=usable // fmt.bytes_per_sample)
    if fmt is SampleFormat.S16_LE:
        samples = raw.astype(np.int16, copy=False)
    else:
        samples = (raw >> _S32_TO_S16_SHIFT).astype(np.int16)
    return samples.reshape(-1, channels)
