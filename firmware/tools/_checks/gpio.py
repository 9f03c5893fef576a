"""Hook and opt-out inputs, LEDs."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from drivers.gpio import PinFactory
from drivers.gpio.devices import Led, SwitchInput
from firmware.config import (
    LineConfig,
    LinetapConfig,
)
from firmware.errors import GpioError
from firmware.tools._checks.base import LED_ON_S, Check, Status, split_fix


def _level_name(active_when_high: bool, active: bool) -> str:
    return "high" if active == active_when_high else "low"


def check_hooks(
    lines: Sequence[LineConfig], pins: PinFactory, opt_out_mode: str
) -> list[tuple[Check, bool | None]]:
    """Claim each line's hook (and opt-out) input and read it: (check, off-hook or None).

    ``opt_out_mode`` (call.opt_out_mode) says what a pressed opt-out does to a call.
    """
    return [_check_hook(i, line, pins, opt_out_mode) for i, line in enumerate(lines)]


def _check_hook(
    index: int, line: LineConfig, pins: PinFactory, opt_out_mode: str
) -> tuple[Check, bool | None]:
    check_id = f"hook.{line.name}"
    try:
        off_hook = SwitchInput(pins, line.hook_pin, line.hook_active, line.hook_pull).is_active
        pressed = None
        if line.opt_out_pin is not None:
            button = SwitchInput(pins, line.opt_out_pin, line.opt_out_active, line.opt_out_pull)
            pressed = button.is_active
    except GpioError as exc:
        message, fix = split_fix(str(exc))
        fix = fix or "check the pin numbers in the config and 'gpioinfo'"
        return Check(check_id, Status.FAIL, f"lines[{index}]: {message}", fix), None
    level = _level_name(line.hook_active == "high", off_hook)
    message = (
        f"{line.name}: hook GPIO{line.hook_pin} reads {level}:"
        f" {'off-hook (handset lifted)' if off_hook else 'on-hook'}"
    )
    if pressed is None:
        return Check(check_id, Status.PASS, message), off_hook
    button_level = _level_name(line.opt_out_active == "high", pressed)
    message += f"; opt-out GPIO{line.opt_out_pin} reads {button_level}"
    if not pressed:
        return Check(check_id, Status.PASS, f"{message}: released"), off_hook
    effect = "paused" if opt_out_mode == "pause" else "discarded"
    return Check(
        check_id,
        Status.WARN,
        f"{message}: PRESSED, calls on {line.name} are {effect} until it is released",
        "release the opt-out button; if nobody presses it, check its wiring and"
        f" lines[{index}].opt_out_active / opt_out_pull",
    ), off_hook


def hooks_from_recorder(
    lines: Sequence[LineConfig], recorder: Mapping[str, Any]
) -> list[tuple[Check, bool | None]]:
    """While the recorder runs it holds the inputs: report the line states it sees."""
    states = {
        str(item.get("name")): str(item.get("state"))
        for item in recorder.get("lines", [])
        if isinstance(item, Mapping)
    }
    out: list[tuple[Check, bool | None]] = []
    for line in lines:
        state = states.get(line.name)
        off_hook = None if state is None else state != "idle"
        seen = f"the running recorder sees it {state}" if state else "the recorder does not list it"
        out.append(
            (
                Check(
                    f"hook.{line.name}",
                    Status.INFO,
                    f"{line.name}: not read here (the recorder, pid {recorder.get('pid', '?')},"
                    f" holds GPIO{line.hook_pin}); {seen}",
                    "stop the recorder to test the inputs themselves",
                ),
                off_hook,
            )
        )
    return out


def _leds(cfg: LinetapConfig) -> list[tuple[str, int, str]]:
    out: list[tuple[str, int, str]] = []
    if cfg.gpio.status_led_pin is not None:
        out.append(("status LED", cfg.gpio.status_led_pin, cfg.gpio.status_led_active))
    for line in cfg.lines:
        if line.led_pin is not None:
            out.append((f"{line.name} LED", line.led_pin, line.led_active))
    return out


def check_leds(
    cfg: LinetapConfig,
    pins: PinFactory,
    wait: Callable[[float], object],
    *,
    on_s: float = LED_ON_S,
) -> Check:
    """Light every configured LED for ``on_s`` (``wait``), then switch them off."""
    wanted = _leds(cfg)
    if not wanted:
        return Check("leds", Status.INFO, "no LEDs configured (gpio.status_led_pin, led_pin)")
    leds: list[Led] = []
    try:
        for _what, pin, active in wanted:
            leds.append(Led(pins, pin, "high" if active == "high" else "low"))
        for led in leds:
            led.set(True)
        wait(on_s)
    except GpioError as exc:
        message, fix = split_fix(str(exc))
        return Check("leds", Status.FAIL, message, fix or "check the LED pins and 'gpioinfo'")
    finally:
        for led in leds:
            led.set(False)
    names = ", ".join(f"{what} (GPIO{pin})" for what, pin, _ in wanted)
    return Check(
        "leds",
        Status.INFO,
        f"switched on for {on_s:g} s, then off: {names}; each should have lit",
        "an LED that stayed dark: check its wiring and led_active / status_led_active",
    )


def leds_from_recorder(recorder: Mapping[str, Any]) -> Check:
    shown = [
        f"{item.get('name')} {item.get('led')}"
        for item in recorder.get("lines", [])
        if isinstance(item, Mapping)
    ]
    shown.append(f"status {recorder.get('status_led', '?')}")
    return Check(
        "leds",
        Status.INFO,
        f"not toggled: the running recorder drives them ({', '.join(shown)})",
        "stop the recorder to have this check light each LED",
    )


# -- storage ------------------------------------------------------------------------------
