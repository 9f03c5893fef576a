"""Capture sample formats and their conversion to the int16 frames the recorder uses.

Telephone audio needs no more than 16 bits, but many audio HATs only offer 24-in-32 or
32-bit capture; those are reduced to int16 by keeping the top 16 bits.
"""

from __future__ import annotations

from enum import StrEnum

import numpy as np

from drivers.audio import Int16Frames


class SampleFormat(StrEnum):
    S16_LE = "S16_LE"
    S32_LE = "S32_LE"

    @property
    def bytes_per_sample(self) -> int:
        return {SampleFormat.S16_LE: 2, SampleFormat.S32_LE: 4}[self]

    @property
    def numpy_dtype(self) -> np.dtype[np.signedinteger]:
        return np.dtype({SampleFormat.S16_LE: "<i2", SampleFormat.S32_LE: "<i4"}[self])


# Right shift that keeps the most significant 16 bits of a 32-bit sample.
_S32_TO_S16_SHIFT = 16


def frames_from_bytes(data: bytes, fmt: SampleFormat, channels: int) -> Int16Frames:
    """Interleaved little-endian PCM bytes -> int16 array of shape (frames, channels).

    S16_LE input is returned as a read-only view of ``data`` (no copy).
    """
    frame_bytes = fmt.bytes_per_sample * channels
    usable = len(data) - len(data) % frame_bytes
    raw = np.frombuffer(data, dtype=fmt.numpy_dtype, count=usable // fmt.bytes_per_sample)
    if fmt is SampleFormat.S16_LE:
        samples = raw.astype(np.int16, copy=False)
    else:
        samples = (raw >> _S32_TO_S16_SHIFT).astype(np.int16)
    return samples.reshape(-1, channels)
