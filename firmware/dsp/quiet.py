"""Which stretches of a line the detectors cannot hear anything in: :class:`QuietBound`.

Most of a line's life is on-hook line noise or the pauses of a conversation, and the
detectors (DTMF, FSK caller ID) and the mains-hum high-pass in front of them cost per
block even when they find nothing. The analyser asks here, per batch of the *raw* line,
whether a detector could react to it; when none could, the batch is not filtered and not
shown to them (see the analyser for how each detector is told).

The test is a bound, not a guess. Each detector states its gate as a :class:`SpanLimit`
on its own input: no span of ``span`` samples with less than ``energy`` can make it react.

* DTMF drops every 102-sample window (204 at 16 kHz) whose energy, less its mean, is below
  two tones at the minimum level.
* FSK starts a message only on a run of ``min_mark`` samples that are each "loud" (the
  one-bit power of its DC-free input, smoothed over 8 bits, above its floor): ``c``
  disjoint spans of ``8 bits + 1 bit - 1`` samples, each above ``floor * 8 bits``.

Those energies are of the *filtered* line; the bound comes from the raw line. The output
of an FIR ``h`` over a span depends only on the input over that span and the ``len(h) - 1``
samples before it, and a finite signal's energy through a filter is at most
``max |H(f)|^2`` times its own (Parseval). So the filtered energy of any span of ``L`` is at
most ``G_h`` times the largest raw energy over ``L + len(h) - 1`` samples (found exactly,
with a cumulative sum). FSK's input is also less its 20 ms moving mean ``m``; by the
triangle inequality ``|x - m| <= |x| + |m|``, with ``m`` bounded the same way through
``h`` and the mean (a gain of about 0.0007).

On the idle line of the benches (noise at -58 dBFS), the bounds are 6x (DTMF) and 2x (FSK)
below the thresholds; with hum above that, the line is never quiet and everything runs.

Two shortcuts spare most batches the cumulative sums: a batch loud throughout (speech)
is answered from its energy alone, and a quiet one from its loudest 5 ms block: a span
of ``L`` meets at most ``ceil((L - 1) / b) + 1`` blocks of ``b``, each holding at most the
loudest block's energy (that batch's blocks and the last batch's, which cover the tail).
Coarser, so it only decides batches clearly quiet, as idle line noise is; the rest get
the exact spans. Cost on an idle line: about 7 us per 100 ms batch (15 with the spans
only), against 17 us for the high-pass, 14 us for DTMF and 18 us for FSK.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from firmware.dsp.highpass import max_power_gain

Floats = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class SpanLimit:
    """A detector's gate: no span of ``span`` samples of its input with less than
    ``energy`` can make it react. ``dc_len`` > 0: its input is the line less the mean of
    its last ``dc_len`` samples (a moving mean, as FSK's demodulator removes)."""

    span: int
    energy: float
    dc_len: int = 0


def dtmf_limit(window: int, min_total: float) -> SpanLimit:
    """DTMF: a window of ``window`` samples needs ``min_total`` energy to be looked at."""
    return SpanLimit(window, min_total)


def fsk_limit(
    bit_samples: int, smooth_samples: int, floor_power: float, min_mark: int, dc_len: int
) -> SpanLimit:
    """FSK: a sample is loud when the one-bit power summed over ``smooth_samples`` tops
    ``floor_power * smooth_samples``, i.e. the ``smooth + bit - 1`` samples ending there
    hold that much energy; a message needs ``min_mark`` loud samples in a row, which hold
    ``c`` such spans back to back."""
    span = smooth_samples + bit_samples - 1
    count = (min_mark - 1) // span + 1
    return SpanLimit(count * span, count * floor_power * smooth_samples, dc_len)


class QuietBound:
    """Per raw batch of one stream: can DTMF, can FSK react to it once filtered by
    ``hum_taps``? Batches follow on from each other; :meth:`reset` after a gap."""

    def __init__(
        self, dtmf: SpanLimit, fsk: SpanLimit | None, hum_taps: Floats, *, block: int
    ) -> None:
        extra = hum_taps.size - 1  # input samples before a span that its output depends on
        self._gain = max_power_gain(hum_taps)
        self._dtmf = dtmf
        self._dtmf_raw_span = dtmf.span + extra
        self._fsk = fsk
        if fsk is not None:
            mean = np.full(fsk.dc_len, 1.0 / fsk.dc_len)
            self._mean_gain = max_power_gain(np.convolve(hum_taps, mean))
            self._fsk_raw_spans = (fsk.span + extra, fsk.span + extra + fsk.dc_len - 1)
        longest = max((self._dtmf_raw_span, *(self._fsk_raw_spans if fsk else ())))
        self._tail_len = longest
        # The coarse test: a span of L samples meets at most ceil((L - 1) / b) + 1 blocks of
        # b, so it holds at most that many times the loudest block's energy.
        self._block = block
        self._dtmf_blocks = blocks_met(self._dtmf_raw_span, block)
        self._fsk_blocks = (
            tuple(blocks_met(span, block) for span in self._fsk_raw_spans) if fsk else (0, 0)
        )
        self.reset()

    def reset(self) -> None:
        # Squares of the last raw samples; one more than the longest span needs, so that
        # every span sum is a difference of two cumulative sums.
        self._tail: npt.NDArray[np.int32] = np.zeros(self._tail_len, dtype=np.int32)
        # The loudest block of the last batch, when that batch's blocks cover the tail
        # exactly (None: they do not, the coarse test waits for the next batch).
        self._tail_block_max: int | None = 0

    def audible(self, raw: npt.NDArray[np.int16]) -> tuple[bool, bool]:
        """``(dtmf, fsk)``: whether each detector might react to this batch (FSK: False
        when the line has none). Spans that end inside the batch count, whatever batch
        they start in."""
        # Squares of int16 fit int32 and their sums int64: exact, and cheaper than floats.
        x = raw.astype(np.int32)
        squares = x * x
        heard = self._loud_throughout(int(squares.sum(dtype=np.int64)), x.size)
        if heard is not None:
            self._tail_block_max = None
            self._keep_tail(squares)
            return heard
        tiled = x.size % self._block == 0 and x.size >= self._tail_len
        if not tiled:
            self._tail_block_max = None
            return self._span_bounds(squares)
        top = int(squares.reshape(-1, self._block).sum(axis=1, dtype=np.int64).max())
        before, self._tail_block_max = self._tail_block_max, top
        if before is not None and self._quiet_by_blocks(max(before, top)):
            self._keep_tail(squares)
            return False, False
        return self._span_bounds(squares)

    def _keep_tail(self, squares: npt.NDArray[np.int32]) -> None:
        if squares.size >= self._tail_len:
            self._tail = squares[squares.size - self._tail_len :]
        else:
            self._tail = np.concatenate((self._tail, squares))[squares.size :]

    def _quiet_by_blocks(self, block_max: int) -> bool:
        """Both answers "no" from the loudest block (of this batch and of the one whose
        blocks cover the tail): a coarser bound than the spans', so it decides most of an
        idle line's batches and leaves the close calls to :meth:`_span_bounds`."""
        if self._gain * self._dtmf_blocks * block_max >= self._dtmf.energy:
            return False
        if self._fsk is None:
            return True
        near, wide = self._fsk_blocks
        bound = (
            math.sqrt(self._gain * near * block_max) + math.sqrt(self._mean_gain * wide * block_max)
        ) ** 2
        return bound < self._fsk.energy

    def _loud_throughout(self, energy: int, size: int) -> tuple[bool, bool] | None:
        """Both answers "yes" from the batch's energy alone, or None: spans of ``L``
        covering the batch hold all of it, so the loudest holds at least a
        ``ceil(size / L)``-th (speech, mostly: no cumulative sum needed)."""
        dtmf = self._gain * energy / -(-size // self._dtmf_raw_span) >= self._dtmf.energy
        if not dtmf:
            return None
        if self._fsk is None:
            return True, False
        near = self._fsk_raw_spans[0]
        return (True, True) if self._gain * energy / -(-size // near) >= self._fsk.energy else None

    def _span_bounds(self, squares: npt.NDArray[np.int32]) -> tuple[bool, bool]:
        """The bounds from the loudest span of each length ending in the batch."""
        ext = np.concatenate((self._tail, squares))
        self._tail = ext[ext.size - self._tail_len :]
        csum = np.cumsum(ext, dtype=np.int64)
        first = self._tail_len  # csum index of the batch's first sample

        def most(span: int) -> float:
            return float((csum[first:] - csum[first - span : csum.size - span]).max())

        dtmf = self._gain * most(self._dtmf_raw_span) >= self._dtmf.energy
        if self._fsk is None:
            return dtmf, False
        near, wide = self._fsk_raw_spans
        through_filter = self._gain * most(near)
        if through_filter >= self._fsk.energy:
            return dtmf, True  # loud enough without the mean's share
        bound = (np.sqrt(through_filter) + np.sqrt(self._mean_gain * most(wide))) ** 2
        return dtmf, bool(bound >= self._fsk.energy)


def blocks_met(span: int, block: int) -> int:
    """The most blocks of ``block`` samples a span of ``span`` samples can overlap."""
    return -(-(span - 1) // block) + 1
