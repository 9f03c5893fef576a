"""Gathering a stream's short capture blocks into fixed-length blocks for analysis.

Capture periods are short (tens of ms) while the detectors and level measures want longer
stretches; :class:`BlockGatherer` sits between them. It keeps the stream's frame numbers,
so each block it hands out says where it starts, and a jump in the stream (frames lost
to an overrun) ends the block in hand rather than joining audio that was never adjacent.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Block = tuple[npt.NDArray[np.int16], int]  # (samples, stream frame of the first sample)


class BlockGatherer:
    """Collects mono int16 samples into blocks of ``length`` frames.

    :meth:`push` returns the blocks it completed, :meth:`flush` the part-filled one. Every
    block handed out is the caller's to keep (the gatherer starts a fresh buffer).
    """

    def __init__(self, length: int) -> None:
        if length < 1:
            raise ValueError(f"block length must be at least 1 frame, not {length}")
        self.length = length
        self._buf = np.empty(length, dtype=np.int16)
        self._fill = 0
        self._start = 0

    @property
    def pending(self) -> int:
        """Frames taken but not handed out yet."""
        return self._fill

    def push(self, samples: npt.NDArray[np.int16], start_frame: int) -> list[Block]:
        """Take ``samples`` starting at stream frame ``start_frame``; return the blocks this
        completed, in order. Samples that do not follow on from those in hand first end the
        part-filled block (returned short)."""
        blocks: list[Block] = []
        if self._fill and start_frame != self._start + self._fill:
            blocks.append(self._take())
        if self._fill == 0 and samples.shape[0] == self.length:
            # The common case when the capture period is the block length: a plain copy
            # (the caller's array may be a view of a buffer its source reuses).
            blocks.append((samples.copy(), start_frame))
            return blocks
        pos = 0
        while pos < samples.shape[0]:
            if self._fill == 0:
                self._start = start_frame + pos
            take = min(self.length - self._fill, samples.shape[0] - pos)
            self._buf[self._fill : self._fill + take] = samples[pos : pos + take]
            self._fill += take
            pos += take
            if self._fill == self.length:
                blocks.append(self._take())
        return blocks

    def flush(self) -> Block | None:
        """The part-filled block (None when nothing is in hand)."""
        return self._take() if self._fill else None

    def _take(self) -> Block:
        block = (self._buf[: self._fill], self._start)
        self._buf = np.empty(self.length, dtype=np.int16)
        self._fill = 0
        return block
