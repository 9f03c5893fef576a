"""The whole recorder over real alsa-lib: the ALSA file PCM as the HAT, sim pins as the hooks.

The file PCM is unpaced (its null slave has no clock), so the capture gets a clock that
advances one period per read, like a real card would; everything else is the production
path: AlsaCapture -> Recorder -> ring -> call machine -> WAV sink.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

from drivers.audio.alsa import AlsaCapture
from drivers.audio.formats import SampleFormat
from drivers.gpio.sim import SimPinFactory
from firmware.config import load_config
from firmware.recorder import NS_PER_S, Recorder
from firmware.sinks import WavSink
from tests.alsa_pcm import PacedClock, make_file_pcm
from tests.helpers import config_text, line_signal


@pytest.mark.parametrize("rate", [8000, 16000])
def test_two_lines_through_alsa(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rate: int):
    pcm = make_file_pcm(tmp_path, monkeypatch)
    seconds = 12
    data = np.stack([line_signal(seconds * rate, c) for c in range(2)], axis=1)
    pcm.load(data)
    out = tmp_path / "out"
    conf = tmp_path / "linetap.toml"
    conf.write_text(config_text(out, lines=2, rate=rate, preroll_s=1.0, alsa_device=pcm.name))
    cfg = load_config(conf)
    period = cfg.audio.period_frames
    capture = AlsaCapture(
        device=cfg.audio.device,
        sample_rate=rate,
        channels=2,
        sample_format=SampleFormat(cfg.audio.sample_format),
        period_frames=period,
        periods=4,
        clock=PacedClock(period * NS_PER_S // rate, start_ns=10 * NS_PER_S),
    )
    pins = SimPinFactory()
    stop = threading.Event()
    # (frame, pin, level): line1 off-hook 3 s..7 s, line2 off-hook 5 s..9 s (active low).
    plan = [
        (3 * rate, 17, False),
        (5 * rate, 18, False),
        (7 * rate, 17, True),
        (9 * rate, 18, True),
    ]
    rec: Recorder

    def tick() -> None:
        end = rec.lines[0].ring.end_frame
        while plan and plan[0][0] <= end:
            frame, pin, level = plan.pop(0)
            pins.pin(pin).drive(level, rec.timeline.ns_at(frame))
        if end >= 11 * rate:
            stop.set()

    rec = Recorder(
        cfg,
        capture,
        pins,
        WavSink(out),
        stop=stop,
        clock=time.monotonic_ns,
        wall_offset_ns=0,
        device_id="t",
        on_tick=tick,
    )
    try:
        rec.run()
    finally:
        capture.close()
    metas = sorted((json.loads(p.read_text()) for p in out.glob("*.json")), key=lambda m: m["line"])
    assert [(m["line"], m["reason"]) for m in metas] == [("line1", "onhook"), ("line2", "onhook")]
    for channel, (m, edge) in enumerate(zip(metas, (3, 5), strict=True)):
        # Edges stamped by the pin backend land on the exact frame of the audio timeline.
        assert m["trigger_frame"] == edge * rate
        assert m["start_frame"] == (edge - 1) * rate
        assert m["end_frame"] == (edge + 4 + 1) * rate
        audio, sr = soundfile.read(out / m["audio_file"], dtype="int16")
        assert sr == rate
        np.testing.assert_array_equal(audio, data[m["start_frame"] : m["end_frame"], channel])
    assert capture.stats.xruns == 0
