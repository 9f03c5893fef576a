"""libgpiod v2 backend: the GPIO character device, for the Pi 5 and any other board.

The kernel queues each edge with its own timestamp, taken in the interrupt handler on
CLOCK_MONOTONIC (``LineSettings.event_clock``, set explicitly below), which is the clock
``time.monotonic_ns`` reads on Linux. So an edge is placed where it happened, however late
the recorder polls, and nothing runs on a thread of ours.

One line request per claimed pin, not one shared request: a request's set of lines is
fixed when it is made, and pins are claimed one at a time (hook and opt-out inputs of each
line, LEDs), so a shared request would have to be released and made again on each claim,
glitching the outputs already driven. Per-pin requests also let the kernel report a busy
line for exactly that pin. The cost, one file descriptor per pin, is a handful.
"""

from __future__ import annotations

import errno
import logging
import threading

import gpiod
from gpiod.line import Bias, Clock, Direction, Value
from gpiod.line import Edge as LineEdge

from drivers.errors import GpioError
from drivers.gpio import Edge, Pull

log = logging.getLogger(__name__)

# Kernel edge queue per request (its default is 16 per line). A bouncing hook switch can
# make dozens of edges between two polls; when the queue is full the kernel drops the
# oldest, and the recorder wants every edge to debounce them itself.
EVENT_BUFFER_SIZE = 256
# Bounds the work of one poll() under an edge storm; what is left is read next poll.
_MAX_READS_PER_POLL = 8

_BIAS: dict[str, Bias] = {"up": Bias.PULL_UP, "down": Bias.PULL_DOWN, "off": Bias.DISABLED}
_RISING = gpiod.EdgeEvent.Type.RISING_EDGE


def _value(level: bool) -> Value:
    return Value.ACTIVE if level else Value.INACTIVE


class _Line:
    """One claimed pin and its request; used as InputPin or OutputPin."""

    def __init__(self, factory: GpiodFactory, number: int, request: gpiod.LineRequest) -> None:
        self._factory = factory
        self._number = number
        self.request = request
        self.last_seqno = 0

    @property
    def number(self) -> int:
        return self._number

    def read(self) -> bool:
        # active_low is never set, so the "logical" value gpiod returns is the level.
        with self._factory.lock:
            return self.request.get_value(self._number) == Value.ACTIVE


class GpiodInput(_Line):
    pass


class GpiodOutput(_Line):
    def write(self, level: bool) -> None:
        with self._factory.lock:
            self.request.set_value(self._number, _value(level))


class GpiodFactory:
    """PinFactory over one gpiochip; pin numbers are line offsets (BCM numbers on a Pi)."""

    name = "gpiod"

    def __init__(self, chip: str = "/dev/gpiochip0", consumer: str = "linetap") -> None:
        self.chip = chip
        self.consumer = consumer
        # gpiod's LineRequest needs external synchronisation; LEDs may be written from a
        # thread other than the one that polls.
        self.lock = threading.Lock()
        self._inputs: dict[int, GpiodInput] = {}
        self._outputs: dict[int, GpiodOutput] = {}
        # Fail at start-up, not on the first pin, if the chip is unusable; requests below
        # still map every error, since the chip can vanish or be in use in between.
        try:
            with gpiod.Chip(chip):
                pass
        except OSError as exc:
            raise GpioError(self._describe(exc, pin=None)) from exc

    # -- PinFactory -------------------------------------------------------------------
    def input(self, pin: int, pull: Pull) -> GpiodInput:
        settings = gpiod.LineSettings(
            direction=Direction.INPUT,
            edge_detection=LineEdge.BOTH,
            bias=_BIAS[pull],
            event_clock=Clock.MONOTONIC,
        )
        with self.lock:
            claimed = self._inputs[pin] = GpiodInput(self, pin, self._request(pin, settings))
        return claimed

    def output(self, pin: int, initial: bool = False) -> GpiodOutput:
        settings = gpiod.LineSettings(direction=Direction.OUTPUT, output_value=_value(initial))
        with self.lock:
            claimed = self._outputs[pin] = GpiodOutput(self, pin, self._request(pin, settings))
        return claimed

    def start(self, t0_ns: int) -> None:
        """Nothing to do: edges carry the kernel's monotonic time, not time since start."""

    def poll(self, now_ns: int) -> list[Edge]:
        edges: list[Edge] = []
        with self.lock:
            for line in self._inputs.values():
                edges.extend(self._read_events(line))
        # Each request's queue is in order; lines are merged here. sort() is stable, so
        # two edges with one timestamp keep the kernel's order.
        edges.sort(key=lambda e: e.t_ns)
        return edges

    def close(self) -> None:
        problems: list[str] = []
        with self.lock:
            for line in [*self._inputs.values(), *self._outputs.values()]:
                try:
                    line.request.release()
                except OSError as exc:
                    problems.append(f"GPIO{line.number}: release: {exc}")
            self._inputs.clear()
            self._outputs.clear()
        if problems:
            raise GpioError(f"gpio.chip '{self.chip}': close: " + "; ".join(problems))

    # -- internals --------------------------------------------------------------------
    def _read_events(self, line: GpiodInput) -> list[Edge]:
        edges: list[Edge] = []
        for _ in range(_MAX_READS_PER_POLL):
            # Timeout 0: a non-blocking select() on the request's fd; read_edge_events()
            # itself would block on an empty queue.
            if not line.request.wait_edge_events(0):
                break
            for event in line.request.read_edge_events():
                # The kernel numbers each line's edges from 1; a gap means its queue
                # overflowed and dropped the oldest (the newest level is still right).
                if event.line_seqno != line.last_seqno + 1:
                    log.warning(
                        "GPIO%d: %d edge(s) lost in the kernel queue (polled too late?)",
                        event.line_offset,
                        event.line_seqno - line.last_seqno - 1,
                    )
                line.last_seqno = event.line_seqno
                edges.append(
                    Edge(event.line_offset, event.event_type == _RISING, event.timestamp_ns)
                )
        return edges

    def _request(self, pin: int, settings: gpiod.LineSettings) -> gpiod.LineRequest:
        """Request one line; the caller holds the lock."""
        if pin in self._inputs or pin in self._outputs:
            mode = "input" if pin in self._inputs else "output"
            raise GpioError(f"GPIO{pin}: already in use as an {mode}; each pin can be claimed once")
        if pin < 0:
            raise GpioError(f"GPIO{pin}: pin numbers start at 0 (line offsets of {self.chip})")
        try:
            return gpiod.request_lines(
                self.chip,
                {pin: settings},
                consumer=self.consumer,
                event_buffer_size=EVENT_BUFFER_SIZE,
            )
        except OSError as exc:
            raise GpioError(self._describe(exc, pin)) from exc
        except ValueError as exc:
            # gpiod raises ValueError("line offset of out range") for offsets the chip
            # does not have.
            raise GpioError(
                f"gpio.chip '{self.chip}': GPIO{pin}: the chip has no such line ({exc}); "
                "is this the header's chip? list chips and their line counts with 'gpiodetect'"
            ) from exc

    def _describe(self, exc: OSError, pin: int | None) -> str:
        where = f"gpio.chip '{self.chip}'" + (f": GPIO{pin}" if pin is not None else "")
        if exc.errno == errno.ENOENT:
            return (
                f"{where}: not found; on a Pi 5 the header is /dev/gpiochip4 on older "
                "kernels, /dev/gpiochip0 on newer; list chips with 'gpiodetect'"
            )
        if exc.errno in (errno.EACCES, errno.EPERM):
            return (
                f"{where}: permission denied; add the service user to group 'gpio' "
                "(usermod -aG gpio USER) or check the udev rule for /dev/gpiochip*"
            )
        if exc.errno == errno.EBUSY:
            return (
                f"{where}: line busy, another program or a kernel driver holds it; "
                "find it with 'gpioinfo' and free the pin or choose another"
            )
        if exc.errno in (errno.ENODEV, errno.ENOTTY):
            return f"{where}: not a GPIO chip ({exc.strerror}); list chips with 'gpiodetect'"
        return f"{where}: {exc.strerror or exc}; check chip and pin with 'gpiodetect' / 'gpioinfo'"
