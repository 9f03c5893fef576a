"""Per-line call state machine, on the audio's own timeline.

Everything here counts in frames of the capture stream, so it is exact and
deterministic: the same edges and audio give the same recordings on the Pi, in a fast
replay and in a test. The machine never touches audio; it emits :class:`Action` s that
the line runner (:class:`firmware.line.LineRunner`) applies to the ring buffer and the sink.

Rules (README.md, "How a call is recorded"):
- A hook or opt-out level counts once it has held for ``debounce`` frames; it then takes
  effect at the frame of its raw edge (that is where the pre-roll is counted back from).
- Off-hook starts a recording whose audio begins ``preroll`` frames before the edge.
- An on-hook that ends within ``flash_max`` frames of its edge is a hook flash (noted,
  the call goes on); one held longer ends the call at the frame the hang-up is known.
- Off-hook already present when the recorder starts begins a recording (trigger boot).
- Opt-out while in a call: ``pause`` cuts the audio while it is active and marks the
  span; ``discard`` drops the call's audio and keeps only its metadata.
- A recording reaching ``max_call`` frames ends and a continued one starts on the next
  frame (trigger rollover), so nothing falls between them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

Input = Literal["hook", "optout"]


class Trigger(StrEnum):
    OFFHOOK = "offhook"
    BOOT = "boot"
    ROLLOVER = "rollover"


class EndReason(StrEnum):
    ONHOOK = "onhook"
    ROLLOVER = "rollover"
    SHUTDOWN = "shutdown"
    END_OF_INPUT = "end_of_input"


class LineState(StrEnum):
    IDLE = "idle"
    RECORDING = "recording"
    PAUSED = "paused"  # opt-out active (pause mode) or call discarded


@dataclass(frozen=True, slots=True)
class CallTiming:
    """The call rules in frames (see :meth:`from_config_ms`)."""

    preroll: int
    debounce: int
    flash_max: int
    max_call: int
    opt_out_mode: Literal["pause", "discard"] = "pause"

    @classmethod
    def from_seconds(
        cls,
        rate: int,
        *,
        preroll_s: float,
        debounce_ms: int,
        flash_max_ms: int,
        max_call_s: float,
        opt_out_mode: Literal["pause", "discard"] = "pause",
    ) -> CallTiming:
        return cls(
            preroll=round(preroll_s * rate),
            debounce=round(debounce_ms * rate / 1000),
            flash_max=round(flash_max_ms * rate / 1000),
            max_call=round(max_call_s * rate),
            opt_out_mode=opt_out_mode,
        )


# ---- actions ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Start:
    frame: int  # where the decision was taken; live audio continues from here
    audio_from: int  # first frame of the recording (pre-roll included)
    trigger: Trigger
    trigger_frame: int  # the edge (or boot/rollover point) that caused it


@dataclass(frozen=True, slots=True)
class Pause:
    frame: int


@dataclass(frozen=True, slots=True)
class Resume:
    frame: int


@dataclass(frozen=True, slots=True)
class Discard:
    frame: int


@dataclass(frozen=True, slots=True)
class Flash:
    frame: int  # when the flash was recognised (off-hook confirmed)
    onhook_frame: int
    offhook_frame: int


@dataclass(frozen=True, slots=True)
class End:
    frame: int
    reason: EndReason
    onhook_frame: int | None = None


Action = Start | Pause | Resume | Discard | Flash | End


# ---- debouncer -------------------------------------------------------------------


class Debouncer:
    """A two-level input that counts a new level once it has held ``hold`` frames."""

    def __init__(self, hold: int, level: bool, at_frame: int) -> None:
        self.hold = hold
        self.stable = level
        self.raw = level
        self.raw_since = at_frame

    def edge(self, frame: int, level: bool) -> None:
        if level != self.raw:
            self.raw = level
            self.raw_since = frame

    @property
    def confirm_due(self) -> int | None:
        """Frame at which the pending raw level becomes stable, if one is pending."""
        return self.raw_since + self.hold if self.raw != self.stable else None

    def confirm(self) -> int:
        """Make the pending level stable; returns the frame it took effect (its edge)."""
        self.stable = self.raw
        return self.raw_since


# ---- the machine -----------------------------------------------------------------


class CallMachine:
    def __init__(
        self, timing: CallTiming, *, off_hook: bool, opted_out: bool, at_frame: int
    ) -> None:
        self.t = timing
        self.hook = Debouncer(timing.debounce, off_hook, at_frame)
        self.optout = Debouncer(timing.debounce, opted_out, at_frame)
        self.now = at_frame  # processed up to here
        # Frame of the last edge or decision. Edges reported late are placed at their own
        # frame unless that would put them before a decision already taken.
        self.last_event = at_frame
        self.in_call = False
        self.paused = False
        self.discarded = False
        self.rec_start = 0
        self.onhook_since: int | None = None  # raw edge of a debounced on-hook in a call
        self._boot_frame = at_frame

    # -- queries --------------------------------------------------------------------
    @property
    def state(self) -> LineState:
        if not self.in_call:
            return LineState.IDLE
        return LineState.PAUSED if (self.paused or self.discarded) else LineState.RECORDING

    # -- inputs ---------------------------------------------------------------------
    def boot(self) -> list[Action]:
        """Actions for the levels present at start: an off-hook handset starts a call."""
        out: list[Action] = []
        if self.hook.stable:
            self._start_call(out, self._boot_frame, self._boot_frame, Trigger.BOOT, preroll=False)
        return out

    def advance(self, edges: Iterable[tuple[int, Input, bool]], now: int) -> list[Action]:
        """Feed raw edges ``(frame, input, active)`` that happened up to ``now``.

        An edge reported late (its frame is before ``now`` of an earlier call) keeps its
        own frame unless a decision was taken since; then it counts from that decision.
        """
        out: list[Action] = []
        for edge_frame, which, active in sorted(edges, key=lambda e: e[0]):
            frame = max(edge_frame, self.last_event)
            self._settle(out, frame)
            frame = max(frame, self.last_event)
            self.last_event = frame
            (self.hook if which == "hook" else self.optout).edge(frame, active)
        self._settle(out, max(now, self.now))
        return out

    def finish(self, now: int, reason: EndReason) -> list[Action]:
        """End a call in progress (shutdown, end of a replayed file)."""
        out: list[Action] = []
        self._settle(out, max(now, self.now))
        if self.in_call:
            self._end_call(out, max(now, self.last_event), reason)
        return out

    # -- internals ------------------------------------------------------------------
    def _hangup_due(self) -> int | None:
        if not self.in_call or self.onhook_since is None or self.hook.raw:
            return None
        return self.onhook_since + self.t.flash_max

    def _rollover_due(self) -> int | None:
        if not self.in_call or self.discarded:
            return None
        return self.rec_start + self.t.max_call

    def _settle(self, out: list[Action], until: int) -> None:
        """Fire every timer due at or before ``until``, earliest first."""
        while True:
            timers = [
                (self.hook.confirm_due, 0),
                (self.optout.confirm_due, 1),
                (self._hangup_due(), 2),
                (self._rollover_due(), 3),
            ]
            due = [(d, order) for d, order in timers if d is not None and d <= until]
            if not due:
                self.now = max(self.now, until)
                return
            frame, which = min(due)
            frame = max(frame, self.last_event)
            self.last_event = frame
            if which == 0:
                self._hook_changed(out, frame)
            elif which == 1:
                self._optout_changed(out, frame)
            elif which == 2:
                self._end_call(out, frame, EndReason.ONHOOK)
            else:
                self._rollover(out, frame)

    def _hook_changed(self, out: list[Action], frame: int) -> None:
        edge = self.hook.confirm()
        if self.hook.stable:  # off-hook
            if not self.in_call:
                self._start_call(out, frame, edge, Trigger.OFFHOOK, preroll=True)
            elif self.onhook_since is not None:
                out.append(Flash(frame, self.onhook_since, edge))
                self.onhook_since = None
        elif self.in_call:
            self.onhook_since = edge

    def _optout_changed(self, out: list[Action], frame: int) -> None:
        self.optout.confirm()
        if not self.in_call:
            return  # remembered in optout.stable; applied when a call starts
        if self.optout.stable:
            if self.t.opt_out_mode == "discard":
                if not self.discarded:
                    self.discarded = True
                    out.append(Discard(frame))
            elif not self.paused:
                self.paused = True
                out.append(Pause(frame))
        elif self.paused:
            self.paused = False
            out.append(Resume(frame))

    def _start_call(
        self, out: list[Action], frame: int, edge: int, trigger: Trigger, *, preroll: bool
    ) -> None:
        self.in_call = True
        self.onhook_since = None
        self.rec_start = frame
        refused = self.optout.stable
        # No pre-roll when the caller had already opted out: that audio was refused too.
        audio_from = edge - self.t.preroll if (preroll and not refused) else frame
        out.append(Start(frame, audio_from, trigger, edge))
        if refused:
            if self.t.opt_out_mode == "discard":
                self.discarded = True
                out.append(Discard(frame))
            else:
                self.paused = True
                out.append(Pause(frame))

    def _end_call(self, out: list[Action], frame: int, reason: EndReason) -> None:
        out.append(End(frame, reason, self.onhook_since))
        self.in_call = False
        self.paused = False
        self.discarded = False
        self.onhook_since = None

    def _rollover(self, out: list[Action], frame: int) -> None:
        paused = self.paused
        out.append(End(frame, EndReason.ROLLOVER))
        self.rec_start = frame
        out.append(Start(frame, frame, Trigger.ROLLOVER, frame))
        if paused:
            out.append(Pause(frame))
