"""``linetap check``'s test tone and ``linetap levels``' announcing column.

The playback device is the ALSA ``file`` PCM of tests/test_announce_playback.py: what the
check plays lands in a file and is measured. ``levels`` reads what a real ``linetap
record`` daemon (file capture in real time, sim hooks) writes to its status file.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from firmware.tools import _checks as c
from firmware.tools.check import exit_code, run_checks
from tests.helpers import config_text, ready_recorder, run_cli, stop_with_sigterm, write_capture
from tests.test_announce_playback import PLAY, announce_config, bursts, frequency, playback_pcm

RATE = 8000
# What these tests look at is the announcement: leave out the slow or unrelated checks.
SKIP = frozenset({"broker", "tls", "storage", "keys", "recipients", "clock", "signal"})


def setup(tmp_path: Path, *, device: str = PLAY, events: str = "", realtime: bool = False) -> Path:
    """Two lines captured from a file; line1 announces tones on playback channel 1, line2
    does not announce."""
    audio = tmp_path / "line.wav"
    write_capture(audio, 20, 2, RATE)
    script = tmp_path / "events.txt"
    script.write_text(events)
    conf = tmp_path / "linetap.toml"
    conf.write_text(
        announce_config(
            tmp_path / "out",
            modes={"line1": "tone"},
            device=device,
            line_keys={"line1": "announce_channel = 1"},
            audio_file=audio,
            extra_audio=f"file_realtime = {'true' if realtime else 'false'}",
            extra_gpio=f'script = "{script}"',
        )
    )
    return conf


def test_check_plays_a_short_tone_on_the_lines_playback_channel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    played = playback_pcm(tmp_path, monkeypatch)
    checks = {ch.id: ch for ch in run_checks(setup(tmp_path), skip=SKIP, led_wait=lambda _s: None)}
    check = checks["announce.line1"]
    assert check.status is c.Status.PASS
    assert check.message == (
        f"played a 0.3 s 1400 Hz tone on announce.device '{PLAY}' channel 1 (line1,"
        " announce = 'tone'): it should be heard on the line"
    )
    assert "announce.line2" not in checks  # line2 does not announce
    samples = np.fromfile(played, dtype="<i2").reshape(-1, 2)
    assert not samples[:, 0].any()
    [(first, end)] = bursts(samples[:, 1], RATE)
    assert abs((end - first) - 0.3 * RATE) <= 2
    assert abs(frequency(samples[first:end, 1], RATE) - 1400) < 0.1


def test_check_fails_naming_a_missing_playback_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    playback_pcm(tmp_path, monkeypatch)
    conf = setup(tmp_path, device="linetap_no_such_pcm")
    checks = run_checks(conf, skip=SKIP, led_wait=lambda _s: None)
    [check] = [ch for ch in checks if ch.id.startswith("announce.")]
    assert check.id == "announce.line1" and check.status is c.Status.FAIL
    assert check.message == (
        "announce.device 'linetap_no_such_pcm': cannot open playback device"
        " (No such file or directory)"
    )
    assert check.fix == "check that 'aplay -L' lists it and set announce.device to the HAT's output"
    assert exit_code(checks, strict=False) == 1
    skipped = run_checks(conf, skip=SKIP | {"announce"}, led_wait=lambda _s: None)
    assert [(ch.id, ch.status) for ch in skipped if ch.id.startswith("announce.")] == [
        ("announce.line1", c.Status.SKIP)
    ]


def test_levels_shows_what_the_running_recorder_announces_and_check_leaves_it_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, linetap_bin: Path
) -> None:
    played = playback_pcm(tmp_path, monkeypatch)
    conf = setup(tmp_path, events="0.5 line1 offhook\n", realtime=True)
    status_file = tmp_path / "run" / "recorder.json"
    with ready_recorder(linetap_bin, conf, tmp_path) as proc:
        deadline = time.monotonic() + 15
        while True:
            status = json.loads(status_file.read_text()) if status_file.exists() else {}
            lines = {line["name"]: line for line in status.get("lines", [])}
            if lines.get("line1", {}).get("announce") == "tone":
                break
            assert time.monotonic() < deadline, status
            time.sleep(0.2)
        assert "announce" not in lines["line2"]  # only lines that announce say
        assert status["faults"]["announce"] is None
        assert status["playback"]["device"] == PLAY
        levels = run_cli(linetap_bin, "levels", "-c", conf, "--once", timeout=30)
        check = run_cli(linetap_bin, "check", "-c", conf, "--json", "--skip", "broker", timeout=60)
        stderr = stop_with_sigterm(proc)
    assert proc.returncode == 0, stderr
    assert levels.returncode == 0, levels.stderr
    rows = {
        row["line"]: row
        for row in (
            dict(kv.split("=", 1) for kv in text.split()) for text in levels.stdout.splitlines()
        )
    }
    assert rows["line1"]["announce"] == "tone" and "announcing-tone" in rows["line1"]["notes"]
    assert rows["line2"]["announce"] == "-"
    report = {ch["id"]: ch for ch in json.loads(check.stdout)["checks"]}
    skipped = report["announce.line1"]
    assert skipped["status"] == "SKIP"
    assert skipped["message"].startswith("the running recorder (pid ")
    assert skipped["message"].endswith(f") holds announce.device '{PLAY}'")
    assert "systemctl stop linetap-recorder" in skipped["fix"]
    # The recorder played its first tone 0.5 s into the file, on playback channel 1.
    samples = np.fromfile(played, dtype="<i2").reshape(-1, 2)
    assert bursts(samples[:, 1], RATE) and not samples[:, 0].any()


def test_a_plain_config_has_no_announce_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    playback_pcm(tmp_path, monkeypatch)
    conf = tmp_path / "linetap.toml"
    audio = tmp_path / "line.wav"
    write_capture(audio, 2, 2, RATE)
    conf.write_text(config_text(tmp_path / "out", audio_file=audio))
    ids = [ch.id for ch in run_checks(conf, skip=SKIP, led_wait=lambda _s: None)]
    assert not [i for i in ids if i.startswith("announce")]
