"""The recorder: one capture loop feeding a call state machine per line.

One thread does everything, once per capture period: read a block, poll the GPIO edges
(timestamped by the backend) and serial caller-ID units, place them on the audio
timeline, hand each line its block (:class:`~firmware.line.LineRunner`: call machine,
detectors, masking, writing from the pre-roll ring, announcement events), play the
recording announcement's block (:mod:`firmware.announce_output`), and refresh the LEDs.
``linetap record`` (the daemon) and ``linetap replay`` run this same code; only the
capture source, pin backend and clock differ.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence

from buffers.ring import PrerollRing
from drivers.audio import AudioBlock, CaptureSource
from drivers.audio.playback import Playback
from drivers.gpio import PinFactory
from drivers.gpio.devices import Led
from drivers.serial.cid_text import SerialCallerId
from drivers.serial.reader import SerialCallerIdReader
from firmware.announce import LineAnnouncer, Prompt, line_program, tone_spec
from firmware.announce_config import announce_device
from firmware.announce_output import AnnounceOutput
from firmware.callstate import (
    EndReason,
    LineState,
)
from firmware.config import LineConfig, LinetapConfig
from firmware.dsp.analyser import LineAnalyser
from firmware.dsp.cid_messages import CallerIdMessage
from firmware.errors import AudioDeviceError, StorageError
from firmware.inputs import LineInputs
from firmware.leds import LedPanel
from firmware.line import NS_PER_S, LineRunner, Timeline, call_timing, telephony_settings
from firmware.sinks import (
    RecordingSink,
)

# NS_PER_S and Timeline are part of this module's interface (daemon, benches, tools).
__all__ = ["NS_PER_S", "Recorder", "StorageHealth", "Timeline"]

log = logging.getLogger(__name__)

# Slack in the ring beyond pre-roll + debounce, for edges reported late (a slow poll).
RING_SLACK_S = 2.0


class StorageHealth:
    """Storage fault state shared by the sink (which sees the disk) and the recorder (LEDs)."""

    def __init__(self) -> None:
        self.fault: str | None = None

    def report(self, exc: StorageError | None) -> None:
        if exc is None:
            if self.fault is not None:
                log.info("storage works again")
            self.fault = None
            return
        if self.fault is None:
            log.error("storage fault: %s", exc)
        self.fault = str(exc)


class Recorder:
    """Capture loop for all lines. Build with :func:`build_recorder` or by hand in tests."""

    def __init__(
        self,
        config: LinetapConfig,
        capture: CaptureSource,
        pins: PinFactory,
        sink: RecordingSink,
        *,
        stop: threading.Event,
        clock: Callable[[], int],
        wall_offset_ns: int,
        device_id: str,
        on_tick: Callable[[], None] | None = None,
        storage_health: StorageHealth | None = None,
        serial_caller_ids: Sequence[SerialCallerIdReader] = (),
        playback: Playback | None = None,
        prompts: Mapping[str, Prompt] | None = None,
    ) -> None:
        """``playback`` plays the recording announcement (needed when a line announces);
        ``prompts`` are the file modes' prompts by line name."""
        self.config = config
        self.storage = storage_health or StorageHealth()
        self.capture = capture
        self.pins = pins
        self.sink = sink
        self.stop = stop
        self.clock = clock
        self.on_tick = on_tick
        self.serial_caller_ids = list(serial_caller_ids)
        rate = config.audio.sample_rate
        self.rate = rate
        self.timeline = Timeline(rate=rate, wall_offset_ns=wall_offset_ns)
        self.timing = call_timing(config)
        ring_frames = self.timing.preroll + self.timing.debounce + round(RING_SLACK_S * rate)
        self.telephony = telephony_settings(config)
        self.audio_fault: str | None = None
        self.announcers = _announcers(config, prompts or {})
        self.announce = self._announce_output(playback)
        self.lines: list[LineRunner] = []
        self.inputs = LineInputs(config.lines, pins)
        line_leds: list[Led | None] = []
        for line, switches in zip(config.lines, self.inputs.lines, strict=True):
            hook, optout = switches.hook, switches.optout
            line_leds.append(
                Led(pins, line.led_pin, line.led_active) if line.led_pin is not None else None
            )
            self.lines.append(
                LineRunner(
                    config=line,
                    timing=self.timing,
                    ring=PrerollRing(ring_frames),
                    sink=sink,
                    hook=hook,
                    optout=optout,
                    device_id=device_id,
                    rate=rate,
                    timeline=self.timeline,
                    storage_status=self.storage.report,
                    analyser=LineAnalyser(rate, fsk_caller_id=config.telephony.fsk_caller_id),
                    telephony=self.telephony,
                    announcer=self.announcers.get(line.name),
                    announce_fault=self._announce_fault,
                )
            )
        status = config.gpio.status_led_pin
        self.leds = LedPanel(
            line_leds,
            Led(pins, status, config.gpio.status_led_active) if status is not None else None,
        )
        self._booted = False
        self._last_frame = 0

    # -- state ------------------------------------------------------------------------
    @property
    def storage_fault(self) -> str | None:
        return self.storage.fault

    @property
    def fault(self) -> bool:
        return (
            self.audio_fault is not None
            or self.storage.fault is not None
            or self._announce_fault() is not None
        )

    def _announce_fault(self) -> str | None:
        return self.announce.fault if self.announce is not None else None

    def _announce_output(self, playback: Playback | None) -> AnnounceOutput | None:
        if not self.announcers:
            return None
        if playback is None:
            raise ValueError("a line announces: the recorder needs the announcement playback")
        return AnnounceOutput(
            playback,
            list(self.announcers.values()),
            # Behind the capture by the debounce: a call's first announcement starts at the
            # off-hook edge, which is known only once the debounce has confirmed it.
            delay_frames=self.timing.debounce,
            reopen_frames=round(announce_device(self.config).reopen_s * self.rate),
        )

    @property
    def states(self) -> list[LineState]:
        return [line.state for line in self.lines]

    # -- main loop ----------------------------------------------------------------------
    def run(self) -> EndReason:
        """Record until the stop event is set or a finite source ends."""
        reason = EndReason.SHUTDOWN
        try:
            if not self._open_capture():
                return reason
            while not self.stop.is_set():
                try:
                    block = self.capture.read()
                except AudioDeviceError as exc:
                    log.error("audio fault: %s", exc)
                    self.audio_fault = str(exc)
                    self.capture.close()
                    if not self._open_capture():
                        break
                    continue
                if block is None:
                    if not self.stop.is_set():
                        reason = EndReason.END_OF_INPUT
                    break
                self.process(block)
        finally:
            self.finish(reason)
        return reason

    def status(self) -> dict[str, object]:
        """What the recorder is doing, for the status file (uploader telemetry, tools)."""
        stats = self.capture.stats
        faults: dict[str, str | None] = {"audio": self.audio_fault, "storage": self.storage.fault}
        heard = self._announce_fault() is None  # a faulted playback plays nothing
        out: dict[str, object] = {
            "lines": [
                {
                    "name": line.config.name,
                    "state": line.state.value,
                    "led": pattern.value,
                    "levels": line.analyser.levels if line.analyser else None,
                    # Only lines that announce: "prompt", "tone" (the tones run) or None.
                    **(
                        {"announce": line.announcer.playing() if heard else None}
                        if line.announcer
                        else {}
                    ),
                }
                for line, pattern in zip(self.lines, self.leds.patterns, strict=True)
            ],
            "status_led": self.leds.status.value,
            "faults": faults,
            "capture": {
                "xruns": stats.xruns,
                "lost_frames": stats.lost_frames,
                "frames": stats.frames,
            },
        }
        if self.announce is not None:
            faults["announce"] = self.announce.fault
            out["playback"] = self.announce.status()
        return out

    def _open_capture(self) -> bool:
        """Open the capture source, retrying with the fault LED blinking until stopped."""
        while not self.stop.is_set():
            try:
                self.capture.open()
            except AudioDeviceError as exc:
                if self.audio_fault != str(exc):
                    log.error("audio fault: %s", exc)
                self.audio_fault = str(exc)
                self._wait_blinking(self.config.audio.reopen_s)
                continue
            if self.audio_fault is not None:
                log.info("audio device %s is back", self.config.audio.device)
            self.audio_fault = None
            return True
        return False

    def _wait_blinking(self, seconds: float) -> None:
        """Wait on the stop event while keeping the LEDs (fault blink) alive."""
        deadline = self.clock() + round(seconds * NS_PER_S)
        while not self.stop.is_set():
            now = self.clock()
            if now >= deadline:
                return
            self.leds.update(self.states, self.fault, now)
            if self.on_tick:
                self.on_tick()
            self.stop.wait(min(0.05, (deadline - now) / NS_PER_S))

    def process(self, block: AudioBlock) -> None:
        """One capture period: edges, decisions, audio, LEDs."""
        self.timeline.update(block)
        if not self._booted:
            self.pins.start(block.t_start_ns)
            for reader in self.serial_caller_ids:
                reader.start(block.t_start_ns)
            for line in self.lines:
                line.boot(block.start_frame - block.gap_frames)
            self._booted = True
        if self.announce is not None:
            self.announce.prepare(block.start_frame)
        end_ns = self.timeline.ns_at(block.end_frame)
        per_line = self.inputs.route(
            self.pins.poll(end_ns), self.timeline.frame_at, block.end_frame
        )
        for reader in self.serial_caller_ids:
            for record in reader.poll(end_ns):
                self._route_serial_caller_id(reader.line_name, record)
        for index, line in enumerate(self.lines):
            line.feed(
                block.samples[:, line.config.channel],
                block.gap_frames,
                per_line[index],
                block.end_frame,
            )
        if self.announce is not None:
            self.announce.play(block.start_frame, block.end_frame)
        self.sink.poll()
        self._last_frame = block.end_frame
        self.leds.update(self.states, self.fault, end_ns)
        if self.on_tick:
            self.on_tick()

    def _route_serial_caller_id(self, line_name: str, record: SerialCallerId) -> None:
        line = next((ln for ln in self.lines if ln.config.name == line_name), None)
        if line is None or line.analyser is None:
            return
        frame = self.timeline.frame_at(record.received_ns)
        line.analyser.add_caller_id(
            CallerIdMessage(
                standard="serial",
                format="text",
                number=record.number,
                name=record.name,
                time=record.time,
                absence_number=record.absence_number,
                absence_name=record.absence_name,
                start_frame=frame,
                raw=record.raw,
            )
        )
        log.info(
            "caller ID from %s for line %s at frame %d: number=%s",
            record.port,
            line_name,
            frame,
            record.number or record.absence_number,
        )

    def finish(self, reason: EndReason) -> None:
        """End calls in progress (their recordings close normally) and turn LEDs off."""
        if self._booted:
            for line in self.lines:
                line.finish(self._last_frame, reason)
        if self.announce is not None:
            self.announce.close()
        self.sink.close()
        self.leds.all_off()


def _announcers(config: LinetapConfig, prompts: Mapping[str, Prompt]) -> dict[str, LineAnnouncer]:
    """The announcement state of every line that announces, by line name."""
    tone = tone_spec(config)

    def program(line: LineConfig) -> LineAnnouncer:
        return LineAnnouncer(line_program(line, tone, prompts.get(line.name)))

    return {line.name: program(line) for line in config.lines if line.announce != "off"}
