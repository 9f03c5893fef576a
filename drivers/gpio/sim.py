"""Simulated GPIO backend: pins a test drives by hand or a script drives on a timeline.

Like gpiozero's MockFactory, tests call ``pin.drive_low()`` / ``drive_high()`` and the
real device and recorder code sees ordinary edges. A script (``ScriptedLevel`` list, in
seconds from :meth:`SimPinFactory.start`) lets ``linetap replay`` and the daemon's
simulated appliance replay a hook / opt-out timeline on the audio's own clock: each
scripted edge carries its scripted time, not the time it was polled.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from drivers.errors import GpioError
from drivers.gpio import Edge, Pull

NS_PER_S = 1_000_000_000


@dataclass(frozen=True, slots=True)
class ScriptedLevel:
    """Pin ``pin`` goes to electrical ``level`` at ``t_s`` seconds after start.

    Entries at ``t_s <= 0`` set the level the pin has when the recorder starts (no edge).
    """

    t_s: float
    pin: int
    level: bool


class SimPin:
    """One simulated pin, usable as input or output."""

    def __init__(self, factory: SimPinFactory, number: int, level: bool) -> None:
        self._factory = factory
        self.number = number
        self._level = level
        self.mode: str | None = None  # "input" / "output" once claimed
        # (t_ns, level) of every change of an output, for tests and the installer tools.
        self.history: list[tuple[int, bool]] = []

    # -- InputPin / OutputPin -------------------------------------------------------
    def read(self) -> bool:
        return self._level

    def write(self, level: bool) -> None:
        if self.mode != "output":
            raise GpioError(f"GPIO{self.number}: write to a pin that is not an output")
        if level != self._level or not self.history:
            self._level = level
            self.history.append((self._factory.now_ns(), level))

    # -- test / script side -----------------------------------------------------------
    def drive_high(self, t_ns: int | None = None) -> None:
        self.drive(True, t_ns)

    def drive_low(self, t_ns: int | None = None) -> None:
        self.drive(False, t_ns)

    def drive(self, level: bool, t_ns: int | None = None) -> None:
        """Change the level seen on an input pin, as the outside world would."""
        if level == self._level:
            return
        self._level = level
        if self.mode == "input":
            self._factory._edge(
                Edge(self.number, level, self._factory.now_ns() if t_ns is None else t_ns)
            )


class SimPinFactory:
    """GPIO backend with no hardware. Thread-safe: tests may drive pins from any thread.

    ``clock`` gives the time stamped on hand-driven edges and output changes; without
    one the factory uses the last time the recorder passed to :meth:`start` /
    :meth:`poll`, which is the audio clock in a fast replay.
    """

    name = "sim"

    def __init__(
        self,
        script: Iterable[ScriptedLevel] = (),
        clock: Callable[[], int] | None = None,
    ) -> None:
        self._clock = clock
        self._last_ns = 0
        self._lock = threading.Lock()
        self._pins: dict[int, SimPin] = {}
        self._edges: list[Edge] = []
        ordered = sorted(script, key=lambda s: s.t_s)
        self._initial = {s.pin: s.level for s in ordered if s.t_s <= 0}
        self._script = [s for s in ordered if s.t_s > 0]
        self._next = 0
        self._t0_ns: int | None = None

    def now_ns(self) -> int:
        return self._clock() if self._clock is not None else self._last_ns

    def pin(self, number: int) -> SimPin:
        """The pin object (created on first use), for tests to drive or inspect."""
        with self._lock:
            return self._pin_locked(number, pull="off")

    def _pin_locked(self, number: int, pull: Pull) -> SimPin:
        pin = self._pins.get(number)
        if pin is None:
            level = self._initial.get(number, pull == "up")
            pin = self._pins[number] = SimPin(self, number, level)
        return pin

    def _claim(self, number: int, mode: str, pull: Pull) -> SimPin:
        if number < 0:
            raise GpioError(f"GPIO{number}: pin numbers start at 0")
        with self._lock:
            existing = self._pins.get(number)
            if existing is not None and existing.mode is not None:
                raise GpioError(f"GPIO{number}: already in use as an {existing.mode}")
            pin = self._pin_locked(number, pull)
            if existing is None and number not in self._initial:
                pin._level = pull == "up" if mode == "input" else False
            pin.mode = mode
            return pin

    # -- PinFactory -------------------------------------------------------------------
    def input(self, pin: int, pull: Pull) -> SimPin:
        return self._claim(pin, "input", pull)

    def output(self, pin: int, initial: bool = False) -> SimPin:
        claimed = self._claim(pin, "output", "off")
        claimed.write(initial)
        return claimed

    def start(self, t0_ns: int) -> None:
        self._t0_ns = t0_ns
        self._last_ns = t0_ns

    def poll(self, now_ns: int) -> list[Edge]:
        self._last_ns = now_ns
        if self._t0_ns is not None:
            while self._next < len(self._script):
                step = self._script[self._next]
                t_ns = self._t0_ns + round(step.t_s * NS_PER_S)
                if t_ns > now_ns:
                    break
                self._next += 1
                with self._lock:
                    pin = self._pin_locked(step.pin, pull="off")
                pin.drive(step.level, t_ns)
        with self._lock:
            edges, self._edges = self._edges, []
        return sorted(edges, key=lambda e: e.t_ns)

    @property
    def script_done(self) -> bool:
        return self._next >= len(self._script)

    def close(self) -> None:
        with self._lock:
            pins = list(self._pins.values())
        for pin in pins:
            pin.mode = None
        with self._lock:
            self._edges.clear()

    def _edge(self, edge: Edge) -> None:
        with self._lock:
            self._edges.append(edge)
