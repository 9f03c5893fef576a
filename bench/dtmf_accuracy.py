"""DTMF detection accuracy, talk-down, talk-off and real-time factor: ours against multimon-ng.

Corpus (made fresh each run, seeded by ``--seed``):

* ``--strings`` (200) random dialling strings of 4-16 digits, half at 8 kHz and half at
  16 kHz. Each string has one set of conditions, drawn within the acceptance spec of
  firmware/dsp/dtmf.py: louder tone -3..-24 dBm0, twist -3 (reverse) .. +7 (forward) dB,
  each group's frequency off by up to +-1.5 %, and white noise at 15..30 dB SNR (power of
  both tones over full-band noise) for three strings in four, none for the rest. Each
  digit is on 40..100 ms and off 40..100 ms. Tones are made by ``sox synth`` (two sines
  remixed to mono with a gain each; frequencies and levels measured before use, see
  tests/dtmf_signals.py) and the noise by ``sox synth whitenoise``.
* ``--talkdown`` (100) strings made the same way at 8 kHz, without white noise but over
  espeak-ng speech (talk-down: someone talks while the keys are pressed), the speech
  scaled so that the tones' power is ``--talkdown-snr`` (default 0..20 dB, drawn per
  string) above the speech's (over the string's length).
* ``--speech-minutes`` (10) of espeak-ng speech at 8 kHz: many voices and pitches,
  sentences full of spoken numbers, telephone band (sox ``sinc 300-3400``), and
  ``--music-minutes`` (5) of sox-synthesised music (tests/dtmf_signals.py ``synth_music``,
  transposed a semitone further for every 2 minutes). No DTMF in them, so every digit
  reported is a false one (talk-off). Zero talk-off on an hour: ``--speech-minutes 40
  --music-minutes 20``.

Each string is scored by aligning the digits heard with the digits sent (edit distance):
missed, wrong and extra digits. Ours runs as the recorder runs it: a
:class:`~firmware.dsp.analyser.LineAnalyser` (hum high-pass, DTMF in
``analyser.BATCH_S`` batches, FSK caller ID and levels too) fed capture blocks of the
recorder's default period (100 ms) at the line's rate. multimon-ng (``-c -a DTMF -t raw``) needs 22 050 Hz input, so each string is
resampled by sox first (one sox | multimon-ng pipeline per string).

Real-time factor (audio seconds per CPU second, one line) on the same audio, all strings
and the speech back to back, ours and multimon-ng interleaved (alternating which goes
first) for ``--repeats`` rounds; min and median printed. Both exclude start-up: ours is
``time.process_time`` around the block loop (the analyser built before); multimon-ng's
is ``getrusage(RUSAGE_CHILDREN)`` of one run over a pre-resampled 22 050 Hz raw file less
that of a run over 50 ms of it in the same round (its start-up). It processes 2.76x (8 kHz)
or 1.38x (16 kHz) as many samples as we do, and does no caller ID; the resampling is not
counted.

Run: .venv/bin/python bench/dtmf_accuracy.py [--strings 200] [--talkdown 100]
     [--speech-minutes 10] [--music-minutes 5]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from bench_common import children_cpu_s

# The repository root, for the shared test signals (run as `python bench/dtmf_accuracy.py`).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from firmware.config import IDLE_PERIOD_MS
from firmware.dsp.analyser import LineAnalyser
from firmware.dsp.dtmf import KEYPAD
from tests.dtmf_signals import (
    MULTIMON_RATE,
    TALK_OFF_VOICES,
    amplitude,
    multimon,
    multimon_raw,
    raw_out,
    sox_raw,
    sox_tone,
    synth_music,
    talk_off_speech,
    to_multimon_rate,
)

Int16s = npt.NDArray[np.int16]
BLOCK_S = IDLE_PERIOD_MS / 1000  # the recorder's default capture period
RATES = (8000, 16000)


# --------------------------------------------------------------------------- corpus


@dataclass(frozen=True)
class Conditions:
    rate: int
    low_dbm0: float
    high_dbm0: float
    low_dev: float
    high_dev: float
    snr_db: float | None

    def describe(self) -> str:
        snr = f"{self.snr_db:4.1f} dB" if self.snr_db is not None else "clean  "
        return (
            f"{self.rate // 1000:2d} kHz  low {self.low_dbm0:6.1f} dBm0 {self.low_dev:+6.2%}  "
            f"high {self.high_dbm0:6.1f} dBm0 {self.high_dev:+6.2%}  "
            f"twist {self.low_dbm0 - self.high_dbm0:+5.1f} dB  SNR {snr}"
        )


@dataclass(frozen=True)
class Case:
    digits: str
    conditions: Conditions
    audio: Int16s


def _tone(digit: str, c: Conditions, frames: int) -> Int16s:
    return sox_tone(
        digit,
        c.rate,
        frames,
        low_dbm0=c.low_dbm0,
        high_dbm0=c.high_dbm0,
        low_dev=c.low_dev,
        high_dev=c.high_dev,
    )


def make_case(
    rng: np.random.Generator,
    rate: int,
    noise: dict[int, Int16s],
    pool: ThreadPoolExecutor,
    *,
    snr_range: tuple[float, float] = (15.0, 30.0),
    noisy_share: float = 0.75,
) -> Case:
    """A string in spec; ``noisy_share`` of them over an excerpt of ``noise[rate]`` (white
    noise, or speech for talk-down) at an SNR drawn from ``snr_range``."""
    digits = "".join(rng.choice(list(KEYPAD), int(rng.integers(4, 17))))
    loud = float(rng.uniform(-24.0, -3.0))
    twist = float(rng.uniform(-3.0, 7.0))  # low minus high
    low, high = (loud, loud - twist) if twist >= 0 else (loud + twist, loud)
    c = Conditions(
        rate=rate,
        low_dbm0=round(low, 2),
        high_dbm0=round(high, 2),
        low_dev=round(float(rng.uniform(-0.015, 0.015)), 5),
        high_dev=round(float(rng.uniform(-0.015, 0.015)), 5),
        snr_db=round(float(rng.uniform(*snr_range)), 1) if rng.random() < noisy_share else None,
    )
    max_on = round(0.1 * rate)
    keys = sorted(set(digits))
    bursts = dict(zip(keys, pool.map(lambda d: _tone(d, c, max_on), keys), strict=True))
    parts = [np.zeros(int(rng.integers(0, round(0.2 * rate))), dtype=np.int16)]
    for d in digits:
        on = int(rng.integers(round(0.04 * rate), max_on + 1))
        off = int(rng.integers(round(0.04 * rate), round(0.1 * rate) + 1))
        parts += [bursts[d][:on], np.zeros(off, dtype=np.int16)]
    parts.append(np.zeros(round(0.15 * rate), dtype=np.int16))
    audio = np.concatenate(parts).astype(np.float64)
    if c.snr_db is not None:
        power = (amplitude(low) ** 2 + amplitude(high) ** 2) / 2 * 32768.0**2
        src = noise[rate]
        start = int(rng.integers(0, src.size - audio.size))
        n = src[start : start + audio.size].astype(np.float64)
        audio += n * np.sqrt(power / 10 ** (c.snr_db / 10) / max(float(np.mean(n**2)), 1.0))
    return Case(digits, c, np.clip(np.rint(audio), -32768, 32767).astype(np.int16))


# --------------------------------------------------------------------------- detectors


def make_music(minutes: float, pool: ThreadPoolExecutor) -> Int16s:
    """``minutes`` of synthesised music at 8 kHz: the 2-minute piece, transposed a semitone
    further each time round."""
    pieces = math.ceil(minutes / 2)
    music = np.concatenate(list(pool.map(lambda t: synth_music(8000, t), range(pieces))))
    return music[: round(minutes * 60 * 8000)]


def ours(audio: Int16s, rate: int) -> str:
    """The digits the recorder's line analyser hears, fed capture blocks."""
    line = LineAnalyser(rate)
    block = round(BLOCK_S * rate)
    events = []
    for i in range(0, audio.size, block):
        events += line.process(audio[i : i + block], i)
    events += line.catch_up() + line.dtmf.flush()
    return "".join(e.digit for e in events)


@dataclass
class Score:
    strings: int = 0
    exact: int = 0
    sent: int = 0
    missed: int = 0
    wrong: int = 0
    extra: int = 0

    @property
    def hit_rate(self) -> float:
        return (self.sent - self.missed - self.wrong) / max(self.sent, 1)

    def add(self, sent: str, heard: str) -> None:
        m, w, e = align(sent, heard)
        self.strings += 1
        self.exact += sent == heard
        self.sent += len(sent)
        self.missed += m
        self.wrong += w
        self.extra += e


def align(sent: str, heard: str) -> tuple[int, int, int]:
    """(missed, wrong, extra) digits of the cheapest edit from ``sent`` to ``heard``."""
    n, m = len(sent), len(heard)
    cost = [[(0, 0, 0, 0)] * (m + 1) for _ in range(n + 1)]  # (total, missed, wrong, extra)
    for i in range(1, n + 1):
        cost[i][0] = (i, i, 0, 0)
    for j in range(1, m + 1):
        cost[0][j] = (j, 0, 0, j)
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            t, a, b, c = cost[i - 1][j - 1]
            same = sent[i - 1] == heard[j - 1]
            options = [
                (t + (not same), a, b + (not same), c),
                (cost[i - 1][j][0] + 1, cost[i - 1][j][1] + 1, *cost[i - 1][j][2:]),
                (cost[i][j - 1][0] + 1, *cost[i][j - 1][1:3], cost[i][j - 1][3] + 1),
            ]
            cost[i][j] = min(options)
    _, missed, wrong, extra = cost[n][m]
    return missed, wrong, extra


def _cpu_ours(audio: Int16s, rate: int) -> float:
    line = LineAnalyser(rate)  # built outside the timing: its start-up is excluded
    block = round(BLOCK_S * rate)
    t0 = time.process_time()
    for i in range(0, audio.size, block):
        line.process(audio[i : i + block], i)
    line.catch_up()
    return time.process_time() - t0


def _cpu_multimon(path: Path) -> float:
    before = children_cpu_s()
    subprocess.run(
        ["multimon-ng", "-q", "-c", "-a", "DTMF", "-t", "raw", str(path)],
        stdout=subprocess.DEVNULL, check=True, timeout=600,
    )  # fmt: skip
    return children_cpu_s() - before


@dataclass
class Rtf:
    seconds: float  # audio
    ours: list[float]  # CPU seconds per round
    multimon: list[float]  # CPU seconds per round, less its start-up in the same round

    def figures(self, runs: list[float]) -> tuple[float, float]:
        """(best, median) real-time factor."""
        return (
            self.seconds / max(min(runs), 1e-6),
            self.seconds / max(statistics.median(runs), 1e-6),
        )


def measure_rtf(audio: Int16s, rate: int, repeats: int, tmp: Path) -> Rtf:
    """Ours and multimon-ng on the same audio, interleaved, both without start-up."""
    path = tmp / f"all-{rate}.raw"
    raw = to_multimon_rate(audio, rate)
    path.write_bytes(raw)
    start_up = tmp / f"start-{rate}.raw"
    start_up.write_bytes(raw[: 2 * MULTIMON_RATE // 20])  # 50 ms
    result = Rtf(audio.size / rate, [], [])
    for i in range(repeats):
        sides = ("ours", "multimon") if i % 2 == 0 else ("multimon", "ours")
        for side in sides:
            if side == "ours":
                result.ours.append(_cpu_ours(audio, rate))
            else:
                base = _cpu_multimon(start_up)
                result.multimon.append(max(_cpu_multimon(path) - base, 1e-6))
    return result


# --------------------------------------------------------------------------- main


@dataclass
class Results:
    cases: list[Case]
    heard_ours: list[str]
    heard_mm: list[str]
    talkdown: list[Case]
    talkdown_ours: list[str]
    talkdown_mm: list[str]
    speech_s: float
    speech_ours: str
    speech_mm: str
    music_s: float
    music_ours: str
    music_mm: str
    rtf: dict[int, Rtf]


def _heard(cases: list[Case], pool: ThreadPoolExecutor) -> tuple[list[str], list[str]]:
    """(ours, multimon-ng's) digits for each case."""
    heard_ours = [ours(c.audio, c.conditions.rate) for c in cases]
    raws = list(pool.map(lambda c: to_multimon_rate(c.audio, c.conditions.rate), cases))
    return heard_ours, list(pool.map(multimon_raw, raws))


def run(args: argparse.Namespace) -> Results:
    rng = np.random.default_rng(args.seed)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        noise = {r: sox_raw(["-r", str(r), "-n", *raw_out(r), "synth", "120", "whitenoise"])
                 for r in RATES}  # fmt: skip
        cases = [make_case(rng, RATES[i % 2], noise, pool) for i in range(args.strings)]
        speech = talk_off_speech(args.speech_minutes, pool)
        music = make_music(args.music_minutes, pool)
        snr = (args.talkdown_snr[0], args.talkdown_snr[1])
        talkdown = [
            make_case(rng, 8000, {8000: speech}, pool, snr_range=snr, noisy_share=1.0)
            for _ in range(args.talkdown)
        ]
        heard_ours, heard_mm = _heard(cases, pool)
        talkdown_ours, talkdown_mm = _heard(talkdown, pool)
    rtf = {}
    with tempfile.TemporaryDirectory(prefix="linetap-dtmf-bench-") as tmp_name:
        for rate in RATES:
            parts = [c.audio for c in cases if c.conditions.rate == rate]
            if rate == 8000:
                parts.append(speech)
            rtf[rate] = measure_rtf(np.concatenate(parts), rate, args.repeats, Path(tmp_name))
    return Results(
        cases=cases,
        heard_ours=heard_ours,
        heard_mm=heard_mm,
        talkdown=talkdown,
        talkdown_ours=talkdown_ours,
        talkdown_mm=talkdown_mm,
        speech_s=speech.size / 8000,
        speech_ours=ours(speech, 8000),
        speech_mm=multimon(speech, 8000),
        music_s=music.size / 8000,
        music_ours=ours(music, 8000),
        music_mm=multimon(music, 8000),
        rtf=rtf,
    )


def _row(label: str, a: str, b: str) -> None:
    print(f"  {label:48s}{a:>14s}{b:>14s}")


def _scores(cases: list[Case], heard_ours: list[str], heard_mm: list[str]) -> None:
    so, sm = Score(), Score()
    for case, a, b in zip(cases, heard_ours, heard_mm, strict=True):
        so.add(case.digits, a)
        sm.add(case.digits, b)
    _row("strings heard exactly", f"{so.exact / so.strings:.1%}", f"{sm.exact / sm.strings:.1%}")
    _row("digit hit rate", f"{so.hit_rate:.2%}", f"{sm.hit_rate:.2%}")
    _row("missed digits", str(so.missed), str(sm.missed))
    _row("wrong digits", str(so.wrong), str(sm.wrong))
    _row("extra digits (split / doubled / false)", str(so.extra), str(sm.extra))


def _disagreements(cases: list[Case], ours_: list[str], mm: list[str], show: int) -> None:
    wrong = [(c, a, b) for c, a, b in zip(cases, ours_, mm, strict=True) if not a == b == c.digits]
    if wrong:
        print(f"\n{len(wrong)} strings where a detector was wrong (first {show}):")
    for c, a, b in wrong[:show]:
        print(f"  {c.conditions.describe()}")
        print(f"      sent {c.digits:16s}  ours {a:16s}  multimon-ng {b}")


def report(r: Results, args: argparse.Namespace) -> None:
    total_min = sum(c.audio.size / c.conditions.rate for c in r.cases) / 60
    print(
        f"DTMF corpus: {len(r.cases)} strings, {total_min:.1f} min (8 and 16 kHz, seed "
        f"{args.seed}); speech {r.speech_s / 60:.1f} min (8 kHz, {len(TALK_OFF_VOICES)} voices); "
        f"music {r.music_s / 60:.1f} min"
    )
    print(f"{'':50s}{'ours':>14s}{'multimon-ng':>14s}")
    _scores(r.cases, r.heard_ours, r.heard_mm)
    lo, hi = args.talkdown_snr
    print(f"talk-down: {len(r.talkdown)} strings at 8 kHz over speech, SNR {lo:g}..{hi:g} dB")
    _scores(r.talkdown, r.talkdown_ours, r.talkdown_mm)
    for lo_b, hi_b in ((lo, (2 * lo + hi) / 3), ((2 * lo + hi) / 3, (lo + 2 * hi) / 3),
                       ((lo + 2 * hi) / 3, hi)):  # fmt: skip
        band = [i for i, c in enumerate(r.talkdown) if lo_b <= (c.conditions.snr_db or 0) <= hi_b]
        so, sm = Score(), Score()
        for i in band:
            so.add(r.talkdown[i].digits, r.talkdown_ours[i])
            sm.add(r.talkdown[i].digits, r.talkdown_mm[i])
        _row(f"  hit rate at SNR {lo_b:4.1f}..{hi_b:4.1f} dB ({len(band)} strings)",
             f"{so.hit_rate:.2%}", f"{sm.hit_rate:.2%}")  # fmt: skip
    hours = (r.speech_s + r.music_s) / 3600
    print(f"talk-off: {r.speech_s / 60:.1f} min speech + {r.music_s / 60:.1f} min music")
    _row("false digits in speech", str(len(r.speech_ours)), str(len(r.speech_mm)))
    _row("false digits in music", str(len(r.music_ours)), str(len(r.music_mm)))
    false_ours = len(r.speech_ours) + len(r.music_ours)
    false_mm = len(r.speech_mm) + len(r.music_mm)
    _row("false digits per hour", f"{false_ours / hours:.1f}", f"{false_mm / hours:.1f}")
    print(f"real-time factor, one line, {args.repeats} interleaved rounds (min / median):")
    for rate, rtf in r.rtf.items():
        best_o, med_o = rtf.figures(rtf.ours)
        best_m, med_m = rtf.figures(rtf.multimon)
        _row(f"{rate // 1000} kHz line ({rtf.seconds / 60:.0f} min)",
             f"{best_o:,.0f}x/{med_o:,.0f}x", f"{best_m:,.0f}x/{med_m:,.0f}x")  # fmt: skip
    for name, a, b in (("speech", r.speech_ours, r.speech_mm), ("music", r.music_ours, r.music_mm)):
        if a or b:
            print(f"  talk-off digits in {name}: ours {a!r}, multimon-ng {b!r}")
    _disagreements(r.cases, r.heard_ours, r.heard_mm, args.show)
    print("talk-down:", end="")
    _disagreements(r.talkdown, r.talkdown_ours, r.talkdown_mm, args.show)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--strings", type=int, default=200)
    ap.add_argument("--talkdown", type=int, default=100)
    ap.add_argument("--talkdown-snr", type=float, nargs=2, default=(0.0, 20.0))
    ap.add_argument("--speech-minutes", type=float, default=10.0)
    ap.add_argument("--music-minutes", type=float, default=5.0)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--show", type=int, default=8, help="disagreements to list")
    args = ap.parse_args()
    for tool in ("sox", "espeak-ng", "multimon-ng"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed (apt install sox espeak-ng multimon-ng)")
    t0 = time.monotonic()
    report(run(args), args)
    print(
        f"\n(total {time.monotonic() - t0:.1f} s. Ours: the recorder's LineAnalyser with FSK "
        f"caller ID and levels, {BLOCK_S * 1000:.0f} ms blocks; multimon-ng: DTMF only at "
        f"{MULTIMON_RATE} Hz. Both real-time factors exclude start-up: ours times the feeding "
        f"loop, multimon-ng's is less a 50 ms run's CPU in the same round)"
    )


if __name__ == "__main__":
    main()
