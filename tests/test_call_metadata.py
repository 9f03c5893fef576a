"""The recorder's telephony: DTMF masking in the live path, caller ID and direction.

Signals nobody here wrote: FSK caller ID from minimodem (tests/cid_signals.py), DTMF tones
from sox (checked as they are made, tests/dtmf_signals.py), speech from espeak-ng. The real
recorder runs over them through ``linetap replay``; the stored audio is checked with our
detector and with multimon-ng, and sample for sample outside the masked spans.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import soundfile

from firmware.cli import main
from firmware.dsp.cid_messages import build_mdmf
from firmware.dsp.dtmf import detect
from tests.cid_signals import BELL202, make_burst, missing_tools
from tests.dtmf_signals import MULTIMON, dial, multimon
from tests.helpers import START_UTC, config_text, espeak_word, replay_argv

RATE = 8000
Int16s = npt.NDArray[np.int16]

pytestmark = pytest.mark.skipif(
    bool(missing_tools()), reason=f"missing Debian packages: {missing_tools()}"
)


def _place(line: Int16s, at_s: float, signal: Int16s) -> tuple[int, int]:
    start = round(at_s * RATE)
    line[start : start + signal.size] += signal
    return start, start + signal.size


def fsk_caller_id(number: str, name: str, level_dbfs: float = -12.0) -> Int16s:
    burst = make_burst(build_mdmf(time="11251405", number=number, name=name), BELL202, RATE)
    peak = 32768 * 10 ** (level_dbfs / 20)
    return np.round(burst.samples * peak).astype(np.int16)


def replay(
    tmp_path: Path,
    line: Int16s,
    events: str,
    *,
    telephony: str = "",
    storage_format: str = "wav",
    recipients: tuple[str, ...] = (),
    preroll_s: float = 5.0,
) -> list[dict[str, Any]]:
    out = tmp_path / "out"
    conf = tmp_path / "linetap.toml"
    text = config_text(
        out,
        lines=1,
        storage_format=storage_format,
        recipients=recipients,
        data_dir=tmp_path / "data",
        preroll_s=preroll_s,
    )
    conf.write_text(text + "\n[telephony]\n" + telephony)
    audio = tmp_path / "line.wav"
    soundfile.write(audio, line, RATE, subtype="PCM_16")
    (tmp_path / "events.txt").write_text(events)
    options = ("--format", storage_format, "--start-utc", START_UTC)
    assert main(replay_argv(conf, audio, tmp_path / "events.txt", out, *options)) == 0
    if storage_format == "wav":
        metas = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
        return sorted(metas, key=lambda m: int(m["start_frame"]))
    manifests = [json.loads(p.read_text()) for p in (out / "outbox").glob("*/*/manifest.json")]
    return sorted(manifests, key=lambda m: int(m["seq"]))


def wav_audio(tmp_path: Path, meta: dict[str, Any]) -> Int16s:
    samples, rate = soundfile.read(tmp_path / "out" / meta["audio_file"], dtype="int16")
    assert rate == RATE
    return np.asarray(samples, dtype=np.int16)


@pytest.fixture(scope="module")
def two_calls() -> tuple[Int16s, dict[str, Any]]:
    """18 s of one line: an inbound call announced by FSK caller ID, in which the caller
    keys 1 2 then 3 4 5 6; then an outbound call dialling 5551234 right after off-hook."""
    line = np.zeros(18 * RATE, dtype=np.int16)
    facts: dict[str, Any] = {}
    facts["cid"] = _place(line, 2.0, fsk_caller_id("5551234567", "ALICE SMITH"))
    _place(line, 6.3, (espeak_word("hello, accounts", RATE) // 4).astype(np.int16))
    tones, spans = dial("123456", RATE, on_s=0.08, off_s=0.08)
    start, _ = _place(line, 8.0, tones)
    facts["call1_digits"] = [(start + a, start + b) for a, b in spans]
    tones, spans = dial("5551234", RATE, on_s=0.07, off_s=0.07)
    start, _ = _place(line, 13.6, tones)
    facts["call2_digits"] = [(start + a, start + b) for a, b in spans]
    return line, facts


EVENTS = "6 line1 offhook\n11 line1 onhook\n13 line1 offhook\n16 line1 onhook\n"


def _unmasked_equal(
    recorded: Int16s, original: Int16s, first_frame: int, spans_ms: list[dict[str, int]]
) -> None:
    keep = np.ones(recorded.size, dtype=bool)
    for span in spans_ms:
        keep[span["start_ms"] * RATE // 1000 : -(-span["end_ms"] * RATE // 1000)] = False
    segment = original[first_frame : first_frame + recorded.size]
    np.testing.assert_array_equal(recorded[keep], segment[keep])
    assert not np.array_equal(recorded[~keep], segment[~keep])


def test_inbound_caller_id_and_masked_digits_after_the_first_two(tmp_path: Path, two_calls):
    line, facts = two_calls
    first, second = replay(tmp_path, line, EVENTS, telephony="mask_after_n = 2\n")

    assert first["direction"] == "inbound"
    assert first["caller_id"]["number"] == "5551234567"
    assert first["caller_id"]["name"] == "ALICE SMITH"
    assert first["caller_id"]["time"] == "11251405"
    assert (first["caller_id"]["source"], first["caller_id"]["format"]) == ("bell202", "mdmf")
    assert first["dialled_digits"] == "12****"
    assert len(first["masked_spans"]) == 4

    audio = wav_audio(tmp_path, first)
    assert "".join(e.digit for e in detect(audio, RATE)) == "12"
    _unmasked_equal(audio, line, first["start_frame"], first["masked_spans"])
    # Each masked span covers the whole tone sox made (the guard absorbs the detector's
    # up-to-one-window uncertainty about where a tone begins and ends).
    for span, (a, b) in zip(first["masked_spans"], facts["call1_digits"][2:], strict=True):
        assert span["start_ms"] * RATE // 1000 <= a - first["start_frame"]
        assert span["end_ms"] * RATE // 1000 >= b - first["start_frame"]

    # The caller ID belonged to the first call; the second dialled out at once.
    assert second["caller_id"] is None
    assert second["direction"] == "outbound"
    assert second["dialled_digits"] == "55*****"
    audio2 = wav_audio(tmp_path, second)
    # Its pre-roll reaches back into the first call's digits: masked there too.
    assert "".join(e.digit for e in detect(audio2, RATE)) == "55"


@pytest.mark.skipif(MULTIMON is None, reason="multimon-ng is missing")
def test_multimon_finds_no_masked_digit(tmp_path: Path, two_calls):
    line, _ = two_calls
    assert multimon(line, RATE) == "1234565551234"  # the peer hears them all unmasked
    metas = replay(tmp_path, line, EVENTS)  # default: mask every digit
    assert [m["dialled_digits"] for m in metas] == ["******", "*******"]
    for meta in metas:
        assert multimon(wav_audio(tmp_path, meta), RATE) == ""
        assert detect(wav_audio(tmp_path, meta), RATE) == []


def test_masking_off_keeps_audio_and_lists_digits(tmp_path: Path, two_calls):
    line, _ = two_calls
    first, second = replay(tmp_path, line, EVENTS, telephony="mask_dtmf = false\n")
    assert (first["dialled_digits"], second["dialled_digits"]) == ("123456", "5551234")
    assert first["masked_spans"] == []
    audio = wav_audio(tmp_path, first)
    np.testing.assert_array_equal(
        audio, line[first["start_frame"] : first["start_frame"] + audio.size]
    )


def test_sealed_manifest_carries_call_metadata_and_age_decrypts_masked_audio(
    tmp_path: Path, two_calls, office
):
    line, _ = two_calls
    first, second = replay(
        tmp_path,
        line,
        EVENTS,
        telephony='mask_after_n = 1\nmask_mode = "silence"\n',
        storage_format="sealed",
        recipients=(office[1],),
    )
    assert first["caller_id"]["number"] == "5551234567"
    assert (first["direction"], first["dialled_digits"]) == ("inbound", "1*****")
    assert (second["direction"], second["dialled_digits"]) == ("outbound", "5******")
    entry = next((tmp_path / "out" / "outbox").glob(f"*/*{first['recording_id']}"))
    flac = subprocess.run(
        ["age", "-d", "-i", str(office[0]), str(entry / "recording.age")],
        check=True,
        capture_output=True,
    ).stdout
    (tmp_path / "first.flac").write_bytes(flac)
    audio, _ = soundfile.read(tmp_path / "first.flac", dtype="int16")
    assert "".join(e.digit for e in detect(audio, RATE)) == "1"
    for span in first["masked_spans"]:  # silence mode: exact zeros
        assert not audio[span["start_ms"] * 8 : span["end_ms"] * 8].any()


def test_key_held_past_hangup_and_longer_than_the_ring_is_masked(tmp_path: Path):
    """No pre-roll (ring ~2 s): a key held 4 s outgrows the hold-back and is masked from
    its start as it goes; another key still sounding when the call ends is masked too."""
    line = np.zeros(12 * RATE, dtype=np.int16)
    long_key, _ = dial("9", RATE, on_s=4.0, off_s=0.0, tail_s=0.0)
    _place(line, 2.0, long_key)
    last_key, _ = dial("7", RATE, on_s=1.5, off_s=0.0, tail_s=0.0)
    _place(line, 7.6, last_key)  # hang-up at 8 s: the key sounds on past the call's end
    (meta,) = replay(tmp_path, line, "1 line1 offhook\n8 line1 onhook\n", preroll_s=0.0)
    audio = wav_audio(tmp_path, meta)
    assert detect(audio, RATE) == []
    assert meta["dialled_digits"] == "**"  # the held 9, and the 7 still sounding at the end
    held = audio[round(1.0 * RATE) : round(5.0 * RATE)]
    assert np.abs(held.astype(np.int32)).max() < 100  # comfort noise only
    assert np.abs(audio[round(6.6 * RATE) :].astype(np.int32)).max() < 100


def test_dtmf_clip_before_off_hook_is_the_caller_id_and_is_masked(tmp_path: Path):
    line = np.zeros(10 * RATE, dtype=np.int16)
    clip, _ = dial("A0201234567C", RATE, on_s=0.06, off_s=0.06)
    _place(line, 1.0, clip)
    (meta,) = replay(tmp_path, line, "4 line1 offhook\n8 line1 onhook\n")
    assert meta["caller_id"]["number"] == "0201234567"
    assert meta["caller_id"]["source"] == "dtmf"
    assert meta["direction"] == "inbound"
    assert meta["dialled_digits"] == ""  # signalling, not dialled on this call
    assert detect(wav_audio(tmp_path, meta), RATE) == []  # but not left in the pre-roll
