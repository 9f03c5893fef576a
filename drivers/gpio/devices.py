"""Devices over any pin backend: switch inputs (hook, opt-out) and LEDs.

They translate between electrical levels and meaning (``active``), which is where the
per-line ``*_active = "low" | "high"`` config lands; nothing above this layer knows
whether a hook switch pulls its pin low or high.
"""

from __future__ import annotations

from typing import Literal

from drivers.gpio import Edge, InputPin, OutputPin, PinFactory, Pull

ActiveLevel = Literal["low", "high"]


class SwitchInput:
    """A contact (hook switch, opt-out button) on one input pin."""

    def __init__(self, factory: PinFactory, pin: int, active: ActiveLevel, pull: Pull) -> None:
        self._pin: InputPin = factory.input(pin, pull)
        self._active_high = active == "high"

    @property
    def pin(self) -> int:
        return self._pin.number

    @property
    def is_active(self) -> bool:
        return self._pin.read() == self._active_high

    def edge_is_active(self, edge: Edge) -> bool:
        """Whether ``edge`` (of this pin) made the switch active."""
        return edge.level == self._active_high


class Led:
    """An LED on one output pin; writes the pin only when the wanted state changes."""

    def __init__(self, factory: PinFactory, pin: int, active: ActiveLevel = "high") -> None:
        self._active_high = active == "high"
        self._pin: OutputPin = factory.output(pin, initial=not self._active_high)
        self._lit = False

    @property
    def pin(self) -> int:
        return self._pin.number

    @property
    def lit(self) -> bool:
        return self._lit

    def set(self, lit: bool) -> None:
        if lit != self._lit:
            self._lit = lit
            self._pin.write(lit == self._active_high)
