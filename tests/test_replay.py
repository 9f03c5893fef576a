"""`linetap replay` as a black box: the real recorder pipeline over a file and an events script.

Audio samples encode their own frame index, so every check compares samples, not just
lengths: a recording must be exactly the right span of the right channel.
"""

from __future__ import annotations

import itertools
import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile

from firmware.cli import main
from tests.helpers import (
    RATE,
    START_UTC,
    config_text,
    espeak_word,
    replay_argv,
    replay_inputs,
    run_cli,
    write_capture,
)


def replay(
    tmp_path: Path, events: str, seconds: float = 30, **cfg: Any
) -> tuple[list[dict[str, Any]], np.ndarray]:
    out = tmp_path / "out"
    conf = tmp_path / "linetap.toml"
    conf.write_text(config_text(out, **cfg))
    channels = cfg.get("channels") or cfg.get("lines", 2)
    inputs = replay_inputs(tmp_path, events, seconds=seconds, channels=channels)
    code = main(inputs.argv(conf, out, "--format", "wav", "--start-utc", START_UTC))
    assert code == 0
    metas = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    metas.sort(key=lambda m: (m["start_frame"], m["line"]))
    return metas, inputs.capture


def audio_of(tmp_path: Path, meta: dict[str, Any]) -> np.ndarray:
    samples, rate = soundfile.read(tmp_path / "out" / meta["audio_file"], dtype="int16")
    assert rate == RATE
    return np.asarray(samples, dtype=np.int16)


def test_bouncing_offhook_gives_one_recording_with_preroll(tmp_path: Path):
    events = "10.000 line1 offhook\n10.003 line1 onhook\n10.006 line1 offhook\n10.009 line1 onhook\n10.012 line1 offhook\n20 line1 onhook\n"
    metas, data = replay(tmp_path, events)
    assert len(metas) == 1
    m = metas[0]
    edge = round(10.012 * RATE)
    assert m["trigger"] == "offhook" and m["trigger_frame"] == edge
    assert m["start_frame"] == edge - 5 * RATE
    assert m["preroll_s"] == pytest.approx(5.0)
    assert m["reason"] == "onhook"
    # Ends once on-hook has held flash_max (1 s) after the 20 s edge.
    assert m["end_frame"] == 21 * RATE
    np.testing.assert_array_equal(audio_of(tmp_path, m), data[m["start_frame"] : m["end_frame"], 0])
    assert m["started_utc"] == "2026-11-25T10:00:05.012+00:00"


def test_hook_flash_of_400ms_keeps_one_recording(tmp_path: Path):
    metas, data = replay(
        tmp_path, "2 line1 offhook\n8 line1 onhook\n8.4 line1 offhook\n14 line1 onhook\n"
    )
    assert len(metas) == 1
    m = metas[0]
    flashes = [e for e in m["events"] if e["type"] == "flash"]
    assert len(flashes) == 1
    assert flashes[0]["data"]["onhook_ms"] == 400
    assert flashes[0]["at_s"] == pytest.approx(8 - 0)  # pre-roll reaches back to 0 s
    np.testing.assert_array_equal(audio_of(tmp_path, m), data[0 : 15 * RATE, 0])


def test_hangup_of_1500ms_splits_two_calls(tmp_path: Path):
    metas, data = replay(
        tmp_path, "6 line1 offhook\n10 line1 onhook\n11.5 line1 offhook\n18 line1 onhook\n"
    )
    assert [m["reason"] for m in metas] == ["onhook", "onhook"]
    first, second = metas
    assert (first["start_frame"], first["end_frame"]) == (1 * RATE, 11 * RATE)
    # The second call's pre-roll reaches back into the first call's tail: nothing missed.
    assert second["start_frame"] == round(6.5 * RATE)
    for m in metas:
        np.testing.assert_array_equal(
            audio_of(tmp_path, m), data[m["start_frame"] : m["end_frame"], 0]
        )


def test_two_lines_overlapping_record_their_own_channels(tmp_path: Path):
    metas, data = replay(
        tmp_path, "7 line1 offhook\n10 line2 offhook\n15 line1 onhook\n20 line2 onhook\n"
    )
    by_line = {m["line"]: m for m in metas}
    assert set(by_line) == {"line1", "line2"}
    for channel, name in enumerate(("line1", "line2")):
        m = by_line[name]
        assert m["channel"] == channel
        np.testing.assert_array_equal(
            audio_of(tmp_path, m), data[m["start_frame"] : m["end_frame"], channel]
        )
    assert by_line["line2"]["start_frame"] < by_line["line1"]["end_frame"]


def test_offhook_at_boot_records_from_the_first_frame(tmp_path: Path):
    metas, data = replay(tmp_path, "0 line2 offhook\n4 line2 onhook\n", seconds=10)
    [m] = metas
    assert (m["line"], m["trigger"], m["start_frame"], m["end_frame"]) == (
        "line2",
        "boot",
        0,
        5 * RATE,
    )
    np.testing.assert_array_equal(audio_of(tmp_path, m), data[: 5 * RATE, 1])


def test_call_in_progress_at_end_of_input_is_closed(tmp_path: Path):
    metas, data = replay(tmp_path, "5 line1 offhook\n", seconds=9)
    [m] = metas
    assert m["reason"] == "end_of_input" and m["end_frame"] == 9 * RATE
    np.testing.assert_array_equal(audio_of(tmp_path, m), data[0 : 9 * RATE, 0])


def test_opt_out_pause_cuts_the_span_and_marks_it(tmp_path: Path):
    metas, data = replay(
        tmp_path, "6 line1 offhook\n9 line1 optout-on\n12 line1 optout-off\n16 line1 onhook\n"
    )
    [m] = metas
    debounce = 30 * RATE // 1000
    cut_from, cut_to = 9 * RATE + debounce, 12 * RATE + debounce
    expected = np.concatenate(
        [data[m["start_frame"] : cut_from, 0], data[cut_to : m["end_frame"], 0]]
    )
    np.testing.assert_array_equal(audio_of(tmp_path, m), expected)
    kinds = [(e["type"], e["audio_s"]) for e in m["events"]]
    assert kinds == [("pause", (cut_from - RATE) / RATE), ("resume", (cut_from - RATE) / RATE)]
    assert m["audio_frames"] == len(expected)


def test_opt_out_discard_keeps_only_metadata(tmp_path: Path):
    metas, _ = replay(
        tmp_path,
        "6 line1 offhook\n9 line1 optout-on\n9.5 line1 optout-off\n16 line1 onhook\n",
        opt_out_mode="discard",
    )
    [m] = metas
    assert m["discarded"] is True and m["audio_file"] is None
    assert [e["type"] for e in m["events"]] == ["discard"]
    assert m["reason"] == "onhook" and m["end_frame"] == 17 * RATE
    out = tmp_path / "out"
    assert not list(out.glob("*.wav*")), "no audio of a discarded call may remain"


def test_rollover_splits_a_long_call_without_losing_a_frame(tmp_path: Path):
    metas, data = replay(
        tmp_path, "3 line1 offhook\n27 line1 onhook\n", seconds=30, max_call_s=10, lines=1
    )
    assert [m["trigger"] for m in metas] == ["offhook", "rollover", "rollover"]
    assert [m["reason"] for m in metas] == ["rollover", "rollover", "onhook"]
    assert metas[1]["continues"] == metas[0]["recording_id"]
    assert metas[2]["continues"] == metas[1]["recording_id"]
    for a, b in itertools.pairwise(metas):
        assert a["end_frame"] == b["start_frame"]
    joined = np.concatenate([audio_of(tmp_path, m) for m in metas])
    np.testing.assert_array_equal(joined, data[metas[0]["start_frame"] : 28 * RATE, 0])


def test_preroll_keeps_a_word_spoken_300ms_before_offhook(tmp_path: Path):
    word = espeak_word("hello")
    assert len(word) > 0.2 * RATE and np.abs(word).max() > 1000  # a real, audible word
    out = tmp_path / "out"
    conf = tmp_path / "linetap.toml"
    conf.write_text(config_text(out, lines=1, preroll_s=1.0))
    line = np.zeros(10 * RATE, dtype=np.int16)
    word_at = round(4.7 * RATE)
    line[word_at : word_at + len(word)] = word
    audio = tmp_path / "call.wav"
    soundfile.write(audio, line, RATE, subtype="PCM_16")
    (tmp_path / "ev").write_text("5.0 line1 offhook\n8 line1 onhook\n")
    assert main(replay_argv(conf, audio, tmp_path / "ev", out, "--format", "wav")) == 0
    [meta] = [json.loads(p.read_text()) for p in out.glob("*.json")]
    rec = audio_of(tmp_path, meta)
    offset = word_at - meta["start_frame"]
    assert offset == round(0.7 * RATE)  # 1 s pre-roll: the word sits 0.7 s into the file
    np.testing.assert_array_equal(rec[offset : offset + len(word)], word)


def test_replay_cli_reports_bad_inputs_in_one_line(tmp_path: Path, linetap_bin: Path):
    out = tmp_path / "out"
    conf = tmp_path / "linetap.toml"
    conf.write_text(config_text(out, lines=2))
    audio = tmp_path / "mono16k.wav"
    soundfile.write(audio, np.zeros(16000, dtype=np.int16), 16000, subtype="PCM_16")
    ev = tmp_path / "ev"
    ev.write_text("1 line1 offhook\n")

    def run(audio: Path, events: Path) -> subprocess.CompletedProcess[str]:
        return run_cli(linetap_bin, *replay_argv(conf, audio, events, out, "--format", "wav"))

    r = run(audio, ev)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "16000 Hz" in r.stderr and "audio.sample_rate = 8000" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1

    good = tmp_path / "line.wav"
    write_capture(good, 3, 2)
    ev.write_text("1 line1 offhook\nsoon line3 ringing\n2 line9 onhook\n")
    r = run(good, ev)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"{ev}:2: time 'soon' is not a number of seconds" in r.stderr

    ev.write_text("1 line9 offhook\n")
    r = run(good, ev)
    assert r.returncode == 1
    assert f"{ev}:1: line 'line9' is not in the config (lines: line1, line2)" in r.stderr


def test_replay_cli_summary(tmp_path: Path, linetap_bin: Path):
    out = tmp_path / "out"
    conf = tmp_path / "linetap.toml"
    conf.write_text(config_text(out, lines=2))
    inputs = replay_inputs(tmp_path, "2 line1 offhook\n6 line1 onhook\n", seconds=12, channels=2)
    r = run_cli(linetap_bin, *inputs.argv(conf, out, "--format", "wav", "--json"))
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["frames"] == 12 * RATE
    [rec] = summary["recordings"]
    assert rec["line"] == "line1" and rec["duration_s"] == pytest.approx(7.0)
