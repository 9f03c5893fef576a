"""DTMF detection and masking (firmware/dsp/dtmf.py) against signals nobody here wrote.

Tones come from ``sox synth`` (two sines on two channels, mixed to mono by ``remix`` with
a gain per tone, so frequency and level of each tone are exact); every tone is measured
here (FFT peak + least-squares amplitude) before it is used, so a sox surprise fails the
helper rather than silently testing something else. Speech comes from ``espeak-ng``
(several voices, numbers spoken) band-limited and resampled by sox; "music" is sox's
``synth`` (chords of plucked strings and other waveforms, sweeps, coloured noise). The
reference detector is ``multimon-ng -a DTMF`` (raw s16le at 22 050 Hz, its input rate).

The criteria are spandsp's (tests/dtmf_rx_tests.c, the Mitel CM7291 tape) and ITU-T Q.24:
frequency +-1.5 % accepted / +-3.5 % rejected, forward twist 8 dB and reverse twist 4 dB,
40 ms tones accepted and 20 ms rejected, 40 ms pauses, dynamic range, 15 dB SNR, talk-off.
"""

from __future__ import annotations

import functools
import math
import shutil
import subprocess
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pytest

from firmware.dsp import dtmf
from firmware.dsp.dtmf import (
    KEYPAD,
    DtmfDetector,
    DtmfEvent,
    MaskMode,
    detect,
    mask_spans,
    masking_plan,
    window_hits,
)
from tests.dtmf_signals import (
    MULTIMON,
    SOX,
    TALK_OFF_SENTENCES,
    amplitude,
    dial,
    measure_tones,
    multimon,
    raw_out,
    sox_raw,
    sox_tone,
    synth_music,
)

Int16s = npt.NDArray[np.int16]
RATES = (8000, 16000)
ALL = KEYPAD  # all 16 digits
ESPEAK = shutil.which("espeak-ng")

pytestmark = pytest.mark.skipif(SOX is None, reason="sox is missing (Debian package sox)")


# --------------------------------------------------------------------------- signals


@functools.cache
def sox_white_noise(rate: int, seconds: float) -> Int16s:
    x = sox_raw(["-r", str(rate), "-n", *raw_out(rate), "synth", str(seconds), "whitenoise"])
    x.flags.writeable = False
    return x


def add_noise(x: Int16s, rate: int, snr_db: float, signal_power: float) -> Int16s:
    """``x`` plus sox white noise (full band) scaled to ``snr_db`` below ``signal_power``."""
    noise = sox_white_noise(rate, math.ceil(x.size / rate) + 1)[: x.size].astype(np.float64)
    noise *= math.sqrt(signal_power / 10.0 ** (snr_db / 10.0) / np.mean(noise**2))
    return np.clip(np.rint(x + noise), -32768, 32767).astype(np.int16)


def tone_power(*levels_dbm0: float) -> float:
    """Mean power (16-bit units squared) of sines at these levels."""
    return sum((amplitude(level) * 32768.0) ** 2 / 2.0 for level in levels_dbm0)


def digits_of(events: Sequence[DtmfEvent]) -> str:
    return "".join(e.digit for e in events)


needs_multimon = pytest.mark.skipif(MULTIMON is None, reason="multimon-ng is missing")
needs_espeak = pytest.mark.skipif(ESPEAK is None, reason="espeak-ng is missing")

SENTENCES = TALK_OFF_SENTENCES[:8]
VOICES = (
    "en-gb", "en-us", "en-gb-x-rp", "en-gb-scotland", "en+f2", "en+f4", "en-us+m3",
    "en+klatt", "en+klatt4", "en-us+f5", "en+croak", "en+Tweaky", "de", "fr", "es", "it",
)  # fmt: skip


def espeak(text: str, voice: str, pitch: int, rate: int) -> Int16s:
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-p", str(pitch), "-s", "165", "--stdout", text],
        capture_output=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    band = "300-3400" if rate == 8000 else "100-7000"
    return sox_raw(["-t", "wav", "-", *raw_out(rate), "sinc", band], stdin=wav)


@pytest.fixture(scope="session")
def speech() -> dict[int, Int16s]:
    """About 5 minutes at 8 kHz and 1.5 at 16 kHz of espeak-ng speech, many voices."""
    if ESPEAK is None:
        pytest.skip("espeak-ng is missing")
    out: dict[int, Int16s] = {}
    for rate, pitches in ((8000, (35, 60, 85)), (16000, (50,))):
        parts = []
        i = 0
        for voice in VOICES:
            for pitch in pitches:
                parts.append(espeak(SENTENCES[i % len(SENTENCES)], voice, pitch, rate))
                i += 1
        out[rate] = np.concatenate(parts)
    return out


@pytest.fixture(scope="session")
def music() -> dict[int, Int16s]:
    """About 2 minutes of sox-synthesised "music" at each rate (made at 48 kHz: pluck)."""
    return {rate: synth_music(rate) for rate in RATES}


# --------------------------------------------------------------------------- detection


def test_sox_makes_what_we_ask() -> None:
    # The helper's own check, once more with a twist and an offset, so it cannot be vacuous.
    x = sox_tone("5", 8000, 4000, low_dbm0=-5.0, high_dbm0=-12.0, high_dev=0.035)
    (f1, l1), (f2, l2) = measure_tones(x, 8000)
    assert f1 == pytest.approx(770.0, rel=2e-4) and f2 == pytest.approx(1336.0 * 1.035, rel=2e-4)
    assert l1 == pytest.approx(-5.0, abs=0.1) and l2 == pytest.approx(-12.0, abs=0.1)


@pytest.mark.parametrize("rate", RATES)
def test_all_sixteen_digits(rate: int) -> None:
    x, spans = dial(ALL * 2, rate, lead_frames=37)
    events = detect(x, rate)
    assert digits_of(events) == ALL * 2
    window = dtmf.window_frames(rate)
    for event, (start, end) in zip(events, spans, strict=True):
        # The first hit window can begin a little before the tone (>= ~84 % of it is
        # tone) or up to a window after; the same at the end.
        assert start - window // 4 <= event.start_frame < start + window
        assert end - window < event.end_frame <= end + window // 4


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("block", [1, 37, 160, 320, 1000, 4096])
def test_streaming_any_block_size_gives_the_same_events(rate: int, block: int) -> None:
    x, _ = dial("159D*0#A", rate, on_s=0.04, off_s=0.04, lead_frames=11)
    whole = detect(x, rate, start_frame=5000)
    det = DtmfDetector(rate)
    got: list[DtmfEvent] = []
    settled = []
    for i in range(0, x.size, block):
        before = det.settled_frame
        new = det.process(x[i : i + block], 5000 + i)
        # No event starts before the frame announced as settled before it was reported.
        assert all(before is None or e.start_frame >= before for e in new)
        got += new
        settled.append(det.settled_frame)
    got += det.flush()
    assert got == whole and digits_of(got) == "159D*0#A"
    frames = [s for s in settled if s is not None]
    assert frames == sorted(frames) and len(frames) == len(settled)


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("group", ["low", "high"])
@pytest.mark.parametrize("dev", [-0.015, -0.01, 0.01, 0.015])
def test_frequency_deviation_accepted(rate: int, group: str, dev: float) -> None:
    # Mitel test 3 style: -17 dBm0 per tone (about -20 dB from clip), 50 ms bursts.
    low, high = (dev, 0.0) if group == "low" else (0.0, dev)
    x, _ = dial(ALL, rate, low_dbm0=-17.0, high_dbm0=-17.0, low_dev=low, high_dev=high)
    assert digits_of(detect(x, rate)) == ALL


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("group", ["low", "high"])
@pytest.mark.parametrize("dev", [-0.06, -0.035, 0.035, 0.06])
def test_frequency_deviation_rejected(rate: int, group: str, dev: float) -> None:
    low, high = (dev, 0.0) if group == "low" else (0.0, dev)
    # Long bursts: many chances to false-accept.
    x, _ = dial(ALL, rate, on_s=0.2, low_dbm0=-17.0, high_dbm0=-17.0, low_dev=low, high_dev=high)
    assert digits_of(detect(x, rate)) == ""
    assert set(window_hits(x, rate)) == {"-"}


# Twist = low-group level minus high-group level. Forward (normal): high group weaker,
# accepted to 8 dB; reverse: high group stronger, accepted to 4 dB (spandsp's defaults).
@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize(
    ("twist_db", "accepted"), [(7.0, True), (9.0, False), (-3.0, True), (-5.0, False)]
)
def test_twist_limits(rate: int, twist_db: float, accepted: bool) -> None:
    loud = -4.0
    low, high = (loud, loud - twist_db) if twist_db > 0 else (loud + twist_db, loud)
    x, _ = dial(ALL, rate, low_dbm0=low, high_dbm0=high)
    assert digits_of(detect(x, rate)) == (ALL if accepted else "")


@pytest.mark.parametrize("rate", RATES)
def test_forty_ms_tones_and_pauses_are_accepted_at_every_alignment(rate: int) -> None:
    window = dtmf.window_frames(rate)
    for lead in range(0, window, max(1, window // 7)):
        # Tones of 40 ms with 40 ms pauses, repeated digits included: each press counts.
        x, _ = dial("1155##DD", rate, on_s=0.04, off_s=0.04, lead_frames=lead)
        assert digits_of(detect(x, rate)) == "1155##DD", f"lead {lead}"


@pytest.mark.parametrize("rate", RATES)
def test_twenty_ms_tones_are_rejected_at_every_alignment(rate: int) -> None:
    window = dtmf.window_frames(rate)
    for lead in range(0, window, max(1, window // 7)):
        x, _ = dial(ALL, rate, on_s=0.02, off_s=0.05, lead_frames=lead, low_dbm0=-4.0,
                    high_dbm0=-4.0)  # fmt: skip
        assert digits_of(detect(x, rate)) == "", f"lead {lead}"


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("level", [-3.0, -10.0, -20.0, -30.0, -36.0, -40.0])
def test_dynamic_range_accepted(rate: int, level: float) -> None:
    # -3 dBm0 per tone is the loudest pair that does not clip 16-bit audio.
    x, _ = dial(ALL, rate, low_dbm0=level, high_dbm0=level)
    assert digits_of(detect(x, rate)) == ALL


@pytest.mark.parametrize("rate", RATES)
def test_below_the_level_threshold_is_rejected(rate: int) -> None:
    x, _ = dial(ALL, rate, low_dbm0=-46.0, high_dbm0=-46.0)
    assert digits_of(detect(x, rate)) == ""


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("snr_db", [18.0, 15.0, 12.0])
def test_white_noise(rate: int, snr_db: float) -> None:
    # SNR: power of both tones over the noise power across the whole band (0..rate/2).
    x, _ = dial(ALL * 3, rate, low_dbm0=-10.0, high_dbm0=-10.0)
    noisy = add_noise(x, rate, snr_db, tone_power(-10.0, -10.0))
    assert digits_of(detect(noisy, rate)) == ALL * 3


@pytest.mark.parametrize("encoding", ["a-law", "u-law"])
def test_through_g711_with_twist_and_offsets(encoding: str) -> None:
    # Like spandsp's tests (codec_munge): through an 8-bit G.711 codec and back, by sox.
    for loud in (-3.0, -20.0, -34.0):
        x, _ = dial(ALL, 8000, low_dbm0=loud, high_dbm0=loud - 5.0, low_dev=0.015,
                    high_dev=-0.015)  # fmt: skip
        law = sox_raw(
            ["-t", "raw", "-r", "8000", "-e", "signed", "-b", "16", "-c", "1", "-",
             "-t", "raw", "-e", encoding, "-b", "8", "-"],
            stdin=x.tobytes(),
        ).tobytes()  # fmt: skip
        back = sox_raw(
            ["-t", "raw", "-r", "8000", "-e", encoding, "-b", "8", "-c", "1", "-",
             "-t", "raw", "-e", "signed", "-b", "16", "-"],
            stdin=law,
        )  # fmt: skip
        assert back.size == x.size and not np.array_equal(back, x)
        assert digits_of(detect(back, 8000)) == ALL, f"{encoding} at {loud} dBm0"


def test_dc_offset_on_the_line() -> None:
    x, _ = dial(ALL, 8000, low_dbm0=-30.0, high_dbm0=-30.0)
    assert digits_of(detect((x.astype(np.int32) + 3000).astype(np.int16), 8000)) == ALL


@pytest.mark.parametrize("rate", RATES)
def test_noise_alone_gives_nothing(rate: int) -> None:
    noise = sox_white_noise(rate, 20.0)
    for scale in (0.01, 0.1, 0.5):
        x = np.rint(noise * scale).astype(np.int16)
        assert detect(x, rate) == []


@needs_espeak
@pytest.mark.parametrize("gain_db", [0.0, 6.0])
def test_talk_off_speech(speech: dict[int, Int16s], gain_db: float) -> None:
    assert speech[8000].size / 8000 > 180.0  # a few minutes
    for rate, x in speech.items():
        hot = np.clip(np.rint(x * 10 ** (gain_db / 20)), -32768, 32767).astype(np.int16)
        assert detect(hot, rate) == [], f"talk-off at {rate} Hz"
        # Even single analysis windows (which debouncing ignores) almost never hit.
        hits = window_hits(hot, rate)
        assert sum(c != "-" for c in hits) <= len(hits) // 5000, f"window hits at {rate} Hz"


def test_talk_off_music(music: dict[int, Int16s]) -> None:
    for rate, x in music.items():
        assert x.size / rate > 100.0
        assert detect(x, rate) == [], f"talk-off at {rate} Hz"


@needs_multimon
@pytest.mark.parametrize("rate", RATES)
def test_multimon_ng_hears_the_same_digits(rate: int) -> None:
    digits = "0800" + ALL + "5551234#"
    x, _ = dial(digits, rate, on_s=0.06, off_s=0.06, low_dbm0=-6.0, high_dbm0=-8.0)
    assert multimon(x, rate) == digits
    assert digits_of(detect(x, rate)) == digits


def test_events_at_a_gap_and_errors() -> None:
    x, _ = dial("7", 8000, on_s=0.2, tail_s=0.0, off_s=0.0)
    det = DtmfDetector(8000)
    assert det.process(x[:800], 0) == []
    assert det.active_digit == "7"
    # A block that does not follow on ends the stream there: the digit is reported.
    events = det.process(x[800:], 10_000)
    assert [e.digit for e in events] == ["7"] and events[0].end_frame <= 800
    with pytest.raises(ValueError, match="overlap"):
        det.process(x[:10], 10_000)
    with pytest.raises(ValueError, match="supports"):
        DtmfDetector(11025)
    with pytest.raises(ValueError, match="mono"):
        DtmfDetector(8000).process(np.zeros((10, 2), dtype=np.int16), 0)


# --------------------------------------------------------------------------- masking


def _call(rate: int, speech: Int16s) -> tuple[Int16s, str, list[tuple[int, int]]]:
    """Speech, a menu choice, a card number, speech: (audio, dialled digits, tone spans)."""
    part = speech[: 8 * rate]
    menu, menu_spans = dial("2", rate, on_s=0.1, off_s=0.4)
    card, card_spans = dial("4929123456781234#", rate, on_s=0.07, off_s=0.06, low_dbm0=-7.0,
                            high_dbm0=-9.0)  # fmt: skip
    at_menu, at_card = part.size, part.size + menu.size
    spans = [(a + at_menu, b + at_menu) for a, b in menu_spans]
    spans += [(a + at_card, b + at_card) for a, b in card_spans]
    audio = np.concatenate([part, menu, card, part[::-1].copy()])
    return audio, "24929123456781234#", spans


@needs_espeak
@needs_multimon
@pytest.mark.parametrize("mode", ["silence", "comfort_noise"])
@pytest.mark.parametrize("mask_after_n", [0, 1])
def test_masked_digits_cannot_be_recovered(
    speech: dict[int, Int16s], mode: MaskMode, mask_after_n: int
) -> None:
    rate = 8000
    x, digits, tone_spans = _call(rate, speech[rate])
    assert multimon(x, rate) == digits  # the reference hears them all before masking
    events = detect(x, rate)
    assert digits_of(events) == digits
    plan = masking_plan(events, mask_after_n)
    assert plan.digits == digits[:mask_after_n] + "*" * (len(digits) - mask_after_n)
    guard = dtmf.guard_frames(rate)
    masked = mask_spans(x, plan.spans, guard, mode, np.random.default_rng(1))
    # Each masked span, with its guard, covers the whole tone burst sox made.
    for (start, end), (t0, t1) in zip(plan.spans, tone_spans[mask_after_n:], strict=True):
        assert start - guard <= t0 and t1 <= end + guard

    # Nothing masked can be heard again, by us (not even one window) or by multimon-ng.
    assert digits_of(detect(masked, rate)) == digits[:mask_after_n]
    assert multimon(masked, rate) == digits[:mask_after_n]
    blank = np.zeros(x.size, dtype=bool)
    for start, end in plan.spans:
        blank[start - guard : end + guard] = True
    hits = window_hits(np.where(blank, masked, 0).astype(np.int16), rate)
    assert set(hits) == {"-"}

    # Everything outside the guarded spans is untouched; inside is silence or low noise.
    assert np.array_equal(masked[~blank], x[~blank])
    inside = masked[blank].astype(np.float64)
    if mode == "silence":
        assert not inside.any()
    else:
        rms_dbm0 = 20 * math.log10(math.sqrt(np.mean(inside**2)) * math.sqrt(2) / 32768) + 3.14
        assert rms_dbm0 == pytest.approx(dtmf.DEFAULT_COMFORT_NOISE_DBM0, abs=1.0)


def test_masking_plan() -> None:
    events = [DtmfEvent(d, 1000 * i, 1000 * i + 400) for i, d in enumerate("1*234")]
    shuffled = [events[3], events[0], events[4], events[2], events[1]]
    assert masking_plan(shuffled, 0) == ("*****", [(e.start_frame, e.end_frame) for e in events])
    plan = masking_plan(shuffled, 2)
    assert plan.digits == "1****"  # the star key in position 1 stays readable
    assert plan.spans == [(2000, 2400), (3000, 3400), (4000, 4400)]
    assert masking_plan(events, 9) == ("1*234", [])
    assert masking_plan([], 0) == ("", [])
    with pytest.raises(ValueError):
        masking_plan(events, -1)


def test_mask_spans_clips_and_masks_chunk_by_chunk() -> None:
    rng = np.random.default_rng(7)
    x = rng.integers(-20000, 20000, 10_000).astype(np.int16)
    spans = [(-50, 100), (3000, 3500), (9950, 12_000), (5000, 5000)]
    whole = mask_spans(x, spans, 40)
    assert not whole[:140].any() and whole[140] == x[140]
    assert not whole[2960:3540].any() and whole[2959] == x[2959] and whole[3540] == x[3540]
    assert not whole[4960:5040].any()  # an empty span still gets its guard
    assert not whole[9910:].any() and whole[9909] == x[9909]
    # Masking chunk by chunk (offset = frame of the chunk's first sample) is the same.
    chunks = [mask_spans(x[i : i + 999], spans, 40, offset=i) for i in range(0, x.size, 999)]
    assert np.array_equal(np.concatenate(chunks), whole)
    assert mask_spans(x, [], 40) is not x and np.array_equal(mask_spans(x, [], 40), x)
    with pytest.raises(ValueError):
        mask_spans(x, [(10, 5)], 0)
    with pytest.raises(ValueError):
        mask_spans(x, spans, -1)
    with pytest.raises(ValueError):
        mask_spans(x, spans, 0, "beep")  # type: ignore[arg-type]
