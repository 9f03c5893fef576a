"""GPIO: hook and opt-out inputs, LED outputs, over swappable pin backends.

A backend is a :class:`PinFactory` (gpiozero's idea): ``rpigpio`` (RPi.GPIO, Pi 3/4),
``gpiod`` (libgpiod v2 character device, Pi 5 and any other board) and ``sim`` (pins
driven by a test or by a script of timed events). :func:`drivers.gpio.factory.make_pin_factory`
picks one from the ``[gpio]`` config section. Device classes in
:mod:`drivers.gpio.devices` work the same over every backend.

Edges are collected by the backend and handed out by :meth:`PinFactory.poll`, each with
a monotonic timestamp taken as close to the edge as the backend can (the kernel's
timestamp for gpiod, the interrupt callback for RPi.GPIO), so the recorder can place
the edge on the audio timeline exactly, whenever it gets around to polling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

Pull = Literal["up", "down", "off"]


@dataclass(frozen=True, slots=True)
class Edge:
    """A change of the electrical level of an input pin."""

    pin: int
    level: bool  # electrical level after the edge: True = high
    t_ns: int  # monotonic clock (time.monotonic_ns domain) or the replay's virtual clock


class InputPin(Protocol):
    @property
    def number(self) -> int: ...

    def read(self) -> bool:
        """Current electrical level (True = high)."""
        ...


class OutputPin(Protocol):
    @property
    def number(self) -> int: ...

    def write(self, level: bool) -> None:
        """Set the electrical level (True = high)."""
        ...


class PinFactory(Protocol):
    """A GPIO backend. Pins are claimed once; claiming a pin twice raises GpioError."""

    @property
    def name(self) -> str: ...

    def input(self, pin: int, pull: Pull) -> InputPin:
        """Claim ``pin`` as an input with both-edge detection."""
        ...

    def output(self, pin: int, initial: bool = False) -> OutputPin:
        """Claim ``pin`` as an output driven to ``initial``."""
        ...

    def start(self, t0_ns: int) -> None:
        """The recorder's timeline starts at ``t0_ns`` (scripted backends count from it)."""
        ...

    def poll(self, now_ns: int) -> list[Edge]:
        """Edges seen since the last call, oldest first. Never blocks."""
        ...

    def close(self) -> None:
        """Release every pin without driving outputs: what an output shows after
        release is what its device last set (``Led.set(False)`` first: "low" would
        light an active-low LED)."""
        ...
