"""`linetap hooktest`: hook and opt-out transitions with what the recorder makes of them.

End to end in a real terminal (tmux, see tests/test_tool_levels.py) over the `file`
capture backend in real time and the sim GPIO backend driven by an events script; the
verdicts are checked against the script's timings and against what the real recorder
pipeline (`linetap replay`) records from the same audio and events.
"""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pytest

from firmware.callstate import CallTiming
from firmware.config import CallConfig
from firmware.tools.hooktest import LineWatch, Transition
from tests.helpers import RATE, ReplayInputs, config_text, replay_inputs, run_cli
from tests.tmux_pane import TmuxPane, assert_clean_exit

FLASH_MAX_MS = 400
# line1: lift, a 300 ms hook flash, a hang-up, then a 10 ms bounce (no call).
# line2: a 5 ms bounce on the way to a lift, then the opt-out button pressed and released.
EVENTS = """\
0.2    line1  offhook
0.8    line1  onhook
1.1    line1  offhook
1.5    line1  onhook
2.2    line1  offhook
2.21   line1  onhook
2.3    line2  offhook
2.305  line2  onhook
2.31   line2  offhook
2.6    line2  optout-on
2.9    line2  optout-off
"""
# (time, line, transition, verdict) the recorder's rules give for EVENTS.
EXPECTED = [
    ("0.200", "line1", "off-hook", "call-start"),
    ("0.800", "line1", "on-hook", "flash"),
    ("1.100", "line1", "off-hook", "flash-end"),
    ("1.500", "line1", "on-hook", "hang-up"),
    ("2.200", "line1", "off-hook", "bounce"),
    ("2.210", "line1", "on-hook", "bounce"),
    ("2.300", "line2", "off-hook", "bounce"),
    ("2.305", "line2", "on-hook", "bounce"),
    ("2.310", "line2", "off-hook", "call-start"),
    ("2.600", "line2", "opt-out pressed", "optout-on"),
    ("2.900", "line2", "opt-out released", "optout-off"),
]

LOG_ROW = re.compile(
    r"^\s*(?P<t>\d+\.\d{3})\s+(?P<line>line\d)\s+(?P<what>off-hook|on-hook|opt-out pressed|"
    r"opt-out released)\s+(?P<after>\d+\.\d{3}) s (?P<before>\S+)\s+(?P<verdict>\S+)\s+"
    r"(?P<detail>.*)$"
)
STATUS_ROW = re.compile(
    r"^(?P<line>line\d)\s+(?P<hook>OFF-HOOK|on-hook)\s+(?P<for>[\d.]+) s\s+(?P<call>\w+)\s+"
    r"(?P<optout>\S+)$"
)


def log_rows(screen: str) -> list[dict[str, str]]:
    return [m.groupdict() for line in screen.splitlines() if (m := LOG_ROW.match(line))]


def status_rows(screen: str) -> dict[str, dict[str, str]]:
    return {
        m["line"]: m.groupdict() for line in screen.splitlines() if (m := STATUS_ROW.match(line))
    }


def setup(tmp_path: Path, *, seconds: float, realtime: bool) -> tuple[Path, ReplayInputs]:
    """A config whose file capture and sim GPIO play the same audio and EVENTS that
    `linetap replay` can be given."""
    inputs = replay_inputs(tmp_path, EVENTS, seconds=seconds, channels=2)
    conf = tmp_path / "linetap.toml"
    conf.write_text(
        config_text(
            tmp_path / "out",
            lines=2,
            preroll_s=1.0,
            audio_file=inputs.audio,
            extra_audio=f"file_realtime = {'true' if realtime else 'false'}",
            extra_gpio=f'script = "{inputs.events}"',
        ).replace("flash_max_ms = 1000", f"flash_max_ms = {FLASH_MAX_MS}")
    )
    return conf, inputs


def test_transitions_live_in_a_terminal(tmp_path: Path, pane: TmuxPane, linetap_bin: Path):
    conf, _ = setup(tmp_path, seconds=30, realtime=True)
    pane.run(f"{linetap_bin} hooktest -c {conf}; echo EXIT=$?")

    # While line1 is on-hook in its call and flash_max_ms has not passed, the recorder
    # cannot tell a flash from a hang-up yet: the row says so (once the debounce has
    # passed; the tool redraws on the recorder's tick, which may show that first).
    def undecided(screen: str) -> bool:
        return any(
            r["t"] == "0.800" and r["verdict"] == "..." and "flash or hang-up?" in r["detail"]
            for r in log_rows(screen)
        )

    screen = pane.wait_for(undecided, what="the on-hook at 0.8 s waiting for its verdict")
    assert "flash or hang-up?" in screen
    assert status_rows(screen)["line1"]["call"] == "recording"

    def all_decided(screen: str) -> bool:
        rows = log_rows(screen)
        return len(rows) == len(EXPECTED) and rows[-1]["verdict"] == "optout-off"

    screen = pane.wait_for(all_decided, what="every transition with its verdict")
    rows = log_rows(screen)
    assert [(r["t"], r["line"], r["what"], r["verdict"]) for r in rows] == EXPECTED
    by_time = {r["t"]: r for r in rows}
    # Timings: how long the level before each transition lasted.
    assert (by_time["0.800"]["after"], by_time["0.800"]["before"]) == ("0.600", "off-hook")
    assert (by_time["1.100"]["after"], by_time["1.100"]["before"]) == ("0.300", "on-hook")
    assert (by_time["2.210"]["after"], by_time["2.210"]["before"]) == ("0.010", "off-hook")
    assert (by_time["2.900"]["after"], by_time["2.900"]["before"]) == ("0.300", "pressed")
    assert f"on-hook 300 ms < flash_max_ms {FLASH_MAX_MS}" in by_time["0.800"]["detail"]
    assert f"on-hook held {FLASH_MAX_MS} ms" in by_time["1.500"]["detail"]
    assert "< debounce_ms 30: ignored" in by_time["2.200"]["detail"]
    assert "recording paused" in by_time["2.600"]["detail"]

    status = status_rows(screen)
    assert (status["line1"]["hook"], status["line1"]["call"]) == ("on-hook", "idle")
    assert (status["line2"]["hook"], status["line2"]["call"]) == ("OFF-HOOK", "recording")
    assert status["line2"]["optout"] == "released"

    pane.key("C-c")
    assert_clean_exit(pane)


def test_plain_output_matches_what_the_recorder_records(tmp_path: Path, linetap_bin: Path):
    """Not a terminal: one row per transition once decided. The verdicts agree with the
    recordings the real pipeline makes from the same audio and events (`linetap replay`)."""
    conf, inputs = setup(tmp_path, seconds=4, realtime=False)
    proc = run_cli(linetap_bin, "hooktest", "-c", conf, "--seconds", "3.5", timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stdout
    rows = log_rows(proc.stdout)
    assert [(r["t"], r["line"], r["what"], r["verdict"]) for r in rows] == EXPECTED
    assert len(proc.stdout.splitlines()) == len(EXPECTED)

    replay = run_cli(
        linetap_bin, *inputs.argv(conf, tmp_path / "replay", "--format", "wav", "--json")
    )
    assert replay.returncode == 0, replay.stderr
    recordings = {r["line"]: r for r in json.loads(replay.stdout)["recordings"]}
    assert sorted(recordings) == ["line1", "line2"]  # line1's bounce at 2.2 s started nothing
    line1, line2 = recordings["line1"], recordings["line2"]
    starts = {r["line"]: float(r["t"]) for r in rows if r["verdict"] == "call-start"}
    assert starts == {
        "line1": line1["trigger_frame"] / RATE,
        "line2": line2["trigger_frame"] / RATE,
    }
    flashes = [float(r["t"]) for r in rows if r["verdict"] == "flash"]
    assert flashes == [e["at_s"] + line1["start_frame"] / RATE for e in line1["events"]]
    assert [e["type"] for e in line1["events"]] == ["flash"]
    hang_up = next(r for r in rows if r["verdict"] == "hang-up")
    assert line1["reason"] == "onhook"
    assert line1["end_frame"] / RATE == pytest.approx(
        float(hang_up["t"]) + FLASH_MAX_MS / 1000, abs=1 / RATE
    )
    assert [e["type"] for e in line2["events"]] == ["pause", "resume"]


def test_sigterm_exits_cleanly(tmp_path: Path, pane: TmuxPane, linetap_bin: Path):
    conf, _ = setup(tmp_path, seconds=30, realtime=True)
    pane.run(f"{linetap_bin} hooktest -c {conf}; echo EXIT=$?")
    pane.wait_for(lambda s: len(status_rows(s)) == 2, what="the hooktest screen")
    os.kill(pane.command_pid(), signal.SIGTERM)
    assert_clean_exit(pane)


# ---- the verdicts, directly on LineWatch (no I/O) ------------------------------------

MS = RATE // 1000


def watch(*, off_hook: bool = False, **call: object) -> LineWatch:
    cfg = CallConfig.model_validate({"debounce_ms": 30, "flash_max_ms": 1000, **call})
    timing = CallTiming.from_seconds(
        RATE,
        preroll_s=cfg.preroll_s,
        debounce_ms=cfg.debounce_ms,
        flash_max_ms=cfg.flash_max_ms,
        max_call_s=cfg.max_call_s,
        opt_out_mode=cfg.opt_out_mode,
    )
    return LineWatch("line1", timing, cfg, RATE, off_hook=off_hook, opted_out=False, first_frame=0)


def play(w: LineWatch, script: list[tuple[int, str, bool]], until_ms: int) -> list[Transition]:
    """Feed (ms, input, active) edges in 20 ms blocks, like the capture loop does."""
    out = w.boot()
    for start in range(0, until_ms, 20):
        edges = [
            (ms * MS, which, active) for ms, which, active in script if start <= ms < start + 20
        ]
        out += w.feed(edges, (start + 20) * MS)  # type: ignore[arg-type]
    return out


def test_discard_mode_and_an_opt_out_pressed_before_the_call():
    w = watch(opt_out_mode="discard")
    log = play(
        w,
        [(100, "optout", True), (500, "hook", True), (900, "optout", False)],
        until_ms=1500,
    )
    assert [(t.what, t.verdict) for t in log] == [
        ("opt-out pressed", "optout-on"),
        ("off-hook", "call-start"),
        ("opt-out released", "optout-off"),
    ]
    assert "a call starting now is discarded" in log[0].detail
    assert "discarded at once" in log[1].detail
    assert "stays discarded" in log[2].detail


def test_handset_off_hook_at_start_and_rollover():
    w = watch(off_hook=True, max_call_s=10)
    log = play(w, [], until_ms=10_100)
    assert [(t.what, t.verdict) for t in log] == [
        ("(boot)", "call-start"),
        ("(rollover)", "rollover"),
    ]
    assert log[1].t_s == 10.0


def test_stopping_before_a_decision_says_so():
    w = watch()
    log = play(w, [(100, "hook", True), (1000, "hook", False)], until_ms=1200)
    w.finish()
    assert [(t.what, t.verdict) for t in log] == [
        ("off-hook", "call-start"),
        ("on-hook", "undecided"),
    ]
    assert "stopped before the decision" in log[1].detail
