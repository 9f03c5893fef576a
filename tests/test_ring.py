"""Pre-roll ring buffer: addressing by stream frame, wrap-around, overwrite, no allocation."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from buffers.ring import PrerollRing


def test_keeps_the_newest_frames_across_wraparound():
    ring = PrerollRing(100)
    data = np.arange(1000, dtype=np.int16)
    for i in range(0, 1000, 37):
        ring.push(data[i : i + 37])
    assert ring.end_frame == 1000 and ring.start_frame == 900
    np.testing.assert_array_equal(ring.copy(900, 1000), data[900:1000])
    np.testing.assert_array_equal(ring.copy(950, 960), data[950:960])


def test_refuses_frames_that_were_overwritten_or_not_yet_captured():
    ring = PrerollRing(10)
    ring.push(np.arange(25, dtype=np.int16))
    with pytest.raises(IndexError, match=r"\[14, 20\).*\[15, 25\)"):
        ring.read(14, 20)
    with pytest.raises(IndexError):
        ring.read(20, 26)


def test_block_longer_than_the_ring_keeps_its_tail_in_place():
    ring = PrerollRing(8)
    ring.push(np.arange(3, dtype=np.int16))
    ring.push(np.arange(100, 120, dtype=np.int16))
    assert ring.start_frame == 15 and ring.end_frame == 23
    np.testing.assert_array_equal(ring.copy(15, 23), np.arange(112, 120))
    ring.push(np.array([7, 8, 9], dtype=np.int16))
    np.testing.assert_array_equal(ring.copy(18, 26), [115, 116, 117, 118, 119, 7, 8, 9])


def test_silence_stands_in_for_lost_frames():
    ring = PrerollRing(50)
    ring.push(np.full(10, 5, dtype=np.int16))
    ring.push_silence(7)
    ring.push(np.full(3, 9, dtype=np.int16))
    np.testing.assert_array_equal(ring.copy(0, 20), [5] * 10 + [0] * 7 + [9] * 3)


def test_push_of_a_column_view_does_not_allocate():
    ring = PrerollRing(48000)
    block = np.ones((160, 4), dtype=np.int16)
    ring.push(block[:, 2])  # warm up
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for _ in range(500):
            ring.push(block[:, 2])
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(
        s.size_diff for s in after.compare_to(before, "filename") if "ring.py" in str(s.traceback)
    )
    assert grown < 1024, f"push allocated {grown} bytes over 500 periods"


@settings(max_examples=200, deadline=None)
@given(
    capacity=st.integers(1, 64),
    sizes=st.lists(st.integers(0, 150), min_size=1, max_size=30),
)
def test_matches_a_plain_list_model(capacity: int, sizes: list[int]):
    ring = PrerollRing(capacity)
    model: list[int] = []
    counter = 0
    for n in sizes:
        chunk = (np.arange(counter, counter + n) % 30000).astype(np.int16)
        counter += n
        ring.push(chunk)
        model.extend(chunk.tolist())
    held = model[-capacity:]
    assert ring.end_frame == len(model)
    assert ring.start_frame == len(model) - len(held)
    assert ring.copy(ring.start_frame, ring.end_frame).tolist() == held
