"""Config loading: the shipped example, limits, unknown keys, cross-field rules, line numbers."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest

from drivers.audio.factory import BACKENDS
from drivers.audio.formats import SampleFormat
from firmware.config import AudioConfig, load_config, parse_config
from firmware.errors import ConfigError
from tests.helpers import run_cli

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "firmware" / "linetap.example.toml"

RECIPIENT = "age1f4zhnnetpxuyfgmas8l4yr42k0hv93f536lakp3qe64q600lf3ns9r098g"
MINIMAL = f"""
[sealing]
recipients = ["{RECIPIENT}"]
[[lines]]
name = "line1"
channel = 0
hook_pin = 17
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "test.toml")
    assert isinstance(info.value, ValueError)  # ConfigError is also a ValueError
    return info.value.problems


def test_example_config_is_valid_and_has_two_lines():
    cfg = load_config(EXAMPLE)
    assert [line.name for line in cfg.lines] == ["line1", "line2"]
    assert cfg.call.preroll_s == 5.0 and cfg.call.flash_max_ms == 1000


def test_defaults_just_work():
    cfg = parse_config(MINIMAL)
    assert cfg.audio.sample_rate == 8000
    assert cfg.call.preroll_s == 5.0
    assert cfg.call.flash_max_ms == 1000
    assert cfg.audio.period_frames == 800  # 100 ms: nothing needs a shorter tick


def test_capture_period_is_short_by_default_only_when_a_line_announces():
    announcing = MINIMAL.replace("[[lines]]", '[[lines]]\nannounce = "tone"', 1)
    assert parse_config(announcing).audio.period_ms == 20
    assert parse_config(MINIMAL).audio.period_ms == 100
    chosen = parse_config("[audio]\nperiod_ms = 50\n" + announcing)
    assert chosen.audio.period_ms == 50  # a period set in the file is always kept


def test_device_id_defaults_to_the_hostname_and_says_whether_the_file_set_it():
    unset = parse_config(MINIMAL)
    assert unset.device_id == socket.gethostname()
    assert "device_id" not in unset.model_fields_set  # provisioning refuses such a boot file
    named = parse_config('device_id = "shop-12"\n' + MINIMAL)
    assert named.device_id == "shop-12" and "device_id" in named.model_fields_set


def test_bad_device_id_names_the_rule():
    [problem] = problems('device_id = "-x"\n' + MINIMAL)
    assert problem.startswith("test.toml:1: device_id: String should match pattern")
    assert "letters, digits" in problem


def test_audio_settings_are_the_ones_the_capture_drivers_take():
    """The config names formats and backends as plain strings (it imports no driver)."""
    fields = AudioConfig.model_fields
    assert set(get_args(fields["sample_format"].annotation)) == set(SampleFormat)
    assert set(get_args(fields["backend"].annotation)) == set(BACKENDS)


def test_loading_the_config_loads_no_driver_and_no_numpy():
    code = (
        "import sys, firmware.config\n"
        "print(sorted(m for m in sys.modules if m == 'numpy' or m.startswith('drivers')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_field_has_a_description():
    from pydantic import BaseModel

    from firmware import config as mod

    models = [
        v
        for v in vars(mod).values()
        if isinstance(v, type) and issubclass(v, BaseModel) and v.__module__ == mod.__name__
    ]
    assert len(models) >= 6
    for model in models:
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"


def test_out_of_range_value_names_file_line_key_and_fix():
    text = MINIMAL.replace("hook_pin = 17", "hook_pin = 99")
    [problem] = problems(text)
    assert problem.startswith("test.toml:7: lines[0].hook_pin: ")
    assert "less than or equal to 63" in problem and "BCM GPIO" in problem


def test_unknown_key_suggests_the_right_one():
    [problem] = problems('[audio]\ndevcie = "hw:0"\n' + MINIMAL)
    assert problem == "test.toml:2: audio.devcie: unknown key; did you mean 'device'?"


def test_one_line_per_problem():
    text = "[audio]\nsample_rate = 44100\n[call]\npreroll_s = -1\n" + MINIMAL.replace(
        '"line1"', '"Line 1"'
    )
    found = problems(text)
    assert len(found) == 3
    assert all("\n" not in p for p in found)
    assert {p.split(":")[1] for p in found} == {"2", "4", "9"}


def test_cross_field_rules():
    text = """
[audio]
channels = 2
[call]
debounce_ms = 200
flash_max_ms = 150
[[lines]]
name = "a"
channel = 0
hook_pin = 17
led_pin = 22
[[lines]]
name = "a"
channel = 2
hook_pin = 22
"""
    found = problems(text)
    joined = "\n".join(found)
    assert "test.toml:13: lines[1].name: duplicate line name 'a'" in joined
    assert "test.toml:14: lines[1].channel: channel 2 does not exist: audio.channels = 2" in joined
    assert "test.toml:15: lines[1].hook_pin: GPIO22 is already used by lines[0].led_pin" in joined
    assert "test.toml:6: call.flash_max_ms: must be longer than call.debounce_ms (200)" in joined


def test_missing_lines_and_bad_toml():
    [problem] = problems("log_level = 'info'\n")
    assert problem.startswith("test.toml: lines: missing; add it:")
    [problem] = problems("[audio\nx=1")
    assert problem.startswith("test.toml:1: not valid TOML")


def test_file_backend_needs_a_file():
    [problem] = problems('[audio]\nbackend = "file"\n' + MINIMAL)
    assert problem.startswith("test.toml:1: audio.file:")  # points at the [audio] table
    assert 'audio.file = "path/to/line.wav"' in problem


def test_relative_paths_are_taken_from_the_config_folder(tmp_path: Path):
    cfg_file = tmp_path / "linetap.toml"
    cfg_file.write_text(
        '[audio]\nbackend = "file"\nfile = "line.wav"\n[storage]\nout_dir = "out"\n' + MINIMAL
    )
    cfg = load_config(cfg_file)
    assert cfg.audio.file == tmp_path / "line.wav"
    assert cfg.storage.out_dir == tmp_path / "out"


def test_models_are_frozen():
    cfg = parse_config(MINIMAL)
    with pytest.raises(ValueError):
        cfg.call.preroll_s = 1  # type: ignore[misc]


def test_cli_prints_one_line_per_problem_and_exits_2(tmp_path: Path, linetap_bin: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[audio]\nsample_rate = 11025\n[[lines]]\nname = "line1"\nchannel = 0\nhook_pin = 64\n'
    )
    for argv in (["validate-config", "--config", str(bad)], ["record", "--config", str(bad)]):
        run = run_cli(linetap_bin, *argv)
        assert run.returncode == 2, run.stderr
        lines = run.stderr.strip().splitlines()
        assert lines == [
            f"{bad}:2: audio.sample_rate: Input should be 8000 or 16000; capture rate in Hz for every line: 8000 or 16000",
            f"{bad}:6: lines[0].hook_pin: Input should be less than or equal to 63; BCM GPIO number of the hook switch input (0-63)",
        ]
        assert "Traceback" not in run.stderr


def test_sealed_storage_needs_a_valid_recipient():
    text = MINIMAL.replace(f'recipients = ["{RECIPIENT}"]', "recipients = []")
    [problem] = problems(text)
    assert problem.startswith("test.toml:3: sealing.recipients: ")
    assert "at least one head-office key" in problem
    broken = RECIPIENT[:-1] + ("q" if RECIPIENT[-1] != "q" else "p")
    [problem] = problems(MINIMAL.replace(RECIPIENT, broken))
    assert problem.startswith("test.toml:3: sealing.recipients: ")
    assert "checksum" in problem and "linetap-office enroll" in problem
    wav = parse_config(
        text.replace(
            "[sealing]",
            '[storage]\nformat = "wav"\n[development]\nallow_plain_audio = true\n[sealing]',
        )
    )
    assert wav.storage.format == "wav"


def test_cli_missing_config_file(tmp_path: Path, linetap_bin: Path):
    run = run_cli(linetap_bin, "validate-config", "--config", tmp_path / "nope.toml")
    assert run.returncode == 2
    assert (
        run.stderr.strip()
        == f"{tmp_path / 'nope.toml'}: no such file; copy firmware/linetap.example.toml there or pass --config"
    )


def test_cli_validate_ok(linetap_bin: Path):
    run = run_cli(linetap_bin, "validate-config", "--config", EXAMPLE)
    assert run.returncode == 0, run.stderr
    assert "OK: 2 line(s)" in run.stdout
