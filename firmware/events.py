"""Events scripts: a hook / opt-out timeline for ``linetap replay`` and the sim GPIO backend.

Format (plain text, one event per line, ``#`` starts a comment)::

    # TIME   LINE   EVENT
    0        line1  offhook      # time 0 = the state when the recorder starts
    2.5      line2  offhook
    7.25     line1  onhook
    8.0      line2  optout-on
    9.5      line2  optout-off

TIME is seconds from the start of the audio (decimal, >= 0, non-decreasing per line);
LINE is a line name from the config; EVENT is one of ``offhook``, ``onhook``,
``optout-on``, ``optout-off``. Events become electrical levels on the line's configured
pins (honouring ``hook_active`` / ``opt_out_active``), so the real debounce, flash and
opt-out logic runs on them: a bouncing contact is just several events close together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from drivers.gpio.sim import ScriptedLevel
from firmware.config import LinetapConfig
from firmware.errors import EventsFileError

EventName = Literal["offhook", "onhook", "optout-on", "optout-off"]
EVENT_NAMES: tuple[EventName, ...] = ("offhook", "onhook", "optout-on", "optout-off")


@dataclass(frozen=True, slots=True)
class LineEvent:
    t_s: float
    line: str
    event: EventName
    source_line: int = 0


def parse_events(text: str, source: str = "<events>") -> list[LineEvent]:
    problems: list[str] = []
    events: list[LineEvent] = []
    last_time: dict[str, float] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        body = raw.split("#", 1)[0].strip()
        if not body:
            continue
        parts = body.split()
        if len(parts) != 3:
            problems.append(f"{source}:{number}: expected 'TIME LINE EVENT', got {body!r}")
            continue
        t_text, line, name = parts
        try:
            t_s = float(t_text)
        except ValueError:
            problems.append(f"{source}:{number}: time {t_text!r} is not a number of seconds")
            continue
        if not math.isfinite(t_s) or t_s < 0:
            problems.append(f"{source}:{number}: time {t_text} must be a finite number >= 0")
            continue
        if name not in EVENT_NAMES:
            problems.append(
                f"{source}:{number}: unknown event {name!r}; use one of {', '.join(EVENT_NAMES)}"
            )
            continue
        if t_s < last_time.get(line, 0.0):
            problems.append(
                f"{source}:{number}: time {t_s} goes back before {last_time[line]} on {line}; "
                "list each line's events in time order"
            )
            continue
        last_time[line] = t_s
        events.append(LineEvent(t_s, line, name, number))
    if problems:
        raise EventsFileError("\n".join(problems))
    return events


def load_events(path: Path) -> list[LineEvent]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EventsFileError(f"{path}: cannot read events file ({exc})") from None
    return parse_events(text, str(path))


def events_to_pin_script(
    events: list[LineEvent], cfg: LinetapConfig, source: str = "<events>"
) -> list[ScriptedLevel]:
    """Line events -> electrical levels on the configured pins."""
    names = {line.name: line for line in cfg.lines}
    problems: list[str] = []
    script: list[ScriptedLevel] = []
    for ev in events:
        line = names.get(ev.line)
        if line is None:
            problems.append(
                f"{source}:{ev.source_line}: line {ev.line!r} is not in the config "
                f"(lines: {', '.join(names)})"
            )
            continue
        if ev.event in ("offhook", "onhook"):
            active = ev.event == "offhook"
            script.append(
                ScriptedLevel(ev.t_s, line.hook_pin, active == (line.hook_active == "high"))
            )
        else:
            if line.opt_out_pin is None:
                problems.append(
                    f"{source}:{ev.source_line}: {ev.event} on {ev.line}, which has no opt_out_pin "
                    "in the config; add lines.opt_out_pin or drop the event"
                )
                continue
            active = ev.event == "optout-on"
            script.append(
                ScriptedLevel(ev.t_s, line.opt_out_pin, active == (line.opt_out_active == "high"))
            )
    if problems:
        raise EventsFileError("\n".join(problems))
    return script
