"""The recording announcement's settings: per-line keys, ``[announce]``, the prompt WAV.

Prompts are real WAV files: espeak-ng speech written by libsndfile, converted by sox.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile

from firmware.announce_config import announce_device
from firmware.app import announce_prompts
from firmware.config import load_config, parse_config
from firmware.errors import ConfigError
from tests.helpers import espeak_word

RECIPIENT = "age1f4zhnnetpxuyfgmas8l4yr42k0hv93f536lakp3qe64q600lf3ns9r098g"


def config(line1: str = "", *, audio: str = "", announce: str = "", line2: str = "") -> str:
    return f"""
[audio]
channels = 2
{audio}
[sealing]
recipients = ["{RECIPIENT}"]
[announce]
{announce}
[[lines]]
name = "line1"
channel = 0
hook_pin = 17
{line1}
[[lines]]
name = "line2"
channel = 1
hook_pin = 18
{line2}
"""


def problems(text: str, base: Path | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "test.toml", base)
    return info.value.problems


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return espeak_word("this call is recorded", 8000)


def test_defaults_follow_audio_and_announce_nothing() -> None:
    cfg = parse_config(config(audio='device = "hw:CARD=linetap"\nreopen_s = 5'))
    assert [line.announce for line in cfg.lines] == ["off", "off"]
    dev = announce_device(cfg)
    assert (dev.device, dev.channels, dev.reopen_s) == ("hw:CARD=linetap", 2, 5.0)
    a = cfg.announce
    assert (a.tone_hz, a.tone_s, a.period_s, a.level_dbfs) == (1400, 0.5, 15.0, -12.0)


def test_prompt_is_checked_at_load_and_relative_to_the_config(
    tmp_path: Path, speech: np.ndarray
) -> None:
    soundfile.write(tmp_path / "prompt.wav", speech, 8000, subtype="PCM_16")
    conf = tmp_path / "linetap.toml"
    conf.write_text(config('announce = "file+tone"\nannounce_file = "prompt.wav"'))
    cfg = load_config(conf)
    assert cfg.lines[0].announce_file == tmp_path / "prompt.wav"
    prompt = announce_prompts(cfg)["line1"]
    np.testing.assert_array_equal(prompt.samples, speech)
    assert prompt.name == "prompt.wav"


def test_wrong_rate_stereo_8_bit_long_and_missing_prompts_say_how_to_fix(
    tmp_path: Path, speech: np.ndarray
) -> None:
    at16k = tmp_path / "at16k.wav"
    soundfile.write(at16k, espeak_word("recorded", 16000), 16000, subtype="PCM_16")
    stereo = tmp_path / "stereo.wav"
    soundfile.write(stereo, np.stack([speech, speech], axis=1), 8000, subtype="PCM_16")
    bits8 = tmp_path / "bits8.wav"
    subprocess.run(["sox", str(at16k), "-r", "8000", "-b", "8", str(bits8)], check=True)
    long = tmp_path / "long.wav"
    soundfile.write(long, np.tile(speech, 31 * 8000 // speech.size + 1), 8000, subtype="PCM_16")
    flac = tmp_path / "prompt.flac"
    soundfile.write(flac, speech, 8000)
    cases = {
        at16k: f"recorded at 16000 Hz, but audio.sample_rate is 8000 Hz; convert it: sox {at16k}"
        f" -r 8000 -c 1 -b 16 {tmp_path / 'at16k'}-8000.wav",
        stereo: "2 channels, a prompt must be mono; convert it: sox",
        bits8: "8-bit samples, a prompt must be 16-bit; convert it: sox",
        long: "s long, a prompt may last 30 s at most; shorten it: sox",
        flac: "not a PCM WAV file (file does not start with RIFF id); convert it: sox",
        tmp_path / "none.wav": "cannot read (No such file or directory); check the path",
    }
    for path, expected in cases.items():
        [problem] = problems(config(f'announce = "file"\nannounce_file = "{path}"'))
        assert problem.startswith(f"test.toml:14: lines[0].announce_file: {path}: "), problem
        assert expected in problem, problem


def test_file_modes_need_a_prompt_and_others_refuse_one(tmp_path: Path) -> None:
    [needs] = problems(config('announce = "file+tone"'))
    assert needs == (
        'test.toml:9: lines[0].announce_file: announce = "file+tone" plays a WAV prompt:'
        ' set announce_file = "/etc/linetap/announce.wav"'
    )
    [refused] = problems(config(f'announce = "tone"\nannounce_file = "{tmp_path}/x.wav"'))
    assert refused.startswith("test.toml:14: lines[0].announce_file: a prompt is played only")
    assert "remove announce_file or change announce" in refused
    [mode] = problems(config('announce = "beep"'))
    assert mode.startswith("test.toml:13: lines[0].announce: Input should be 'off', 'tone'")


def test_tone_above_nyquist_and_longer_than_its_period() -> None:
    found = problems(config(announce="tone_hz = 4000\ntone_s = 2\nperiod_s = 2"))
    assert found == [
        "test.toml:8: announce.tone_hz: 4000 Hz cannot be played at audio.sample_rate 8000 Hz"
        " (it must stay below 4000 Hz); lower announce.tone_hz (the convention is 1400)",
        "test.toml:9: announce.tone_s: a 2 s tone does not fit in announce.period_s = 2 s;"
        " make the tone shorter than the period",
    ]
    # 4000 Hz is fine at 16 kHz; the field's own limit still applies.
    parse_config(config(audio="sample_rate = 16000", announce="tone_hz = 4000"))
    [limit] = problems(config(announce="tone_hz = 9000"))
    assert "announce.tone_hz: Input should be less than or equal to 7900" in limit


def test_playback_channels_exist_and_are_not_shared() -> None:
    found = problems(
        config(
            'announce = "tone"\nannounce_channel = 1',
            announce="channels = 2",
            line2='announce = "tone"',
        )
    )
    assert found == [
        "test.toml:17: lines[1].channel: playback channel 1 already announces line 'line1';"
        " give each announcing line its own announce_channel"
    ]
    [missing] = problems(config('announce = "tone"\nannounce_channel = 3'))
    assert missing.startswith("test.toml:14: lines[0].announce_channel: playback channel 3 does")
    assert "set lines.announce_channel or raise announce.channels" in missing
    # A line that does not announce needs no playback channel.
    parse_config(config(announce="channels = 1", line2='announce = "off"'))
