"""Whole-recorder real-time factor per line, ours against HEAD's implementation.

The recorder as the daemon runs it, through alsa-lib's ``file`` PCM (unpaced: the loop
measures pure CPU cost), with the SEALING sink (FLAC, age-encrypted, the power-safe
journal, signed manifests, the outbox) and every line's DSP (DTMF, FSK caller ID,
levels, masking), in two scenarios:

- ``speech``: every line in a call from the start, carrying espeak-ng speech
  (bench/sealing_rtf.py's sample: telephone band, 8 kHz, pauses with line noise);
- ``idle``: every line on-hook, carrying line noise only.

Each cell runs bench/capture_worker.py in fresh processes, alternating our tree and
HEAD's (``git archive HEAD``, unpacked once under $TMPDIR), ``--repeats`` times each, so
that other load on the machine hits both alike. Each worker warms up, then measures
process CPU time from the recorder's start until it has stopped and sealed everything;
process start-up and imports are excluded on both sides alike.

RTF per line = audio seconds x lines / CPU seconds. Goals (issue 21): speech >= 300x per
line with 4 lines, idle >= 3,000x per line.

Run: .venv/bin/python bench/capture_rtf.py [--seconds 60] [--repeats 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench_common import print_table_header
from head_compare import REPO, head_tree, min_median, run_worker
from sealing_rtf import speech_wav

WORKER = Path(__file__).resolve().parent / "capture_worker.py"
LINE_COUNTS = (1, 4)
SCENARIOS = ("speech", "idle")


@dataclass(frozen=True)
class Cell:
    scenario: str
    lines: int
    ours_cpu: list[float]
    head_cpu: list[float]


def per_line_rtf(seconds: int, lines: int, cpu_s: float) -> float:
    return seconds * lines / max(cpu_s, 1e-9)


def measure(
    scenario: str, lines: int, *, seconds: int, repeats: int, wav: Path, head: Path
) -> Cell:
    args = ["--lines", str(lines), "--scenario", scenario]
    args += ["--seconds", str(seconds), "--audio", str(wav)]
    expected = lines if scenario == "speech" else 0
    ours: list[float] = []
    theirs: list[float] = []
    for n in range(repeats):
        # Alternate which side goes first, so neither always follows the other.
        order = ((REPO, ours), (head, theirs)) if n % 2 == 0 else ((head, theirs), (REPO, ours))
        for tree, results in order:
            result = run_worker(WORKER, tree, args)
            if result["sealed"] != expected:
                raise RuntimeError(
                    f"{tree}: {result['sealed']} recordings sealed, expected {expected}"
                )
            results.append(float(result["cpu_s"]))
    return Cell(scenario, lines, ours, theirs)


def report(
    cells: list[Cell], *, seconds: int, repeats: int, wav: Path, head: Path, wall: float
) -> None:
    print(
        f"whole-recorder real-time factor PER LINE (audio s x lines / CPU s): 8000 Hz S16, "
        f"FLAC sealing sink, {seconds} s per run, {repeats} runs per side, interleaved"
    )
    print(f"audio: {wav}\nHEAD: {head}")
    print_table_header(
        f"{'scenario':<8}  {'lines':>5}  {'ours min':>9}  {'ours med':>9}  "
        f"{'HEAD min':>9}  {'HEAD med':>9}  {'ours/HEAD med':>13}  {'ours/HEAD best':>14}"
    )
    for c in cells:
        ours_best, ours_med = min_median(c.ours_cpu)
        head_best, head_med = min_median(c.head_cpu)
        # "min" columns are the best run (least CPU), i.e. the highest RTF.
        print(
            f"{c.scenario:<8}  {c.lines:>5}  "
            f"{per_line_rtf(seconds, c.lines, ours_best):>9,.0f}  "
            f"{per_line_rtf(seconds, c.lines, ours_med):>9,.0f}  "
            f"{per_line_rtf(seconds, c.lines, head_best):>9,.0f}  "
            f"{per_line_rtf(seconds, c.lines, head_med):>9,.0f}  "
            f"{head_med / ours_med:>13.2f}  {head_best / ours_best:>14.2f}"
        )
    print(
        "min = the run with the least CPU (highest RTF), med = median run. Each run is a "
        "fresh worker process; process start-up, imports and a 3 s warm-up run are excluded "
        "on both sides alike (CPU counted from the recorder's start until it has stopped "
        "and sealed every recording: ALSA read, rings, call machines, line DSP, FLAC + age "
        "stream, journal segments with fsync, manifests, outbox). ours/HEAD > 1: ours is "
        f"faster. Total {wall:.1f} s wall."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=int, default=60, help="audio per run (default 60)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per side and cell")
    args = parser.parse_args(argv)
    wav = speech_wav(60)
    head = head_tree()
    wall = time.monotonic()
    cells = [
        measure(scenario, lines, seconds=args.seconds, repeats=args.repeats, wav=wav, head=head)
        for scenario in SCENARIOS
        for lines in LINE_COUNTS
    ]
    wall = time.monotonic() - wall
    report(cells, seconds=args.seconds, repeats=args.repeats, wav=wav, head=head, wall=wall)
    return 0


if __name__ == "__main__":
    sys.exit(main())
