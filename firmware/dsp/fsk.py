"""FSK caller ID (Bell 202 and ITU-T V.23 / ETSI EN 300 659-1) from a line's audio stream.

Signal path (vectorised per block, numpy only)
----------------------------------------------
* **DC removal.** The mean of the last 20 ms is subtracted (a tap's ADC may sit off zero;
  an offset leaks into the correlators' sidelobes as loudly as a weak burst). 20 ms holds
  whole cycles of all four tones, so they pass untouched.
* **Tone correlators.** Every sample is mixed with the four tones of both standards (Bell
  202 mark 1200 / space 2200 Hz, V.23 mark 1300 / space 2100 Hz) and summed over one bit
  (a boxcar of ``round(rate / 1200)`` samples: 7 at 8 kHz, 13 at 16 kHz): the non-coherent
  matched filter of each tone: every sample's one-bit window correlated with the tones'
  cos/sin (the magnitude of a window's sum does not depend on the tone's
  starting phase), the window running on across block boundaries (the last bit carried).
  While hunting through a block too quiet to hold a mark (the one-bit power, smoothed as
  below, never above ``min_level_dbfs``), only the soft decisions the smoothing carries
  into the next block are computed.
* **Soft decision** per standard and sample: ``(|M|^2 - |S|^2) / (|M|^2 + |S|^2)`` in
  [-1, 1], positive for mark (1). It does not depend on the level.

Bit and byte level (Python, a few operations per bit)
-----------------------------------------------------
* **Mark hunt.** The larger of the two soft decisions, averaged over 8 bits, must stay
  above 0.5 with the signal above ``min_level_dbfs`` for ``min_mark_bits`` (40: the
  shortest mark either standard allows is 55 bits). Then the mark stretch is measured in
  10 ms windows against 1200 and 1300 Hz (windows that long put each tone in the other's
  null): the purer tone picks the standard, and if neither holds ``min_purity`` of the
  energy (speech, dial or ring tones, noise) the stretch is not a mark. The 100 bits
  before the mark are checked for the channel seizure (soft decisions one bit apart
  anti-correlated); it is reported but not required (off-hook caller ID has none).
* **UART** (1 start, 8 data LSB first, 1 stop). A start bit is a falling zero crossing of
  the chosen standard's soft decision (interpolated to a fraction of a sample); bits are
  sampled at ``edge + (k + 0.5) * bit``, where the one-bit correlator window lies exactly
  on bit ``k``. One noisy crossing is a poor clock, so the edge is then moved by the mean
  offset of all the frame's transitions from where they should be, and the bits sampled
  again (worth about 1 dB). Each byte resynchronises on its own start bit. The type byte
  must be a known message type with mark in the two bits before its start bit and in 3 of
  the 4 (ASCII has bit 7 = 0, so a byte inside a message is not taken for a type byte);
  each later byte must start within ``max_gap_bits`` of the previous stop bit. A stop bit
  read as space does not end the message: the checksum decides.
* **Message.** Type, length, body and checksum are collected; the checksum is verified and
  the message parsed by :mod:`firmware.dsp.cid_messages`. A bad checksum, a truncated or
  malformed message goes to :attr:`CallerIdDecoder.errors`, never out as a caller ID.

Measured (``bench/cid_accuracy.py``, bursts from minimodem, white noise over the whole
band): every burst decoded down to 12 dB SNR at 8 kHz and 9 dB at 16 kHz for both
standards; at 8 kHz and 6 dB, 92 % of Bell 202 and 42 % of V.23 bursts (V.23's 800 Hz
shift is the harder one); no wrong caller ID. About 250 times real time per line on a
desktop core (20 ms blocks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from firmware.dsp.cid_messages import (
    MESSAGE_TYPES,
    CallerIdError,
    CallerIdMessage,
    ErrorReason,
    MessageError,
    parse_message,
)
from firmware.dsp.quiet import SpanLimit, fsk_limit

Floats = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]

BAUD = 1200.0
FULL_SCALE = 32767.0
MAX_MESSAGE = 2 + 255 + 1


@dataclass(frozen=True)
class FskStandard:
    name: Literal["bell202", "v23"]
    mark: int
    space: int


BELL202 = FskStandard("bell202", 1200, 2200)
V23 = FskStandard("v23", 1300, 2100)
STANDARDS = (BELL202, V23)


class FskDemodulator:
    """Soft mark/space decisions for each standard, sample by sample, block after block."""

    def __init__(self, rate: int, standards: tuple[FskStandard, ...] = STANDARDS) -> None:
        if rate < 2 * max(s.space for s in standards) + 400:
            raise ValueError(f"sample rate {rate} too low for FSK caller ID")
        self.rate = rate
        self.standards = standards
        self.bit = rate / BAUD
        self.taps = round(self.bit)
        tones = sorted({f for s in standards for f in (s.mark, s.space)})
        self._mark_idx = [tones.index(s.mark) for s in standards]
        self._space_idx = [tones.index(s.space) for s in standards]
        self._tones = len(tones)
        phase = 2 * np.pi * np.outer(tones, np.arange(self.taps)) / rate  # (tones, taps)
        self._basis: Floats = np.vstack((np.cos(phase), np.sin(phase)))  # cos rows, sin rows
        self.dc_len = round(rate * 0.020)
        self.reset()

    def reset(self) -> None:
        self._tail_x: Floats = np.zeros(self.taps - 1)
        self._tail_pow: Floats = np.zeros(self.taps - 1)
        self._tail_dc: Floats = np.zeros(self.dc_len - 1)

    def process(self, raw: Floats) -> tuple[Floats, Floats, Floats]:
        """``(x, soft, power)`` for one block.

        ``x`` is the block less its DC (the mean of the last 20 ms, which holds a whole
        number of cycles of every tone here, so the tones pass untouched). ``soft`` has one
        row per standard; ``power`` is the mean square of ``x`` over the same one-bit
        window. Sample ``i`` of ``soft`` and ``power`` covers ``x[i - taps + 1 .. i]``."""
        x, power = self.dc_and_power(raw)
        return x, self.soft(x), power

    def dc_and_power(self, raw: Floats) -> tuple[Floats, Floats]:
        """``(x, power)`` of :meth:`process`: the cheap, real-valued half."""
        count = len(raw)
        ext = np.concatenate((self._tail_dc, raw))
        self._tail_dc = ext[count:]
        dsum = np.concatenate(([0.0], np.cumsum(ext)))
        x = raw - (dsum[self.dc_len :] - dsum[:count]) / self.dc_len
        sq = np.concatenate((self._tail_pow, x * x))
        self._tail_pow = sq[count:]
        psum = np.concatenate(([0.0], np.cumsum(sq)))
        power = (psum[self.taps :] - psum[:count]) / self.taps
        return x, power

    def soft(self, x: Floats, soft_from: int = 0) -> Floats:
        """``soft`` of :meth:`process` for ``x`` from :meth:`dc_and_power`; only samples
        from ``soft_from`` on are computed (the earlier ones are 0), which skips most of the
        cost when the caller knows it will not look at them."""
        count = len(x)
        ext = np.concatenate((self._tail_x, x))
        self._tail_x = ext[count:]
        first = min(max(soft_from, 0), count)  # first output computed
        # Every output's one-bit window against each tone's cos and sin: a correlation
        # per row of the basis (faster than a product with the windows as rows, which
        # numpy cannot hand to BLAS). |sum| does not depend on where a tone's phase
        # starts, so every window starts its oscillators at 0.
        seg = ext[first:]
        proj = np.stack([np.correlate(seg, row, "valid") for row in self._basis])
        energy = proj[: self._tones] ** 2 + proj[self._tones :] ** 2  # (tones, outputs)
        mark = energy[self._mark_idx]
        space = energy[self._space_idx]
        soft: Floats = np.zeros((len(self.standards), count))
        soft[:, first:] = (mark - space) / (mark + space + 1e-9)
        return soft


@dataclass
class _Frame:
    value: int
    start_ok: bool
    stop_ok: bool


class CallerIdDecoder:
    """Streaming FSK caller-ID decoder for one line.

    Feed consecutive blocks with :meth:`process`; a gap or overlap in ``start_frame``
    resets the decoder. Good messages are returned; everything that looked like a caller-ID
    message but failed (checksum, framing, truncation, malformed contents) is appended to
    :attr:`errors` (the caller may clear it).
    """

    def __init__(
        self,
        rate: int,
        *,
        min_mark_bits: int = 40,
        min_level_dbfs: float = -50.0,
        min_purity: float = 0.3,
        max_gap_bits: int = 16,
    ) -> None:
        self.rate = rate
        self.errors: list[CallerIdError] = []
        self._demod = FskDemodulator(rate)
        self.bit = self._demod.bit
        self._taps = self._demod.taps
        self._smooth = round(8 * self.bit)
        self._min_mark = round(min_mark_bits * self.bit)
        self._floor = (FULL_SCALE * 10 ** (min_level_dbfs / 20)) ** 2 / 2
        self._min_purity = min_purity
        self._max_gap = max_gap_bits
        self._purity_len = round(rate * 0.010)  # 10 ms: 1200 and 1300 Hz in each other's null
        phase = 2 * np.pi * np.outer(np.arange(self._purity_len), [s.mark for s in STANDARDS])
        self._purity_basis: Floats = np.stack(
            (np.cos(phase / rate), np.sin(phase / rate)), axis=2
        ).reshape(self._purity_len, -1)  # columns: cos, sin of each standard's mark
        self._seizure_span = round(100 * self.bit)
        self._keep = self._min_mark + self._smooth + self._seizure_span + 4 * self._taps
        self._reset(None)

    # ---- history -------------------------------------------------------------------------

    def _reset(self, start_frame: int | None) -> None:
        self._demod.reset()
        self._started = start_frame is not None
        self._base = start_frame or 0  # absolute frame of history index 0
        self._end = self._base  # absolute frame after the last sample
        self._x: Floats = np.zeros(0)
        self._soft: Floats = np.zeros((len(STANDARDS), 0))
        self._ok: Bools = np.zeros(0, np.bool_)
        self._tail_h: Floats = np.zeros(self._smooth - 1)
        self._tail_p: Floats = np.zeros(self._smooth - 1)
        self._hunt(self._base)

    def _hunt(self, at: float) -> None:
        self._state: Literal["hunt", "start", "bytes"] = "hunt"
        self._pos = math.ceil(at)
        self._run = 0  # length of the run of "looks like mark" samples ending at _pos

    def _append(self, raw: Floats) -> None:
        x, power = self._demod.dc_and_power(raw)
        w = self._smooth
        p = np.concatenate((self._tail_p, power))
        pc = np.concatenate(([0.0], np.cumsum(p)))
        loud = (pc[w:] - pc[: len(x)]) > self._floor * w
        # Hunting on a quiet stretch (no sample loud enough to be mark), the soft decisions
        # are needed only for the smoothing that runs on into the next block; the rest are
        # left 0 (the tone correlators are most of the cost). Only a channel-seizure check
        # could look back at them, and it finds no seizure in a quiet stretch either way.
        any_loud = bool(loud.any())
        quiet = self._state == "hunt" and not any_loud
        soft = self._demod.soft(x, len(x) - (w - 1) if quiet else 0)
        h = np.concatenate((self._tail_h, soft.max(axis=0)))
        self._tail_h, self._tail_p = h[len(x) :], p[len(x) :]
        if any_loud:
            hc = np.concatenate(([0.0], np.cumsum(h)))
            ok = ((hc[w:] - hc[: len(x)]) > 0.5 * w) & loud
        else:
            ok = loud  # all False
        self._x = np.concatenate((self._x, x))
        self._soft = np.concatenate((self._soft, soft), axis=1)
        self._ok = np.concatenate((self._ok, ok))
        self._end += len(x)

    def _trim(self) -> None:
        need = self._pos - self._keep
        if self._state == "bytes":
            need = min(need, math.floor(self._prev_edge) - self._keep)
        cut = need - self._base
        if cut > 4 * self._keep:  # trim in chunks, not every block
            self._x = self._x[cut:]
            self._soft = self._soft[:, cut:]
            self._ok = self._ok[cut:]
            self._base += cut

    # ---- public --------------------------------------------------------------------------

    @property
    def hunt_limit(self) -> SpanLimit:
        """A message can only start where a span holds at least this much energy (the
        analyser does not show the decoder stretches that cannot: :mod:`firmware.dsp.quiet`)."""
        return fsk_limit(self._taps, self._smooth, self._floor, self._min_mark, self._demod.dc_len)

    def pop_errors(self) -> list[CallerIdError]:
        """The errors reported so far, and forget them."""
        errors, self.errors = self.errors, []
        return errors

    def process(self, block: npt.ArrayLike, start_frame: int) -> list[CallerIdMessage]:
        x = np.asarray(block, dtype=np.float64).reshape(-1)
        if not self._started or start_frame != self._end:
            self._reset(start_frame)
        if len(x) == 0:
            return []
        self._append(x)
        found: list[CallerIdMessage] = []
        while self._step(found):
            pass
        self._trim()
        return found

    # ---- state machine -------------------------------------------------------------------

    def _step(self, found: list[CallerIdMessage]) -> bool:
        """Advance as far as the samples allow; False when more samples are needed."""
        if self._state == "hunt":
            return self._step_hunt()
        if self._state == "start":
            return self._step_start()
        return self._step_bytes(found)

    def _step_hunt(self) -> bool:
        lo = self._pos - self._base
        seg = self._ok[lo:]
        if len(seg) == 0:
            return False
        if not seg.any():  # most of the time: no mark anywhere
            self._run, self._pos = 0, self._end
            return False
        i = np.arange(len(seg))
        last_false = np.maximum.accumulate(np.where(seg, -1, i))
        run = np.where(last_false >= 0, i - last_false, i + 1 + self._run)
        hits = np.flatnonzero(run >= self._min_mark)
        # A rejected candidate restarts the run after it, so the next candidate is the
        # first hit at least min_mark samples on (the run then still reaches back that
        # far); walking the hits found here saves rescanning the rest for each one.
        k, rejected = 0, -1
        while k < len(hits):
            at = self._pos + int(hits[k])  # the mark has lasted long enough here
            first = at - self._min_mark + 1
            std, purity = self._classify(first, at - self._taps)
            if purity >= self._min_purity:
                break
            rejected = int(hits[k])  # not a mark; look again further on
            k = int(np.searchsorted(hits, rejected + self._min_mark))
        else:
            last = len(seg) - 1
            self._run = int(run[-1]) if rejected < 0 else min(int(run[-1]), last - rejected)
            self._pos = self._end
            return False
        self._std = std
        self._seizure = self._seizure_before(first - self._smooth, std)
        self._state = "start"
        self._pos = max(first, at - self._smooth)
        self._last_ok = at
        return True

    def _classify(self, first: int, last: int) -> tuple[int, float]:
        """(standard index, purity) of the mark between absolute frames first..last."""
        size = self._purity_len
        count = max(1, (last - first) // size)
        a = first - self._base
        seg = self._x[a : a + count * size]
        energy = float(np.sum(seg * seg))
        if energy <= 0 or len(seg) < count * size:
            return 0, 0.0
        # Each window's |sum| against a mark tone does not depend on the tone's starting
        # phase, so one product with the tones' cos/sin over a window does every window.
        proj = seg.reshape(count, size) @ self._purity_basis  # (count, 2 * standards)
        power = (proj**2).sum(axis=0)
        purity = 2 * (power[0::2] + power[1::2]) / (size * energy)
        best = int(np.argmax(purity))
        return best, float(purity[best])

    def _seizure_before(self, end: int, std: int) -> bool:
        a = max(0, end - self._seizure_span - self._base)
        b = end - self._base
        lag = round(self.bit)
        s = self._soft[std, a:b]
        if len(s) < lag + 30 * self.bit:
            return False
        return float(np.mean(s[:-lag] * s[lag:])) < -0.2

    def _falling_edge(self, lo: float, hi: float) -> float | None:
        """First crossing from >= 0 to < 0 of the chosen soft decision in (lo, hi]."""
        a = max(math.ceil(lo), self._base + 1) - self._base
        b = math.floor(hi) - self._base + 1
        if b <= a:
            return None
        s = self._soft[self._std, a - 1 : b]
        idx = np.flatnonzero((s[:-1] >= 0) & (s[1:] < 0))
        if len(idx) == 0:
            return None
        i = int(idx[0])
        y0, y1 = float(s[i]), float(s[i + 1])
        return self._base + a - 1 + i + y0 / (y0 - y1)

    def _sample(self, edge: float) -> npt.NDArray[np.bool_]:
        """The 10 bits of the frame whose start bit begins at ``edge`` (True = mark)."""
        at = edge + (np.arange(10) + 0.5) * self.bit - self._base
        lo = int(at[0])
        s = self._soft[self._std, lo : int(at[-1]) + 2]
        bits: npt.NDArray[np.bool_] = np.interp(at - lo, np.arange(len(s)), s) > 0
        return bits

    def _refine(self, edge: float, bits: npt.NDArray[np.bool_]) -> float:
        """Move ``edge`` by the mean offset of the frame's own bit transitions.

        One zero crossing of a noisy soft decision is a poor clock; the frame's other
        transitions (where the sampled bits change) each measure the same offset."""
        a = max(math.floor(edge - 0.5 * self.bit) - self._base, 0)
        b = math.ceil(edge + 9.5 * self.bit) - self._base + 1
        s = self._soft[self._std, a:b]
        cross = np.flatnonzero(np.signbit(s[:-1]) != np.signbit(s[1:]))
        if len(cross) < 2:
            return edge
        y0, y1 = s[cross], s[cross + 1]
        where = self._base + a + cross + y0 / (y0 - y1)
        rising = y1 > y0
        offsets = [0.0]
        for k in np.flatnonzero(bits[1:] != bits[:-1]) + 1:
            expected = edge + k * self.bit
            near = np.abs(where - expected)
            near[rising != bool(bits[k])] = np.inf
            best = int(np.argmin(near))
            if near[best] < 0.5 * self.bit:
                offsets.append(float(where[best] - expected))
        return edge + float(np.mean(offsets))

    def _read_frame(self, edge: float) -> tuple[float, _Frame]:
        """(refined edge, frame) for the start bit found at ``edge``."""
        bits = self._sample(edge)
        if not bits[0]:
            edge = self._refine(edge, bits)
            bits = self._sample(edge)
        byte = int(np.dot(bits[1:9], 1 << np.arange(8)))
        return edge, _Frame(byte, not bits[0], bool(bits[9]))

    def _mark_before(self, edge: float) -> bool:
        """The two bits before the start bit and 3 of the 4 before it are mark.

        Bit 7 of ASCII is 0, so a byte inside a message whose previous byte is text (the
        digits of a number, a name) is never taken for the start of a message."""
        at = edge - (np.arange(4) + 0.5) * self.bit - self._base
        if at[-1] < 0:
            return False
        marks = np.interp(at, np.arange(len(self._x)), self._soft[self._std]) > 0
        return bool(marks[0] and marks[1] and np.count_nonzero(marks) >= 3)

    def _mark_until(self, hi: float) -> tuple[npt.NDArray[np.int64], float | None]:
        """(the frames up to ``hi`` where the mark is seen, from the last one before the
        search position; where it went away: 30 bits after the first gap that long, or
        None). The mark going away ends the search for the type byte, wherever the
        blocks happen to end."""
        lo_i, hi_i = self._pos - self._base, math.floor(hi) - self._base
        found = np.flatnonzero(self._ok[max(lo_i, 0) : max(hi_i, lo_i)]) + self._pos
        oks = np.concatenate(([self._last_ok], found))
        oks = oks[np.concatenate(([True], oks[1:] > self._last_ok))]
        span = 30 * self.bit
        gaps = np.flatnonzero(np.diff(oks) > span)
        if len(gaps):
            return oks[: gaps[0] + 1], float(oks[gaps[0]] + span)
        if math.floor(hi) - oks[-1] > span:
            return oks, float(oks[-1] + span)
        return oks, None

    def _step_start(self) -> bool:
        """Look for the start bit of the message type byte after the mark."""
        end = self._end - 10.5 * self.bit - 3  # a frame (and its refinement) fits
        hi = min(end, self._pos + 64 * self.bit)  # a stretch at a time: long blocks
        oks, gone = self._mark_until(hi)
        edge = self._falling_edge(self._pos, hi if gone is None else min(hi, gone))
        if edge is None:
            if gone is not None:
                self._hunt(gone)  # the mark went away without a message
                return True
            self._pos = max(self._pos, math.floor(hi))
            self._last_ok = int(oks[-1])
            return hi < end
        self._last_ok = int(oks[max(int(np.searchsorted(oks, edge, side="right")) - 1, 0)])
        start, frame = self._read_frame(edge)
        if (
            frame.start_ok
            and frame.stop_ok
            and frame.value in MESSAGE_TYPES
            and self._mark_before(start)
        ):
            self._state = "bytes"
            self._bytes = bytearray([frame.value])
            self._msg_edge = self._prev_edge = start
            self._search_from = start + 9.5 * self.bit
            return True
        self._pos = math.floor(edge) + 2  # past this crossing (samples i, i + 1)
        return True

    def _step_bytes(self, found: list[CallerIdMessage]) -> bool:
        limit = self._prev_edge + (10 + self._max_gap) * self.bit
        hi = min(limit, self._end - 10.5 * self.bit - 3)
        edge = self._falling_edge(self._search_from, hi)
        if edge is None:
            if hi >= limit:
                self._fail("truncated", f"no start bit after {len(self._bytes)} bytes")
                self._hunt(limit)
                return True
            self._search_from = max(self._search_from, math.floor(hi))
            return False
        start, frame = self._read_frame(edge)
        if not frame.start_ok:  # a glitch, not a start bit
            self._search_from = math.floor(edge) + 2
            return True
        self._bytes.append(frame.value)
        self._prev_edge = start
        self._search_from = max(start + 9.5 * self.bit, math.floor(edge) + 2)
        if len(self._bytes) >= 2 and len(self._bytes) == self._bytes[1] + 3:
            self._finish(found)
        return True

    def _start_frame(self) -> int:
        return round(self._msg_edge - (self._taps - 1) / 2)

    def _fail(self, reason: ErrorReason, detail: str) -> None:
        self.errors.append(
            CallerIdError(
                STANDARDS[self._std].name, reason, self._start_frame(), bytes(self._bytes), detail
            )
        )

    def _finish(self, found: list[CallerIdMessage]) -> None:
        try:
            message = parse_message(
                bytes(self._bytes),
                standard=STANDARDS[self._std].name,
                start_frame=self._start_frame(),
                seizure=self._seizure,
            )
        except MessageError as exc:
            self._fail(exc.reason, exc.detail)
        else:
            if message is not None:
                found.append(message)
        self._hunt(self._prev_edge + 10 * self.bit)
