"""The announcement schedule (firmware.announce): pure, on the capture timeline."""

from __future__ import annotations

import numpy as np
import pytest

from firmware.announce import (
    LineAnnouncer,
    LineProgram,
    Prompt,
    ToneSpec,
    render_block,
    tone_burst,
)

RATE = 8000
TONE = ToneSpec(hz=1400, frames=4000, period_frames=15 * RATE, level_dbfs=-12.0, rate=RATE)


def announcer(*, tone: bool = True, prompt_frames: int = 0, channel: int = 0) -> LineAnnouncer:
    prompt = None
    if prompt_frames:
        samples = np.arange(1, prompt_frames + 1, dtype=np.int16)  # never zero: easy to find
        prompt = Prompt("p.wav", "0" * 64, samples)
    return LineAnnouncer(LineProgram("line1", channel, TONE if tone else None, prompt))


def played(a: LineAnnouncer, start: int, end: int, chunk: int = 160) -> np.ndarray:
    blocks = [render_block([a], f, min(f + chunk, end), 1)[0] for f in range(start, end, chunk)]
    return np.concatenate(blocks)[:, 0]


def test_a_tone_is_a_ramped_sine_at_its_level() -> None:
    burst = tone_burst(TONE).astype(np.float64)
    peak = 32767 * 10 ** (-12 / 20)
    assert abs(np.max(np.abs(burst)) - peak) <= 1
    # Ramps of 5 ms (40 samples) at both ends: starts and ends near zero, no click.
    assert burst[0] == 0 and abs(burst[-1]) < 0.01 * peak
    assert np.max(np.abs(burst[:5])) < 0.03 * peak
    assert np.max(np.abs(burst[40:80])) > 0.95 * peak
    assert np.max(np.abs(burst[-5:])) < 0.03 * peak


def test_blocks_of_any_size_give_the_same_stream_and_announcements() -> None:
    a, b = announcer(prompt_frames=1000), announcer(prompt_frames=1000)
    a.begin(12_345, prompt=True)
    b.begin(12_345, prompt=True)
    end = 12_345 + 40 * RATE
    whole, listed = render_block([a], 0, end, 1)
    np.testing.assert_array_equal(played(b, 0, end, chunk=157), whole[:, 0])
    first_tone = 12_345 + 1000
    assert [(x.kind, x.frame, x.frames) for x in listed] == [
        ("prompt", 12_345, 1000),
        ("tone", first_tone, 4000),
        ("tone", first_tone + TONE.period_frames, 4000),
        ("tone", first_tone + 2 * TONE.period_frames, 4000),
    ]
    out = whole[:, 0]
    np.testing.assert_array_equal(out[12_345:first_tone], np.arange(1, 1001))
    np.testing.assert_array_equal(out[first_tone : first_tone + 4000], tone_burst(TONE))


def test_stop_cuts_mid_tone_and_resume_starts_tones_without_the_prompt() -> None:
    a = announcer(prompt_frames=500)
    a.begin(0, prompt=True)
    assert a.due(100) and a.playing() == "prompt"
    out = played(a, 0, 2000)
    a.stop(2000)  # 1500 frames into the first tone
    a.begin(30_000, prompt=False)
    rest = played(a, 2000, 40_000)
    assert out[500:2000].any() and not rest[: 30_000 - 2000].any()
    np.testing.assert_array_equal(rest[28_000:32_000], tone_burst(TONE))
    assert a.playing() == "tone"
    assert [(x.kind, x.frame) for x in a.due(40_000)] == [("tone", 500), ("tone", 30_000)]


def test_an_announcement_decided_after_its_frames_were_played_starts_whole() -> None:
    a = announcer()
    played(a, 0, 8000)
    a.begin(6000, prompt=True)  # an edge reported 2000 frames late
    out = played(a, 8000, 16_000)
    np.testing.assert_array_equal(out[:4000], tone_burst(TONE))
    assert [x.frame for x in a.due(16_000)] == [8000]


@pytest.mark.parametrize("tone", [True, False])
def test_file_mode_plays_the_prompt_only(tone: bool) -> None:
    a = announcer(tone=tone, prompt_frames=800)
    a.begin(0, prompt=True)
    kinds = [x.kind for x in a.due(20 * RATE)]
    assert kinds == (["prompt", "tone", "tone"] if tone else ["prompt"])
