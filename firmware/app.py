"""Wiring: build a Recorder from config for the daemon and for replay.

Collaborators are made here, once, and passed in; nothing below builds its own.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import FrameType

from drivers.audio import CaptureSource
from drivers.audio.factory import open_capture
from drivers.gpio import PinFactory
from drivers.gpio.factory import make_pin_factory
from drivers.gpio.sim import ScriptedLevel
from firmware.callstate import EndReason
from firmware.config import LinetapConfig
from firmware.events import events_to_pin_script, load_events
from firmware.recorder import NS_PER_S, Recorder
from firmware.sdnotify import Notifier
from firmware.sinks import RecordingSink, WavSink

log = logging.getLogger(__name__)


def device_id(cfg: LinetapConfig) -> str:
    return cfg.device_id or socket.gethostname()


def make_sink(cfg: LinetapConfig) -> RecordingSink:
    return WavSink(cfg.storage.out_dir)


def pin_script(cfg: LinetapConfig) -> list[ScriptedLevel]:
    if cfg.gpio.backend != "sim" or cfg.gpio.script is None:
        return []
    return events_to_pin_script(load_events(cfg.gpio.script), cfg, str(cfg.gpio.script))


def run_daemon(cfg: LinetapConfig) -> int:
    """``linetap record``: record until SIGTERM/SIGINT, then finish calls and exit 0."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: finishing calls in progress", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    notifier = Notifier()
    capture = open_capture(cfg.audio, stop=stop)
    pins = make_pin_factory(cfg.gpio.backend, chip=cfg.gpio.chip, script=pin_script(cfg))
    ready = False

    def tick() -> None:
        nonlocal ready
        if not ready:
            ready = True
            notifier.ready(f"recording {len(cfg.lines)} line(s)")
        notifier.watchdog()

    try:
        recorder = Recorder(
            cfg,
            capture,
            pins,
            make_sink(cfg),
            stop=stop,
            clock=time.monotonic_ns,
            wall_offset_ns=time.time_ns() - time.monotonic_ns(),
            device_id=device_id(cfg),
            on_tick=tick,
        )
        log.info(
            "recorder starting device=%s lines=%s audio=%s:%s gpio=%s",
            device_id(cfg),
            ",".join(line.name for line in cfg.lines),
            cfg.audio.backend,
            cfg.audio.device if cfg.audio.backend == "alsa" else cfg.audio.file,
            cfg.gpio.backend,
        )
        reason = recorder.run()
        notifier.stopping()
        log.info("recorder stopped (%s)", reason.value)
    finally:
        capture.close()
        pins.close()
        notifier.close()
    return 0


@dataclass(frozen=True)
class ReplayResult:
    reason: EndReason
    recordings: int
    frames: int
    unplayed_events: bool


def run_replay(
    cfg: LinetapConfig,
    audio: Path,
    events: Path,
    out: Path,
    start_utc: datetime,
) -> ReplayResult:
    """``linetap replay``: the recorder pipeline over a file, as fast as it can go."""
    replay_cfg = cfg.model_copy(
        update={
            "audio": cfg.audio.model_copy(
                update={"backend": "file", "file": audio, "file_realtime": False}
            ),
            "gpio": cfg.gpio.model_copy(update={"backend": "sim", "script": events}),
            "storage": cfg.storage.model_copy(update={"out_dir": out}),
        }
    )
    stop = threading.Event()
    capture: CaptureSource = open_capture(replay_cfg.audio, stop=stop)
    pins: PinFactory = make_pin_factory("sim", script=pin_script(replay_cfg))
    try:
        recorder = Recorder(
            replay_cfg,
            capture,
            pins,
            make_sink(replay_cfg),
            stop=stop,
            clock=time.monotonic_ns,
            # The replay's clock starts at 0 with the file; anchor it at the given time.
            wall_offset_ns=round(start_utc.timestamp() * NS_PER_S),
            device_id=device_id(cfg),
        )
        reason = recorder.run()
        return ReplayResult(
            reason=reason,
            recordings=sum(line.recordings_started for line in recorder.lines),
            frames=capture.stats.frames,
            unplayed_events=not getattr(pins, "script_done", True),
        )
    finally:
        capture.close()
        pins.close()
