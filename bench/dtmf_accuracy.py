"""DTMF detection accuracy, talk-off and real-time factor: ours against multimon-ng.

Corpus (made fresh each run, seeded by ``--seed``):

* ``--strings`` (200) random dialling strings of 4-16 digits, half at 8 kHz and half at
  16 kHz. Each string has one set of conditions, drawn within the acceptance spec of
  firmware/dsp/dtmf.py: louder tone -3..-24 dBm0, twist -3 (reverse) .. +7 (forward) dB,
  each group's frequency off by up to +-1.5 %, and white noise at 15..30 dB SNR (power of
  both tones over full-band noise) for three strings in four, none for the rest. Each
  digit is on 40..100 ms and off 40..100 ms. Tones are made by ``sox synth`` (two sines
  remixed to mono with a gain each; frequencies and levels measured before use, see
  tests/dtmf_signals.py) and the noise by ``sox synth whitenoise``.
* ``--speech-minutes`` (10) of espeak-ng speech at 8 kHz: many voices and pitches,
  sentences full of spoken numbers, telephone band (sox ``sinc 300-3400``). No DTMF in it,
  so every digit reported is a false one (talk-off).

Each string is scored by aligning the digits heard with the digits sent (edit distance):
missed, wrong and extra digits. Our detector runs as the recorder would run it: a
:class:`~firmware.dsp.dtmf.DtmfDetector` fed 20 ms blocks at the line's rate.
multimon-ng (``-c -a DTMF -t raw``) needs 22 050 Hz input, so each string is resampled by
sox first (one sox | multimon-ng pipeline per string).

Real-time factor (audio seconds per CPU second, one line) on the same audio, all strings
and the speech back to back: ours is ``time.process_time`` around the 20 ms-block loop at
the native rate; multimon-ng's is ``getrusage(RUSAGE_CHILDREN)`` user+system of one
``multimon-ng`` run over a pre-resampled 22 050 Hz raw file (so it includes its start-up
and it processes 2.76x (8 kHz) or 1.38x (16 kHz) as many samples as we do; the
resampling itself is not counted). Median of ``--repeats`` runs.

Run: .venv/bin/python bench/dtmf_accuracy.py [--strings 200] [--speech-minutes 10]
"""

from __future__ import annotations

import argparse
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

from firmware.dsp.dtmf import KEYPAD, DtmfDetector
from tests.dtmf_signals import (
    MULTIMON_RATE,
    amplitude,
    multimon,
    multimon_raw,
    raw_out,
    sox_raw,
    sox_tone,
    to_multimon_rate,
)
from tests.dtmf_signals import (
    TALK_OFF_SENTENCES as SENTENCES,
)

Int16s = npt.NDArray[np.int16]
BLOCK_S = 0.020  # the recorder's default period
RATES = (8000, 16000)

VOICES = (
    "en-gb", "en-us", "en-gb-x-rp", "en-gb-scotland", "en-gb-x-gbclan", "en-029", "en+f1",
    "en+f2", "en+f3", "en+f4", "en+m1", "en+m3", "en+m7", "en-us+f5", "en+klatt",
    "en+klatt2", "en+klatt4", "en+croak", "en+whisper", "en+Tweaky", "en+Annie", "en+belinda",
    "de", "fr", "es", "it", "nl", "pl", "pt", "hi",
)  # fmt: skip
PITCHES = (25, 45, 65, 85)


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
    rng: np.random.Generator, rate: int, noise: dict[int, Int16s], pool: ThreadPoolExecutor
) -> Case:
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
        snr_db=round(float(rng.uniform(15.0, 30.0)), 1) if rng.random() < 0.75 else None,
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
        audio += n * np.sqrt(power / 10 ** (c.snr_db / 10) / np.mean(n**2))
    return Case(digits, c, np.clip(np.rint(audio), -32768, 32767).astype(np.int16))


def make_speech(minutes: float, pool: ThreadPoolExecutor) -> Int16s:
    jobs = [
        (text, voice, pitch)
        for i, (voice, pitch) in enumerate((v, p) for v in VOICES for p in PITCHES)
        for text in (SENTENCES[i % len(SENTENCES)], SENTENCES[(i + 5) % len(SENTENCES)])
    ]

    def one(job: tuple[str, str, int]) -> Int16s:
        text, voice, pitch = job
        wav = subprocess.run(
            ["espeak-ng", "-v", voice, "-p", str(pitch), "-s", "160", "--stdout", text],
            capture_output=True, check=True, timeout=120,
        ).stdout  # fmt: skip
        return sox_raw(["-t", "wav", "-", *raw_out(8000), "sinc", "300-3400"], stdin=wav)

    target = round(minutes * 60 * 8000)
    parts: list[Int16s] = []
    total = 0
    for piece in pool.map(one, jobs):
        if total >= target:
            break
        parts.append(piece)
        total += piece.size
    speech = np.concatenate(parts)
    while speech.size < target:  # not enough sentences: play them again, reversed
        speech = np.concatenate([speech, speech[::-1]])
    return speech[:target]


# --------------------------------------------------------------------------- detectors


def ours(audio: Int16s, rate: int) -> str:
    det = DtmfDetector(rate)
    block = round(BLOCK_S * rate)
    events = []
    for i in range(0, audio.size, block):
        events += det.process(audio[i : i + block], i)
    events += det.flush()
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


def rtf_ours(audio: Int16s, rate: int, repeats: int) -> float:
    runs = []
    for _ in range(repeats):
        t0 = time.process_time()
        ours(audio, rate)
        runs.append(time.process_time() - t0)
    return audio.size / rate / statistics.median(runs)


def rtf_multimon(audio: Int16s, rate: int, repeats: int, tmp: Path) -> float:
    path = tmp / f"all-{rate}.raw"
    path.write_bytes(to_multimon_rate(audio, rate))
    runs = []
    for _ in range(repeats):
        before = children_cpu_s()
        subprocess.run(
            ["multimon-ng", "-q", "-c", "-a", "DTMF", "-t", "raw", str(path)],
            stdout=subprocess.DEVNULL, check=True, timeout=600,
        )  # fmt: skip
        runs.append(children_cpu_s() - before)
    return audio.size / rate / max(statistics.median(runs), 1e-6)


# --------------------------------------------------------------------------- main


@dataclass
class Results:
    cases: list[Case]
    heard_ours: list[str]
    heard_mm: list[str]
    speech_s: float
    speech_ours: str
    speech_mm: str
    rtf: dict[int, tuple[float, float, float]]  # rate: (audio s, ours, multimon-ng)


def run(args: argparse.Namespace) -> Results:
    rng = np.random.default_rng(args.seed)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        noise = {r: sox_raw(["-r", str(r), "-n", *raw_out(r), "synth", "120", "whitenoise"])
                 for r in RATES}  # fmt: skip
        cases = [make_case(rng, RATES[i % 2], noise, pool) for i in range(args.strings)]
        speech = make_speech(args.speech_minutes, pool)
        heard_ours = [ours(c.audio, c.conditions.rate) for c in cases]
        raws = list(pool.map(lambda c: to_multimon_rate(c.audio, c.conditions.rate), cases))
        heard_mm = list(pool.map(multimon_raw, raws))
    rtf = {}
    with tempfile.TemporaryDirectory(prefix="linetap-dtmf-bench-") as tmp_name:
        for rate in RATES:
            parts = [c.audio for c in cases if c.conditions.rate == rate]
            if rate == 8000:
                parts.append(speech)
            audio = np.concatenate(parts)
            rtf[rate] = (
                audio.size / rate,
                rtf_ours(audio, rate, args.repeats),
                rtf_multimon(audio, rate, args.repeats, Path(tmp_name)),
            )
    return Results(
        cases=cases,
        heard_ours=heard_ours,
        heard_mm=heard_mm,
        speech_s=speech.size / 8000,
        speech_ours=ours(speech, 8000),
        speech_mm=multimon(speech, 8000),
        rtf=rtf,
    )


def _row(label: str, a: str, b: str) -> None:
    print(f"  {label:42s}{a:>14s}{b:>14s}")


def report(r: Results, seed: int, show: int) -> None:
    so, sm = Score(), Score()
    for case, a, b in zip(r.cases, r.heard_ours, r.heard_mm, strict=True):
        so.add(case.digits, a)
        sm.add(case.digits, b)
    total_min = sum(c.audio.size / c.conditions.rate for c in r.cases) / 60
    print(
        f"DTMF corpus: {so.strings} strings, {so.sent} digits, {total_min:.1f} min "
        f"(8 and 16 kHz, seed {seed}); speech {r.speech_s / 60:.1f} min "
        f"(8 kHz, {len(VOICES)} voices)"
    )
    print(f"{'':44s}{'ours':>14s}{'multimon-ng':>14s}")
    _row("strings heard exactly", f"{so.exact / so.strings:.1%}", f"{sm.exact / sm.strings:.1%}")
    _row("digit hit rate", f"{so.hit_rate:.2%}", f"{sm.hit_rate:.2%}")
    _row("missed digits", str(so.missed), str(sm.missed))
    _row("wrong digits", str(so.wrong), str(sm.wrong))
    _row("extra digits (split / doubled / false)", str(so.extra), str(sm.extra))
    hours = r.speech_s / 3600
    _row("talk-off: false digits in speech", str(len(r.speech_ours)), str(len(r.speech_mm)))
    _row("talk-off: false digits per hour", f"{len(r.speech_ours) / hours:.1f}",
         f"{len(r.speech_mm) / hours:.1f}")  # fmt: skip
    for rate, (seconds, rtf_a, rtf_b) in r.rtf.items():
        _row(f"real-time factor, {rate // 1000} kHz line ({seconds / 60:.0f} min)",
             f"{rtf_a:,.0f}x", f"{rtf_b:,.0f}x")  # fmt: skip
    if r.speech_ours or r.speech_mm:
        print(f"  talk-off digits: ours {r.speech_ours!r}, multimon-ng {r.speech_mm!r}")
    wrong = [
        (c, a, b)
        for c, a, b in zip(r.cases, r.heard_ours, r.heard_mm, strict=True)
        if not a == b == c.digits
    ]
    if wrong:
        print(f"\n{len(wrong)} strings where a detector was wrong (first {show}):")
    for c, a, b in wrong[:show]:
        print(f"  {c.conditions.describe()}")
        print(f"      sent {c.digits:16s}  ours {a:16s}  multimon-ng {b}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--strings", type=int, default=200)
    ap.add_argument("--speech-minutes", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--show", type=int, default=8, help="disagreements to list")
    args = ap.parse_args()
    for tool in ("sox", "espeak-ng", "multimon-ng"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed (apt install sox espeak-ng multimon-ng)")
    t0 = time.monotonic()
    report(run(args), args.seed, args.show)
    print(
        f"\n(total {time.monotonic() - t0:.1f} s; multimon-ng's real-time factor includes "
        f"its start-up and it runs at {MULTIMON_RATE} Hz)"
    )


if __name__ == "__main__":
    main()
