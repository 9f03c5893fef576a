"""``linetap levels``: a live level meter per line, for installers wiring the lines.

For every configured line: a dBFS bar (RMS, with the peak held for ~2 s), RMS, peak and
held peak in dBFS, clipped samples since start, mains hum (50 and 60 Hz with their
harmonics), a silence / clipping / hum note, the hook (and opt-out) state read from
the line's inputs, so lifting a handset shows at once, and what the running recorder
announces on the line (from its status file: "announcing tone" or "announcing prompt";
``announce=`` in the plain lines). Refreshed ~7 times per second on
a terminal (plain ANSI, fine over SSH or a serial console); when stdout is not a
terminal it prints one ``key=value`` line per line once a second instead, and
``--once`` measures for a moment (``--seconds``, default 1 s), prints one line per line
and exits. Ctrl-C / SIGTERM exit 0.

The numbers come from :mod:`firmware.dsp.levels` (the same DSP as ``linetap analyze``
and the telemetry): the live row measures the last :data:`WINDOW_S` seconds, ``--once``
the whole measurement.
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, TextIO

import numpy as np
import numpy.typing as npt

from firmware.cli_options import config_arg
from firmware.config import LinetapConfig, load_config
from firmware.dsp.levels import HUM_HZ, LevelStats, hum_is_noticeable, line_is_silent
from firmware.runstate import read_recorder_status
from firmware.tools._checks import recorder_running
from firmware.tools._terminal import (
    LiveLines,
    LiveScreen,
    emit,
    is_terminal,
    open_live_lines,
    positive_seconds,
)
from runtime.process import stop_on_signals

WINDOW_S = 0.4  # live analysis window: RMS/peak/silence/hum of the last 0.4 s (hum needs 0.2)
REFRESH_S = 0.15  # terminal redraw period: about 7 frames a second
PLAIN_UPDATE_S = 1.0  # not a terminal: one line per line per second
PEAK_HOLD_S = 2.0
ONCE_DEFAULT_S = 1.0
BAR_FLOOR_DBFS = -60.0
BAR_WIDTH = 30
FLOOR_DBFS = -120.0  # what the DSP reports for digital silence

HEADER = (
    f"{'LINE':<10} {'CH':>2} {'HOOK':<8} {'LEVEL -60..0 dBFS':<{BAR_WIDTH + 2}} "
    f"{'RMS':>6} {'PEAK':>6} {'HOLD':>6} {'CLIPS':>7} {'HUM50':>6} {'HUM60':>6}  NOTES"
)


@dataclass(frozen=True, slots=True)
class Reading:
    """One line's measurement, as shown in a row or printed for scripts."""

    name: str
    channel: int
    off_hook: bool
    opted_out: bool | None
    seconds: float  # audio measured (the window or the whole --once run)
    rms_dbfs: float
    peak_dbfs: float
    hold_dbfs: float
    clipped_total: int
    clipped_now: int
    silence_fraction: float
    hum_dbfs: dict[int, float]  # 50 / 60 -> dBFS (empty until 0.2 s were measured)
    announcing: str | None = None  # the running recorder's "tone" / "prompt" on this line

    @property
    def notes(self) -> list[str]:
        out: list[str] = [f"announcing {self.announcing}"] if self.announcing else []
        if self.seconds == 0:
            return [*out, "no audio yet"]
        if line_is_silent(self.silence_fraction):
            out.append("silent")
        if self.clipped_now:
            out.append("CLIPPING")
        if self.hum_dbfs:
            hz, hum = max(self.hum_dbfs.items(), key=lambda item: item[1])
            if hum_is_noticeable(hum, self.rms_dbfs):
                out.append(f"HUM {hz} Hz")
        if self.opted_out:
            out.append("opt-out pressed")
        return out


def _reading(
    name: str,
    channel: int,
    off_hook: bool,
    opted_out: bool | None,
    summary: dict[str, Any],
    *,
    hold_dbfs: float,
    clipped_total: int,
    announcing: str | None = None,
) -> Reading:
    hum = {int(key.split("hz")[0]): float(v) for key, v in summary["hum"].items()}
    return Reading(
        name=name,
        channel=channel,
        off_hook=off_hook,
        opted_out=opted_out,
        seconds=float(summary["seconds"]),
        rms_dbfs=float(summary["rms_dbfs"]),
        peak_dbfs=float(summary["peak_dbfs"]),
        hold_dbfs=hold_dbfs,
        clipped_total=clipped_total,
        clipped_now=int(summary["clipped_samples"]),
        silence_fraction=float(summary["silence_fraction"]),
        hum_dbfs=hum,
        announcing=announcing,
    )


class LineMeter:
    """One line's audio: a rolling window for the live row, and totals since start.

    Totals are fed in whole windows so that hum is measured on them too (the DSP needs
    at least 0.2 s in one piece); the live row is computed from the newest window.
    """

    def __init__(self, rate: int, window_frames: int) -> None:
        self.rate = rate
        self._window = np.zeros(window_frames, dtype=np.int16)
        self._filled = 0
        self._chunk = np.zeros(window_frames, dtype=np.int16)
        self._chunk_fill = 0
        self.total = LevelStats(rate)
        self._hold_dbfs = FLOOR_DBFS
        self._hold_at_s = 0.0

    def push(self, samples: npt.NDArray[np.int16]) -> None:
        size = self._window.shape[0]
        n = samples.shape[0]
        if n >= size:
            self._window[:] = samples[-size:]
        elif n:
            self._window[:-n] = self._window[n:]
            self._window[-n:] = samples
        self._filled = min(size, self._filled + n)
        done = 0
        while done < n:
            take = min(n - done, size - self._chunk_fill)
            self._chunk[self._chunk_fill : self._chunk_fill + take] = samples[done : done + take]
            self._chunk_fill += take
            done += take
            if self._chunk_fill == size:
                self.total.update(self._chunk)
                self._chunk_fill = 0

    def finish(self) -> None:
        """Count the last, partial window into the totals (end of a --once run)."""
        if self._chunk_fill:
            self.total.update(self._chunk[: self._chunk_fill])
            self._chunk_fill = 0

    def live_summary(self, now_s: float) -> tuple[dict[str, Any], float]:
        """Levels of the newest window and the held peak (the highest in PEAK_HOLD_S)."""
        window = self._window[self._window.shape[0] - self._filled :]
        stats = LevelStats(self.rate)
        stats.update(window)
        summary = stats.summary()
        peak = float(summary["peak_dbfs"])
        if peak >= self._hold_dbfs or now_s - self._hold_at_s > PEAK_HOLD_S:
            # Held from when the peak sample came in, not from when it was last in the window.
            newest_peak = window.shape[0] - int(np.argmax(np.abs(window[::-1].astype(np.int32))))
            self._hold_dbfs = peak
            self._hold_at_s = now_s - (window.shape[0] - newest_peak) / self.rate
        return summary, self._hold_dbfs


# ---- rendering -----------------------------------------------------------------------


def _db(value: float) -> str:
    # "+ 0.0" turns the -0.0 of a full-scale peak into 0.0.
    return f"{'-inf':>6}" if value <= FLOOR_DBFS else f"{value + 0.0:6.1f}"


def _bar_pos(dbfs: float) -> int:
    """Cells of the bar up to ``dbfs`` (0 at the floor, BAR_WIDTH at 0 dBFS)."""
    span = -BAR_FLOOR_DBFS
    return max(0, min(BAR_WIDTH, round((dbfs - BAR_FLOOR_DBFS) / span * BAR_WIDTH)))


def bar(rms_dbfs: float, peak_dbfs: float, hold_dbfs: float) -> str:
    """ASCII (serial consoles): ``#`` up to RMS, ``-`` up to the peak, ``|`` at the hold."""
    rms, peak, hold = _bar_pos(rms_dbfs), _bar_pos(peak_dbfs), _bar_pos(hold_dbfs)
    cells = ["#"] * rms + ["-"] * max(0, peak - rms) + ["."] * (BAR_WIDTH - max(rms, peak))
    if hold > 0:
        cells[hold - 1] = "|"
    return "[" + "".join(cells) + "]"


def hook_text(off_hook: bool) -> str:
    return "OFF-HOOK" if off_hook else "on-hook"


def row(r: Reading) -> str:
    hum = [_db(r.hum_dbfs[int(hz)]) if int(hz) in r.hum_dbfs else f"{'--':>6}" for hz in HUM_HZ]
    return (
        f"{r.name:<10} {r.channel:>2} {hook_text(r.off_hook):<8} "
        f"{bar(r.rms_dbfs, r.peak_dbfs, r.hold_dbfs)} "
        f"{_db(r.rms_dbfs)} {_db(r.peak_dbfs)} {_db(r.hold_dbfs)} {r.clipped_total:>7} "
        f"{' '.join(hum)}  {', '.join(r.notes)}"
    )


def plain_line(r: Reading, t_s: float) -> str:
    """One ``key=value`` line for scripts (stdout not a terminal, or ``--once``)."""
    hum = " ".join(f"hum{hz}_dbfs={v + 0.0:.1f}" for hz, v in sorted(r.hum_dbfs.items()))
    optout = "none" if r.opted_out is None else ("pressed" if r.opted_out else "released")
    notes = ",".join(n.replace(" ", "-").lower() for n in r.notes) or "-"
    return (
        f"t={t_s:.2f} line={r.name} ch={r.channel} hook={hook_text(r.off_hook).lower()} "
        f"optout={optout} rms_dbfs={r.rms_dbfs + 0.0:.1f} peak_dbfs={r.peak_dbfs + 0.0:.1f} "
        f"hold_dbfs={r.hold_dbfs + 0.0:.1f} clipped={r.clipped_total} "
        f"silence={r.silence_fraction:.2f}"
        + (f" {hum}" if hum else "")
        + f" announce={r.announcing or '-'} notes={notes}"
    )


def screen_rows(live: LiveLines, readings: list[Reading], t_s: float) -> list[str]:
    stats = live.capture.stats
    return [
        f"linetap levels   t {t_s:.1f} s   xruns {stats.xruns}   Ctrl-C quits   "
        f"{live.rate} Hz, {live.source_text()}",
        "",
        HEADER,
        *(row(r) for r in readings),
    ]


# ---- the loop ------------------------------------------------------------------------


def announcing(status: Mapping[str, Any]) -> dict[str, str]:
    """What the running recorder announces on each line now, by line name, from its status
    file (``firmware.runstate.read_recorder_status``): "tone" or "prompt"; a line that is
    quiet, does not announce, or a recorder that is not running has no entry."""
    if not recorder_running(status):
        return {}
    out: dict[str, str] = {}
    for line in status["lines"]:
        if isinstance(line, dict) and line.get("announce") in ("tone", "prompt"):
            out[str(line.get("name"))] = str(line["announce"])
    return out


def live_readings(
    live: LiveLines, meters: list[LineMeter], t_s: float, announced: Mapping[str, str]
) -> list[Reading]:
    """Each line now: the last second's levels and the peak held over the last seconds."""
    return _readings(live, meters, [meter.live_summary(t_s) for meter in meters], announced)


def once_readings(
    live: LiveLines, meters: list[LineMeter], announced: Mapping[str, str]
) -> list[Reading]:
    """Each line over the whole run (``--once``): its peak is the held peak."""
    for meter in meters:
        meter.finish()
    totals = [meter.total.summary() for meter in meters]
    return _readings(live, meters, [(t, float(t["peak_dbfs"])) for t in totals], announced)


def _readings(
    live: LiveLines,
    meters: list[LineMeter],
    summaries: list[tuple[dict[str, Any], float]],
    announced: Mapping[str, str],
) -> list[Reading]:
    return [
        _reading(
            inputs.config.name,
            inputs.config.channel,
            inputs.off_hook,
            inputs.opted_out,
            summary,
            hold_dbfs=hold,
            clipped_total=meter.total.clipped,
            announcing=announced.get(inputs.config.name),
        )
        for inputs, meter, (summary, hold) in zip(live.lines, meters, summaries, strict=True)
    ]


def run_levels(
    live: LiveLines,
    stop: threading.Event,
    out: TextIO,
    *,
    terminal: bool,
    once: bool,
    seconds: float | None,
    recorder_status: Callable[[], Mapping[str, Any]] = dict,
) -> int:
    """Meter until stopped, ``seconds`` of audio have passed, or a file source ends.
    ``recorder_status`` reads the running recorder's status file (what it announces)."""
    window = max(1, round(WINDOW_S * live.rate))
    meters = [LineMeter(live.rate, window) for _ in live.lines]
    limit = seconds if seconds is not None else (ONCE_DEFAULT_S if once else None)
    period = REFRESH_S if terminal else PLAIN_UPDATE_S
    screen = LiveScreen(out) if terminal and not once else None
    next_update = period
    t_s = 0.0
    ended = False
    with screen if screen is not None else nullcontext():
        while not stop.is_set():
            got = live.read()
            if got is None:
                ended = not stop.is_set()
                break
            for inputs, meter in zip(live.lines, meters, strict=True):
                meter.push(got.block.samples[:, inputs.config.channel])
            t_s = live.seconds_at(got.block.end_frame)
            done = limit is not None and t_s >= limit - 0.5 / live.rate
            if once:
                if done:
                    break
                continue
            if t_s >= next_update or done:
                next_update = t_s + period
                readings = live_readings(live, meters, t_s, announcing(recorder_status()))
                if screen is not None:
                    screen.draw(screen_rows(live, readings, t_s))
                elif not _emit_all(out, [plain_line(r, t_s) for r in readings]):
                    break  # the reader went away
            if done:
                break
    if once:
        readings = once_readings(live, meters, announcing(recorder_status()))
        _emit_all(out, [plain_line(r, t_s) for r in readings])
    if ended:
        print(f"linetap levels: the audio file ended after {t_s:.1f} s", file=sys.stderr)
    return 0


def _emit_all(out: TextIO, lines: list[str]) -> bool:
    """Print ``lines``; ``False`` (and stop) once the reader has gone."""
    return all(emit(out, text) for text in lines)


def cmd_levels(args: argparse.Namespace) -> int:
    cfg: LinetapConfig = load_config(args.config)
    stop = threading.Event()
    with stop_on_signals(stop), open_live_lines(cfg, stop) as live:
        return run_levels(
            live,
            stop,
            sys.stdout,
            terminal=is_terminal(sys.stdout),
            once=args.once,
            seconds=args.seconds,
            recorder_status=lambda: read_recorder_status(cfg.storage.status_file),
        )


def register(p: argparse.ArgumentParser) -> None:
    """``linetap levels``'s options (its name and help are in :data:`firmware.cli.COMMANDS`)."""
    p.description = (
        "Live level meter for every configured line, with its hook state. On a terminal "
        "the screen refreshes in place; otherwise one key=value line per line per second. "
        "Ctrl-C quits."
    )
    config_arg(p)
    p.add_argument(
        "--once",
        action="store_true",
        help="measure once (--seconds, default 1 s), print one line per line and exit",
    )
    p.add_argument(
        "--seconds",
        type=positive_seconds,
        default=None,
        metavar="N",
        help="run for N seconds of audio and exit (with --once: measure N seconds)",
    )
    p.set_defaults(func=cmd_levels)
