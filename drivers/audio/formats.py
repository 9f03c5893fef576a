"""The capture sample formats, as plain data (no numpy: configs and tools name them
without loading the sample conversion, which is in :mod:`drivers.audio.pcm`).

Telephone audio needs no more than 16 bits, but many audio HATs only offer 24-in-32 or
32-bit capture; those are reduced to int16 by keeping the top 16 bits.
"""

from __future__ import annotations

from enum import StrEnum


class SampleFormat(StrEnum):
    S16_LE = "S16_LE"
    S32_LE = "S32_LE"

    @property
    def bytes_per_sample(self) -> int:
        return {SampleFormat.S16_LE: 2, SampleFormat.S32_LE: 4}[self]
