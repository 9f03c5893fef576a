"""Line DSP real-time factor: the analyser of one line, this tree against the committed one.

What the recorder runs per line on every capture block, recording or not: a
:class:`~firmware.dsp.analyser.LineAnalyser` (DTMF, FSK caller ID, levels) fed 20 ms blocks
(the recorder's capture period) at 8 kHz, then ``catch_up()``. Two inputs:

* **speech**: espeak-ng speech (several voices, telephone band by sox ``sinc 300-3400``)
  at about -20 dBFS, a call in progress;
* **idle**: a line with nothing on it: white noise at -65 dBFS RMS (a clean tap's floor is
  under -60 dBFS), the line between calls;
* **calls**: the speech cut into 20 s calls, each announced by an FSK caller ID (Bell 202
  and V.23 in turn, minimodem) and carrying a dialled string (sox DTMF at -20 dBm0) in the
  middle, so that the comparison of the detectors' output means something.

The peer is the committed implementation: ``git show <rev>:firmware/dsp/*.py`` written to a
temporary package (its ``firmware.dsp`` imports renamed), so both run in this process on the
same numpy. Each repeat times old and new back to back on each input (interleaved, order
alternating), with ``time.process_time`` around the feeding loop only: start-up (imports,
constructing the analyser and its cached bases) is excluded on both sides. Detector output
(digits, caller IDs) of both is compared and must be identical.

Run: .venv/bin/python bench/dsp_rtf.py [--seconds 60] [--repeats 7] [--rev HEAD]
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from bench_common import print_table_header

# The repository root, for the firmware and the tests' signals (run as a script).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from firmware.config import IDLE_PERIOD_MS
from firmware.dsp import analyser as new_analyser
from firmware.dsp.cid_messages import build_mdmf, build_sdmf
from tests.cid_signals import BELL202, V23, at_level, make_burst
from tests.dtmf_signals import TALK_OFF_SENTENCES, dial, raw_out, sox_raw

ROOT = Path(__file__).resolve().parent.parent

Int16s = npt.NDArray[np.int16]
RATE = 8000
BLOCK = RATE * IDLE_PERIOD_MS // 1000  # the recorder's default capture period
VOICES = ("en-gb", "en-us", "en+f2", "en+m3", "de", "fr")
IDLE_DBFS = -65.0
SPEECH_DBFS = -20.0


def load_old(rev: str, tmp: Path) -> Any:
    """The analyser module of ``rev``, as package ``olddsp`` under ``tmp``."""
    pkg = tmp / "olddsp"
    pkg.mkdir()
    names = subprocess.run(
        ["git", "-C", str(ROOT), "ls-tree", "--name-only", f"{rev}:firmware/dsp"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    for name in names:
        if not name.endswith(".py"):
            continue
        text = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{rev}:firmware/dsp/{name}"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        (pkg / name).write_text(text.replace("firmware.dsp.", "olddsp."))
    sys.path.insert(0, str(tmp))
    return importlib.import_module("olddsp.analyser")


def make_speech(seconds: float) -> Int16s:
    jobs = [(t, v) for v in VOICES for t in TALK_OFF_SENTENCES]

    def one(job: tuple[str, str]) -> Int16s:
        text, voice = job
        wav = subprocess.run(
            ["espeak-ng", "-v", voice, "-s", "160", "--stdout", text],
            capture_output=True, check=True, timeout=120,
        ).stdout  # fmt: skip
        return sox_raw(["-t", "wav", "-", *raw_out(RATE), "sinc", "300-3400"], stdin=wav)

    with ThreadPoolExecutor(max_workers=2) as pool:
        speech = np.concatenate(list(pool.map(one, jobs))).astype(np.float64)
    while speech.size < seconds * RATE:
        speech = np.concatenate((speech, speech[::-1]))
    speech = speech[: round(seconds * RATE)]
    speech *= 32768 * 10 ** (SPEECH_DBFS / 20) / np.sqrt(np.mean(speech**2))
    return np.clip(np.rint(speech), -32768, 32767).astype(np.int16)


def make_idle(seconds: float) -> Int16s:
    rng = np.random.default_rng(7)
    noise = rng.normal(0.0, 32768 * 10 ** (IDLE_DBFS / 20), round(seconds * RATE))
    return np.rint(noise).astype(np.int16)


def make_calls(speech: Int16s) -> Int16s:
    parts: list[npt.NDArray[np.float64]] = []
    call = 20 * RATE
    for k, start in enumerate(range(0, speech.size - call + 1, call)):
        modem = (BELL202, V23)[k % 2]
        number = f"01632{k:06d}"
        message = (
            build_sdmf("06011230", number)
            if modem is BELL202
            else build_mdmf(time="06011230", number=number, name=f"CALLER {k}")
        )
        burst = at_level(make_burst(message, modem, RATE).samples, -20.0)
        digits, _ = dial(f"{k % 10}4#*7", RATE, low_dbm0=-20.0, high_dbm0=-20.0)
        talk = speech[start : start + call].astype(np.float64)
        half = call // 2
        tones = digits.astype(np.float64)
        parts += [np.zeros(RATE // 2), burst, np.zeros(RATE), talk[:half], tones, talk[half:]]
    return np.rint(np.concatenate(parts)).astype(np.int16)


def run_once(module: Any, audio: Int16s) -> tuple[float, str]:
    """(CPU seconds of the feeding loop, what was heard) for one fresh analyser."""
    line = module.LineAnalyser(RATE, history_s=3600.0)  # keeps every caller ID heard
    heard: list[str] = []
    t0 = time.process_time()
    for i in range(0, audio.size, BLOCK):
        heard += [e.digit for e in line.process(audio[i : i + BLOCK], i)]
    heard += [e.digit for e in line.catch_up()]
    cpu = time.process_time() - t0
    cids = [(m.number, m.start_frame) for m in line._caller_ids]
    return cpu, f"{''.join(heard)} {cids}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--rev", default="HEAD", help="the committed implementation to compare")
    args = ap.parse_args()
    for tool in ("sox", "espeak-ng"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed (apt install sox espeak-ng)")
    speech = make_speech(args.seconds)
    inputs = {"speech": speech, "idle": make_idle(args.seconds), "calls": make_calls(speech)}
    with tempfile.TemporaryDirectory(prefix="linetap-dsp-bench-") as tmp:
        old = load_old(args.rev, Path(tmp))
        sides: dict[str, Callable[[Int16s], tuple[float, str]]] = {
            "old": lambda a: run_once(old, a),
            "new": lambda a: run_once(new_analyser, a),
        }
        for run in sides.values():  # warm the bases' caches on both sides
            run(inputs["idle"][: RATE // 2])
        runs: dict[tuple[str, str], list[float]] = {}
        heard: dict[tuple[str, str], set[str]] = {}
        for r in range(args.repeats):
            for name, audio in inputs.items():
                order = ("old", "new") if r % 2 == 0 else ("new", "old")
                for side in order:
                    cpu, out = sides[side](audio)
                    runs.setdefault((name, side), []).append(cpu)
                    heard.setdefault((name, side), set()).add(out)
    print(
        f"LineAnalyser, 1 line at {RATE} Hz, {BLOCK}-frame blocks, {args.seconds:.0f} s per "
        f"input, {args.repeats} interleaved repeats; old = {args.rev}, new = this tree"
    )
    print_table_header(
        f"{'input':8s}{'side':6s}{'RTF min':>12s}{'RTF median':>12s}{'new/old (median)':>18s}"
    )
    for name, audio in inputs.items():
        seconds = audio.size / RATE
        med = {s: statistics.median(runs[(name, s)]) for s in sides}
        for side in sides:
            best = min(runs[(name, side)])
            ratio = f"{med['old'] / med['new']:.2f}x" if side == "new" else ""
            print(
                f"{name:8s}{side:6s}{seconds / best:>11,.0f}x"
                f"{seconds / med[side]:>11,.0f}x{ratio:>18s}"
            )
        same = heard[(name, "old")] == heard[(name, "new")]
        print(f"{'':14s}detector output identical: {same}; new: {sorted(heard[(name, 'new')])}")
        if not same:
            print(f"{'':14s}old: {sorted(heard[(name, 'old')])}")
    print(
        "(RTF = audio seconds per CPU second of the feeding loop; start-up excluded on both "
        "sides: RTF min is from the fastest repeat)"
    )


if __name__ == "__main__":
    main()
