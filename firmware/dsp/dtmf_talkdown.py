"""The DTMF detector's second path: digits dialled while someone talks (talk-down).

The detector's first path (:mod:`firmware.dsp.dtmf`) judges each 12.75 ms analysis window
alone and wants the two tones to hold 82 % of its energy. Under loud speech that rejects
windows where the tones are plainly there, and a window that short cannot tell a tone
from a speech harmonic 40 Hz away. This path looks at a window together with the two
before it, a **long window** of 38 ms (306 samples at 8 kHz), and accepts two tones with
far more energy left over (they need only :data:`MIN_TONE_SHARE`, 30 %), provided that
what is left over does not look like their source:

* **not two harmonics of one voice**: voiced speech is a comb of harmonics of its pitch,
  and talk-off is two of them landing near a row and a column tone. The pitch of what is
  left once the fitted tones are removed is found by autocorrelation (70-440 Hz); if the
  column tone is within :data:`HARMONIC_TOLERANCE_HZ` of where it would be were both
  tones harmonics of that pitch (h2 / h1 times the row tone, h1 and h2 the nearest
  harmonic numbers, the row tone / h1 within 5 % of the pitch), the window is speech.
  Real tones land there only by chance, and their frequencies, fitted on 38 ms, are
  fine enough to tell;
* **no other strong tone**: the strongest sinusoid left over (Hann spectrum of the
  residual, 300-3400 Hz) must be weaker than the weaker DTMF tone (power ratio below
  :data:`MAX_RESIDUAL_PEAK`). Music is the case: in a chord of steady sines two of which
  are near a row and a column tone, the other notes are as strong;
* **the tones are in the window**: each of the long window's two newest windows holds at
  least :data:`MIN_OWN_SHARE` of the fitted tones' amplitude found in the one holding
  most (projection), so a digit's end and the pause after it are seen, not smeared over
  three windows. The detector's debouncing (:mod:`firmware.dsp.dtmf`) counts a digit
  heard here as ending in the middle of the window, and lets a first-path hit followed
  by one start a digit only if the tones are in all three windows: that keeps 20 ms
  tones rejected and the event bounds of clean tones where the first path puts them;
* each tone within :data:`MAX_DEVIATION` (1.75 %; the spec's must-accept is 1.5 %) of
  nominal, level and twist as in the first path, and the other tones of each group
  (rectangular window, nominal frequency) :data:`RELATIVE_PEAK` (5 dB) weaker: the long
  window resolves them better than a short one, for which spandsp's 8 dB is made.

Measured (tests/test_dtmf_talk.py): equal-level 60 ms tones over espeak-ng speech at 3 to
15 dB SNR, 185 of 192 digits heard (167 by the first path alone; multimon-ng 184); tones
spread over the spec, 175 (166; multimon-ng 114); and still no digit in the hour of
espeak-ng speech and synthesised music of bench/dtmf_accuracy.py. Without the harmonic
test that hour's speech gave 12 false digits; without the residual-peak test the hour
stays clean (the trigger below keeps its chords away), but a digit's tones sounding with
two other notes as loud are taken for the digit; without the presence test 20 ms tones
under speech are. tests/test_dtmf_talk.py checks each of these in the default suite.

Cost: the path only looks near a window where the first path found two plausible tones
but no digit (:mod:`firmware.dsp.dtmf`: frequency, level, twist and a 6 dB relative peak,
too small an energy share): about one 0.1 s batch in a hundred of speech, none of line
noise, and the edges of key presses. There, a gate on the rectangular spectra
the first path computes (per window, and combined into the long window's: no extra
product) applies the tests above that they can stand in for, GATE_MARGIN looser; what
passes gets the Hann product, the fit and the residual's two FFTs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]
Complexes = npt.NDArray[np.complex128]
Indices = npt.NDArray[np.intp]

SPAN = 3  # analysis windows in a long window: this one and the two before it
MIN_TONE_SHARE = 0.3  # energy of the two fitted tones / energy of the long window
RELATIVE_PEAK = 10.0 ** (5.0 / 10.0)  # on power; the first path's is 8 dB (see above)
MAX_DEVIATION = 0.0175  # of each tone from nominal
GATE_SHARE = 0.75  # of MIN_TONE_SHARE, near two tones by the rectangular spectra (gate)
GATE_MARGIN = 2.0  # the gate's level, twist and relative-peak tests are this much looser
MIN_OWN_SHARE = 0.4  # of the tones' amplitude in the window holding most, by projection
PITCH_HZ = (70.0, 440.0)  # voice pitch searched for in the residual
HARMONIC_TOLERANCE_HZ = 6.0
PITCH_TOLERANCE = 0.05  # the tones' implied pitch (row tone / h1) vs the residual's
MAX_RESIDUAL_PEAK = 0.9  # strongest residual sinusoid / weaker tone (power)
RESIDUAL_BAND_HZ = (300.0, 3400.0)


def peak_deviation(probe_power: Floats, centre: int) -> Floats:
    """Deviation from nominal, in probe steps, of each row's spectral peak (probe powers,
    Hann window; ``centre`` is the nominal probe): argmax, refined by a parabola through
    the log powers around it. A peak on the edge of the grid gives +-inf."""
    n = probe_power.shape[1]
    peak = probe_power.argmax(axis=1)
    idx = np.minimum(np.maximum(peak, 1), n - 2)
    rows = np.arange(probe_power.shape[0])
    logp = np.log(probe_power + 1e-30)
    a = logp[rows, idx - 1]
    b = logp[rows, idx]
    c = logp[rows, idx + 1]
    denom = a - 2.0 * b + c
    safe = np.where(denom < 0.0, denom, -1.0)
    delta = np.where(denom < 0.0, 0.5 * (a - c) / safe, 0.0)
    deviation = (idx - centre) + np.minimum(np.maximum(delta, -0.5), 0.5)
    edge = (peak == 0) | (peak == n - 1)
    result: Floats = np.where(edge, np.inf, deviation)
    return result


class TwoTones(NamedTuple):
    """Least-squares fit of two sines to each row of a (m, n) block."""

    coef: Floats  # (m, 4): cos and sin of the row tone, then of the column tone
    basis: Floats  # (m, 4, n)
    amp2_row: Floats  # squared amplitudes
    amp2_col: Floats
    energy: Floats  # energy of the fitted pair


def fit_two_tones(x: Floats, f_row: Floats, f_col: Floats, rate: int) -> TwoTones:
    """Both sines at once, so neither tone leaks into the other's level."""
    t = np.arange(x.shape[1]) * (2.0 * np.pi / rate)
    ph_r = f_row[:, None] * t
    ph_c = f_col[:, None] * t
    basis = np.stack((np.cos(ph_r), np.sin(ph_r), np.cos(ph_c), np.sin(ph_c)), axis=1)
    gram = basis @ basis.transpose(0, 2, 1)  # (m, 4, 4)
    proj = np.einsum("mjn,mn->mj", basis, x)  # (m, 4)
    coef = np.linalg.solve(gram, proj[:, :, None])[:, :, 0]
    return TwoTones(
        coef=coef,
        basis=basis,
        amp2_row=coef[:, 0] ** 2 + coef[:, 1] ** 2,
        amp2_col=coef[:, 2] ** 2 + coef[:, 3] ** 2,
        energy=np.einsum("mj,mj->m", proj, coef),
    )


# How the talk-down path heard a window's digit: the tone holds at least MIN_OWN_SHARE of
# it and of the window before (LATE), or of the two before as well (LATE_THROUGHOUT).
EARLY, LATE, LATE_THROUGHOUT = 0, 1, 2


@dataclass(slots=True)
class Context:
    """Analysis windows as this path needs them: raw samples (rows), whether
    each was loud enough for the first path to look at, its energy (mean removed) and
    whether the first path found two plausible tones in it. As the state between blocks:
    the SPAN - 1 windows before the next block (all zero at the start of a stream)."""

    samples: Floats  # (windows, window)
    loud: npt.NDArray[np.bool_]
    totals: Floats
    plausible: npt.NDArray[np.bool_]
    any_plausible: bool

    @classmethod
    def start(cls, window: int) -> Context:
        quiet = np.zeros(SPAN - 1, dtype=np.bool_)
        return cls(np.zeros((SPAN - 1, window)), quiet, np.zeros(SPAN - 1), quiet, False)

    def extended(self, block: Context) -> Context:
        """This context followed by a block's windows: what long windows are cut from."""
        return Context(
            np.concatenate((self.samples, block.samples)),
            np.concatenate((self.loud, block.loud)),
            np.concatenate((self.totals, block.totals)),
            np.concatenate((self.plausible, block.plausible)),
            self.any_plausible or block.any_plausible,
        )

    def move_on(self, block: Context) -> None:
        """Become the last SPAN - 1 windows of ``block`` (the context if it has fewer)."""
        if block.totals.size < SPAN - 1:
            block = self.extended(block)
        keep = slice(block.totals.size - (SPAN - 1), None)
        self.samples = block.samples[keep]
        self.loud = block.loud[keep]
        self.totals = block.totals[keep]
        self.plausible = block.plausible[keep]
        self.any_plausible = block.any_plausible and bool(self.plausible.any())


class Heard(NamedTuple):
    """Per long window: digit index (row-major keypad) or -1, and whether the tones are
    in all its windows (else in its two newest: a digit is heard from both)."""

    digits: npt.NDArray[np.int64]
    throughout: npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The first path's level and twist limits (linear), shared."""

    min_amplitude: float
    forward_twist: float  # on amplitude^2
    reverse_twist: float


@dataclass(frozen=True, slots=True)
class TalkdownPath:
    """The long-window analysis at one rate (built once, read-only)."""

    rate: int
    window: int  # samples per analysis window (the long window is SPAN of them)
    rect_basis: Floats  # the first path's: (window, 2 * 8 * gate probes), cos and sin
    tones_hz: Floats  # the eight DTMF frequencies, rows first
    probe_step: float  # relative spacing of the frequency probes
    centre: int  # index of the nominal-frequency probe in the Hann grid
    gate_centre: int  # ... and in the rectangular spectra's probes
    rotation: Complexes  # (SPAN, 8, gate probes): a window's phase within the long one
    hann_basis: Floats  # (SPAN * window, 2 * 8 * probes): cos, sin times a Hann window
    taper: Floats  # Hann window for the residual's spectrum
    band: npt.NDArray[np.bool_]  # residual spectrum bins within RESIDUAL_BAND_HZ
    lags: tuple[int, int]  # pitch period range in samples
    limits: Thresholds

    @classmethod
    def build(
        cls,
        rate: int,
        window: int,
        *,
        rect_basis: Floats,
        tones_hz: Floats,
        probes: Floats,
        gate_probes: slice,
        limits: Thresholds,
    ) -> TalkdownPath:
        """``probes``: relative deviations of the Hann grid (nominal at 0);
        ``gate_probes``: those of the first path's rectangular spectra (``rect_basis``)."""
        n = SPAN * window
        freqs = tones_hz[:, None] * (1.0 + probes)[None, :]  # (8, probes)
        phase = 2.0 * np.pi * freqs[None, :, :] * (np.arange(n)[:, None, None] / rate)
        trig = np.stack((np.cos(phase), np.sin(phase)), axis=1)  # (n, 2, 8, probes)
        hann = np.hanning(n + 2)[1:-1]
        shift = 2.0 * np.pi * freqs[:, gate_probes] * window / rate  # per window
        taper = np.hanning(n)
        bins = np.fft.rfftfreq(4 * n, 1.0 / rate)
        return cls(
            rate=rate,
            window=window,
            rect_basis=rect_basis,
            tones_hz=tones_hz,
            probe_step=float(probes[1] - probes[0]),
            centre=int(np.argmin(np.abs(probes))),
            gate_centre=int(np.argmin(np.abs(probes[gate_probes]))),
            rotation=np.exp(-1j * np.arange(SPAN)[:, None, None] * shift[None, :, :]),
            hann_basis=np.ascontiguousarray(hann[:, None] * trig.reshape(n, -1)),
            taper=taper,
            band=(bins >= RESIDUAL_BAND_HZ[0]) & (bins <= RESIDUAL_BAND_HZ[1]),
            lags=(int(rate / PITCH_HZ[1]), int(np.ceil(rate / PITCH_HZ[0]))),
            limits=limits,
        )

    def look(self, joined: Context, result: npt.NDArray[np.int64]) -> npt.NDArray[np.int8]:
        """This path on a block's windows (``joined``: the context, then them; ``result``:
        the first path's hits, -1 for none) that the first path did not hit, are loud,
        and whose long window holds one where the first path found two plausible tones
        (a cheap gate: most windows of speech go no further). Fills in ``result``; how
        it heard each window (EARLY: not at all)."""
        near = np.convolve(joined.plausible, np.ones(SPAN), mode="valid") > 0
        how = np.zeros(result.size, dtype=np.int8)
        windows = np.flatnonzero(near & joined.loud[SPAN - 1 :] & (result == -1))
        if windows.size == 0:
            return how
        # A window below the first path's energy gate counts as silence in the long
        # windows too, so no window that quiet is looked at by either path
        # (firmware.dsp.quiet relies on it).
        samples = joined.samples * joined.loud[:, None]
        x = samples - samples.mean(axis=1, keepdims=True)
        y = (x @ self.rect_basis).reshape(x.shape[0], 2, 8, -1)
        spectra = y[:, 0] - 1j * y[:, 1]
        totals = np.where(joined.loud, joined.totals, 0.0)
        heard = self.hits(samples, spectra, totals, windows)
        result[windows] = heard.digits
        how[windows] = np.where(heard.throughout, LATE_THROUGHOUT, LATE)
        how[result == -1] = EARLY
        return how

    def hits(self, samples: Floats, spectra: Complexes, totals: Floats, windows: Indices) -> Heard:
        """What each of ``windows`` hits.

        ``samples``: the block's windows preceded by SPAN - 1 windows of context, raw
        (rows); ``spectra`` and ``totals``: per window, its mean-removed rectangular
        spectrum at the gate probes (zero for a quiet window) and energy. ``windows``
        index the block's windows (0 is the first after the context)."""
        result = Heard(np.full(windows.size, -1, dtype=np.int64), np.zeros(windows.size, np.bool_))
        members = windows[:, None] + np.arange(SPAN)  # rows of samples in each long window
        long_total = totals[members].sum(axis=1)
        # The long window's rectangular spectrum is its windows' spectra, each advanced by
        # its offset's phase (exact but for the per-window mean removal).
        parts = spectra[members]  # (k, SPAN, 8, gate probes)
        combined = np.einsum("ksfp,sfp->kfp", parts, self.rotation)
        power = combined.real**2 + combined.imag**2  # (k, 8, gate probes)
        nominal = power[:, :, self.gate_centre]
        gated = np.flatnonzero(self._gate(power, nominal, long_total, parts))
        if gated.size == 0:
            return result
        x = samples[members[gated]].reshape(gated.size, SPAN * self.window)
        x = x - x.mean(axis=1, keepdims=True)
        heard = self._judge(x, nominal[gated])
        result.digits[gated] = heard.digits
        result.throughout[gated] = heard.throughout
        return result

    def _gate(
        self, power: Floats, nominal: Floats, total: Floats, parts: Complexes
    ) -> npt.NDArray[np.bool_]:
        """The gate: the tests of :meth:`_judge` that the rectangular spectra (``power``
        at each probe of the eight tones; ``nominal``: at nominal frequency; ``parts``:
        each window's) can stand in for, looser by GATE_MARGIN (the probes may miss the
        tone's frequency): energy near the strongest tone of each group, frequency (its
        peak probe no further out than the one nearest MAX_DEVIATION), level, twist,
        relative peak, and both tones in the two newest windows."""
        lim = self.limits
        n = SPAN * self.window
        rows = np.arange(power.shape[0])
        near = power.max(axis=2)
        br = near[:, :4].argmax(axis=1)
        bc = 4 + near[:, 4:].argmax(axis=1)
        p_row, p_col = near[rows, br], near[rows, bc]
        ok = (p_row + p_col) * 2.0 / n >= GATE_SHARE * MIN_TONE_SHARE * total
        reach = round(MAX_DEVIATION / self.probe_step)
        for tone in (br, bc):
            ok &= np.abs(power[rows, tone].argmax(axis=1) - self.gate_centre) <= reach
        ok &= np.minimum(p_row, p_col) * GATE_MARGIN >= (lim.min_amplitude * n / 2.0) ** 2
        ok &= (p_col * lim.forward_twist * GATE_MARGIN > p_row) & (
            p_col < p_row * lim.reverse_twist * GATE_MARGIN
        )
        others = nominal.copy()
        others[rows, br] = 0.0
        others[rows, bc] = 0.0
        ok &= others[:, :4].max(axis=1) * RELATIVE_PEAK < p_row * GATE_MARGIN
        ok &= others[:, 4:].max(axis=1) * RELATIVE_PEAK < p_col * GATE_MARGIN
        for tone in (br, bc):
            probe = power[rows, tone].argmax(axis=1)
            held = np.abs(parts[rows, :, tone, probe])  # (k, SPAN)
            recent = held[:, 1:].min(axis=1) * GATE_MARGIN
            ok &= recent >= MIN_OWN_SHARE * held.max(axis=1)
        passed: npt.NDArray[np.bool_] = ok
        return passed

    def _judge(self, x: Floats, nominal: Floats) -> Heard:
        """The tests on long windows ``x`` (mean removed) with the power of the eight
        tones at nominal frequency (rectangular window) ``nominal``."""
        m = x.shape[0]
        digit = np.full(m, -1, dtype=np.int64)
        everywhere = np.zeros(m, dtype=np.bool_)
        yh = (x @ self.hann_basis).reshape(m, 2, 8, -1)
        hann = yh[:, 0] ** 2 + yh[:, 1] ** 2
        sub = np.arange(m)
        peak = hann.max(axis=2)
        br = peak[:, :4].argmax(axis=1)
        bc = 4 + peak[:, 4:].argmax(axis=1)
        dev_row = peak_deviation(hann[sub, br], self.centre) * self.probe_step
        dev_col = peak_deviation(hann[sub, bc], self.centre) * self.probe_step
        keep = np.flatnonzero(
            (np.abs(dev_row) <= MAX_DEVIATION) & (np.abs(dev_col) <= MAX_DEVIATION)
        )
        if keep.size == 0:
            return Heard(digit, everywhere)
        x, nominal, br, bc = x[keep], nominal[keep], br[keep], bc[keep]
        f_row = self.tones_hz[br] * (1.0 + dev_row[keep])
        f_col = self.tones_hz[bc] * (1.0 + dev_col[keep])
        fit = fit_two_tones(x, f_row, f_col, self.rate)
        ok, recent, throughout = self._tone_tests(x, fit, nominal, br, bc)
        tones = np.flatnonzero(ok & recent)
        if tones.size == 0:
            return Heard(digit, everywhere)
        # What is left once the tones are removed must not be their source.
        residual = x[tones] - np.einsum("mj,mjn->mn", fit.coef[tones], fit.basis[tones])
        ok = ~self._harmonics_of_one_voice(residual, f_row[tones], f_col[tones])
        weaker = np.minimum(fit.amp2_row[tones], fit.amp2_col[tones])
        ok &= self._residual_peak(residual) < MAX_RESIDUAL_PEAK * weaker
        heard = tones[ok]
        digit[keep[heard]] = 4 * br[heard] + (bc[heard] - 4)
        everywhere[keep[heard]] = throughout[heard]
        return Heard(digit, everywhere)

    def _tone_tests(
        self,
        x: Floats,
        fit: TwoTones,
        nominal: Floats,
        br: npt.NDArray[np.intp],
        bc: npt.NDArray[np.intp],
    ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
        """Level, twist, relative peak and tone share as the first path (on the long
        window); whether the tones are in its two newest windows, and in all three."""
        lim = self.limits
        m, n = x.shape
        min_amp2 = lim.min_amplitude**2
        ok = (fit.amp2_row >= min_amp2) & (fit.amp2_col >= min_amp2)
        ok &= (fit.amp2_col * lim.forward_twist > fit.amp2_row) & (
            fit.amp2_col < fit.amp2_row * lim.reverse_twist
        )
        ok &= fit.energy >= MIN_TONE_SHARE * np.einsum("mn,mn->m", x, x)
        sub = np.arange(m)
        others = nominal.copy()
        others[sub, br] = 0.0
        others[sub, bc] = 0.0
        scale = RELATIVE_PEAK * 4.0 / (n * n)
        ok &= others[:, :4].max(axis=1) * scale < fit.amp2_row
        ok &= others[:, 4:].max(axis=1) * scale < fit.amp2_col
        present = self._presence(x, fit)
        recent = np.all(present[:, -2:], axis=1)
        throughout = np.all(present, axis=1)
        return ok, recent, throughout

    def _presence(self, x: Floats, fit: TwoTones) -> npt.NDArray[np.bool_]:
        """Whether each of the long window's windows holds at least MIN_OWN_SHARE of the
        fitted tones' amplitude found in the one that holds most (by projection; a tone
        that fills only part of the long window is fitted weaker than it is): (m, SPAN),
        oldest first."""
        m = x.shape[0]
        w = self.window
        own = np.einsum("mj,mjn->mn", fit.coef, fit.basis).reshape(m, SPAN, w)
        held = np.einsum("msn,msn->ms", x.reshape(m, SPAN, w), own)
        present: npt.NDArray[np.bool_] = held >= MIN_OWN_SHARE * held.max(axis=1, keepdims=True)
        return present

    def _harmonics_of_one_voice(
        self, residual: Floats, f_row: Floats, f_col: Floats
    ) -> npt.NDArray[np.bool_]:
        """Whether both tones are harmonics of the pitch of what is left (voiced speech)."""
        m, n = residual.shape
        lo, hi = self.lags
        size = 1 << int(np.ceil(np.log2(n + hi + 2)))
        spectrum = np.fft.rfft(residual, size, axis=1)
        acf = np.fft.irfft(spectrum.real**2 + spectrum.imag**2, size, axis=1)[:, : hi + 2]
        acf = acf / np.maximum(acf[:, :1], 1e-30) * (n / (n - np.arange(hi + 2)))
        lag = lo + acf[:, lo : hi + 1].argmax(axis=1)
        rows = np.arange(m)
        a, b, c = acf[rows, lag - 1], acf[rows, lag], acf[rows, lag + 1]
        denom = a - 2.0 * b + c
        delta = np.where(denom < 0.0, 0.5 * (a - c) / np.where(denom < 0.0, denom, -1.0), 0.0)
        pitch = self.rate / (lag + np.clip(delta, -0.5, 0.5))
        h_row = np.maximum(np.round(f_row / pitch), 1.0)
        h_col = np.maximum(np.round(f_col / pitch), 1.0)
        on_comb = np.abs(f_col - h_col * f_row / h_row) < HARMONIC_TOLERANCE_HZ
        same_pitch = np.abs(f_row / h_row / pitch - 1.0) < PITCH_TOLERANCE
        result: npt.NDArray[np.bool_] = on_comb & same_pitch
        return result

    def _residual_peak(self, residual: Floats) -> Floats:
        """Squared amplitude of the strongest sinusoid in ``residual`` (Hann spectrum,
        zero-padded four times, within RESIDUAL_BAND_HZ)."""
        n = residual.shape[1]
        spectrum = np.fft.rfft(residual * self.taper, 4 * n, axis=1)[:, self.band]
        power = (spectrum.real**2 + spectrum.imag**2).max(axis=1)
        peak: Floats = power / (self.taper.sum() / 2.0) ** 2
        return peak
