"""Consent LEDs: what each LED shows is a pure function of line state and faults.

Patterns: off = idle, solid = recording, slow blink = paused / opted out, fast blink =
fault (no audio device, storage problem). The device status LED shows a heartbeat (a
short flash every few seconds) instead of "off" when every line is idle, so a field tech
can tell an idle recorder from one that is not running; the line LEDs at the desks stay
dark when idle (they tell callers whether they are recorded). The recorder calls
:meth:`LedPanel.update` once per capture period with the current states; nothing else
writes an LED.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from enum import StrEnum

from drivers.gpio.devices import Led
from firmware.callstate import LineState

SLOW_BLINK_PERIOD_NS = 1_000_000_000  # 1 Hz: calm, "paused"
# 5 Hz: urgent, "fault". 100 ms on, 100 ms off: whole capture periods at the default
# 100 ms tick, so the pattern stays even (4 Hz seen through 100 ms ticks stutters).
FAST_BLINK_PERIOD_NS = 200_000_000
# A flash short and rare enough never to be read as "recording" or a blink pattern.
HEARTBEAT_PERIOD_NS = 3_000_000_000
HEARTBEAT_FLASH_NS = 100_000_000


class LedPattern(StrEnum):
    OFF = "off"
    SOLID = "solid"
    SLOW_BLINK = "slow_blink"
    FAST_BLINK = "fast_blink"
    HEARTBEAT = "heartbeat"


def pattern_lit(pattern: LedPattern, t_ns: int) -> bool:
    """Whether an LED showing ``pattern`` is lit at time ``t_ns`` (50 % duty blinks)."""
    if pattern is LedPattern.OFF:
        return False
    if pattern is LedPattern.SOLID:
        return True
    if pattern is LedPattern.HEARTBEAT:
        return (t_ns % HEARTBEAT_PERIOD_NS) < HEARTBEAT_FLASH_NS
    period = SLOW_BLINK_PERIOD_NS if pattern is LedPattern.SLOW_BLINK else FAST_BLINK_PERIOD_NS
    return (t_ns % period) < period // 2


def line_pattern(state: LineState, fault: bool) -> LedPattern:
    if fault:
        return LedPattern.FAST_BLINK
    return {
        LineState.IDLE: LedPattern.OFF,
        LineState.RECORDING: LedPattern.SOLID,
        LineState.PAUSED: LedPattern.SLOW_BLINK,
    }[state]


def status_pattern(states: Iterable[LineState], fault: bool) -> LedPattern:
    """The device LED: the most important thing any line is doing; a heartbeat when
    nothing is (the recorder runs)."""
    if fault:
        return LedPattern.FAST_BLINK
    seen = set(states)
    if LineState.RECORDING in seen:
        return LedPattern.SOLID
    if LineState.PAUSED in seen:
        return LedPattern.SLOW_BLINK
    return LedPattern.HEARTBEAT


class LedPanel:
    """The line LEDs (``None`` where a line has none) and the device status LED."""

    def __init__(self, line_leds: Sequence[Led | None], status_led: Led | None) -> None:
        self._line_leds = list(line_leds)
        self._status_led = status_led
        self.patterns: list[LedPattern] = [LedPattern.OFF] * len(self._line_leds)
        self.status: LedPattern = LedPattern.OFF

    def update(self, states: Sequence[LineState], fault: bool, t_ns: int) -> None:
        self.patterns = [line_pattern(s, fault) for s in states]
        self.status = status_pattern(states, fault)
        for led, pattern in zip(self._line_leds, self.patterns, strict=True):
            if led is not None:
                led.set(pattern_lit(pattern, t_ns))
        if self._status_led is not None:
            self._status_led.set(pattern_lit(self.status, t_ns))

    def all_off(self) -> None:
        for led in [*self._line_leds, self._status_led]:
            if led is not None:
                led.set(False)
