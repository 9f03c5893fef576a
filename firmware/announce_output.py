"""The announcement stream: the recorder's one playback, fed one block per capture period.

The stream is continuous (silence between announcements), so after each open playback
sample ``i`` is stream frame ``origin_frame + i`` (:attr:`AnnounceOutput.origin_frame`),
until an underrun or a full buffer (counted in the status): what makes the timing exact
and testable. It runs ``delay_frames`` (``call.debounce_ms``)
behind the capture: a call's announcement starts at its off-hook edge, which the
debounce confirms only that much later, and a block is played once everything that
decides it is known. On a real card the announcement is heard the delay plus the
playback's prefill (:mod:`drivers.audio.playback`) after the edge: about 110 ms with the
defaults.

A playback that cannot be opened or fails is a fault (:attr:`AnnounceOutput.fault`:
LEDs, status file, telemetry), logged once and retried every ``announce.reopen_s`` of
stream time; it never touches the recording. While faulted the schedule goes on
unplayed, and the line runners mark the announcements that fall due ``played: false``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from drivers.audio.playback import Playback
from firmware.announce import LineAnnouncer, render_block
from firmware.errors import AudioDeviceError

log = logging.getLogger(__name__)


class AnnounceOutput:
    """Keeps the playback stream going for every announcing line."""

    def __init__(
        self,
        playback: Playback,
        announcers: Sequence[LineAnnouncer],
        *,
        delay_frames: int,
        reopen_frames: int,
    ) -> None:
        self.playback = playback
        self.announcers = list(announcers)
        self.delay = delay_frames
        self.reopen_frames = reopen_frames
        self.fault: str | None = None
        # Stream frame of playback sample 0 since the last open (None: not open).
        self.origin_frame: int | None = None
        self._cursor: int | None = None  # next stream frame to play
        self._retry_at: int | None = None  # while faulted: stream frame of the next open

    def prepare(self, block_start: int) -> None:
        """Before the lines take the block: open the playback, or reopen it when due, so
        the announcements falling due in it know whether they are played."""
        if self.origin_frame is not None:
            return
        start = block_start - self.delay
        if self._retry_at is not None and start < self._retry_at:
            return
        try:
            self.playback.open()
        except AudioDeviceError as exc:
            self._failed(exc, start)
            return
        if self.fault is not None:
            log.info("announce playback %s works again", self.playback.device)
        self.fault = None
        self._retry_at = None
        self.origin_frame = start - self.playback.prefill_frames
        log.info(
            "announce playback open device=%s channels=%d origin_frame=%d",
            self.playback.device,
            self.playback.channels,
            self.origin_frame,
        )

    def play(self, block_start: int, block_end: int) -> None:
        """Play stream frames up to ``block_end - delay``: the block just captured,
        ``delay`` behind. Frames lost with the capture (a gap) are skipped, not played."""
        start, end = block_start - self.delay, block_end - self.delay
        if self._cursor is not None and self._cursor < start and self.origin_frame is not None:
            # The gap is not played: the samples after it stand for frames that much later.
            self.origin_frame += start - self._cursor
        cursor = start if self._cursor is None else max(self._cursor, start)
        self._cursor = end
        if cursor >= end:
            return
        if self.origin_frame is None:
            for announcer in self.announcers:
                announcer.skip(end)
            return
        for announcer in self.announcers:
            announcer.skip(cursor)
        block, _ = render_block(self.announcers, cursor, end, self.playback.channels)
        try:
            self.playback.write(block)
        except AudioDeviceError as exc:
            self.playback.close()
            self._failed(exc, end)

    def close(self) -> None:
        self.playback.close()
        self.origin_frame = None

    def status(self) -> dict[str, object]:
        stats = self.playback.stats
        return {
            "device": self.playback.device,
            "frames": stats.frames,
            "underruns": stats.underruns,
            "dropped_frames": stats.dropped_frames,
        }

    def _failed(self, exc: AudioDeviceError, frame: int) -> None:
        if self.fault != str(exc):
            log.error("announce fault: %s", exc)
        self.fault = str(exc)
        self.origin_frame = None
        self._retry_at = frame + self.reopen_frames
