"""FSK caller ID as the line analyser streams it (issue 21): long blocks, quiet stretches,
and the caller ID asked for before the held audio was decoded.

The decoder's results must not depend on how the audio is cut into blocks; these tests
cover what the cheaper paths added: candidates rejected one after another inside one long
block, the tone correlators skipped on quiet blocks, the search for the type byte ended
by the mark going away wherever the blocks end, and the analyser holding a second of
audio for the decoder.
"""

from __future__ import annotations

import numpy as np
import pytest

from firmware.dsp.analyser import FSK_BATCH_S, LineAnalyser
from firmware.dsp.fsk import BELL202, V23, CallerIdDecoder, FskDemodulator
from tests.cid_signals import at_level, missing_tools, to_int16
from tests.test_caller_id import MESSAGES, burst, decode

pytestmark = pytest.mark.skipif(bool(missing_tools()), reason="minimodem and sox are needed")

RATES = (8000, 16000)


def impure_mark(rate: int, seconds: float) -> np.ndarray:
    """1200 Hz with three louder tones below it: the soft decision says "mark" (bell202)
    but the mark tone holds well under the 30 % purity a caller-ID mark needs, so the
    decoder rejects one candidate after another all along it."""
    t = np.arange(round(seconds * rate)) / rate
    x = sum(
        a * np.sin(2 * np.pi * f * t) for f, a in ((1200, 1.0), (700, 1.3), (850, 1.3), (1000, 1.3))
    )
    assert isinstance(x, np.ndarray)
    return at_level(x, -25.0)


@pytest.mark.parametrize("rate", RATES)
def test_a_burst_after_rejected_candidates_in_the_same_long_block(rate: int) -> None:
    b = burst(MESSAGES["sdmf-number"], BELL202, rate)
    x = to_int16(
        np.concatenate((impure_mark(rate, 0.6), at_level(b.samples, -25.0), np.zeros(rate // 4)))
    )
    dec = CallerIdDecoder(rate)
    assert dec.process(x[: round(0.6 * rate)], 0) == []  # the candidates alone: nothing
    whole = decode(x, rate, [len(x)])
    assert [m.number for m in whole[0]] == ["6095551212"]
    assert decode(x, rate) == whole  # 20 ms blocks
    assert decode(x, rate, [rate]) == whole


@pytest.mark.parametrize("rate", RATES)
def test_quiet_blocks_skip_the_correlators_but_not_what_follows(rate: int) -> None:
    """A block too quiet to hold a mark leaves its soft decisions out, except those the
    smoothing carries into the next block: a weak mark tone at the end of a quiet block
    (below the level floor, yet a clean mark) must count as it does unskipped."""
    t = np.arange(rate) / rate
    weak = 20.0 * np.sin(2 * np.pi * 1200 * t)  # about -64 dBFS: below the floor
    b = burst(MESSAGES["mdmf-name"], BELL202, rate)
    loud = at_level(np.sin(2 * np.pi * 1200 * t[: rate // 10]), -20.0)  # on from the boundary
    x = to_int16(np.concatenate((np.zeros(rate // 2), weak, loud, at_level(b.samples, -20.0))))
    boundary = rate // 2 + rate  # where the weak tone ends: a block boundary
    upto = boundary + rate // 10
    fed, whole = CallerIdDecoder(rate), CallerIdDecoder(rate)
    for i in range(0, upto, rate // 10):
        assert fed.process(x[i : i + rate // 10], i) == []
    assert whole.process(x[:upto], 0) == []
    n = min(fed._ok.size, whole._ok.size)
    assert n > upto - boundary + rate // 50  # the history still reaches back past it
    assert fed._ok[-(upto - boundary) :].any()  # the mark is seen from the boundary on
    assert np.array_equal(fed._ok[-n:], whole._ok[-n:])
    found, _errors = decode(x, rate, [rate // 10])
    assert [m.number for m in found] == ["5559876543"]


def test_the_correlators_from_a_point_on_match_the_whole_block() -> None:
    rng = np.random.default_rng(4)
    raw = rng.normal(0, 3000, 4000)
    full, part = FskDemodulator(8000), FskDemodulator(8000)
    full.process(raw[:1000])
    part.process(raw[:1000])
    x2, _power2 = full.dc_and_power(raw[1000:])
    soft_full = full.soft(x2)
    x3, _power3 = part.dc_and_power(raw[1000:])
    soft_part = part.soft(x3, soft_from=2500)
    np.testing.assert_allclose(soft_part[:, 2500:], soft_full[:, 2500:], atol=1e-9)
    assert not soft_part[:, :2400].any()
    # and the state carried on into the next block is the same
    xa, _ = full.dc_and_power(raw[:500])
    xb, _ = part.dc_and_power(raw[:500])
    np.testing.assert_allclose(part.soft(xb), full.soft(xa), atol=1e-9)


@pytest.mark.parametrize("rate", RATES)
def test_a_mark_that_goes_away_ends_the_search_wherever_blocks_end(rate: int) -> None:
    """A clean mark tone with no message after it, then a real burst 0.3 s later: the
    type-byte search after the first mark stops where the mark went away, in long blocks
    as in short ones, and the burst is found."""
    t = np.arange(round(0.2 * rate)) / rate
    mark = at_level(np.sin(2 * np.pi * V23.mark * t), -20.0)
    b = burst(MESSAGES["mdmf-out-of-area"], V23, rate)
    x = to_int16(
        np.concatenate(
            (mark, np.zeros(round(0.3 * rate)), at_level(b.samples, -20.0), np.zeros(rate // 4))
        )
    )
    whole = decode(x, rate, [len(x)])
    assert [m.standard for m in whole[0]] == ["v23"]
    assert whole[0][0].seizure  # found after its own seizure, not from the earlier mark
    assert decode(x, rate) == whole
    assert decode(x, rate, [rate]) == whole


def test_the_analyser_decodes_held_audio_when_asked_for_a_caller_id() -> None:
    """The analyser holds up to FSK_BATCH_S of audio for the decoder; a caller ID asked
    for at off-hook must see a burst that ended just before, not a second later."""
    rate = 8000
    b = burst(MESSAGES["sdmf-number"], BELL202, rate)
    x = to_int16(
        np.concatenate((np.zeros(rate // 5), at_level(b.samples, -20.0), np.zeros(rate // 5)))
    )
    assert x.size < FSK_BATCH_S * rate  # all of it still held for the decoder
    line = LineAnalyser(rate)
    for i in range(0, x.size, 160):
        line.process(x[i : i + 160], i)
    # The answer comes from the analysed batches: 0.1 s ones, so all but the last.
    message = line.caller_id_before(x.size, window_frames=x.size)
    assert message is not None and message.number == "6095551212"
