"""Mains-hum high-pass in front of the line's detectors: :class:`HumFilter`.

A badly earthed tap carries 50 or 60 Hz hum and its harmonics, often louder than weak
DTMF (-25 dBm0 per tone is a -28 dBFS peak): hum at -30 dBFS took most digits, because it
counts against the tone/total energy test of every window. The detectors' bands start at
697 Hz (DTMF row 1) and 1200 Hz (FSK), so everything below about 450 Hz can go.

The filter is a 4th-order Butterworth high-pass (bilinear transform, corner
:data:`CORNER_HZ`): -0.13 dB at 697 Hz (so levels and twist barely move), -38 dB at 150 Hz,
-32 dB at 180 Hz, over -60 dB at 60 Hz. It runs as its impulse response truncated where it
has decayed below :data:`TAIL` of its peak, -80 dB (an FIR of 65 taps at 8 kHz, 112 at
16 kHz): ``np.convolve`` per block, no per-sample Python, and its state across blocks is
just the last ``taps - 1`` input samples. Being minimum phase, it delays the tones by only
a few samples (no linear-phase FIR's half-length delay), so the detectors' frame numbers
stay where they were.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import numpy.typing as npt

CORNER_HZ = 450.0
ORDER = 4
TAIL = 1e-4  # taps are kept until the impulse response falls below this share of its peak
_DESIGN_FFT = 1 << 14

Floats = npt.NDArray[np.float64]


@lru_cache(maxsize=4)
def impulse_response(rate: int) -> Floats:
    """The truncated impulse response at ``rate`` (read-only, cached)."""
    # Butterworth poles on the left half of the unit circle; as a high-pass (s -> wc / s)
    # their set maps onto itself scaled by wc, so H(s) = prod s / (s - wc p_k).
    k = np.arange(1, ORDER + 1)
    poles = np.exp(1j * math.pi * (2 * k + ORDER - 1) / (2 * ORDER))
    wc = 2.0 * rate * math.tan(math.pi * CORNER_HZ / rate)  # prewarped corner
    omega = np.linspace(0.0, math.pi, _DESIGN_FFT // 2 + 1)
    s = 2j * rate * np.tan(omega / 2.0)  # the bilinear transform's frequency map
    s[-1] = 1e300j  # Nyquist: tan(pi / 2) is infinite; the high-pass passes it at gain 1
    response = np.prod(s[:, None] / (s[:, None] - wc * poles[None, :]), axis=1)
    h = np.fft.irfft(response, _DESIGN_FFT)
    above = np.flatnonzero(np.abs(h) > TAIL * np.abs(h).max())
    taps = h[: int(above[-1]) + 1].copy()
    taps.flags.writeable = False
    return taps


def attenuation_db(rate: int, hz: float) -> float:
    """The filter's gain at ``hz`` in dB (negative: attenuation)."""
    h = impulse_response(rate)
    gain = abs(np.sum(h * np.exp(-2j * math.pi * hz / rate * np.arange(h.size))))
    return 20.0 * math.log10(max(gain, 1e-300))


def max_power_gain(taps: Floats) -> float:
    """The largest power gain, ``max |H(f)|^2``, of the FIR ``taps`` (a fine grid, 1 % up
    for what falls between its points)."""
    response = np.fft.rfft(taps, max(_DESIGN_FFT, 8 * taps.size))
    return float(np.max(np.abs(response)) ** 2 * 1.01)


class HumFilter:
    """The high-pass for one stream, block after block (state carried across blocks).

    :meth:`filter` takes consecutive blocks; :meth:`reset` starts a new stream (after a
    gap, so audio that was never adjacent is not filtered together). The state is only the
    last ``taps - 1`` input samples, so filtering can also be split in two:
    :meth:`extend` moves the stream on and returns a block with the input it depends on,
    which :meth:`apply` filters whenever (and if ever) the output is needed."""

    def __init__(self, rate: int) -> None:
        self._h = impulse_response(rate)
        self.reset()

    @property
    def taps(self) -> Floats:
        return self._h

    def reset(self) -> None:
        self._history: Floats = np.zeros(self._h.size - 1)

    def extend(self, samples: npt.NDArray[np.int16] | Floats) -> Floats:
        """``samples`` (float64) after the ``taps - 1`` input samples before them; the
        stream moves on past ``samples``."""
        x = np.concatenate((self._history, np.asarray(samples, dtype=np.float64)))
        self._history = x[x.size - self._history.size :]
        return x

    def apply(self, extended: Floats) -> Floats:
        """The filtered block for an :meth:`extend` result (as long as the block)."""
        out: Floats = np.convolve(extended, self._h, mode="valid")
        return out

    def filter(self, samples: npt.NDArray[np.int16] | Floats) -> Floats:
        """The filtered block (float64, int16 scale), as long as ``samples``."""
        return self.apply(self.extend(samples))
