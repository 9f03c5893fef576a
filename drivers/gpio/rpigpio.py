"""RPi.GPIO backend (BCM numbering) for the Raspberry Pi 3/4.

RPi.GPIO reports edges by calling a Python callback on its own event thread. The callback
takes the monotonic timestamp first (the closest this backend gets to the edge), reads
the level and appends an :class:`~drivers.gpio.Edge` to a deque; :meth:`RPiGPIOFactory.poll`
drains the deque on the recorder's thread. ``deque.append`` / ``popleft`` are atomic, so
the two threads need no lock.

RPi.GPIO maps the SoC's GPIO registers directly and does not work on a Pi 5 (RP1 I/O
chip); there the ``gpiod`` backend is the one to use.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from drivers.errors import GpioError
from drivers.gpio import Edge, Pull

_NOT_A_PI_3_4 = (
    "RPi.GPIO works only on a Raspberry Pi 3/4; "
    'on a Pi 5 or any other board set gpio.backend = "gpiod"'
)


class RPiGPIOInput:
    def __init__(self, gpio: Any, number: int) -> None:
        self._gpio = gpio
        self._number = number

    @property
    def number(self) -> int:
        return self._number

    def read(self) -> bool:
        return bool(self._gpio.input(self._number))


class RPiGPIOOutput:
    def __init__(self, gpio: Any, number: int) -> None:
        self._gpio = gpio
        self._number = number

    @property
    def number(self) -> int:
        return self._number

    def write(self, level: bool) -> None:
        self._gpio.output(self._number, self._gpio.HIGH if level else self._gpio.LOW)


class RPiGPIOFactory:
    """PinFactory over RPi.GPIO. ``gpio_module`` replaces ``RPi.GPIO`` (tests pass a fake)."""

    name = "rpigpio"

    def __init__(self, gpio_module: Any = None) -> None:
        if gpio_module is None:
            try:
                # Imported here, not at module level: the package must import on machines
                # without RPi.GPIO (x86 development hosts, a Pi 5 running gpiod).
                import RPi.GPIO as rpi_gpio
            except (ImportError, RuntimeError) as exc:
                # ImportError: not installed (not a Pi); RuntimeError: RPi.GPIO's own
                # "This module can only be run on a Raspberry Pi!" on unknown hardware.
                raise GpioError(f"cannot load RPi.GPIO ({exc}); {_NOT_A_PI_3_4}") from exc
            gpio_module = rpi_gpio
        self._gpio: Any = gpio_module
        self._edges: deque[Edge] = deque()
        self._inputs: dict[int, RPiGPIOInput] = {}
        self._outputs: dict[int, RPiGPIOOutput] = {}
        # Level last reported per input; written only on RPi.GPIO's callback thread after
        # the claim has set it up. See _on_edge for why.
        self._last_level: dict[int, bool] = {}
        try:
            # Pins left configured by a previous run (crash, restart by systemd) are
            # expected on an appliance; RPi.GPIO's "channel already in use" warning for
            # them is noise in the journal.
            self._gpio.setwarnings(False)
            self._gpio.setmode(self._gpio.BCM)
        except (RuntimeError, ValueError) as exc:
            # ValueError: another part of the process chose BOARD numbering.
            raise GpioError(
                f"RPi.GPIO cannot be set to BCM numbering ({exc}); {_NOT_A_PI_3_4}"
            ) from exc

    # -- PinFactory -------------------------------------------------------------------
    def input(self, pin: int, pull: Pull) -> RPiGPIOInput:
        self._check_free(pin)
        gpio = self._gpio
        pud = {"up": gpio.PUD_UP, "down": gpio.PUD_DOWN, "off": gpio.PUD_OFF}[pull]
        try:
            gpio.setup(pin, gpio.IN, pull_up_down=pud)
            self._last_level[pin] = bool(gpio.input(pin))
            # No bouncetime: RPi.GPIO would drop every edge within it, including the one
            # that settles the level; the recorder debounces itself and needs them all.
            gpio.add_event_detect(pin, gpio.BOTH, callback=self._on_edge)
        except (RuntimeError, ValueError) as exc:
            raise GpioError(self._pin_error(pin, "as an input", exc)) from exc
        claimed = self._inputs[pin] = RPiGPIOInput(gpio, pin)
        return claimed

    def output(self, pin: int, initial: bool = False) -> RPiGPIOOutput:
        self._check_free(pin)
        gpio = self._gpio
        try:
            gpio.setup(pin, gpio.OUT, initial=gpio.HIGH if initial else gpio.LOW)
        except (RuntimeError, ValueError) as exc:
            raise GpioError(self._pin_error(pin, "as an output", exc)) from exc
        claimed = self._outputs[pin] = RPiGPIOOutput(gpio, pin)
        return claimed

    def start(self, t0_ns: int) -> None:
        """Nothing to do: edges carry real monotonic time, not time since start."""

    def poll(self, now_ns: int) -> list[Edge]:
        edges: list[Edge] = []
        # Drain by popleft until empty rather than copying and clearing: an edge appended
        # by the callback thread in between would otherwise be lost.
        while True:
            try:
                edges.append(self._edges.popleft())
            except IndexError:
                break
        # One callback thread appends in order; sorting only guards the contract.
        edges.sort(key=lambda e: e.t_ns)
        return edges

    def close(self) -> None:
        gpio = self._gpio
        pins = [*self._inputs, *self._outputs]
        problems: list[str] = []
        for pin in self._inputs:
            try:
                gpio.remove_event_detect(pin)
            except (RuntimeError, ValueError) as exc:
                problems.append(f"GPIO{pin}: remove edge detection: {exc}")
        self._inputs.clear()
        self._outputs.clear()
        self._last_level.clear()
        if pins:
            try:
                # Only our pins: a bare cleanup() would reset pins other code uses.
                gpio.cleanup(pins)
            except (RuntimeError, ValueError) as exc:
                problems.append(f"GPIO{pins}: cleanup: {exc}")
        if problems:
            raise GpioError("RPi.GPIO close: " + "; ".join(problems))

    # -- internals --------------------------------------------------------------------
    def _on_edge(self, channel: int) -> None:
        """RPi.GPIO's event thread: stamp first, then read the level."""
        t_ns = time.monotonic_ns()
        level = bool(self._gpio.input(channel))
        # RPi.GPIO tells us *that* the pin changed, not to what: by the time we read it a
        # bouncing contact may have changed again, so two callbacks can read the same
        # level. Reporting only real changes keeps the stream alternating and its last
        # level true; a pulse shorter than the callback latency nets to no change.
        if self._last_level.get(channel) == level:
            return
        self._last_level[channel] = level
        self._edges.append(Edge(channel, level, t_ns))

    def _check_free(self, pin: int) -> None:
        if pin in self._inputs or pin in self._outputs:
            mode = "input" if pin in self._inputs else "output"
            raise GpioError(f"GPIO{pin}: already in use as an {mode}; each pin can be claimed once")
        if pin < 0:
            raise GpioError(f"GPIO{pin}: pin numbers start at 0 (BCM numbering)")

    @staticmethod
    def _pin_error(pin: int, what: str, exc: Exception) -> str:
        return (
            f"GPIO{pin}: RPi.GPIO cannot set it up {what} ({exc}); check the pin is a BCM "
            f"number free of other users (overlays in config.txt, other services); {_NOT_A_PI_3_4}"
        )
