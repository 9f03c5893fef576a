"""A recording's level summary, measured as the call runs: :class:`CallLevelMeter`.

The sealing writer feeds it exactly what it stores (after DTMF masking; spans an opt-out
paused never reach it), in capture periods; the meter gathers them into 1 s stretches
and measures each at once with numpy, keeping only counters and a histogram, never the
audio: a two-hour call costs what a ten-second one does in memory. The measures are
`linetap check`'s (:mod:`firmware.dsp.levels`): 20 ms windows against the silence floor,
samples at full scale, the 50/60 Hz hum fit over each stretch; plus the power of 100 ms
blocks, whose median and 95th percentile come from a 0.1 dB histogram. The result is the
manifest's ``levels`` (:class:`sealedrec.levels.CallLevels`).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from firmware.dsp.blocks import BlockGatherer
from firmware.dsp.levels import (
    CLIP_THRESHOLD,
    FULL_SCALE,
    HUM_HZ,
    SILENCE_DBFS,
    WINDOW_S,
    hum_powers,
)
from sealedrec.levels import DB_FLOOR_X100, CallLevels

# The stretch measured at once: long enough for the hum fit (`linetap check` fits 1 s
# blocks; it needs at least 200 ms, ten cycles of 50 Hz), short enough to be cheap.
STRETCH_S = 1.0
HUM_MIN_S = 0.2
BLOCK_MS = 100
# The block-power histogram: 0.1 dB bins from the -120 dB floor to +10 dB.
_BIN_DB = 0.1
_FLOOR_DB = DB_FLOOR_X100 / 100
_BINS = round((10 - _FLOOR_DB) / _BIN_DB) + 1
_TINY = 10 ** (_FLOOR_DB / 10)  # power at the floor: log10 never sees 0


def _x100(db: float) -> int:
    return max(DB_FLOOR_X100, round(db * 100))


def _db(power: float) -> float:
    return 10 * math.log10(max(power, _TINY))


class CallLevelMeter:
    """Levels of one recording's stored audio, in constant memory (see the module)."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._window = max(1, round(WINDOW_S * rate))
        self._block = max(1, round(BLOCK_MS * rate / 1000))
        self._stretch = BlockGatherer(max(1, round(STRETCH_S * rate)))
        self._taken = 0  # frames handed to the gatherer
        self._frames = 0  # frames measured
        self._sum_squares = 0.0
        self._peak = 0
        self._clipped = 0
        self._windows = 0
        self._silent_windows = 0
        self._histogram = np.zeros(_BINS, dtype=np.int64)
        self._hum_power = np.zeros(len(HUM_HZ))
        self._hum_stretches = 0

    def update(self, samples: npt.NDArray[np.int16]) -> None:
        """Add the next samples of the stored audio (any length)."""
        for stretch, _start in self._stretch.push(samples, self._taken):
            self._measure(stretch)
        self._taken += samples.shape[0]

    def summary(self) -> CallLevels | None:
        """The summary of everything added (None when nothing was); measures the last,
        part-filled stretch, so call it once, at the end."""
        tail = self._stretch.flush()
        if tail is not None:
            self._measure(tail[0])
        if self._frames == 0:
            return None
        blocks = int(self._histogram.sum())
        hum = {
            hz: _x100(_db(power / self._hum_stretches)) if self._hum_stretches else None
            for hz, power in zip(HUM_HZ, self._hum_power, strict=True)
        }
        return CallLevels(
            frames=self._frames,
            measured_ms=round(self._frames * 1000 / self.rate),
            window_ms=round(WINDOW_S * 1000),
            windows=self._windows,
            silent_windows=self._silent_windows,
            silence_floor_dbfs_x100=_x100(SILENCE_DBFS),
            block_ms=BLOCK_MS,
            blocks=blocks,
            rms_dbfs_x100=_x100(_db(self._sum_squares / self._frames)),
            rms_median_dbfs_x100=self._percentile_x100(0.5),
            rms_p95_dbfs_x100=self._percentile_x100(0.95),
            peak_dbfs_x100=_x100(20 * math.log10(self._peak / FULL_SCALE))
            if self._peak
            else DB_FLOOR_X100,
            clipped_samples=self._clipped,
            hum_50hz_dbfs_x100=hum[50.0],
            hum_60hz_dbfs_x100=hum[60.0],
        )

    def _measure(self, samples: npt.NDArray[np.int16]) -> None:
        """One stretch (at most STRETCH_S), every measure vectorised."""
        n = samples.shape[0]
        x = samples.astype(np.float64) / FULL_SCALE
        squares = x * x
        magnitude = np.abs(samples.astype(np.int32))
        self._frames += n
        self._sum_squares += float(squares.sum())
        self._peak = max(self._peak, int(magnitude.max()))
        self._clipped += int(np.count_nonzero(magnitude >= CLIP_THRESHOLD))
        windows = n // self._window
        if windows:
            power = squares[: windows * self._window].reshape(windows, -1).mean(axis=1)
            self._windows += windows
            self._silent_windows += int(np.count_nonzero(power < 10 ** (SILENCE_DBFS / 10)))
        blocks = n // self._block
        if blocks:
            power = squares[: blocks * self._block].reshape(blocks, -1).mean(axis=1)
            db = 10 * np.log10(np.maximum(power, _TINY))
            bins = np.clip(np.rint((db - _FLOOR_DB) / _BIN_DB), 0, _BINS - 1).astype(np.intp)
            self._histogram += np.bincount(bins, minlength=_BINS)
        if n >= round(HUM_MIN_S * self.rate):
            self._hum_power += list(hum_powers(x, self.rate).values())
            self._hum_stretches += 1

    def _percentile_x100(self, q: float) -> int:
        """The nearest-rank ``q`` quantile of the block powers (to the 0.1 dB bin)."""
        total = int(self._histogram.sum())
        if total == 0:
            return DB_FLOOR_X100
        rank = max(1, math.ceil(q * total))
        index = int(np.searchsorted(np.cumsum(self._histogram), rank))
        return _x100(_FLOOR_DB + index * _BIN_DB)
