"""Per-line pre-roll ring buffer.

Audio is captured all the time; the ring keeps the most recent ``capacity`` frames of
one line so an off-hook edge can turn the last ``preroll_s`` seconds into the start of
a recording. Frames are addressed by their absolute index on the stream timeline, so
the recorder can ask for "frames 4000..4800" without tracking where they sit in memory.

Preallocated once; ``push`` copies a block in with at most two slice assignments and
allocates nothing, so it can run on every capture period on a Pi.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Samples = npt.NDArray[np.int16]


class PrerollRing:
    def __init__(self, capacity: int, start_frame: int = 0) -> None:
        if capacity <= 0:
            raise ValueError(f"ring capacity must be positive, got {capacity}")
        self._buf: Samples = np.zeros(capacity, dtype=np.int16)
        self._capacity = capacity
        self._end = start_frame  # absolute index one past the newest frame
        self._start = start_frame  # absolute index of the oldest frame held

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def start_frame(self) -> int:
        """Oldest frame still held."""
        return self._start

    @property
    def end_frame(self) -> int:
        """One past the newest frame."""
        return self._end

    def push(self, samples: npt.NDArray[np.integer]) -> None:
        """Append ``samples`` (1-D; any integer view, e.g. one column of a block)."""
        n = int(samples.shape[0])
        if n >= self._capacity:
            # Only the newest ``capacity`` frames can be kept; lay them out so that
            # slot (index % capacity) holds frame ``index``. Rare (a block longer than
            # the whole ring), so the temporary np.roll makes is acceptable here.
            self._end += n
            self._buf[:] = np.roll(samples[n - self._capacity :], self._end % self._capacity)
            self._start = self._end - self._capacity
            return
        pos = self._end % self._capacity
        first = min(n, self._capacity - pos)
        self._buf[pos : pos + first] = samples[:first]
        if first < n:
            self._buf[: n - first] = samples[first:]
        self._end += n
        self._start = max(self._start, self._end - self._capacity)

    def push_silence(self, n: int) -> None:
        """Append ``n`` frames of digital silence (stands in for audio lost to an overrun)."""
        if n <= 0:
            return
        if n >= self._capacity:
            self._buf[:] = 0
            self._end += n
            self._start = self._end - self._capacity
            return
        pos = self._end % self._capacity
        first = min(n, self._capacity - pos)
        self._buf[pos : pos + first] = 0
        if first < n:
            self._buf[: n - first] = 0
        self._end += n
        self._start = max(self._start, self._end - self._capacity)

    def read(self, start: int, stop: int) -> tuple[Samples, Samples]:
        """Frames ``[start, stop)`` as up to two views (the second empty unless wrapped).

        Raises ``IndexError`` if part of the span has been overwritten or not captured yet.
        The views are only valid until the next ``push``.
        """
        if start < self._start or stop > self._end or start > stop:
            raise IndexError(
                f"frames [{start}, {stop}) not in ring (holds [{self._start}, {self._end}))"
            )
        if start == stop:
            return self._buf[:0], self._buf[:0]
        a = start % self._capacity
        b = a + (stop - start)
        if b <= self._capacity:
            return self._buf[a:b], self._buf[:0]
        return self._buf[a:], self._buf[: b - self._capacity]

    def copy(self, start: int, stop: int) -> Samples:
        """Frames ``[start, stop)`` as one new array (for tests and tools)."""
        head, tail = self.read(start, stop)
        return np.concatenate((head, tail)) if tail.size else head.copy()
