"""A call cut short by a crash keeps its dialled digits and masked spans.

The real `linetap record` daemon plays the bundled sample call in real time (FSK caller
ID, speech, a 16-digit card number plus '#' keyed as DTMF), held off-hook for 40 s more
so that no scheduling delay lets the call end first, and is SIGKILLed once it has
journalled all 17 key presses. The next start seals the recording as
recovered; its manifest must carry the same caller ID, direction, masked digits and
masked spans as the same call replayed to its end, and the audio the real `age` decrypts
must hold no detectable digit.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile

from firmware.analyze import analyze_file
from firmware.samples import __file__ as samples_init
from tests.conftest import VENV_BIN as BIN
from tests.helpers import journal_pcm_by_tools, ready_recorder, replay_argv

SAMPLES = Path(samples_init).parent
CARD_KEYS = 17  # 4111111111111111#


def _long_call(tmp_path: Path) -> tuple[Path, Path]:
    """The sample call with 40 s of line silence after it, and its off-hook kept until 50 s."""
    audio, rate = soundfile.read(SAMPLES / "sample_call.flac", dtype="int16")
    longer = tmp_path / "call.flac"
    soundfile.write(longer, np.concatenate([audio, np.zeros(40 * rate, np.int16)]), rate)
    events = tmp_path / "call.events"
    events.write_text("2.5 line1 offhook\n50 line1 onhook\n")
    return longer, events


def _config(tmp_path: Path, recipient: str, audio: Path, events: Path) -> Path:
    conf = tmp_path / "linetap.toml"
    conf.write_text(f"""
device_id = "crashy"
[audio]
backend = "file"
file = "{audio}"
file_realtime = true
sample_rate = 8000
channels = 1
[gpio]
backend = "sim"
script = "{events}"
[call]
preroll_s = 5.0
[storage]
data_dir = "{tmp_path / "data"}"
runtime_dir = "{tmp_path / "run"}"
[sealing]
recipients = ["{recipient}"]
[[lines]]
name = "line1"
channel = 0
hook_pin = 17
""")
    return conf


def _journalled_digits(data: Path) -> int:
    return sum(
        1
        for path in (data / "journal").glob("*/events.jsonl")
        for line in path.read_text().splitlines()
        if line.endswith("}") and json.loads(line)["type"] == "digit"
    )


def _run(conf: Path, tmp_path: Path, *, kill_at_digits: int | None) -> str:
    with ready_recorder(BIN / "linetap", conf, tmp_path) as proc:
        if kill_at_digits is None:
            proc.send_signal(signal.SIGTERM)  # recovery ran before READY
        else:
            deadline = time.monotonic() + 30
            while _journalled_digits(tmp_path / "data") < kill_at_digits:
                assert proc.poll() is None, proc.communicate()[1]
                assert time.monotonic() < deadline, "the digits were never journalled"
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)  # the call (on-hook at 50 s) is live
        _, stderr = proc.communicate(timeout=60)
    assert "Traceback" not in stderr, stderr
    return stderr


def _manifests(data: Path) -> list[dict[str, Any]]:
    return [
        json.loads(p.read_text())
        for p in sorted((data / "outbox" / "sealed").glob("*/manifest.json"))
    ]


def test_crash_after_the_card_number_keeps_digits_and_masked_spans(tmp_path: Path, office):
    key, recipient = office
    audio, events = _long_call(tmp_path)
    conf = _config(tmp_path, recipient, audio, events)
    subprocess.run(
        [BIN / "linetap", "keys", "init", "--config", conf], check=True, capture_output=True
    )

    # The same call replayed to its end: what the manifest says when nothing crashes.
    whole = tmp_path / "whole"
    subprocess.run(
        [
            BIN / "linetap",
            *replay_argv(conf, audio, events, whole),
        ],
        check=True,
        capture_output=True,
    )
    [reference] = _manifests(whole)
    assert reference["end_reason"] != "recovered"
    assert reference["dialled_digits"] == "*" * CARD_KEYS and reference["masked_spans"]

    _run(conf, tmp_path, kill_at_digits=CARD_KEYS)
    assert _manifests(tmp_path / "data") == []  # nothing sealed: the call was cut short
    log = _run(conf, tmp_path, kill_at_digits=None)
    [recovered] = _manifests(tmp_path / "data")
    assert recovered["end_reason"] == "recovered", log
    for key_name in ("direction", "caller_id", "dialled_digits", "masked_spans"):
        assert recovered[key_name] == reference[key_name], key_name
    assert recovered["caller_id"]["number"] == "02079460123"
    assert recovered["events"] == [] and recovered["consent_events"] == []

    # The recovered audio, each record decrypted by the real age and the FLAC stream
    # decoded by the real flac: it reaches past the first key press (9.5 s), and no digit
    # can be detected in it.
    entry = next((tmp_path / "data" / "outbox" / "sealed").iterdir())
    recovered_pcm = journal_pcm_by_tools(entry / "recording.segments", key, tmp_path)
    assert len(recovered_pcm) / 8000 > 10.0, len(recovered_pcm) / 8000
    wav = tmp_path / "recovered.wav"
    soundfile.write(wav, recovered_pcm, 8000, subtype="PCM_16")
    assert analyze_file(wav)["dtmf"] == []
