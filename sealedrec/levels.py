"""A recording's level summary: the manifest's ``levels`` object, as one typed model.

The device measures the audio it stores (after DTMF masking, without the spans an
opt-out paused) as the call runs (:mod:`firmware.dsp.calllevels`) and signs the summary
with the manifest, so the head office can judge a line across calls without decrypting
anything: a dead or one-way line, mains hum, a clipping tap. The measures are the ones
``linetap check`` and ``linetap levels`` use (:mod:`firmware.dsp.levels`): 20 ms windows
against the silence floor, RMS and peak in dBFS, samples at full scale, and the joint
least-squares fit of the 50/60 Hz hum tones over 1 s stretches.

Canonical JSON has no floats, so every figure is an integer: levels in hundredths of a
dB (``..._dbfs_x100``: -2534 is -25.34 dBFS, -12000 the floor of digital silence) and
shares as the two counts they come from. The properties give them back as floats. A
manifest without ``levels`` (older firmware, a discarded call, a call recovered after a
crash, whose audio the device cannot read back) is valid; one with it is bounded here.
"""

from __future__ import annotations

from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

# A figure in hundredths of a dB. dBFS measures of int16 audio lie in [-120, 0]
# (-120: the floor for digital silence); a hum fit may come out a little above its
# signal's power, so the range leaves room on top.
DB_FLOOR_X100 = -12_000
_DbX100 = Annotated[int, Field(ge=DB_FLOOR_X100, le=1_000)]
_Count = Annotated[int, Field(ge=0, le=2**63 - 1)]
_Ms = Annotated[int, Field(ge=1, le=60_000)]


class CallLevels(BaseModel):
    """The manifest's ``levels``: what the stored audio of one recording sounded like."""

    model_config = ConfigDict(strict=True, frozen=True, extra="allow")

    frames: _Count  # samples measured: the whole stored audio
    measured_ms: _Count
    # Silence as `linetap check` judges it: 20 ms windows under the floor.
    window_ms: _Ms
    windows: _Count
    silent_windows: _Count
    silence_floor_dbfs_x100: _DbX100
    # Power: the whole call's, and the median and 95th percentile of its 100 ms blocks
    # (each to 0.1 dB: the device keeps a histogram, not the blocks).
    block_ms: _Ms
    blocks: _Count
    rms_dbfs_x100: _DbX100
    rms_median_dbfs_x100: _DbX100
    rms_p95_dbfs_x100: _DbX100
    peak_dbfs_x100: _DbX100
    clipped_samples: _Count
    # Mains hum (fundamental + harmonics), mean power over the 1 s stretches; None when
    # the stored audio was too short to fit it (under 200 ms).
    hum_50hz_dbfs_x100: _DbX100 | None
    hum_60hz_dbfs_x100: _DbX100 | None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.silent_windows > self.windows:
            raise ValueError("silent_windows: more than windows")
        if self.clipped_samples > self.frames:
            raise ValueError("clipped_samples: more than frames")
        if not self.rms_median_dbfs_x100 <= self.rms_p95_dbfs_x100:
            raise ValueError("rms_p95_dbfs_x100: below the median")
        return self

    @property
    def silent_fraction(self) -> float:
        """Share of the 20 ms windows under the silence floor (1.0 when none was whole)."""
        return self.silent_windows / self.windows if self.windows else 1.0

    @property
    def clipped_fraction(self) -> float:
        return self.clipped_samples / self.frames if self.frames else 0.0

    @property
    def rms_dbfs(self) -> float:
        return self.rms_dbfs_x100 / 100

    @property
    def peak_dbfs(self) -> float:
        return self.peak_dbfs_x100 / 100

    @property
    def hum(self) -> tuple[int, float] | None:
        """The louder mains hum as (Hz, dBFS), as `linetap check` reports it; None when
        not measured."""
        found = [
            (hz, x100 / 100)
            for hz, x100 in ((50, self.hum_50hz_dbfs_x100), (60, self.hum_60hz_dbfs_x100))
            if x100 is not None
        ]
        return max(found, key=lambda f: f[1]) if found else None
