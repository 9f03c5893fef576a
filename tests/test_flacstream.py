"""The call's one FLAC encoder (firmware/flacstream.py) against the reference `flac` tool,
and the journal's version-2 stream (sealedrec/segments.py) read back."""

from __future__ import annotations

import subprocess

import numpy as np
import numpy.typing as npt
import pytest

from firmware.flacstream import FlacStreamEncoder, journal_blocksize
from sealedrec.segments import JournalFormatError, flac_with_total
from sealedrec.verify import decode_audio

RATE = 8000
FLAC_SYNC = b"\xff\xf8"  # a fixed-blocksize frame's sync code


def _flac_tool(data: bytes, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["flac", *args, "-"], input=data, capture_output=True, check=False)


def _signal(seconds: float, seed: int = 5) -> npt.NDArray[np.int16]:
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * RATE)) / RATE
    tone = 6000 * np.sin(2 * np.pi * 440 * t) * (1 + np.sin(2 * np.pi * 0.5 * t)) / 2
    mixed: npt.NDArray[np.float64] = np.clip(tone + rng.normal(0, 300, t.size), -32768, 32767)
    return mixed.astype(np.int16)


class Captured:
    def __init__(self) -> None:
        self.stream = bytearray()
        self.pieces: list[tuple[bytes, int]] = []

    def append(self, data: bytes, samples: int) -> None:
        self.stream += data
        self.pieces.append((data, samples))

    def patch(self, at: int, data: bytes) -> None:
        self.stream[at : at + len(data)] = data


def test_the_finished_stream_passes_the_reference_tools_md5_check():
    audio = _signal(5.3)
    out = Captured()
    encoder = FlacStreamEncoder(RATE, journal_blocksize(RATE), out.append, out.patch)
    for at in range(0, audio.size, 800):
        encoder.process(audio[at : at + 800])
    encoder.finish()
    # `flac -t` decodes and checks STREAMINFO's MD5 (rewritten at finish through patch).
    tested = _flac_tool(bytes(out.stream), "-t")
    assert tested.returncode == 0, tested.stderr.decode()
    assert b"MD5 signature" not in tested.stderr  # it was set, so it was checked
    np.testing.assert_array_equal(decode_audio(bytes(out.stream)), audio)


@pytest.mark.parametrize("period", [160, 800, 1333])
def test_frames_are_whole_and_lag_the_input_by_at_most_one_block(period: int):
    audio = _signal(3.0)
    block = journal_blocksize(RATE)
    out = Captured()
    encoder = FlacStreamEncoder(RATE, block, out.append, out.patch)
    fed = 0
    for at in range(0, audio.size, period):
        encoder.process(audio[at : at + period])
        fed = min(audio.size, at + period)
        # libFLAC emits a block once the next one has begun.
        assert encoder.frames_out == (fed - 1) // block * block
    encoder.finish()
    frames = [(data, n) for data, n in out.pieces if n]
    assert all(data.startswith(FLAC_SYNC) for data, _ in frames)
    assert sum(n for _, n in frames) == audio.size
    assert {n for _, n in frames[:-1]} == {block}


def test_any_prefix_of_whole_frames_is_a_stream_once_its_total_is_filled_in():
    """What a power cut leaves: the metadata and the frames up to some record."""
    audio = _signal(2.0)
    out = Captured()
    encoder = FlacStreamEncoder(RATE, 800, out.append, out.patch)
    encoder.process(audio)
    encoder.finish()
    head = b"".join(data for data, n in out.pieces if n == 0)
    frames = [(data, n) for data, n in out.pieces if n]
    for cut in (1, 7, len(frames)):
        prefix = head + b"".join(data for data, _ in frames[:cut])
        total = sum(n for _, n in frames[:cut])
        assert _flac_tool(prefix, "-t", "-s").returncode == 0  # the reference tool reads it
        np.testing.assert_array_equal(decode_audio(flac_with_total(prefix, total)), audio[:total])


def test_flac_with_total_refuses_what_is_not_a_streaminfo():
    with pytest.raises(JournalFormatError, match="STREAMINFO"):
        flac_with_total(b"OggS" + bytes(60), 10)
    with pytest.raises(JournalFormatError, match="cannot be a FLAC total"):
        flac_with_total(b"fLaC" + bytes(60), 1 << 36)


def test_closing_unfinished_emits_nothing_more():
    """A discarded call: the block the encoder holds goes nowhere (libFLAC's delete does
    not finish the stream)."""
    out = Captured()
    encoder = FlacStreamEncoder(RATE, 800, out.append, out.patch)
    encoder.process(_signal(0.5))
    before = bytes(out.stream)
    encoder.close()
    assert bytes(out.stream) == before
    encoder.close()  # idempotent


def test_a_failing_sink_is_raised_from_the_call_that_fed_it():
    def full(_data: bytes, samples: int) -> None:
        if samples:
            raise OSError(28, "No space left on device")

    encoder = FlacStreamEncoder(RATE, 800, full, lambda _at, _data: None)
    with pytest.raises(OSError, match="No space"):
        encoder.process(_signal(0.5))


@pytest.mark.parametrize(
    ("sync_frames", "block"), [(8000, 800), (16000, 1600), (48000, 4000), (800, 80), (4000, 400)]
)
def test_the_journal_block_divides_the_sync_within_the_subset(sync_frames: int, block: int):
    assert journal_blocksize(sync_frames) == block
