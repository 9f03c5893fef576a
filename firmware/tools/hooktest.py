"""``linetap hooktest``: live hook and opt-out transitions per line, and what the recorder
makes of each one under the current config.

Every raw transition of a line's hook or opt-out input is listed with its time, the time
since the previous transition of that input (the length of the on-hook / off-hook or
pressed / released period it ends), and its verdict: a bounce (the level did not hold
``call.debounce_ms``; ignored), an off-hook that starts a call, a hook flash (an on-hook
shorter than ``call.flash_max_ms``; the call goes on), a hang-up, an opt-out pressed or
released (pause / resume / discard). A verdict appears when the recorder would take it:
an off-hook after the debounce time, an on-hook in a call once it is known to be a flash
or a hang-up.

The verdicts are not a second opinion: each line runs the recorder's own
:class:`~firmware.callstate.CallMachine` with the config's timings, fed with the same
edges on the same audio timeline (see :class:`firmware.tools._terminal.LiveLines`), and
the tool only reports what the machine decided. To tie each decision to its edge, the
machine is fed one edge at a time (then up to the block's end) instead of once per
capture block; it settles its timers in time order either way, so the decisions are the
same whenever no edge is stamped before the end of the previous block. That always holds
for the sim backend; on hardware only capture-timing jitter longer than
``call.debounce_ms`` could make a bounce pair differ.
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Literal, TextIO

from firmware.callstate import (
    Action,
    CallMachine,
    CallTiming,
    Debouncer,
    Discard,
    End,
    EndReason,
    Flash,
    Input,
    Pause,
    Resume,
    Start,
    Trigger,
)
from firmware.cli_options import config_arg
from firmware.config import CallConfig, LinetapConfig, load_config
from firmware.line import call_timing
from firmware.tools._terminal import (
    LiveLines,
    LiveScreen,
    emit,
    is_terminal,
    open_live_lines,
    positive_seconds,
)
from runtime.process import stop_on_signals

REFRESH_S = 0.1  # terminal redraw period
Stage = Literal["debounce", "flash", "final"]

# AFTER: how long the input had its previous level (the period this transition ends).
LOG_HEADER = f"{'TIME s':>9}  {'LINE':<10} {'TRANSITION':<16} {'AFTER':<18} {'VERDICT':<10} DETAIL"
STATUS_HEADER = f"{'LINE':<10} {'HOOK':<9} {'FOR':>9}  {'CALL':<10} OPT-OUT"


def _level(which: Input, active: bool) -> str:
    if which == "hook":
        return "off-hook" if active else "on-hook"
    return "opt-out pressed" if active else "opt-out released"


def _short_level(which: Input, active: bool) -> str:
    if which == "hook":
        return "off-hook" if active else "on-hook"
    return "pressed" if active else "released"


def _ms(frames: int, rate: int) -> int:
    return round(frames * 1000 / rate)


@dataclass(slots=True)
class Transition:
    """One raw transition of an input (or a decision with no edge: boot, rollover)."""

    t_s: float
    line: str
    what: str  # the level the input went to, or "(boot)" / "(rollover)"
    after_s: float | None  # how long the previous level lasted
    after_level: str
    frame: int
    which: Input | None
    active: bool
    stage: Stage = "final"
    verdict: str = ""  # short word for scripts: bounce, call-start, flash, hang-up, ...
    detail: str = ""

    def decide(self, verdict: str, detail: str) -> None:
        self.stage = "final"
        self.verdict = verdict
        self.detail = detail

    def text(self) -> str:
        after = f"{self.after_s:.3f} s {self.after_level}" if self.after_s is not None else ""
        verdict = self.verdict if self.stage == "final" else "..."
        return (
            f"{self.t_s:9.3f}  {self.line:<10} {self.what:<16} {after:<18} {verdict:<10} "
            f"{self.detail}"
        )


class LineWatch:
    """One line: the recorder's call machine, fed the line's raw edges, and the
    transitions it has seen with the machine's verdict on each."""

    def __init__(
        self,
        name: str,
        timing: CallTiming,
        call: CallConfig,
        rate: int,
        *,
        off_hook: bool,
        opted_out: bool,
        first_frame: int,
    ) -> None:
        self.name = name
        self.call = call
        self.rate = rate
        self.first_frame = first_frame
        self.machine = CallMachine(
            timing, off_hook=off_hook, opted_out=opted_out, at_frame=first_frame
        )
        self._last: dict[Input, Transition | None] = {"hook": None, "optout": None}
        self._last_frame: dict[Input, int] = {"hook": first_frame, "optout": first_frame}
        self._flash_pending: Transition | None = None  # on-hook in a call: flash or hang-up?
        self._new: list[Transition] = []

    # -- feeding -----------------------------------------------------------------------
    def boot(self) -> list[Transition]:
        """The levels at start (a handset already off-hook starts a call)."""
        self._resolve(self.machine.boot())
        return self._take()

    def feed(self, edges: list[tuple[int, Input, bool]], end_frame: int) -> list[Transition]:
        """Raw edges of one capture block and the block's end; the new transitions."""
        for frame, which, active in sorted(edges, key=lambda e: e[0]):
            self._resolve(self.machine.advance([], frame))
            self._edge(frame, which, active)
            self._resolve(self.machine.advance([(frame, which, active)], frame))
        self._resolve(self.machine.advance([], end_frame))
        return self._take()

    def finish(self) -> None:
        """Mark what is still undecided (the tool stops before the recorder would decide)."""
        for entry in self._last.values():
            if entry is not None and entry.stage != "final":
                entry.decide("undecided", f"{entry.detail}; stopped before the decision")

    def held_s(self, which: Input, frame: int) -> float:
        """How long ``which`` has had its current raw level at ``frame``."""
        return (frame - self._last_frame[which]) / self.rate

    # -- internals ---------------------------------------------------------------------
    def _t(self, frame: int) -> float:
        return (frame - self.first_frame) / self.rate

    def _debouncer(self, which: Input) -> Debouncer:
        return self.machine.hook if which == "hook" else self.machine.optout

    def _take(self) -> list[Transition]:
        new, self._new = self._new, []
        return new

    def _edge(self, frame: int, which: Input, active: bool) -> None:
        deb = self._debouncer(which)
        prev = self._last[which]
        held = frame - self._last_frame[which]
        entry = Transition(
            t_s=self._t(frame),
            line=self.name,
            what=_level(which, active),
            after_s=held / self.rate,
            after_level=_short_level(which, not active),
            frame=frame,
            which=which,
            active=active,
        )
        if active == deb.raw:
            entry.decide("repeat", "same level reported again: ignored")
        elif deb.raw != deb.stable:
            # The previous change had not held debounce_ms: this edge cancels it.
            if prev is not None and prev.stage == "debounce":
                prev.decide(
                    "bounce",
                    f"{prev.what} for {_ms(held, self.rate)} ms < debounce_ms "
                    f"{self.call.debounce_ms}: ignored",
                )
            entry.decide("bounce", f"back after {_ms(held, self.rate)} ms: ignored")
        else:
            entry.stage = "debounce"
            entry.detail = f"counts once held {self.call.debounce_ms} ms (debounce_ms)"
        self._last[which] = entry
        self._last_frame[which] = frame
        self._new.append(entry)

    def _resolve(self, actions: list[Action]) -> None:
        """Tie the machine's decisions (``actions`` and its debounced levels) to transitions."""
        for which in ("hook", "optout"):
            entry = self._last[which]
            if (
                entry is not None
                and entry.stage == "debounce"
                and self._debouncer(which).stable == entry.active
            ):
                self._confirmed(entry, actions)
        for action in actions:
            if isinstance(action, End) and action.reason is EndReason.ONHOOK:
                self._hang_up(action)
            elif isinstance(action, Start) and action.trigger is not Trigger.OFFHOOK:
                # Boot and rollover come from no edge of their own.
                self._note(action.frame, f"({action.trigger.value})", actions, action)

    def _confirmed(self, entry: Transition, actions: list[Action]) -> None:
        """``entry``'s level held debounce_ms and the machine acted on it (``actions``)."""
        if entry.which == "optout":
            entry.decide(*self._optout_verdict(entry.active, actions))
        elif entry.active:
            start = next((a for a in actions if isinstance(a, Start)), None)
            flash = next((a for a in actions if isinstance(a, Flash)), None)
            if start is not None and start.trigger is Trigger.OFFHOOK:
                entry.decide(*self._start_verdict(start, actions))
            elif flash is not None:
                onhook_ms = _ms(flash.offhook_frame - flash.onhook_frame, self.rate)
                if self._flash_pending is not None:
                    self._flash_pending.decide(
                        "flash",
                        f"on-hook {onhook_ms} ms < flash_max_ms {self.call.flash_max_ms}: "
                        "hook flash, call goes on",
                    )
                    self._flash_pending = None
                entry.decide("flash-end", f"off-hook again after {onhook_ms} ms: call goes on")
            else:
                entry.decide("off-hook", "off-hook (already in a call)")
        elif self.machine.in_call and self.machine.onhook_since is not None:
            entry.stage = "flash"
            entry.detail = (
                f"flash or hang-up? hang-up at {self.call.flash_max_ms} ms (flash_max_ms)"
            )
            self._flash_pending = entry
        else:
            entry.decide("on-hook", "on-hook, no call in progress")

    def _hang_up(self, end: End) -> None:
        entry, self._flash_pending = self._flash_pending, None
        if entry is None:
            return
        onhook = end.onhook_frame if end.onhook_frame is not None else entry.frame
        entry.decide(
            "hang-up",
            f"on-hook held {_ms(end.frame - onhook, self.rate)} ms = flash_max_ms: "
            "hang-up, call ends",
        )

    def _start_verdict(self, start: Start, actions: Sequence[Action]) -> tuple[str, str]:
        refused = next((a for a in actions if isinstance(a, Pause | Discard)), None)
        suffix = ""
        if isinstance(refused, Pause):
            suffix = ", paused at once (opt-out pressed)"
        elif isinstance(refused, Discard):
            suffix = ", discarded at once (opt-out pressed)"
        if start.trigger is Trigger.OFFHOOK:
            preroll = (start.trigger_frame - start.audio_from) / self.rate
            return (
                "call-start",
                f"held {self.call.debounce_ms} ms (debounce_ms): call starts, "
                f"{preroll:g} s pre-roll{suffix}",
            )
        if start.trigger is Trigger.BOOT:
            return "call-start", f"off-hook at start: call starts (trigger boot){suffix}"
        return "rollover", f"call reached max_call_s {self.call.max_call_s}: new recording"

    def _optout_verdict(self, pressed: bool, actions: Sequence[Action]) -> tuple[str, str]:
        if any(isinstance(a, Pause) for a in actions):
            return "optout-on", "recording paused (the span is cut and marked)"
        if any(isinstance(a, Discard) for a in actions):
            return "optout-on", "call discarded (metadata only)"
        if any(isinstance(a, Resume) for a in actions):
            return "optout-off", "recording resumes"
        if pressed:
            if not self.machine.in_call:
                done = "paused" if self.call.opt_out_mode == "pause" else "discarded"
                return "optout-on", f"no call: a call starting now is {done}"
            return "optout-on", "call already paused or discarded"
        if self.machine.discarded:
            return "optout-off", "the call stays discarded"
        return "optout-off", "no call in progress" if not self.machine.in_call else "released"

    def _note(self, frame: int, what: str, actions: Sequence[Action], start: Start) -> None:
        verdict, detail = self._start_verdict(start, actions)
        self._new.append(
            Transition(
                t_s=self._t(frame),
                line=self.name,
                what=what,
                after_s=None,
                after_level="",
                frame=frame,
                which=None,
                active=False,
                verdict=verdict,
                detail=detail,
            )
        )


# ---- the loop ------------------------------------------------------------------------


def status_row(live: LiveLines, index: int, watch: LineWatch, frame: int) -> str:
    inputs = live.lines[index]
    optout = inputs.opted_out
    optout_text = "-" if optout is None else ("PRESSED" if optout else "released")
    hook = "OFF-HOOK" if inputs.off_hook else "on-hook"
    return (
        f"{watch.name:<10} {hook:<9} {watch.held_s('hook', frame):7.1f} s  "
        f"{watch.machine.state.value:<10} {optout_text}"
    )


def screen_rows(
    cfg: LinetapConfig,
    live: LiveLines,
    watches: list[LineWatch],
    log: list[Transition],
    *,
    frame: int,
    height: int,
) -> list[str]:
    call = cfg.call
    rows = [
        f"linetap hooktest   t {live.seconds_at(frame):.1f} s   Ctrl-C quits   "
        f"{live.source_text()}",
        f"call.debounce_ms {call.debounce_ms}, call.flash_max_ms {call.flash_max_ms}, "
        f"call.opt_out_mode {call.opt_out_mode}",
        "",
        STATUS_HEADER,
        *(status_row(live, i, w, frame) for i, w in enumerate(watches)),
        "",
        LOG_HEADER,
    ]
    room = max(0, height - len(rows))
    shown = log[-room:] if room else []
    return rows + [entry.text() for entry in shown]


def run_hooktest(
    cfg: LinetapConfig,
    live: LiveLines,
    stop: threading.Event,
    out: TextIO,
    *,
    terminal: bool,
    seconds: float | None,
) -> int:
    """Watch until stopped, ``seconds`` of audio have passed, or a file source ends."""
    timing = call_timing(cfg)
    watches: list[LineWatch] = []
    log: list[Transition] = []
    printed = 0  # not a terminal: transitions are printed in order once decided
    screen = LiveScreen(out) if terminal else None
    next_draw = 0.0
    frame = 0
    ended = False

    def flush_decided() -> bool:
        nonlocal printed
        while printed < len(log) and log[printed].stage == "final":
            if not emit(out, log[printed].text()):
                return False
            printed += 1
        return True

    with screen if screen is not None else nullcontext():
        while not stop.is_set():
            got = live.read()
            if got is None:
                ended = not stop.is_set()
                break
            if not watches:
                assert live.first_frame is not None
                for inputs, (off_hook, opted_out) in zip(
                    live.lines, live.start_levels, strict=True
                ):
                    watch = LineWatch(
                        inputs.config.name,
                        timing,
                        cfg.call,
                        live.rate,
                        off_hook=off_hook,
                        opted_out=opted_out,
                        first_frame=live.first_frame,
                    )
                    watches.append(watch)
                    log += watch.boot()
            frame = got.block.end_frame
            for watch, edges in zip(watches, got.edges, strict=True):
                log += watch.feed(edges, frame)
            t_s = live.seconds_at(frame)
            done = seconds is not None and t_s >= seconds - 0.5 / live.rate
            if screen is not None:
                if t_s >= next_draw or done:
                    next_draw = t_s + REFRESH_S
                    screen.draw(
                        screen_rows(cfg, live, watches, log, frame=frame, height=screen.rows)
                    )
            elif not flush_decided():
                break  # the reader went away
            if done:
                break
        for watch in watches:
            watch.finish()
        if screen is not None and watches:
            screen.draw(screen_rows(cfg, live, watches, log, frame=frame, height=screen.rows))
    if screen is None:
        flush_decided()
    if ended:
        print(
            f"linetap hooktest: the audio file ended after {live.seconds_at(frame):.1f} s",
            file=sys.stderr,
        )
    return 0


def cmd_hooktest(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    stop = threading.Event()
    with stop_on_signals(stop), open_live_lines(cfg, stop) as live:
        return run_hooktest(
            cfg, live, stop, sys.stdout, terminal=is_terminal(sys.stdout), seconds=args.seconds
        )


def register(p: argparse.ArgumentParser) -> None:
    """``linetap hooktest``'s options (its name and help are in :data:`firmware.cli.COMMANDS`)."""
    p.description = (
        "Shows every hook and opt-out transition of every line with its timing and what "
        "the recorder would make of it under the current config (bounce, call start, "
        "hook flash, hang-up, opt-out). Ctrl-C quits."
    )
    config_arg(p)
    p.add_argument(
        "--seconds",
        type=positive_seconds,
        default=None,
        metavar="N",
        help="run for N seconds of audio and exit",
    )
    p.set_defaults(func=cmd_hooktest)
