"""Line levels: pure functions over int16 blocks, plus a small streaming accumulator.

What installers and telemetry need to tell a good line from a bad one: RMS and peak in
dBFS, clipped samples, how much of the time is silence, and mains hum (50/60 Hz and
their harmonics leak into badly earthed taps) relative to the whole signal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt

FULL_SCALE = 32768.0
CLIP_THRESHOLD = 32767  # |sample| at or above this counts as clipped
SILENCE_DBFS = -55.0  # a 20 ms window quieter than this is silence on a phone line
WINDOW_S = 0.02
HUM_HZ = (50.0, 60.0)
HUM_HARMONICS = 3
_FLOOR_DBFS = -120.0


# -- judging a line (shared by `linetap check`, `linetap levels` and telemetry readers) --
# A line is silent when this share of its 20 ms windows is below SILENCE_DBFS: a click or
# two on an otherwise dead line must not make it look alive.
SILENT_LINE_FRACTION = 0.95
# Mains hum (50/60 Hz and harmonics): a phone line carries speech at -30..-15 dBFS; hum at
# -30 dBFS is as loud as quiet speech and drowns recordings; above -50 dBFS it is audible
# in every pause (a clean tap's noise floor is under -60).
HUM_BAD_DBFS = -30.0
HUM_AUDIBLE_DBFS = -50.0
# Below HUM_BAD_DBFS, hum counts only when it is a large part (10 %) of the line's power:
# voice fundamentals (100-180 Hz) overlap the hum harmonics, and speech leaks into the hum
# fit about 30 dB below itself (espeak-ng speech at -20 dBFS: "hum" -53 dBFS).
HUM_SHARE_DB = -10.0


def line_is_silent(silence_fraction: float) -> bool:
    return silence_fraction >= SILENT_LINE_FRACTION


def hum_is_bad(hum_dbfs: float) -> bool:
    """Hum that spoils recordings whatever else is on the line."""
    return hum_dbfs >= HUM_BAD_DBFS


def hum_is_noticeable(hum_dbfs: float, rms_dbfs: float) -> bool:
    """Hum worth a warning: bad, or audible and a large part of what is on the line."""
    return hum_is_bad(hum_dbfs) or (
        hum_dbfs >= HUM_AUDIBLE_DBFS and hum_dbfs - rms_dbfs >= HUM_SHARE_DB
    )


def dbfs(power: float) -> float:
    """Mean-square power (of samples scaled to ±1) in dBFS, floored for silence."""
    return _FLOOR_DBFS if power <= 0 else max(_FLOOR_DBFS, 10 * math.log10(power))


@lru_cache(maxsize=4)
def _hum_projector(rate: int, frames: int) -> npt.NDArray[np.float64]:
    """Least-squares projector onto sin/cos of every hum tone (mains frequencies and their
    harmonics) over ``frames`` samples: ``coef = P @ x``. Cached: blocks repeat in length."""
    t = np.arange(frames) / rate
    columns = []
    for hz in HUM_HZ:
        for k in range(1, HUM_HARMONICS + 1):
            columns += [np.sin(2 * np.pi * hz * k * t), np.cos(2 * np.pi * hz * k * t)]
    projector = np.linalg.pinv(np.stack(columns, axis=1))
    projector.flags.writeable = False
    return projector


def hum_powers(x: npt.NDArray[np.float64], rate: int) -> dict[float, float]:
    """Power of each mains frequency's hum (fundamental + harmonics) in ``x`` (scaled to
    ±1), from one joint least-squares fit of all the tones."""
    coef = _hum_projector(rate, x.shape[0]) @ x
    per_tone = (coef[0::2] ** 2 + coef[1::2] ** 2) / 2
    return {
        hz: float(per_tone[i * HUM_HARMONICS : (i + 1) * HUM_HARMONICS].sum())
        for i, hz in enumerate(HUM_HZ)
    }


@dataclass
class LevelStats:
    rate: int
    frames: int = 0
    sum_squares: float = 0.0
    peak: int = 0
    clipped: int = 0
    windows: int = 0
    silent_windows: int = 0
    hum_power: dict[float, float] | None = None  # mains frequency -> summed tone power
    hum_blocks: int = 0

    def update(self, samples: npt.NDArray[np.int16]) -> None:
        """Add one block (any length) of one channel."""
        if samples.size == 0:
            return
        x = samples.astype(np.float64) / FULL_SCALE
        self.frames += x.shape[0]
        self.sum_squares += float(np.dot(x, x))
        self.peak = max(self.peak, int(np.max(np.abs(samples.astype(np.int32)))))
        self.clipped += int(np.count_nonzero(np.abs(samples.astype(np.int32)) >= CLIP_THRESHOLD))
        win = max(1, round(WINDOW_S * self.rate))
        usable = x.shape[0] - x.shape[0] % win
        if usable:
            power = np.mean(x[:usable].reshape(-1, win) ** 2, axis=1)
            self.windows += power.shape[0]
            self.silent_windows += int(np.count_nonzero(power < 10 ** (SILENCE_DBFS / 10)))
        # Hum needs several cycles of 50 Hz: only blocks of at least 200 ms count.
        if x.shape[0] >= self.rate // 5:
            hum = self.hum_power or {hz: 0.0 for hz in HUM_HZ}
            for hz, power in hum_powers(x, self.rate).items():
                hum[hz] += power
            self.hum_power = hum
            self.hum_blocks += 1

    def summary(self) -> dict[str, Any]:
        mean_power = self.sum_squares / self.frames if self.frames else 0.0
        hum = {
            f"{int(hz)}hz_dbfs": round(dbfs(p / self.hum_blocks), 1)
            for hz, p in (self.hum_power or {}).items()
            if self.hum_blocks
        }
        return {
            "seconds": round(self.frames / self.rate, 3),
            "rms_dbfs": round(dbfs(mean_power), 1),
            "peak_dbfs": round(20 * math.log10(self.peak / FULL_SCALE), 1)
            if self.peak
            else _FLOOR_DBFS,
            "clipped_samples": self.clipped,
            "silence_fraction": round(self.silent_windows / self.windows, 3)
            if self.windows
            else 1.0,
            "hum": hum,
        }


def levels(samples: npt.NDArray[np.int16], rate: int, block_s: float = 1.0) -> dict[str, Any]:
    """Levels of a whole channel, fed in ``block_s`` blocks as the stream would be."""
    stats = LevelStats(rate)
    step = max(1, round(block_s * rate))
    for start in range(0, samples.shape[0], step):
        stats.update(samples[start : start + step])
    return stats.summary()
