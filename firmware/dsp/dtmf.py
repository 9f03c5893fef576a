"""DTMF (touch-tone) detection and masking for one line's audio stream.

Detection
---------
The detector follows the design of spandsp's ``dtmf_rx`` (src/dtmf.c) and is held to the
criteria of its test program (tests/dtmf_rx_tests.c, modelled on the Mitel CM7291 tape and
ITU-T Q.24 / Bellcore TR-TSY-000763):

* The audio is cut into non-overlapping **analysis windows** of 12.75 ms (102 samples at
  8 kHz, 204 at 16 kHz; spandsp's ``DTMF_SAMPLES_PER_BLOCK``). Each window's mean is
  removed (a line tap may carry a DC offset; telephone codecs do not).
* For all windows of a block at once, one matrix product evaluates the rectangular-window
  DFT of the eight DTMF frequencies, each on a grid of 13 probes from -6 % to +6 % in 1 %
  steps (``windows @ M``, ``M`` of shape (samples, 2 * 8 * 13)); a loose gate (enough
  energy, at least half of it near one row and one column tone) drops most windows there.
  For the rest a second product gives the same probes through a Hann window: the best
  tone of each group is its highest Hann peak, and the peak position (parabolic
  interpolation of the log power) is the tone's frequency. Then a least-squares fit of
  both sines at those frequencies gives each tone's amplitude and their share of the
  window's energy. There is no per-sample Python.
* A window *hits* digit ``d`` when all of these hold:

  ====================  =====================================================  ==========
  test                  condition                                              value
  ====================  =====================================================  ==========
  level                 each of the two tones (fitted amplitude)               >= -42 dBm0
  forward twist         low-group (row) tone stronger than high-group (column)  < 8 dB
  reverse twist         high-group tone stronger than low-group tone            < 4 dB
  relative peak         the other three tones of each group (rectangular DFT   8 dB
                        at nominal frequency) are weaker than the best by >=
  tone/total energy     energy of the fitted two tones / energy of the window  >= -0.85 dB
  frequency             deviation of each tone from nominal                    <= 2.0 %
  ====================  =====================================================  ==========

  Level, twist, relative-peak and energy thresholds are spandsp's defaults
  (``dtmf_threshold``, ``dtmf_normal_twist``, ``dtmf_reverse_twist``,
  ``dtmf_relative_peak_row/col``, ``dtmf_to_total_energy``). The twist convention is
  spandsp's too: "normal" (forward) twist is the high group *weaker* than the low group,
  as after a long loop; reverse twist is the high group stronger.

  spandsp has no explicit frequency test: its bandwidth is whatever the energy tests on
  fixed-frequency Goertzel filters leave (its own test only asks for a recognition
  bandwidth between 3 % and 15 %), and it differs between the groups because 12.75 ms
  windows resolve 78 Hz, which is 11 % of 697 Hz but 5 % of 1633 Hz. Here the frequency
  of each tone is estimated to about 1 Hz (a Hann window keeps the other group's tone out
  of the estimate) and compared with 2.0 %, between the must-accept +-1.5 % and the
  must-reject +-3.5 %, nearer the first: at 2.5 % an hour of espeak-ng speech and
  synthesised music (bench/dtmf_accuracy.py ``--speech-minutes 40 --music-minutes 20``)
  gave two false digits, each with a tone estimated 2.0-2.5 % off; at 2.0 % none, with
  the in-spec corpus (noise down to 15 dB SNR) still heard entirely. Levels, twist and
  the tone/total energy then come from a least-squares fit of both sines at the
  estimated frequencies, so neither tone leaks into the other's level (with plain
  Goertzel filters the 941 + 1209 Hz pair, '*', reads up to +-1.5 dB of twist wrong at
  7 dB twist). No second-harmonic test: harmonics count
  against the tone/total energy test already.

* Under loud speech the tone/total energy test rejects windows where the tones are
  plainly there (speech over a fifth of the energy), and loosening it brings talk-off
  back. A second, **talk-down** path (:mod:`firmware.dsp.dtmf_talkdown`) looks again
  near windows where the first found two plausible tones but no digit (frequency,
  level and twist as above, relative peak 6 dB, too small a share of the energy): it
  judges 38 ms long windows (a window and the two before it), wants only 30 % of their
  energy in the tones, and guards against speech and music with tests on what is left
  once the tones are removed (not two harmonics of one voice, no other sinusoid as
  strong).

* Debouncing is spandsp's: two consecutive windows with the same hit start a digit, two
  consecutive windows that differ from it end it; a single odd window inside a digit is
  ridden over. One :class:`DtmfEvent` is reported per key press, when it ends. A window
  the talk-down path heard may hold the tone in only part of it: a digit's end there is
  put at its middle, and it starts a digit after a first-path hit only if the tones fill
  its whole long window (so 20 ms tones stay rejected).

What this gives (tests/test_dtmf.py checks each point with tones made by sox):

* tone on 40 ms is always accepted; 20 ms is always rejected (a window only hits when at
  least ~84 of its 102 samples are tone, and a digit needs two such windows);
* a pause of 40 ms between two presses of the same key gives two digits;
* frequency deviation +-1.5 % accepted, +-3.5 % rejected, in either group;
* forward twist up to 8 dB and reverse twist up to 4 dB accepted (tested at 7 and 3 dB;
  9 and 5 dB rejected);
* levels from -3 dBm0 per tone (the loudest pair that does not clip 16-bit audio) down to
  -40 dBm0 per tone accepted, -46 dBm0 rejected;
* 15 dB (and 12 dB) signal-to-noise ratio in white noise across the whole band;
* no false digits on synthetic speech (espeak-ng) and music;
* under espeak-ng speech at 3 to 15 dB SNR, 185 of 192 equal-level 60 ms digits heard
  (multimon-ng 184, the first path alone 167), and no false digit in an hour of speech
  and music (tests/test_dtmf_talk.py).

Levels: dBm0 follows G.711 / spandsp (``DBM0_MAX_SINE_POWER``): a full-scale 16-bit sine
(peak 32768) is +3.14 dBm0, so 0 dBm0 is a sine of peak -3.14 dBFS (22 827) and a tone of
``L`` dBm0 has peak amplitude ``32768 * 10 ** ((L - 3.14) / 20)``.

Masking
-------
:func:`masking_plan` picks which detected digits to hide (all of them, or all after the
first ``N`` so short menu choices stay readable) and writes the dialled string with the
hidden ones as ``*``; :func:`mask_spans` replaces each hidden digit's span, widened by a
guard (:data:`DEFAULT_GUARD_S`, 35 ms, before and after) by silence or low comfort noise.
The guard covers what the detector cannot see: a digit's tone may begin up to one window
before its first hit window and last up to one window after its last one (two in noise),
and under loud speech a digit ending in a window the talk-down path heard (its end
counted at the window's middle) half a window longer: 2.5 windows, 32 ms, so 35 ms leaves
no tone. Audio outside the widened spans is not touched.

Streaming: an event is only known once the digit has ended (two windows after it), so a
recorder that masks must hold audio back until :attr:`DtmfDetector.settled_frame` minus
the guard; everything before that point is final.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, NamedTuple

import numpy as np
import numpy.typing as npt

from firmware.dsp.dtmf_talkdown import (
    EARLY,
    LATE,
    Context,
    TalkdownPath,
    Thresholds,
    fit_two_tones,
    peak_deviation,
)
from firmware.dsp.quiet import SpanLimit, dtmf_limit

ROW_HZ: tuple[float, ...] = (697.0, 770.0, 852.0, 941.0)
COL_HZ: tuple[float, ...] = (1209.0, 1336.0, 1477.0, 1633.0)
KEYPAD = "123A456B789C*0#D"  # row-major: KEYPAD[4 * row + col]
DIGITS = frozenset(KEYPAD)
SUPPORTED_RATES = (8000, 16000)

WINDOW_S = 102 / 8000  # 12.75 ms, spandsp's DTMF_SAMPLES_PER_BLOCK at 8 kHz
DBM0_FULL_SCALE_SINE = 3.14  # dBm0 of a full-scale sine (G.711 / spandsp)
FULL_SCALE = 32768.0

DEFAULT_GUARD_S = 0.035
DEFAULT_COMFORT_NOISE_DBM0 = -65.0
MASK_CHAR = "*"

_PROBE_STEP = 0.01
_PROBES = np.arange(-6, 7) * _PROBE_STEP  # relative deviation of each probe frequency
_P0 = 6  # index of the nominal-frequency probe
_ENERGY_PROBES = slice(_P0 - 3, _P0 + 4)  # probes within +-3 % measure a tone's power
_ENERGY_PROBE_COUNT = _ENERGY_PROBES.stop - _ENERGY_PROBES.start
_NO_HIT = -1
# Relative peak (dB) for two tones the talk-down path looks at again (the first path's
# is 8 dB): loose enough for tones under speech, strict enough that speech alone seldom
# gets a second look (one 0.1 s batch in a hundred of espeak-ng speech).
_PLAUSIBLE_PEAK_DB = 6.0
_TONES_HZ = np.array(ROW_HZ + COL_HZ)

Floats = npt.NDArray[np.float64]


def dbm0_to_amplitude(level_dbm0: float) -> float:
    """Peak amplitude (16-bit scale) of a sine at ``level_dbm0``."""
    return float(FULL_SCALE * 10.0 ** ((level_dbm0 - DBM0_FULL_SCALE_SINE) / 20.0))


def window_frames(rate: int) -> int:
    """Samples per analysis window at ``rate`` (102 at 8 kHz, 204 at 16 kHz)."""
    if rate not in SUPPORTED_RATES:
        raise ValueError(f"DTMF detection supports {SUPPORTED_RATES} Hz, not {rate}")
    return round(WINDOW_S * rate)


def guard_frames(rate: int, guard_s: float = DEFAULT_GUARD_S) -> int:
    """The masking guard in frames at ``rate``."""
    if guard_s < 0:
        raise ValueError("guard_s must be >= 0")
    return round(guard_s * rate)


@dataclass(frozen=True, slots=True)
class DtmfParams:
    """Acceptance thresholds; the defaults are spandsp's plus the frequency test."""

    min_level_dbm0: float = -42.0
    max_forward_twist_db: float = 8.0
    max_reverse_twist_db: float = 4.0
    relative_peak_db: float = 8.0
    min_tone_to_total_db: float = -0.85
    max_freq_deviation: float = 0.02

    def __post_init__(self) -> None:
        if not 0.0 < self.max_freq_deviation < 0.05:
            raise ValueError("max_freq_deviation must be in (0, 0.05): the probes span +-6 %")
        if self.min_tone_to_total_db > 0.0:
            raise ValueError("min_tone_to_total_db must be <= 0 dB")


@dataclass(frozen=True, slots=True)
class DtmfEvent:
    """One key press: ``digit`` heard from ``start_frame`` (inclusive) to ``end_frame``.

    Frames are sample indices on the caller's timeline. ``start_frame`` is the start of the
    first analysis window that hit the digit and ``end_frame`` the end of the last one (its
    middle if the talk-down path heard it); the tone itself may extend up to one window
    (12.75 ms) beyond either end (one and a half after a talk-down window).
    """

    digit: str
    start_frame: int
    end_frame: int


class _Hits(NamedTuple):
    """Per analysis window: the digit index (into KEYPAD) or -1, and how the talk-down
    path heard it (None: it heard nothing; else EARLY for the first path's)."""

    digits: npt.NDArray[np.int64]
    talkdown: npt.NDArray[np.int8] | None


@dataclass(frozen=True, slots=True)
class _Analyser:
    rate: int
    window: int
    rect_basis: npt.NDArray[np.float64]  # (window, 2 * 8 * energy probes): cos, sin
    hann_basis: npt.NDArray[np.float64]  # the same times a Hann window
    min_amplitude: float
    min_total: float  # half the energy of two tones at the minimum level
    forward_twist: float  # on amplitude^2
    reverse_twist: float
    relative_peak: float  # on power
    plausible_peak: float  # on power: two tones worth a second look (_PLAUSIBLE_PEAK_DB)
    tone_to_total: float  # on energy
    max_dev_probes: float  # max_freq_deviation in probe steps
    talkdown: TalkdownPath

    def hits(self, windows: Floats, context: Context) -> _Hits:
        """What each row of ``windows`` (k, window) hits; they follow ``context``, which
        is moved on past them."""
        k = windows.shape[0]
        x = windows - windows.mean(axis=1, keepdims=True)
        total = np.einsum("kn,kn->k", x, x)
        loud = total >= self.min_total
        result = np.full(k, _NO_HIT, dtype=np.int64)
        plausible = np.zeros(k, dtype=np.bool_)
        any_plausible = False
        looked = np.flatnonzero(loud)  # on a quiet line no window gets further
        if looked.size:
            y = (x[looked] @ self.rect_basis).reshape(looked.size, 2, 8, _ENERGY_PROBE_COUNT)
            rect = y[:, 0] ** 2 + y[:, 1] ** 2  # (m, 8, energy probes)
            toned = self._gate(total[looked], rect)
            if toned.size:
                gated = looked[toned]
                nominal = rect[toned, :, _P0 - _ENERGY_PROBES.start]
                result[gated], plausible[gated] = self._first_path(x[gated], total[gated], nominal)
                any_plausible = bool(plausible[gated].any())
        block = Context(windows, loud, total, plausible, any_plausible)
        talkdown = None
        if any_plausible or context.any_plausible:
            talkdown = self.talkdown.look(context.extended(block), result)
        context.move_on(block)
        return _Hits(result, talkdown)

    def _gate(self, total: Floats, rect: Floats) -> npt.NDArray[np.intp]:
        """Cheap gate, far looser than the tests of :meth:`_first_path`, on windows loud
        enough for two tones at the minimum level (energies ``total``, ``rect``: power
        at the energy probes): at least half the required share of it near two DTMF
        tones. Indices of the windows that pass."""
        near = rect.max(axis=2)
        near_energy = near[:, :4].max(axis=1) + near[:, 4:].max(axis=1)
        toned: npt.NDArray[np.intp] = np.flatnonzero(
            near_energy * 4.0 >= self.tone_to_total * total * self.window
        )
        return toned

    def _first_path(
        self, x: Floats, total: Floats, nominal: Floats
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
        """The tests of the module docstring on gated windows ``x`` (mean removed;
        ``nominal``: power at the eight nominal frequencies, rectangular window): what
        each hits, and which hold two plausible tones but do not hit (see below)."""
        m, n = x.shape
        result = np.full(m, _NO_HIT, dtype=np.int64)
        plausible = np.zeros(m, dtype=np.bool_)
        yh = (x @ self.hann_basis).reshape(m, 2, 8, _PROBES.size)
        hann = yh[:, 0] ** 2 + yh[:, 1] ** 2
        sub = np.arange(m)
        peak = hann.max(axis=2)
        br = peak[:, :4].argmax(axis=1)
        bc = 4 + peak[:, 4:].argmax(axis=1)
        dev_row = peak_deviation(hann[sub, br], _P0)
        dev_col = peak_deviation(hann[sub, bc], _P0)
        keep = np.flatnonzero(
            (np.abs(dev_row) <= self.max_dev_probes) & (np.abs(dev_col) <= self.max_dev_probes)
        )
        if keep.size == 0:
            return result, plausible
        x, total, nominal = x[keep], total[keep], nominal[keep]
        br, bc, dev_row, dev_col = br[keep], bc[keep], dev_row[keep], dev_col[keep]

        # Least-squares fit of the two tones at their estimated frequencies: exact levels
        # (no leakage of one tone into the other's measurement) and the tone energy.
        f_row = _TONES_HZ[br] * (1.0 + dev_row * _PROBE_STEP)
        f_col = _TONES_HZ[bc] * (1.0 + dev_col * _PROBE_STEP)
        fit = fit_two_tones(x, f_row, f_col, self.rate)
        amp2_row, amp2_col = fit.amp2_row, fit.amp2_col

        min_amp2 = self.min_amplitude**2
        ok = (amp2_row >= min_amp2) & (amp2_col >= min_amp2)
        ok &= (amp2_col * self.forward_twist > amp2_row) & (
            amp2_col < amp2_row * self.reverse_twist
        )
        # Relative peak: the group's other tones, at nominal frequency (rectangular window),
        # must be weaker than the best one by relative_peak. |X|^2 of amplitude A: (A n/2)^2.
        sub = np.arange(keep.size)
        nominal[sub, br] = 0.0
        nominal[sub, bc] = 0.0
        others_row = nominal[:, :4].max(axis=1) * 4.0 / (n * n)
        others_col = nominal[:, 4:].max(axis=1) * 4.0 / (n * n)
        # Two tones within the frequency, level and twist limits and a looser relative
        # peak: the talk-down path looks near such a window when the tests below fail
        # (speech drowning the tones); most windows of speech are not looked at again.
        clear = (others_row * self.plausible_peak < amp2_row) & (
            others_col * self.plausible_peak < amp2_col
        )
        plausible[keep[ok & clear]] = True
        ok &= (others_row * self.relative_peak < amp2_row) & (
            others_col * self.relative_peak < amp2_col
        )
        ok &= fit.energy >= self.tone_to_total * total
        result[keep[ok]] = 4 * br[ok] + (bc[ok] - 4)
        plausible[keep[ok]] = False  # heard: nothing for the talk-down path to add
        return result, plausible


@lru_cache(maxsize=8)
def _analyser(rate: int, params: DtmfParams) -> _Analyser:
    n = window_frames(rate)
    freqs = _TONES_HZ[:, None] * (1.0 + _PROBES)[None, :]  # (8, probes)
    t = np.arange(n)[:, None, None] / rate
    phase = 2.0 * np.pi * freqs[None, :, :] * t  # (n, 8, probes)
    rect = np.stack((np.cos(phase), np.sin(phase)), axis=1)  # (n, 2, 8, probes)
    hann = np.hanning(n + 2)[1:-1][:, None]
    min_amplitude = dbm0_to_amplitude(params.min_level_dbm0)
    forward_twist = 10.0 ** (params.max_forward_twist_db / 10.0)
    reverse_twist = 10.0 ** (params.max_reverse_twist_db / 10.0)
    relative_peak = 10.0 ** (params.relative_peak_db / 10.0)
    limits = Thresholds(min_amplitude, forward_twist, reverse_twist)
    # The rectangular window only gates and measures power near the nominal frequencies;
    # the Hann window finds the peak over the whole grid.
    rect_basis = np.ascontiguousarray(rect[..., _ENERGY_PROBES].reshape(n, -1))
    return _Analyser(
        rate=rate,
        window=n,
        rect_basis=rect_basis,
        hann_basis=np.ascontiguousarray(hann * rect.reshape(n, -1)),
        min_amplitude=min_amplitude,
        min_total=0.5 * min_amplitude**2 * n,
        forward_twist=forward_twist,
        reverse_twist=reverse_twist,
        relative_peak=relative_peak,
        plausible_peak=10.0 ** (_PLAUSIBLE_PEAK_DB / 10.0),
        tone_to_total=10.0 ** (params.min_tone_to_total_db / 10.0),
        max_dev_probes=params.max_freq_deviation / _PROBE_STEP,
        talkdown=TalkdownPath.build(
            rate,
            n,
            rect_basis=rect_basis,
            tones_hz=_TONES_HZ,
            probes=np.asarray(_PROBES, dtype=np.float64),
            gate_probes=_ENERGY_PROBES,
            limits=limits,
        ),
    )


def window_hits(
    samples: npt.NDArray[np.int16] | npt.NDArray[np.float64],
    rate: int,
    params: DtmfParams | None = None,
) -> str:
    """Per-window decisions over ``samples`` (from its first sample; a trailing partial
    window is ignored): one character per window, the digit or ``-``. For diagnostics."""
    analyser = _analyser(rate, params or DtmfParams())
    x = np.asarray(samples, dtype=np.float64)
    k = x.size // analyser.window
    windows = x[: k * analyser.window].reshape(k, analyser.window)
    hits = analyser.hits(windows, Context.start(analyser.window)).digits
    return "".join(KEYPAD[h] if h >= 0 else "-" for h in hits.tolist())


class DtmfDetector:
    """Streaming DTMF detector for one line.

    Feed consecutive blocks of any size with :meth:`process`; it returns the key presses
    that ended in (or because of) that block. Call :meth:`flush` at the end of the stream
    to get a digit still sounding. ``start_frame`` is the index of the block's first
    sample on the caller's timeline; a block that does not follow on from the previous one
    ends the stream there (as :meth:`flush`) and starts a new one.
    """

    def __init__(self, rate: int, params: DtmfParams | None = None) -> None:
        self.rate = rate
        self.params = params or DtmfParams()
        self._analyser = _analyser(rate, self.params)
        self._window = self._analyser.window
        self._pending = np.zeros(0, dtype=np.float64)
        self._pending_start: int | None = None  # frame of _pending[0]; None: no stream yet
        self._reset_state()

    def _reset_state(self) -> None:
        self._context = Context.start(self._window)
        self._in_digit = _NO_HIT
        self._last_hit = _NO_HIT
        self._last_hit_start = 0  # start frame of the window that gave _last_hit
        self._last_talkdown = False  # the talk-down path heard _last_hit
        self._digit_start = 0
        self._digit_end = 0

    @property
    def window(self) -> int:
        """Samples per analysis window."""
        return self._window

    @property
    def gate_limit(self) -> SpanLimit:
        """No window with less energy than this is looked at (:mod:`firmware.dsp.quiet`)."""
        return dtmf_limit(self._window, self._analyser.min_total)

    @property
    def active_digit(self) -> str | None:
        """The digit currently sounding (started, not yet ended), if any."""
        return KEYPAD[self._in_digit] if self._in_digit != _NO_HIT else None

    @property
    def tone_pending(self) -> bool:
        """A digit is sounding, or the last window hit one that may yet become a digit."""
        return self._in_digit != _NO_HIT or self._last_hit != _NO_HIT

    @property
    def settled_frame(self) -> int | None:
        """No digit reported later can start before this frame (None before any audio)."""
        if self._pending_start is None:
            return None
        if self._in_digit != _NO_HIT:
            return self._digit_start
        if self._last_hit != _NO_HIT:
            return self._last_hit_start
        return self._pending_start

    def process(
        self, block: npt.NDArray[np.int16] | npt.NDArray[np.float64], start_frame: int
    ) -> list[DtmfEvent]:
        """Analyse ``block`` (mono, int16 scale) whose first sample is ``start_frame``."""
        x = np.asarray(block, dtype=np.float64)
        if x.ndim != 1:
            raise ValueError(f"expected a mono block (1-D), got shape {x.shape}")
        events: list[DtmfEvent] = []
        if self._pending_start is None:
            self._pending_start = start_frame
        expected = self._pending_start + self._pending.size
        if start_frame < expected:
            raise ValueError(f"block starts at {start_frame}, before {expected}: overlap")
        if start_frame > expected:
            events.extend(self.flush())
            self._pending_start = start_frame
        if x.size == 0:
            return events
        data = np.concatenate((self._pending, x)) if self._pending.size else x
        n = self._window
        k = data.size // n
        if k:
            hits = self._analyser.hits(data[: k * n].reshape(k, n), self._context)
            talkdown = hits.talkdown.tolist() if hits.talkdown is not None else None
            events.extend(self._debounce(hits.digits.tolist(), talkdown, self._pending_start))
        self._pending = data[k * n :].copy()
        self._pending_start += k * n
        return events

    def _debounce(
        self, hits: Sequence[int], talkdown: Sequence[int] | None, first_start: int
    ) -> list[DtmfEvent]:
        # spandsp's dtmf_rx logic: a change needs two successive windows that differ from
        # the current state; a new digit needs both to agree. A window the talk-down path
        # heard may hold the tone in only part of it (it and the window before it each
        # hold at least MIN_OWN_SHARE of it): a digit's end there is put at its middle,
        # and a first-path hit followed by one does not start a digit unless the tone was
        # in all of the latter's long window (else the two need not hold even 20 ms of
        # tone, which must be rejected).
        events: list[DtmfEvent] = []
        n = self._window
        idle = self._in_digit == self._last_hit == _NO_HIT
        if idle and max(hits, default=_NO_HIT) == _NO_HIT:
            # Nothing heard before or now (most of the time): only the last window moves.
            if hits:
                self._last_hit_start = first_start + (len(hits) - 1) * n
            return events
        for i, raw in enumerate(hits):
            start = first_start + i * n
            how = talkdown[i] if talkdown is not None else EARLY
            end = start + (n // 2 if how != EARLY else n)
            hit = raw
            if self._in_digit not in (hit, self._last_hit):
                hit = hit if hit == self._last_hit else _NO_HIT
                if self._in_digit != _NO_HIT:
                    events.append(
                        DtmfEvent(KEYPAD[self._in_digit], self._digit_start, self._digit_end)
                    )
                starts = hit != _NO_HIT and (self._last_talkdown or how != LATE)
                if starts:
                    self._digit_start = self._last_hit_start
                    self._digit_end = end
                self._in_digit = hit if starts else _NO_HIT
            elif hit == self._in_digit and hit != _NO_HIT:
                self._digit_end = end
            self._last_hit = hit
            self._last_hit_start = start
            self._last_talkdown = how != EARLY
        return events

    def flush(self) -> list[DtmfEvent]:
        """End of stream: report a digit still sounding and reset (a trailing partial
        window is dropped). The next :meth:`process` may start anywhere."""
        events: list[DtmfEvent] = []
        if self._in_digit != _NO_HIT:
            events.append(DtmfEvent(KEYPAD[self._in_digit], self._digit_start, self._digit_end))
        self._reset_state()
        self._pending = np.zeros(0, dtype=np.float64)
        self._pending_start = None
        return events


def detect(
    samples: npt.NDArray[np.int16] | npt.NDArray[np.float64],
    rate: int,
    params: DtmfParams | None = None,
    start_frame: int = 0,
) -> list[DtmfEvent]:
    """All key presses in a whole signal (one :class:`DtmfDetector` pass plus flush)."""
    detector = DtmfDetector(rate, params)
    return detector.process(samples, start_frame) + detector.flush()


class MaskPlan(NamedTuple):
    """What to record in the manifest and what to blank in the audio."""

    digits: str  # every detected digit in order, the masked ones as MASK_CHAR
    spans: list[tuple[int, int]]  # (start_frame, end_frame) of each masked digit


def masking_plan(events: Iterable[DtmfEvent], mask_after_n: int) -> MaskPlan:
    """Mask every digit after the first ``mask_after_n`` (0: mask them all).

    Digits are taken in order of ``start_frame``. Since exactly the digits from position
    ``mask_after_n`` on are masked, a ``*`` before that position is the star key.
    """
    if mask_after_n < 0:
        raise ValueError("mask_after_n must be >= 0")
    ordered = sorted(events, key=lambda e: (e.start_frame, e.end_frame))
    shown = "".join(e.digit for e in ordered[:mask_after_n])
    masked = ordered[mask_after_n:]
    return MaskPlan(shown + MASK_CHAR * len(masked), [(e.start_frame, e.end_frame) for e in masked])


MaskMode = Literal["silence", "comfort_noise"]


def mask_spans(
    samples: npt.NDArray[np.int16],
    spans: Iterable[tuple[int, int]],
    guard_frames: int,
    mode: MaskMode = "silence",
    rng: np.random.Generator | None = None,
    *,
    offset: int = 0,
    noise_dbm0: float = DEFAULT_COMFORT_NOISE_DBM0,
) -> npt.NDArray[np.int16]:
    """A copy of ``samples`` (mono int16) with every span, widened by ``guard_frames`` on
    both sides, replaced by silence or by white comfort noise at ``noise_dbm0`` (RMS).

    Spans are frames on the same timeline as ``offset``, the frame of ``samples[0]``; the
    parts of spans outside ``samples`` are ignored, so a stream can be masked chunk by
    chunk. Nothing outside the widened spans changes.
    """
    if guard_frames < 0:
        raise ValueError("guard_frames must be >= 0")
    if mode not in ("silence", "comfort_noise"):
        raise ValueError(f"unknown mask mode {mode!r}")
    src = np.asarray(samples)
    if src.ndim != 1:
        raise ValueError(f"expected mono samples (1-D), got shape {src.shape}")
    out = src.astype(np.int16, copy=True)
    keep = np.ones(out.size, dtype=bool)
    for start, end in spans:
        if end < start:
            raise ValueError(f"span ({start}, {end}) ends before it starts")
        lo = max(start - guard_frames - offset, 0)
        hi = min(end + guard_frames - offset, out.size)
        if lo < hi:
            keep[lo:hi] = False
    blank = ~keep
    count = int(blank.sum())
    if count == 0:
        return out
    if mode == "silence":
        out[blank] = 0
    else:
        gen = rng if rng is not None else np.random.default_rng()
        rms = dbm0_to_amplitude(noise_dbm0) / math.sqrt(2.0)
        noise = np.rint(gen.standard_normal(count) * rms)
        out[blank] = np.clip(noise, -32768, 32767).astype(np.int16)
    return out
