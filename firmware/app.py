"""Wiring: build a Recorder from config for the daemon and for replay.

Collaborators are made here, once, and passed in; nothing below builds its own.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from buffers.outbox import Outbox
from drivers.audio import CaptureSource
from drivers.audio.factory import open_capture
from drivers.audio.playback import AlsaPlayback
from drivers.gpio import PinFactory
from drivers.gpio.factory import make_pin_factory
from drivers.gpio.sim import ScriptedLevel
from drivers.serial.reader import SerialCallerIdReader
from firmware.announce import Prompt
from firmware.announce_config import (
    PROMPT_MODES,
    PromptError,
    announce_device,
    announcing_lines,
    read_prompt_file,
)
from firmware.callstate import EndReason
from firmware.config import AudioConfig, LinetapConfig
from firmware.events import events_to_pin_script, load_events
from firmware.headfile import HeadFile
from firmware.recorder import NS_PER_S, Recorder, StorageHealth
from firmware.retention_thread import RetentionThread
from firmware.runstate import write_status_file
from firmware.sdnotify import Notifier
from firmware.sealing import ChainState, SealingSettings, SealingSink
from firmware.sinks import RecordingSink, WavSink
from runtime.errors import ConfigError
from runtime.process import stop_on_signals
from sealedrec.age import parse_recipient
from sealedrec.keys import create_device_key, load_device_key

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

# How often the daemon refreshes its status file (read by the uploader's telemetry).
STATUS_INTERVAL_S = 1.0


def write_status(cfg: LinetapConfig, recorder: Recorder) -> None:
    """Atomically replace the status file in the runtime dir (tmpfs); never fatal."""
    path = cfg.storage.status_file
    payload = {
        "updated_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "pid": os.getpid(),
        "device_id": cfg.device_id,
        **recorder.status(),
    }
    try:
        write_status_file(path, payload)
    except OSError as exc:
        log.debug("status file %s not written: %s", path, exc)


log = logging.getLogger(__name__)


def device_key_path(cfg: LinetapConfig) -> Path:
    return cfg.sealing.device_key or cfg.storage.data_dir / "keys" / "device.key"


def make_sealing_sink(
    cfg: LinetapConfig, health: StorageHealth, device_key: Ed25519PrivateKey | None = None
) -> SealingSink:
    settings = SealingSettings(
        recipients=tuple(parse_recipient(r) for r in cfg.sealing.recipients),
        codec=cfg.sealing.codec,
        opus_bitrate=cfg.sealing.opus_bitrate,
        journal_sync_s=cfg.sealing.journal_sync_s,
        ram_buffer_bytes=cfg.storage.ram_buffer_mb * 1024 * 1024,
    )
    key = device_key or load_device_key(device_key_path(cfg))
    return SealingSink(
        settings,
        journal_root=cfg.storage.journal_dir,
        outbox=Outbox(cfg.storage.outbox_dir),
        chain=ChainState(cfg.storage.chain_file),
        device_key=key,
        storage_status=health.report,
        head=HeadFile(cfg.storage.head_file, cfg.device_id, key),
    )


def make_sink(cfg: LinetapConfig, health: StorageHealth) -> RecordingSink:
    if cfg.storage.format == "wav":
        return WavSink(cfg.storage.wav_dir)
    sink = make_sealing_sink(cfg, health)
    recovered = sink.recover()
    if recovered:
        log.warning(
            "sealed %d recording(s) left by a crash or power cut: %s",
            len(recovered),
            ", ".join(recovered),
        )
    sink.refresh_head()
    return sink


def capture_source(audio: AudioConfig, *, stop: threading.Event | None = None) -> CaptureSource:
    """The capture backend ``[audio]`` names (not yet opened: the recorder opens it)."""
    return open_capture(
        audio.backend,
        sample_rate=audio.sample_rate,
        channels=audio.channels,
        period_frames=audio.period_frames,
        sample_format=audio.sample_format,
        device=audio.device,
        periods=audio.periods,
        file=audio.file,
        file_realtime=audio.file_realtime,
        stop=stop,
    )


def announce_playback(cfg: LinetapConfig, *, blocking: bool = False) -> AlsaPlayback | None:
    """The playback of the recording announcement (not yet opened), or None when no line
    announces. ``blocking`` is for ``linetap check``'s test tone (the recorder never waits)."""
    if not announcing_lines(cfg):
        return None
    dev = announce_device(cfg)
    return AlsaPlayback(
        device=dev.device,
        sample_rate=dev.sample_rate,
        channels=dev.channels,
        period_frames=dev.period_frames,
        periods=dev.periods,
        # Half the buffer: the capture loop may be that late without an underrun, and that
        # early (a card clock running slow) without a full buffer.
        prefill_frames=max(1, dev.periods // 2) * dev.period_frames,
        blocking=blocking,
    )


def announce_prompts(cfg: LinetapConfig) -> dict[str, Prompt]:
    """The prompt of every line in a file mode, by line name (checked again: the file may
    have changed since the config was validated)."""
    prompts: dict[str, Prompt] = {}
    for index, line in enumerate(cfg.lines):
        if line.announce not in PROMPT_MODES or line.announce_file is None:
            continue
        try:
            prompts[line.name] = Prompt.of(
                read_prompt_file(line.announce_file, cfg.audio.sample_rate)
            )
        except PromptError as exc:
            raise ConfigError([f"lines[{index}].announce_file: {exc}"]) from None
    return prompts


def pin_script(cfg: LinetapConfig) -> list[ScriptedLevel]:
    if cfg.gpio.backend != "sim" or cfg.gpio.script is None:
        return []
    return events_to_pin_script(load_events(cfg.gpio.script), cfg, str(cfg.gpio.script))


def serial_caller_id_readers(
    cfg: LinetapConfig, *, replay: bool = False
) -> list[SerialCallerIdReader]:
    """One reader per line with ``[lines.caller_id_serial]``. A replay has no real ports:
    it plays only ``sim`` units (their scripts) and leaves real ones out, saying so."""
    from drivers.serial.factory import make_serial_port
    from drivers.serial.sim import load_serial_script

    readers = []
    for index, line in enumerate(cfg.lines):
        unit = line.caller_id_serial
        if unit is None:
            continue
        if replay and unit.backend != "sim":
            log.warning("replay: line %s's serial caller-ID unit is not replayed", line.name)
            continue
        port = make_serial_port(
            unit.backend,
            device=unit.device,
            baudrate=unit.baudrate,
            script=load_serial_script(unit.script) if unit.script else (),
            setting=f"lines[{index}].caller_id_serial.backend",
        )
        readers.append(
            SerialCallerIdReader(
                port,
                line_name=line.name,
                init=unit.init.encode("latin-1") if unit.init else None,
                idle_gap_s=unit.idle_gap_s,
            )
        )
    return readers


def run_daemon(cfg: LinetapConfig) -> int:
    """``linetap record``: record until SIGTERM/SIGINT, then finish calls and exit 0."""
    stop = threading.Event()
    with ExitStack() as cleanup:  # closes, in reverse, whatever was opened before a failure
        cleanup.enter_context(stop_on_signals(stop, log=log, doing="finishing calls in progress"))
        notifier = Notifier()
        cleanup.callback(notifier.close)
        capture = capture_source(cfg.audio, stop=stop)
        cleanup.callback(capture.close)
        pins = make_pin_factory(cfg.gpio.backend, chip=cfg.gpio.chip, script=pin_script(cfg))
        cleanup.callback(pins.close)
        serial_units = serial_caller_id_readers(cfg)
        for unit in serial_units:
            cleanup.callback(unit.close)
        playback = announce_playback(cfg)
        if playback is not None:
            cleanup.callback(playback.close)
        _record_until_stopped(
            cfg,
            stop,
            notifier=notifier,
            capture=capture,
            pins=pins,
            serial_units=serial_units,
            playback=playback,
        )
    return 0


def _record_until_stopped(
    cfg: LinetapConfig,
    stop: threading.Event,
    *,
    notifier: Notifier,
    capture: CaptureSource,
    pins: PinFactory,
    serial_units: list[SerialCallerIdReader],
    playback: AlsaPlayback | None,
) -> None:
    ready = False
    health = StorageHealth()
    next_status = 0.0
    recorder: Recorder | None = None

    def tick() -> None:
        nonlocal ready, next_status
        if not ready:
            ready = True
            notifier.ready(f"recording {len(cfg.lines)} line(s)")
        notifier.watchdog()
        now = time.monotonic()
        if recorder is not None and now >= next_status:
            next_status = now + STATUS_INTERVAL_S
            write_status(cfg, recorder)

    recorder = Recorder(
        cfg,
        capture,
        pins,
        make_sink(cfg, health),
        stop=stop,
        clock=time.monotonic_ns,
        wall_offset_ns=time.time_ns() - time.monotonic_ns(),
        device_id=cfg.device_id,
        on_tick=tick,
        storage_health=health,
        serial_caller_ids=serial_units,
        playback=playback,
        prompts=announce_prompts(cfg),
    )
    log.info(
        "recorder starting device=%s lines=%s audio=%s:%s gpio=%s",
        cfg.device_id,
        ",".join(line.name for line in cfg.lines),
        cfg.audio.backend,
        cfg.audio.device if cfg.audio.backend == "alsa" else cfg.audio.file,
        cfg.gpio.backend,
    )
    # Deleting acked recordings never runs in the capture loop (see retention_thread).
    retention = RetentionThread(cfg, health) if cfg.storage.format == "sealed" else None
    if retention:
        retention.start()
    try:
        reason = recorder.run()
    finally:
        if retention:
            retention.stop()
    notifier.stopping()
    log.info("recorder stopped (%s)", reason.value)


@dataclass(frozen=True)
class ReplayResult:
    reason: EndReason
    recordings: int
    frames: int
    unplayed_events: bool


def run_replay(
    cfg: LinetapConfig,
    *,
    audio: Path,
    events: Path,
    out: Path,
    start_utc: datetime,
    fmt: str = "sealed",
) -> ReplayResult:
    """``linetap replay``: the recorder pipeline over a file, as fast as it can go.

    ``sealed`` writes the device's data layout under ``out`` (journal/, outbox/, state/,
    keys/ with a replay-only device key made on first use); ``wav`` plain files.

    The recording announcement is played as the config says, to ``announce.device``
    (default ``audio.device``, the config's, not the replayed file): a replay records what
    the unit would have recorded, announcement events included. Point announce.device at
    an ALSA ``file`` PCM to keep what was played; a missing device makes the events say
    ``played: false`` (and logs the fault) without changing the recordings; a real card
    drops most of it, as the replay runs faster than real time.
    """
    replay_cfg = cfg.model_copy(
        update={
            "audio": cfg.audio.model_copy(
                update={"backend": "file", "file": audio, "file_realtime": False}
            ),
            "gpio": cfg.gpio.model_copy(update={"backend": "sim", "script": events}),
            "storage": cfg.storage.model_copy(
                update={"out_dir": out, "data_dir": out, "format": fmt}
            ),
            "sealing": cfg.sealing.model_copy(update={"device_key": out / "keys" / "device.key"}),
        }
    )
    health = StorageHealth()
    if fmt == "sealed" and not device_key_path(replay_cfg).exists():
        create_device_key(device_key_path(replay_cfg))
    sink = make_sink(replay_cfg, health)
    stop = threading.Event()
    capture: CaptureSource = capture_source(replay_cfg.audio, stop=stop)
    pins: PinFactory = make_pin_factory("sim", script=pin_script(replay_cfg))
    serial_units = serial_caller_id_readers(replay_cfg, replay=True)
    playback = announce_playback(replay_cfg)
    try:
        recorder = Recorder(
            replay_cfg,
            capture,
            pins,
            sink,
            stop=stop,
            storage_health=health,
            clock=time.monotonic_ns,
            # The replay's clock starts at 0 with the file; anchor it at the given time.
            wall_offset_ns=round(start_utc.timestamp() * NS_PER_S),
            device_id=cfg.device_id,
            serial_caller_ids=serial_units,
            playback=playback,
            prompts=announce_prompts(replay_cfg),
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
        for unit in serial_units:
            unit.close()
        if playback is not None:
            playback.close()
