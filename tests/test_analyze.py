"""`linetap analyze`: caller ID, DTMF and levels in a file made from signals nobody here wrote."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile

from firmware.dsp.cid_messages import build_mdmf
from firmware.dsp.levels import levels
from tests.cid_signals import BELL202, at_level, make_burst, missing_tools, to_int16
from tests.dtmf_signals import dial, hum
from tests.helpers import run_cli

RATE = 8000
DIGITS_UNDER_HUM = "0123456789*#ABCD"


@pytest.fixture(scope="module")
def call_audio() -> np.ndarray:
    if missing_tools():
        pytest.fail(f"missing tools: {missing_tools()} (make test installs them)")
    burst = make_burst(
        build_mdmf(time="11251030", number="02071234567", name="ACME LTD"), BELL202, RATE
    )
    cid = to_int16(at_level(burst.samples, -20.0))
    digits, _ = dial("5551234", RATE, low_dbm0=-12, high_dbm0=-10)
    gap = np.zeros(RATE // 2, dtype=np.int16)
    return np.concatenate([gap, cid, gap, digits, gap])


def run_analyze(linetap_bin: Path, path: Path) -> dict[str, Any]:
    done = run_cli(linetap_bin, "analyze", path, "--json", timeout=120)
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


@pytest.mark.parametrize("file_rate", [8000, 44100])
def test_caller_id_digits_and_levels(
    tmp_path: Path, linetap_bin: Path, call_audio: np.ndarray, file_rate: int
):
    path = tmp_path / "call.wav"
    soundfile.write(path, call_audio, RATE, subtype="PCM_16")
    if file_rate != RATE:  # any rate: resampled by sox here, back to 8 kHz inside analyze
        other = tmp_path / f"call{file_rate}.flac"
        subprocess.run(["sox", str(path), "-r", str(file_rate), str(other)], check=True)
        path = other
    report = run_analyze(linetap_bin, path)
    [cid] = report["caller_id"]
    assert (cid["number"], cid["name"], cid["time"]) == ("02071234567", "ACME LTD", "11251030")
    assert (cid["standard"], cid["format"]) == ("bell202", "mdmf")
    assert 0.4 < cid["start_s"] < 1.0
    assert "".join(d["digit"] for d in report["dtmf"]) == "5551234"
    assert all(d["end_s"] > d["start_s"] for d in report["dtmf"])
    [lv] = report["levels"]
    assert set(lv) >= {"rms_dbfs", "peak_dbfs", "clipped_samples", "silence_fraction", "hum"}
    assert lv["clipped_samples"] == 0 and 0.1 < lv["silence_fraction"] < 0.9


def test_digits_under_mains_hum_are_heard_as_the_recorder_hears_them(
    tmp_path: Path, linetap_bin: Path
):
    # Weak digits (-25 dBm0 per tone) under 50 Hz hum with harmonics at -20 dBFS: the
    # detectors alone lose them; analyze runs them behind the recorder's hum high-pass.
    audio, _ = dial(DIGITS_UNDER_HUM, RATE, on_s=0.040, off_s=0.040, low_dbm0=-25, high_dbm0=-25)
    noisy = np.clip(np.round(audio + hum(50.0, -20.0, audio.size, RATE)), -32768, 32767)
    path = tmp_path / "hum.wav"
    soundfile.write(path, noisy.astype(np.int16), RATE, subtype="PCM_16")
    report = run_analyze(linetap_bin, path)
    assert "".join(d["digit"] for d in report["dtmf"]) == DIGITS_UNDER_HUM
    [lv] = report["levels"]
    assert lv["hum"]["50hz_dbfs"] > -22.0  # the levels still report the hum


def test_bad_checksum_is_an_error_not_a_caller_id(tmp_path: Path, linetap_bin: Path):
    message = bytearray(build_mdmf(time="11251030", number="0123456789"))
    message[-1] ^= 0x01  # break the checksum
    burst = make_burst(bytes(message), BELL202, RATE)
    audio = np.concatenate(
        [
            np.zeros(RATE // 2, np.int16),
            to_int16(at_level(burst.samples, -20.0)),
            np.zeros(RATE // 2, np.int16),
        ]
    )
    path = tmp_path / "bad.wav"
    soundfile.write(path, audio, RATE, subtype="PCM_16")
    report = run_analyze(linetap_bin, path)
    assert report["caller_id"] == []
    assert [e["reason"] for e in report["errors"]] == ["checksum"]


def test_levels_see_clipping_silence_and_hum():
    t = np.arange(4 * RATE) / RATE
    hum = (0.05 * 32767 * np.sin(2 * np.pi * 50 * t)).astype(np.int16)
    loud = np.full(RATE // 10, 32767, dtype=np.int16)
    x = np.concatenate([hum, np.zeros(2 * RATE, np.int16), loud])
    lv = levels(x, RATE)
    assert lv["clipped_samples"] == RATE // 10
    assert lv["peak_dbfs"] == pytest.approx(0.0, abs=0.01)
    assert 0.3 < lv["silence_fraction"] < 0.4
    assert lv["hum"]["50hz_dbfs"] > lv["hum"]["60hz_dbfs"] + 20


def test_unreadable_file_is_one_line(tmp_path: Path, linetap_bin: Path):
    bad = tmp_path / "x.wav"
    bad.write_bytes(b"not audio at all")
    done = run_cli(linetap_bin, "analyze", bad)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and str(bad) in done.stderr


@pytest.mark.parametrize(
    ("rate", "target"), [(44100, 8000), (48000, 16000), (11025, 8000), (8000, 16000)]
)
def test_resample_keeps_a_tone_in_place(rate: int, target: int):
    from firmware.analyze import resample

    t = np.arange(2 * rate) / rate
    x = (8000 * np.sin(2 * np.pi * 1000 * t)).astype(np.int16)
    y = resample(x, rate, target)
    assert len(y) == 2 * target
    ref = 8000 * np.sin(2 * np.pi * 1000 * np.arange(len(y)) / target)
    edge = target // 20
    assert np.sqrt(np.mean((y[edge:-edge] - ref[edge:-edge]) ** 2)) < 2.0  # LSB
