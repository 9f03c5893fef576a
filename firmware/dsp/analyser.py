"""All the detectors of one line, run on its live audio: :class:`LineAnalyser`.

The recorder feeds every capture block of a line here, recording or not, because what
matters for a call is often heard before it starts: FSK caller ID between the rings and
DTMF CLIP before the first one. The analyser keeps a short history (``history_s``) of
what it heard, on the capture stream's frame timeline, so the recorder can ask at the
start or end of a call "which caller ID preceded this off-hook" and "which digits were
dialled since". It also keeps the levels of the last second for telemetry and tools.

The detectors hear the line through a mains-hum high-pass (:mod:`firmware.dsp.highpass`),
so 50/60 Hz hum and its harmonics on a badly earthed tap cost no digits; the levels are
measured on the unfiltered line (they report the hum). DTMF runs on ``BATCH_S`` batches,
FSK caller ID on ``FSK_BATCH_S`` stretches (decoded early when a caller ID is asked for).
A batch in which a detector provably cannot react (:mod:`firmware.dsp.quiet`: line noise,
the pauses of a call) is not shown to it; it sees a gap there, as after an overrun. That
makes an idle line nearly free and changes no detector's result.

No I/O and no clock: frames in, facts out.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from firmware.dsp.blocks import BlockGatherer
from firmware.dsp.cid_messages import CallerIdMessage, parse_dtmf_clip
from firmware.dsp.dtmf import DtmfDetector, DtmfEvent
from firmware.dsp.fsk import CallerIdDecoder
from firmware.dsp.highpass import HumFilter
from firmware.dsp.levels import LevelStats
from firmware.dsp.quiet import QuietBound

log = logging.getLogger(__name__)

# What the line heard is kept this long: long enough to span ringing before an answer
# (caller ID comes after the first ring; six rings of a 6 s cadence is 36 s) plus margin.
DEFAULT_HISTORY_S = 60.0
LEVEL_WINDOW_S = 1.0
# Capture periods are short (20 ms); the detectors cost mostly per call, so blocks are
# gathered to this length first (measured: 20 ms -> 100 ms blocks halves the CPU time).
# The recorder calls catch_up() before it needs everything analysed (end of a call).
BATCH_S = 0.1
# The quiet bound's coarse test sums the line in 5 ms blocks: 20 to a batch.
QUIET_BLOCKS_PER_S = 200
# FSK caller ID is asked for only when a call starts (caller_id_before analyses what is
# still held), so it can take longer stretches than DTMF, whose progress gates what a
# masking recorder may write: per-call numpy overhead was most of its cost at 0.1 s.
FSK_BATCH_S = 1.0


@dataclass(frozen=True, slots=True)
class HeardDigit:
    """A key press with its running number on this line (numbers never repeat)."""

    seq: int
    event: DtmfEvent


def caller_id_record(message: CallerIdMessage) -> dict[str, Any]:
    """The manifest's ``caller_id`` object for a message (head office indexes it)."""
    return {
        "number": message.number,
        "name": message.name,
        "time": message.time,
        "absence_number": message.absence_number,
        "absence_name": message.absence_name,
        "source": message.standard,
        "format": message.format,
    }


class LineAnalyser:
    """DTMF, caller ID (FSK and DTMF CLIP, plus messages from a serial unit) and levels
    for one line's stream of mono int16 blocks."""

    def __init__(
        self,
        rate: int,
        *,
        fsk_caller_id: bool = True,
        history_s: float = DEFAULT_HISTORY_S,
    ) -> None:
        self.rate = rate
        self._batch = BlockGatherer(max(1, round(BATCH_S * rate)))
        # The detectors hear the line through a mains-hum high-pass; the levels do not
        # (they report the hum).
        self._hum_filter = HumFilter(rate)
        self.dtmf = DtmfDetector(rate)
        self.fsk = CallerIdDecoder(rate) if fsk_caller_id else None
        # Batches no detector could react to are neither filtered nor shown to them
        # (firmware.dsp.quiet).
        self._quiet = QuietBound(
            self.dtmf.gate_limit,
            self.fsk.hunt_limit if self.fsk else None,
            self._hum_filter.taps,
            block=max(1, rate // QUIET_BLOCKS_PER_S),
        )
        self._dtmf_skipped = False  # the last batch was too quiet to show the DTMF detector
        self._dtmf_origin: int | None = None  # where the detector's window grid starts
        # The last batch (the filter's input for it, its frame): what a detector did not
        # see of it is filtered when the next batch needs it.
        self._previous: tuple[npt.NDArray[np.float64], int] | None = None
        # The last batch was not shown to FSK: it is after all when the next one is,
        # since a message's start may straddle the two.
        self._fsk_skipped = False
        self._fsk_batch = max(1, round(FSK_BATCH_S * rate))
        self._fsk_held: list[npt.NDArray[np.float64]] = []  # filtered, not yet decoded
        self._fsk_held_start = 0
        self._fsk_held_frames = 0
        self._history = round(history_s * rate)
        self._digits: deque[HeardDigit] = deque()
        self._next_seq = 0
        self._caller_ids: deque[CallerIdMessage] = deque()
        self._end_frame: int | None = None
        self._level_window = BlockGatherer(max(1, round(LEVEL_WINDOW_S * rate)))
        # The last whole second, measured only when asked for (the status file, tools):
        # most seconds are never looked at.
        self._level_second: npt.NDArray[np.int16] | None = None
        self._level_summary: dict[str, Any] | None = None

    # -- feeding -----------------------------------------------------------------------
    def process(self, samples: npt.NDArray[np.int16], start_frame: int) -> list[DtmfEvent]:
        """Take one block starting at stream frame ``start_frame``; it is analysed once
        ``BATCH_S`` of audio has gathered (or at :meth:`catch_up`). Returns the key presses
        that ended in what was analysed (they are kept in the history too)."""
        events: list[DtmfEvent] = []
        # After a gap (an overrun) the batch in hand comes out short: analysed, not joined.
        for batch, batch_start in self._batch.push(samples, start_frame):
            events += self._analyse(batch, batch_start)
        return events

    def catch_up(self) -> list[DtmfEvent]:
        """Analyse every frame taken so far (the recorder calls this before it must know
        whether a key press is under way, e.g. at the end of a call)."""
        batch = self._batch.flush()
        events = [] if batch is None else self._analyse(*batch)
        self._decode_caller_id()
        return events

    def _analyse(self, samples: npt.NDArray[np.int16], start_frame: int) -> list[DtmfEvent]:
        if self._end_frame is not None and start_frame != self._end_frame:
            # After a gap: audio that was never adjacent. What came before is decoded on
            # its own.
            self._decode_caller_id()
            self._hum_filter.reset()
            self._quiet.reset()
            self._dtmf_origin = self._previous = None
        if self._dtmf_origin is None:
            self._dtmf_origin = start_frame
        extended = self._hum_filter.extend(samples)  # filtered below only if needed
        dtmf_audible, fsk_audible = self._quiet.audible(samples)
        filtered: npt.NDArray[np.float64] | None = None
        events: list[DtmfEvent] = []
        resuming = self._dtmf_skipped
        # Never while a key press may be under way: its end must be seen.
        self._dtmf_skipped = not dtmf_audible and not self.dtmf.tone_pending
        if not self._dtmf_skipped:
            filtered = self._hum_filter.apply(extended)
            events = self._show_dtmf(filtered, start_frame, resuming=resuming)
        for event in events:
            self._digits.append(HeardDigit(self._next_seq, event))
            self._next_seq += 1
        if self.fsk is not None and fsk_audible:
            if self._fsk_skipped and self._previous is not None:
                previous, previous_start = self._previous
                self._hold_for_fsk(self._hum_filter.apply(previous), previous_start)
            if filtered is None:
                filtered = self._hum_filter.apply(extended)
            self._hold_for_fsk(filtered, start_frame)
        self._fsk_skipped = not fsk_audible
        self._previous = (extended, start_frame)
        self._end_frame = start_frame + samples.shape[0]
        self._levels(samples, start_frame)
        self._prune()
        return events

    def _show_dtmf(
        self, filtered: npt.NDArray[np.float64], start_frame: int, *, resuming: bool
    ) -> list[DtmfEvent]:
        """Run the DTMF detector over a batch. After skipped batches it resumes on its
        own window grid: the part of its window that began in the last skipped batch is
        filtered now and shown first, so it sees exactly the windows it would have seen
        (the ones it missed could not pass its gate, and it had no tone pending)."""
        assert self._dtmf_origin is not None
        lead = (start_frame - self._dtmf_origin) % self.dtmf.window if resuming else 0
        if lead == 0 or self._previous is None:
            return self.dtmf.process(filtered, start_frame)
        taps = self._hum_filter.taps.size
        lead_in = self._hum_filter.apply(self._previous[0][-(lead + taps - 1) :])
        return self.dtmf.process(np.concatenate((lead_in, filtered)), start_frame - lead)

    def _hold_for_fsk(self, filtered: npt.NDArray[np.float64], start_frame: int) -> None:
        """Hold ``filtered`` for the FSK decoder; decode once a stretch is long enough.
        Held audio is one stretch: what was held before a jump is decoded on its own."""
        if self._fsk_held and self._fsk_held_start + self._fsk_held_frames != start_frame:
            self._decode_caller_id()
        if not self._fsk_held:
            self._fsk_held_start = start_frame
        self._fsk_held.append(filtered)
        self._fsk_held_frames += filtered.shape[0]
        if self._fsk_held_frames >= self._fsk_batch:
            self._decode_caller_id()

    def _decode_caller_id(self) -> None:
        """Run the FSK decoder over the filtered audio held for it."""
        if self.fsk is None or not self._fsk_held:
            return
        held = self._fsk_held[0] if len(self._fsk_held) == 1 else np.concatenate(self._fsk_held)
        self._caller_ids.extend(self.fsk.process(held, self._fsk_held_start))
        self._fsk_held_start += held.shape[0]
        self._fsk_held, self._fsk_held_frames = [], 0
        for error in self.fsk.pop_errors():
            # One line per rejected message: support staff look for these when a caller ID
            # is missing (a bad checksum is a line problem, not ours).
            log.info(
                "caller ID rejected at frame %d: %s %s (%s)",
                error.start_frame,
                error.standard,
                error.reason,
                error.detail,
            )

    def add_caller_id(self, message: CallerIdMessage) -> None:
        """A caller ID from another source (a serial unit), placed on this line's timeline."""
        self._caller_ids.append(message)

    def _levels(self, samples: npt.NDArray[np.int16], start_frame: int) -> None:
        for window, _start in self._level_window.push(samples, start_frame):
            if window.shape[0] == self._level_window.length:  # a gap cuts a second short
                self._level_second, self._level_summary = window, None

    @property
    def levels(self) -> dict[str, Any] | None:
        """The levels of the last whole second heard (None before the first)."""
        if self._level_summary is None and self._level_second is not None:
            stats = LevelStats(self.rate)
            stats.update(self._level_second)
            self._level_summary = stats.summary()
        return self._level_summary

    def _prune(self) -> None:
        if self._end_frame is None:
            return
        oldest = self._end_frame - self._history
        while self._digits and self._digits[0].event.end_frame < oldest:
            self._digits.popleft()
        while self._caller_ids and self._caller_ids[0].start_frame < oldest:
            self._caller_ids.popleft()

    # -- questions -----------------------------------------------------------------------
    @property
    def end_frame(self) -> int | None:
        """The frame after the last one analysed (None before any audio)."""
        return self._end_frame

    @property
    def settled_frame(self) -> int | None:
        """No key press reported later can start before this frame."""
        if self._dtmf_skipped:
            # Not shown to the detector, which starts afresh after it: settled to its end.
            return self._end_frame
        return self.dtmf.settled_frame

    @property
    def tone_pending(self) -> bool:
        """A key press may be under way that has not been reported yet."""
        return self.dtmf.tone_pending

    @property
    def next_digit_seq(self) -> int:
        return self._next_seq

    def digits_from(self, seq: int) -> list[HeardDigit]:
        """Key presses numbered ``seq`` and later, still in the history."""
        return [d for d in self._digits if d.seq >= seq]

    def first_digit_seq_ending_after(self, frame: int) -> int:
        """The number of the first key press still sounding after ``frame``."""
        for digit in self._digits:
            if digit.event.end_frame > frame:
                return digit.seq
        return self._next_seq

    def caller_id_before(
        self, frame: int, *, window_frames: int, after_frames: int = 0
    ) -> CallerIdMessage | None:
        """The caller ID that announced a call answered at ``frame``: the latest message
        (FSK, serial, or a DTMF CLIP among the digits heard before ``frame``) starting in
        ``[frame - window_frames, frame + after_frames]``."""
        self._decode_caller_id()
        lo, hi = frame - window_frames, frame + after_frames
        found: list[CallerIdMessage] = [m for m in self._caller_ids if lo <= m.start_frame <= hi]
        before = [d.event for d in self._digits if lo <= d.event.start_frame < frame]
        # Times in seconds since frame 0, so the CLIPs' frames are stream frames too.
        found += parse_dtmf_clip(
            [(e.digit, e.start_frame / self.rate) for e in before], rate=self.rate
        )
        if not found:
            return None
        return max(found, key=lambda m: m.start_frame)
