"""BlockGatherer: any chunking of a stream gives the same fixed-length blocks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware.dsp.analyser import LineAnalyser
from firmware.dsp.blocks import BlockGatherer


def _gather(gatherer: BlockGatherer, pieces: list[tuple[np.ndarray, int]]):
    blocks = [b for samples, start in pieces for b in gatherer.push(samples, start)]
    tail = gatherer.flush()
    return blocks + ([tail] if tail is not None else [])


@given(
    length=st.integers(1, 50),
    total=st.integers(0, 400),
    cuts=st.lists(st.integers(0, 400), max_size=30),
    first=st.integers(0, 10**9),
)
def test_any_chunking_gives_the_same_blocks(length, total, cuts, first):
    stream = np.arange(total, dtype=np.int16)
    bounds = sorted({0, total, *(c for c in cuts if c <= total)})
    pieces = [(stream[a:b], first + a) for a, b in itertools.pairwise(bounds)]
    blocks = _gather(BlockGatherer(length), pieces)
    assert [start for _, start in blocks] == list(range(first, first + total, length))
    assert [len(b) for b, _ in blocks[:-1]] == [length] * (len(blocks) - 1)
    joined = np.concatenate([b for b, _ in blocks]) if blocks else stream[:0]
    np.testing.assert_array_equal(joined, stream)


def test_a_gap_ends_the_block_in_hand_short():
    gatherer = BlockGatherer(10)
    assert gatherer.push(np.ones(4, np.int16), 100) == []
    assert gatherer.pending == 4
    (short, start), *rest = gatherer.push(np.full(12, 2, np.int16), 200)  # frames 104-199 lost
    assert start == 100 and short.tolist() == [1] * 4
    assert [(b.tolist(), s) for b, s in rest] == [([2] * 10, 200)]
    tail = gatherer.flush()
    assert tail is not None and tail[1] == 210 and tail[0].tolist() == [2, 2]
    assert gatherer.flush() is None


def test_blocks_handed_out_are_not_overwritten_later():
    gatherer = BlockGatherer(3)
    ((first, _),) = gatherer.push(np.array([1, 2, 3], np.int16), 0)
    gatherer.push(np.array([7, 8, 9, 10], np.int16), 3)
    assert first.tolist() == [1, 2, 3]


def test_length_must_be_positive():
    with pytest.raises(ValueError, match="at least 1 frame"):
        BlockGatherer(0)


def test_line_levels_skip_a_second_cut_by_a_gap():
    rate = 8000
    analyser = LineAnalyser(rate, fsk_caller_id=False)
    loud = (np.sin(np.arange(rate) * 2 * np.pi * 440 / rate) * 16000).astype(np.int16)
    analyser.process(loud[: rate // 2], 0)
    analyser.process(np.zeros(rate, np.int16), rate)  # half a second lost between
    analyser.catch_up()
    # The only whole second is the silent one after the gap: the loud half is not joined.
    assert analyser.levels is not None
    assert analyser.levels["rms_dbfs"] < -90
