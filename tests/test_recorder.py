"""The recorder loop in-process: LEDs driven from state, storage faults, gaps from xruns."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from drivers.audio import AudioBlock, CaptureStats
from drivers.gpio.sim import SimPinFactory
from firmware.app import capture_source
from firmware.config import load_config
from firmware.events import events_to_pin_script, parse_events
from firmware.leds import (
    FAST_BLINK_PERIOD_NS,
    HEARTBEAT_FLASH_NS,
    HEARTBEAT_PERIOD_NS,
    SLOW_BLINK_PERIOD_NS,
)
from firmware.recorder import NS_PER_S, Recorder
from firmware.sinks import WavSink
from tests.helpers import RATE, config_text, write_capture


def build(tmp_path: Path, events: str, seconds: float = 20, out: Path | None = None, **cfg_kw):
    out = out or tmp_path / "out"
    audio = tmp_path / "line.wav"
    write_capture(audio, seconds, cfg_kw.get("lines", 2))
    conf = tmp_path / "linetap.toml"
    conf.write_text(
        config_text(out, audio_file=audio, extra_audio="file_realtime = false", **cfg_kw)
    )
    cfg = load_config(conf)
    pins = SimPinFactory(script=events_to_pin_script(parse_events(events), cfg))
    stop = threading.Event()
    capture = capture_source(cfg.audio, stop=stop)
    rec = Recorder(
        cfg,
        capture,
        pins,
        WavSink(cfg.storage.wav_dir),
        stop=stop,
        clock=time.monotonic_ns,
        wall_offset_ns=0,
        device_id="t",
    )
    return rec, pins


def lit_at(history: list[tuple[int, bool]], t_ns: int) -> bool:
    level = False
    for t, lvl in history:
        if t > t_ns:
            break
        level = lvl
    return level


def toggles_between(history: list[tuple[int, bool]], a_ns: int, b_ns: int) -> list[int]:
    return [t for t, _ in history if a_ns < t < b_ns]


def test_leds_follow_line_state(tmp_path: Path):
    rec, pins = build(
        tmp_path, "2 line1 offhook\n6 line1 optout-on\n9 line1 optout-off\n14 line1 onhook\n"
    )
    assert rec.run().value == "end_of_input"
    s = NS_PER_S
    led1 = pins.pin(22).history  # line1 LED (active high)
    led2 = pins.pin(23).history  # line2 LED: idle all along
    status = pins.pin(5).history
    assert not lit_at(led1, 1 * s)  # idle: off
    assert all(lit_at(led1, t * s) for t in (3, 4, 5, 10, 12, 14))  # recording: solid
    # The LED follows on the capture period after the debounce (30 ms) has decided.
    tick = rec.config.audio.period_ms * 1_000_000
    assert not toggles_between(led1, 2 * s + 30_000_000 + tick, 6 * s)
    # Opt-out (6.03 s .. 9.03 s): slow blink, one change per half period.
    flips = toggles_between(led1, 6 * s + 40_000_000, 9 * s)
    assert len(flips) == pytest.approx(3 * s / (SLOW_BLINK_PERIOD_NS / 2), abs=1)
    assert not lit_at(led1, 16 * s)  # hung up at 14 s (+1 s flash window): off
    assert [lvl for _, lvl in led2] == [False]
    # Status LED mirrors the busiest line here.
    assert lit_at(status, 4 * s) and not lit_at(status, 1 * s)
    assert len(toggles_between(status, 6 * s + 40_000_000, 9 * s)) == len(flips)


def test_storage_fault_blinks_fast_logs_once_and_keeps_running(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    rec, pins = build(
        tmp_path,
        "2 line1 offhook\n5 line1 onhook\n8 line2 offhook\n11 line2 onhook\n",
        out=blocker / "out",
    )
    with caplog.at_level(logging.ERROR):
        assert rec.run().value == "end_of_input"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "storage.out_dir" in errors[0].getMessage()
    assert rec.storage_fault is not None
    status = pins.pin(5).history
    flips = toggles_between(status, 3 * NS_PER_S, 4 * NS_PER_S)
    assert len(flips) == pytest.approx(NS_PER_S / (FAST_BLINK_PERIOD_NS / 2), abs=1)
    # Both calls were still tried (and the line state machine went on).
    assert [line.recordings_started for line in rec.lines] == [0, 0]


class _ScriptedSource:
    """A capture source that replays prepared blocks (for gap handling, a pure recorder test)."""

    def __init__(self, blocks: list[AudioBlock]) -> None:
        self._blocks = list(blocks)
        self.stats = CaptureStats()
        self.sample_rate = RATE
        self.channels = 1

    def open(self) -> None: ...

    def read(self) -> AudioBlock | None:
        return self._blocks.pop(0) if self._blocks else None

    def close(self) -> None: ...


def test_overrun_gap_is_filled_with_silence_and_marked(tmp_path: Path):
    out = tmp_path / "out"
    conf = tmp_path / "linetap.toml"
    conf.write_text(config_text(out, lines=1))
    cfg = load_config(conf)
    blocks = []
    frame = 0
    for i in range(100):
        gap = 800 if i == 50 else 0
        frame += gap
        blocks.append(
            AudioBlock(
                np.full((160, 1), i + 1, dtype=np.int16), frame, frame * NS_PER_S // RATE, gap
            )
        )
        frame += 160
    pins = SimPinFactory(script=events_to_pin_script(parse_events("0 line1 offhook\n"), cfg))
    rec = Recorder(
        cfg,
        _ScriptedSource(blocks),
        pins,
        WavSink(out),
        stop=threading.Event(),
        clock=time.monotonic_ns,
        wall_offset_ns=0,
        device_id="t",
    )
    rec.run()
    import json

    import soundfile

    [meta] = [json.loads(p.read_text()) for p in out.glob("*.json")]
    audio, _ = soundfile.read(out / meta["audio_file"], dtype="int16")
    assert len(audio) == 100 * 160 + 800  # the timeline keeps its length
    np.testing.assert_array_equal(audio[50 * 160 : 50 * 160 + 800], 0)
    assert audio[50 * 160 - 1] == 50 and audio[50 * 160 + 800] == 51
    [gap] = [e for e in meta["events"] if e["type"] == "gap"]
    assert gap["data"] == {"frames": 800, "ms": 100}
    assert gap["audio_s"] == pytest.approx(50 * 160 / RATE)


def test_status_led_heartbeat_while_idle_line_leds_dark(tmp_path: Path):
    rec, pins = build(tmp_path, "", seconds=10)
    assert rec.run().value == "end_of_input"
    status = pins.pin(5).history
    # A 100 ms flash every 3 s: an idle recorder is told apart from a stopped one (dark).
    flashes = [t for t, lvl in status if lvl]
    assert len(flashes) == pytest.approx(10 * NS_PER_S / HEARTBEAT_PERIOD_NS, abs=1)
    for start in (3, 6, 9):
        t = start * NS_PER_S
        assert lit_at(status, t + HEARTBEAT_FLASH_NS // 2), start
        assert not lit_at(status, t + 3 * HEARTBEAT_FLASH_NS), start
    assert [lvl for _, lvl in pins.pin(22).history] == [False]  # the desks' LEDs stay dark
    assert [lvl for _, lvl in pins.pin(23).history] == [False]
