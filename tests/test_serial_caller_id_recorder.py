"""A serial caller-ID unit as the recorder's second caller-ID source.

End to end: ``linetap replay`` with a scripted (sim) unit, and the ``linetap record``
daemon reading a real pty through pyserial, the test playing the unit on the master side.
"""

from __future__ import annotations

import json
import os
import select
import time
from pathlib import Path
from typing import Any

import pytest

from firmware.cli import main
from firmware.config import parse_config
from firmware.errors import ConfigError
from tests.helpers import (
    config_text,
    reaped,
    replay_inputs,
    start_recorder,
    stop_with_sigterm,
    write_capture,
)

UNIT_OUTPUT = "DATE = 1125\\r\\nTIME = 1405\\r\\nNMBR = 5551234\\r\\nNAME = JOHN DOE\\r\\n"


def _replay_with_sim_unit(
    tmp_path: Path, unit_script: str, events: str, *, seconds: float, **cfg: Any
) -> int:
    """`linetap replay` of one line whose scripted (sim) unit prints ``unit_script``;
    the exit code."""
    script = tmp_path / "unit.txt"
    script.write_text(unit_script)
    unit = f'\n[lines.caller_id_serial]\nbackend = "sim"\nscript = "{script}"\n'
    conf = tmp_path / "linetap.toml"
    conf.write_text(config_text(tmp_path / "out", lines=1, **cfg) + unit)
    inputs = replay_inputs(tmp_path, events, seconds=seconds, channels=1)
    return main(inputs.argv(conf, tmp_path / "out", "--format", "wav"))


def test_replayed_unit_gives_the_call_its_caller_id(tmp_path: Path):
    unit_script = f"# TIME OUTPUT\n1.0 RING\\r\\n\n2.0 {UNIT_OUTPUT}\n7.0 RING\\r\\n\n"
    events = "8 line1 offhook\n12 line1 onhook\n15 line1 offhook\n"
    assert _replay_with_sim_unit(tmp_path, unit_script, events, seconds=20, preroll_s=1.0) == 0
    metas = sorted(
        (json.loads(p.read_text()) for p in (tmp_path / "out").glob("*.json")),
        key=lambda m: int(m["start_frame"]),
    )
    assert len(metas) == 2
    first, second = metas
    assert first["caller_id"] == {
        "number": "5551234",
        "name": "JOHN DOE",
        "time": "11251405",
        "absence_number": None,
        "absence_name": None,
        "source": "serial",
        "format": "text",
    }
    assert first["direction"] == "inbound"
    # The next call on the line was not announced: the first call's caller ID is spent.
    assert second["caller_id"] is None and second["direction"] == "unknown"


def test_bad_unit_script_is_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert _replay_with_sim_unit(tmp_path, "soon RING\\r\\n\n", "", seconds=2) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'unit.txt'}:1: expected 'SECONDS OUTPUT'" in err
    assert "Traceback" not in err


def test_config_rejects_a_script_for_a_real_port_and_a_shared_device(tmp_path: Path):
    text = config_text(tmp_path / "out", lines=2)
    text += '[lines.caller_id_serial]\ndevice = "/dev/ttyS0"\nscript = "x.txt"\n'
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert any(
        "caller_id_serial.script" in p and 'only backend = "sim"' in p for p in info.value.problems
    )
    text = config_text(tmp_path / "out", lines=2).replace(
        "opt_out_pin = 27\n", 'opt_out_pin = 27\n[lines.caller_id_serial]\ndevice = "/dev/ttyS0"\n'
    )
    text += '[lines.caller_id_serial]\ndevice = "/dev/ttyS0"\n'
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    [problem] = info.value.problems
    assert "lines[1].caller_id_serial.device" in problem and "line line1" in problem
    # The line number points at the second unit's device key.
    lines = text.splitlines()
    second_device = max(i for i, ln in enumerate(lines) if ln == 'device = "/dev/ttyS0"') + 1
    assert problem.split(":")[1] == str(second_device)


def _read_until(fd: int, want: bytes, timeout: float) -> bytes:
    got = b""
    deadline = time.monotonic() + timeout
    while want not in got and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            got += os.read(fd, 1024)
    return got


def test_daemon_reads_a_modem_on_a_real_pty(tmp_path: Path, linetap_bin: Path):
    master, slave = os.openpty()
    device = os.ttyname(slave)  # the daemon opens it by name, like /dev/ttyUSB0
    try:
        audio = tmp_path / "line.wav"
        write_capture(audio, 30, 1)
        (tmp_path / "events").write_text("3 line1 offhook\n5 line1 onhook\n")
        unit = f'\n[lines.caller_id_serial]\ndevice = "{device}"\ninit = "AT#CID=1\\r"\n'
        conf = tmp_path / "linetap.toml"
        conf.write_text(
            config_text(
                tmp_path / "out",
                lines=1,
                preroll_s=0.5,
                audio_file=audio,
                extra_audio="file_realtime = true",
                extra_gpio=f'script = "{tmp_path / "events"}"',
            )
            + unit
        )
        with reaped(start_recorder(linetap_bin, conf)) as proc:
            # The daemon opens the port and sends the modem its init string...
            assert b"AT#CID=1\r" in _read_until(master, b"AT#CID=1\r", 15)
            # ... then the modem reports a call, before the handset is lifted at 3 s.
            os.write(master, b"RING\r\n\r\nDATE = 1125\r\nTIME = 1405\r\nNMBR = 0201234567\r\n")
            os.write(master, b"NAME = ACME LTD\r\n\r\nRING\r\n")
            deadline = time.monotonic() + 20
            while not list((tmp_path / "out").glob("*.json")) and time.monotonic() < deadline:
                time.sleep(0.1)
            stderr = stop_with_sigterm(proc)
    finally:
        # Held open until here: a pty master reads EIO while no slave fd is open.
        os.close(slave)
        os.close(master)
    assert proc.returncode == 0, stderr
    [meta_file] = (tmp_path / "out").glob("*.json")
    meta = json.loads(meta_file.read_text())
    assert meta["caller_id"]["number"] == "0201234567", stderr
    assert meta["caller_id"]["name"] == "ACME LTD"
    assert meta["caller_id"]["source"] == "serial"
    assert meta["direction"] == "inbound"
    assert f"caller ID from {device} for line line1" in stderr


def test_a_unit_reporting_just_after_the_answer_still_counts(tmp_path: Path):
    """A quick answer: the unit has not finished decoding when the handset is lifted."""
    events = "4 line1 offhook\n8 line1 onhook\n"
    code = _replay_with_sim_unit(
        tmp_path, f"5.8 {UNIT_OUTPUT}\n", events, seconds=12, preroll_s=1.0
    )
    assert code == 0
    [meta] = [json.loads(p.read_text()) for p in (tmp_path / "out").glob("*.json")]
    assert meta["caller_id"]["number"] == "5551234"  # 1.8 s after off-hook: within 3 s
    assert meta["direction"] == "inbound"
