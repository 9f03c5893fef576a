"""The per-line call state machine, driven with edges on a frame timeline (no I/O)."""

from __future__ import annotations

import pytest

from firmware.callstate import (
    CallMachine,
    CallTiming,
    Debouncer,
    Discard,
    End,
    EndReason,
    Flash,
    Input,
    LineState,
    Pause,
    Resume,
    Start,
    Trigger,
)

RATE = 8000
MS = RATE // 1000  # frames per millisecond
T = CallTiming.from_seconds(
    RATE, preroll_s=5, debounce_ms=30, flash_max_ms=1000, max_call_s=60, opt_out_mode="pause"
)


def run(m: CallMachine, script: list[tuple[float, Input, bool]], until_s: float, step_ms: int = 20):
    """Feed edges (time_s, input, active) block by block like the recorder does."""
    actions = []
    pending = sorted(script)
    frame = 0
    end = round(until_s * RATE)
    while frame < end:
        nxt = min(frame + step_ms * MS, end)
        edges = [
            (round(t * RATE), which, active)
            for t, which, active in pending
            if round(t * RATE) < nxt
        ]
        pending = [e for e in pending if round(e[0] * RATE) >= nxt]
        actions += m.advance(edges, nxt)
        frame = nxt
    return actions


def test_debouncer_needs_the_level_to_hold():
    d = Debouncer(hold=10, level=False, at_frame=0)
    d.edge(100, True)
    assert d.confirm_due == 110
    d.edge(105, False)  # bounced back before holding
    assert d.confirm_due is None
    d.edge(120, True)
    assert d.confirm_due == 130
    assert d.confirm() == 120
    assert d.stable and d.confirm_due is None


def test_offhook_starts_with_preroll_counted_from_the_edge():
    m = CallMachine(T, off_hook=False, opted_out=False, at_frame=0)
    acts = run(m, [(10.0, "hook", True)], 11)
    assert acts == [
        Start(
            frame=10 * RATE + 30 * MS,
            audio_from=5 * RATE,
            trigger=Trigger.OFFHOOK,
            trigger_frame=10 * RATE,
        )
    ]
    assert m.state is LineState.RECORDING


def test_bouncing_contact_gives_one_call_from_the_first_edge():
    m = CallMachine(T, off_hook=False, opted_out=False, at_frame=0)
    bounce: list[tuple[float, Input, bool]] = [
        (10.000, "hook", True),
        (10.003, "hook", False),
        (10.006, "hook", True),
        (10.009, "hook", False),
        (10.012, "hook", True),
    ]
    acts = run(m, bounce, 12)
    starts = [a for a in acts if isinstance(a, Start)]
    assert len(starts) == 1
    # The level held from 10.012 s; the recording counts its pre-roll from there.
    assert starts[0].trigger_frame == round(10.012 * RATE)
    assert not [a for a in acts if isinstance(a, End)]


def test_glitch_shorter_than_debounce_is_ignored():
    m = CallMachine(T, off_hook=False, opted_out=False, at_frame=0)
    acts = run(m, [(5.0, "hook", True), (5.02, "hook", False)], 7)
    assert acts == []
    assert m.state is LineState.IDLE


def test_hook_flash_400ms_does_not_end_the_call():
    m = CallMachine(T, off_hook=False, opted_out=False, at_frame=0)
    acts = run(
        m,
        [(1.0, "hook", True), (5.0, "hook", False), (5.4, "hook", True), (9.0, "hook", False)],
        12,
    )
    kinds = [type(a) for a in acts]
    assert kinds == [Start, Flash, End]
    flash = acts[1]
    assert isinstance(flash, Flash)
    assert flash.onhook_frame == 5 * RATE and flash.offhook_frame == round(5.4 * RATE)
    end = acts[2]
    assert isinstance(end, End) and end.reason is EndReason.ONHOOK
    # Hang-up known once on-hook has held flash_max: 9.0 s + 1.0 s.
    assert end.frame == 10 * RATE and end.onhook_frame == 9 * RATE


def test_hangup_1500ms_ends_the_call_and_a_new_offhook_is_a_new_call():
    m = CallMachine(T, off_hook=False, opted_out=False, at_frame=0)
    acts = run(
        m,
        [(1.0, "hook", True), (5.0, "hook", False), (6.5, "hook", True), (8.0, "hook", False)],
        10,
    )
    assert [type(a) for a in acts] == [Start, End, Start, End]
    assert acts[1].frame == 6 * RATE
    second = acts[2]
    assert isinstance(second, Start) and second.trigger_frame == round(6.5 * RATE)


def test_offhook_at_boot_starts_a_recording_without_preroll():
    m = CallMachine(T, off_hook=True, opted_out=False, at_frame=0)
    assert m.boot() == [Start(0, 0, Trigger.BOOT, 0)]
    acts = run(m, [(3.0, "hook", False)], 5)
    assert [type(a) for a in acts] == [End]


def test_opt_out_pause_cuts_and_resumes():
    m = CallMachine(T, off_hook=False, opted_out=False, at_frame=0)
    acts = run(
        m,
        [(1.0, "hook", True), (3.0, "optout", True), (4.0, "optout", False), (8.0, "hook", False)],
        10,
    )
    assert [type(a) for a in acts] == [Start, Pause, Resume, End]
    assert acts[1].frame == 3 * RATE + 30 * MS
    assert acts[2].frame == 4 * RATE + 30 * MS


def test_opt_out_discard_drops_the_call_and_keeps_its_end():
    t = CallTiming.from_seconds(
        RATE, preroll_s=5, debounce_ms=30, flash_max_ms=1000, max_call_s=60, opt_out_mode="discard"
    )
    m = CallMachine(t, off_hook=False, opted_out=False, at_frame=0)
    acts = run(
        m,
        [(1.0, "hook", True), (3.0, "optout", True), (3.5, "optout", False), (8.0, "hook", False)],
        10,
    )
    assert [type(a) for a in acts] == [Start, Discard, End]
    assert m.state is LineState.IDLE


def test_opted_out_before_offhook_starts_paused_without_preroll():
    m = CallMachine(T, off_hook=False, opted_out=True, at_frame=0)
    acts = run(m, [(2.0, "hook", True)], 3)
    assert [type(a) for a in acts] == [Start, Pause]
    start = acts[0]
    assert isinstance(start, Start) and start.audio_from == start.frame
    assert m.state is LineState.PAUSED


def test_rollover_continues_on_the_next_frame():
    t = CallTiming.from_seconds(RATE, preroll_s=0, debounce_ms=30, flash_max_ms=1000, max_call_s=10)
    m = CallMachine(t, off_hook=False, opted_out=False, at_frame=0)
    acts = run(m, [(1.0, "hook", True), (25.0, "hook", False)], 30)
    assert [type(a) for a in acts] == [Start, End, Start, End, Start, End]
    first, roll_end, roll_start = acts[0], acts[1], acts[2]
    assert isinstance(roll_end, End) and roll_end.reason is EndReason.ROLLOVER
    assert isinstance(roll_start, Start) and roll_start.trigger is Trigger.ROLLOVER
    assert roll_end.frame == roll_start.frame == roll_start.audio_from == first.frame + 10 * RATE


def test_offhook_during_flash_window_close_to_its_end_is_still_a_flash():
    # On-hook held 990 ms (< 1000) but the off-hook confirms only after debounce (1020 ms).
    m = CallMachine(T, off_hook=False, opted_out=False, at_frame=0)
    acts = run(m, [(1.0, "hook", True), (5.0, "hook", False), (5.99, "hook", True)], 8)
    assert [type(a) for a in acts] == [Start, Flash]


def test_finish_ends_a_call_in_progress():
    m = CallMachine(T, off_hook=False, opted_out=False, at_frame=0)
    run(m, [(1.0, "hook", True)], 2)
    acts = m.finish(2 * RATE, EndReason.SHUTDOWN)
    assert acts == [End(2 * RATE, EndReason.SHUTDOWN, None)]
    assert m.finish(3 * RATE, EndReason.SHUTDOWN) == []


@pytest.mark.parametrize("late_ms", [0, 15, 40])
def test_late_reported_edge_keeps_its_preroll(late_ms: int):
    """An edge polled after its block was processed still counts from its own frame."""
    m = CallMachine(T, off_hook=False, opted_out=False, at_frame=0)
    m.advance([], 10 * RATE + late_ms * MS)
    acts = m.advance([(10 * RATE, "hook", True)], 10 * RATE + 100 * MS)
    start = acts[0]
    assert isinstance(start, Start)
    assert start.audio_from == 5 * RATE


def test_late_edge_before_a_decision_counts_from_the_decision():
    m = CallMachine(T, off_hook=False, opted_out=False, at_frame=0)
    acts = m.advance([(1 * RATE, "hook", True)], 2 * RATE)
    assert isinstance(acts[0], Start)  # decided at 1.03 s
    # An on-hook edge stamped before that decision arrives now: it cannot rewrite the
    # past, so it counts from the decision and the hang-up follows flash_max later.
    acts = m.advance([(1 * RATE + 10 * MS, "hook", False)], 4 * RATE)
    assert acts == [End(1 * RATE + 30 * MS + 1000 * MS, EndReason.ONHOOK, 1 * RATE + 30 * MS)]
