"""Each line's hook and opt-out switches, and their edges placed on the audio timeline.

One piece of wiring for everything that reads the lines' inputs the way the recorder
does — the recorder itself and the installer tools (``linetap levels``, ``hooktest``) —
so a tool can never judge a switch differently from the recorder.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from drivers.gpio import Edge, PinFactory
from drivers.gpio.devices import SwitchInput
from firmware.callstate import Input
from firmware.config import LineConfig

# (frame on the stream timeline, which input, active after the edge)
LineEdge = tuple[int, Input, bool]


@dataclass(frozen=True, slots=True)
class LineSwitches:
    """One line's switches."""

    config: LineConfig
    hook: SwitchInput
    optout: SwitchInput | None

    @property
    def off_hook(self) -> bool:
        return self.hook.is_active

    @property
    def opted_out(self) -> bool | None:
        """Opt-out pressed, or ``None`` when the line has no opt-out input."""
        return self.optout.is_active if self.optout is not None else None


class LineInputs:
    """The switches of ``lines`` on ``pins``, and the routing of pin edges to them."""

    def __init__(self, lines: Sequence[LineConfig], pins: PinFactory) -> None:
        self.lines: list[LineSwitches] = []
        self._owner: dict[int, tuple[int, Input]] = {}
        for index, line in enumerate(lines):
            hook = SwitchInput(pins, line.hook_pin, line.hook_active, line.hook_pull)
            self._owner[line.hook_pin] = (index, "hook")
            optout = None
            if line.opt_out_pin is not None:
                optout = SwitchInput(pins, line.opt_out_pin, line.opt_out_active, line.opt_out_pull)
                self._owner[line.opt_out_pin] = (index, "optout")
            self.lines.append(LineSwitches(line, hook, optout))

    def route(
        self, edges: Iterable[Edge], frame_at: Callable[[int], int], block_end_frame: int
    ) -> list[list[LineEdge]]:
        """Per line, its edges as (frame, input, active); ``frame_at`` maps an edge's
        timestamp to a stream frame. Edges of pins no line owns are ignored."""
        per_line: list[list[LineEdge]] = [[] for _ in self.lines]
        for edge in edges:
            owner = self._owner.get(edge.pin)
            if owner is None:
                continue
            index, which = owner
            line = self.lines[index]
            switch = line.hook if which == "hook" else line.optout
            assert switch is not None
            # An edge polled after this block but stamped later still belongs at its end.
            frame = min(frame_at(edge.t_ns), block_end_frame)
            per_line[index].append((frame, which, switch.edge_is_active(edge)))
        return per_line
