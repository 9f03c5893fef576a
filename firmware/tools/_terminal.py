"""Shared plumbing of the live installer tools (``linetap levels``, ``linetap hooktest``).

- :class:`LiveScreen`: redraws a block of rows in place with plain ANSI (cursor home,
  clear to end of line, hide/show cursor), so it works over SSH and on a serial console
  with no curses; rows are cut to the terminal so nothing wraps or scrolls.
- :func:`open_live_lines` / :class:`LiveLines`: the capture stream and every line's hook
  and opt-out switches, wired the way the recorder wires them (same capture factory, pin
  backend, events script, edge placement on the audio timeline), read by one loop.
  Opening errors become one line with the fix: a missing ALSA device, a device busy
  because the recorder daemon holds it.
"""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TextIO

from drivers.audio import AudioBlock, CaptureSource
from drivers.gpio import PinFactory
from drivers.gpio.factory import make_pin_factory
from firmware.app import capture_source, pin_script
from firmware.callstate import Input
from firmware.config import LinetapConfig
from firmware.errors import AudioDeviceBusyError, AudioDeviceError, GpioError
from firmware.inputs import LineInputs
from firmware.line import Timeline
from firmware.runstate import pid_alive, read_recorder_status

HIDE_CURSOR = "\x1b[?25l"
SHOW_CURSOR = "\x1b[?25h"
HOME = "\x1b[H"
CLEAR_SCREEN = "\x1b[2J"
CLEAR_TO_EOL = "\x1b[K"
CLEAR_BELOW = "\x1b[J"

STOP_RECORDER = "systemctl stop linetap-recorder"


def positive_seconds(text: str) -> float:
    """argparse type for ``--seconds``: a number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a number of seconds > 0")
    return value


# ---- terminal ------------------------------------------------------------------------


class LiveScreen:
    """A block of text redrawn in place on a terminal.

    ``draw(rows)`` homes the cursor and rewrites every row, clearing what the previous
    frame left to its right and below; rows are cut to the terminal's width and height
    (asked again on every frame, so a resized window just works). ``close()`` shows the
    cursor again and leaves it at the start of the line under the last frame, so the
    shell prompt comes back clean.
    """

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._started = False

    def __enter__(self) -> LiveScreen:
        self._write(HIDE_CURSOR + HOME + CLEAR_SCREEN)
        self._started = True
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def draw(self, rows: Sequence[str]) -> None:
        size = shutil.get_terminal_size()
        # One column and one row short of the edge: writing the last column leaves some
        # terminals in a pending wrap, and the last row would scroll the frame away.
        width = max(1, size.columns - 1)
        shown = [row[:width] for row in rows[: max(1, size.lines - 1)]]
        self._write(HOME + "".join(f"{row}{CLEAR_TO_EOL}\r\n" for row in shown) + CLEAR_BELOW)

    @property
    def rows(self) -> int:
        """How many rows :meth:`draw` shows."""
        return max(1, shutil.get_terminal_size().lines - 1)

    def close(self) -> None:
        if self._started:
            self._started = False
            # "\r" + clear: wipe the "^C" the terminal echoed under the last frame.
            self._write("\r" + CLEAR_TO_EOL + SHOW_CURSOR)

    def _write(self, text: str) -> None:
        try:
            self._out.write(text)
            self._out.flush()
        except BrokenPipeError:
            # The terminal went away (SSH dropped): nothing left to draw on.
            pass


def emit(out: TextIO, text: str) -> bool:
    """Print one line for scripts; ``False`` once the reader has gone (``| head``)."""
    try:
        out.write(text + "\n")
        out.flush()
    except BrokenPipeError:
        # Point stdout at /dev/null so the interpreter's final flush does not fail too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.fileno())
        os.close(devnull)
        return False
    return True


def is_terminal(out: TextIO) -> bool:
    try:
        return out.isatty()
    except ValueError:  # closed stream
        return False


# ---- capture and switches ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LiveBlock:
    """One capture period and, per line, its raw switch edges placed on the audio timeline."""

    block: AudioBlock
    edges: list[list[tuple[int, Input, bool]]]  # per line: (frame, input, active)


class LiveLines:
    """The capture stream plus every line's hook / opt-out inputs, read by one loop.

    The wiring of :class:`firmware.recorder.Recorder` without the recording (the same
    :class:`firmware.inputs.LineInputs`): the pin
    backend starts on the first block's clock (so a sim events script plays on the
    audio's own timeline), edges are polled up to each block's end and placed on the
    stream timeline exactly as the recorder places them.
    """

    def __init__(self, cfg: LinetapConfig, capture: CaptureSource, pins: PinFactory) -> None:
        self.cfg = cfg
        self.capture = capture
        self.pins = pins
        self.rate = cfg.audio.sample_rate
        self.timeline = Timeline(rate=self.rate, wall_offset_ns=0)
        self.first_frame: int | None = None
        # Each line's (off-hook, opt-out pressed) when the stream started, before its first
        # edges: what the recorder's call machines boot with.
        self.start_levels: list[tuple[bool, bool]] = []
        self.inputs = LineInputs(cfg.lines, pins)
        self.lines = self.inputs.lines

    def read(self) -> LiveBlock | None:
        """The next period with its edges; ``None`` at the end of a file or on stop."""
        block = self.capture.read()
        if block is None:
            return None
        self.timeline.update(block)
        if self.first_frame is None:
            self.pins.start(block.t_start_ns)
            self.first_frame = block.start_frame - block.gap_frames
            self.start_levels = [(line.off_hook, bool(line.opted_out)) for line in self.lines]
        edges = self.inputs.route(
            self.pins.poll(self.timeline.ns_at(block.end_frame)),
            self.timeline.frame_at,
            block.end_frame,
        )
        return LiveBlock(block, edges)

    def seconds_at(self, frame: int) -> float:
        """Seconds from the first captured frame (the events script's time 0)."""
        return (frame - (self.first_frame or 0)) / self.rate

    def source_text(self) -> str:
        audio = self.cfg.audio
        if audio.backend == "alsa":
            where = f"alsa {audio.device}"
        else:
            where = f"file {audio.file}" + ("" if audio.file_realtime else " (fast)")
        return f"{where}, gpio {self.cfg.gpio.backend}"


def _recorder_pid(cfg: LinetapConfig) -> int | None:
    """The pid of a running recorder daemon, from its (fresh) status file, if any."""
    pid = read_recorder_status(cfg.storage.status_file).get("pid")
    return pid if isinstance(pid, int) and pid_alive(pid) else None


def _busy_hint(cfg: LinetapConfig) -> str:
    pid = _recorder_pid(cfg)
    who = (
        f"the recorder daemon (pid {pid}) is running and holds it"
        if pid is not None
        else "usually the recorder daemon holds it"
    )
    return f"{who}; run '{STOP_RECORDER}' first (and start it again when done)"


def explain_capture_error(exc: AudioDeviceError, cfg: LinetapConfig) -> AudioDeviceError:
    """The capture error to show an installer: a busy device names the recorder daemon."""
    if isinstance(exc, AudioDeviceBusyError):
        return AudioDeviceError(f"audio.device {cfg.audio.device!r} is busy: {_busy_hint(cfg)}")
    return exc


def explain_gpio_error(exc: GpioError, cfg: LinetapConfig) -> GpioError:
    cause = exc.__cause__
    if isinstance(cause, OSError) and cause.errno == errno.EBUSY:
        return GpioError(f"{exc}; {_busy_hint(cfg)}")
    return exc


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Hide what C libraries print on fd 2 meanwhile (alsa-lib's "ALSA lib pcm.c:…"
    lines): the error we raise already carries alsa-lib's reason, on one line."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@contextmanager
def open_live_lines(cfg: LinetapConfig, stop: threading.Event) -> Iterator[LiveLines]:
    """Open the capture device and claim every line's inputs; release both afterwards.

    Fails fast (an installer wants to know now, not after the daemon's reopen loop):
    :class:`AudioDeviceError` / :class:`GpioError` / file and events-script errors,
    each one line naming the device, pin or file and the fix.
    """
    capture = capture_source(cfg.audio, stop=stop)
    try:
        with _quiet_stderr():
            capture.open()
    except AudioDeviceError as exc:
        raise explain_capture_error(exc, cfg) from exc
    pins: PinFactory | None = None
    try:
        try:
            pins = make_pin_factory(cfg.gpio.backend, chip=cfg.gpio.chip, script=pin_script(cfg))
            live = LiveLines(cfg, capture, pins)
        except GpioError as exc:
            raise explain_gpio_error(exc, cfg) from exc
        yield live
    finally:
        if pins is not None:
            pins.close()
        capture.close()
