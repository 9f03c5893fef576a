"""DTMF test signals made by sox, checked as they are made, and the multimon-ng reference.

Shared by tests/test_dtmf.py, test_call_metadata.py, test_analyze.py and bench/dtmf_accuracy.py.
Tones come from ``sox synth`` (two sines on two channels, mixed to mono by ``remix`` with a
gain per tone); :func:`sox_tone` measures each one (FFT peak + least-squares amplitude)
before it is used. The reference detector is ``multimon-ng -a DTMF`` (raw s16le at
22 050 Hz, its input rate).
"""

from __future__ import annotations

import functools
import math
import shutil
import subprocess
from collections.abc import Sequence
from concurrent.futures import Executor

import numpy as np
import numpy.typing as npt

from firmware.dsp.dtmf import COL_HZ, KEYPAD, ROW_HZ

Int16s = npt.NDArray[np.int16]
SOX = shutil.which("sox")
MULTIMON = shutil.which("multimon-ng")
MULTIMON_RATE = 22050


def sox_raw(args: Sequence[str], stdin: bytes | None = None) -> Int16s:
    """Run sox (repeatable mode: fixed dither/noise seed) producing raw s16le on stdout."""
    out = subprocess.run(
        ["sox", "-R", *args], input=stdin, capture_output=True, check=True, timeout=120
    ).stdout
    return np.frombuffer(out, dtype="<i2").astype(np.int16)


def raw_out(rate: int) -> list[str]:
    return ["-t", "raw", "-r", str(rate), "-e", "signed", "-b", "16", "-c", "1", "-"]


def amplitude(level_dbm0: float) -> float:
    """Peak amplitude as a fraction of full scale; 0 dBm0 = -3.14 dBFS (G.711)."""
    return float(10.0 ** ((level_dbm0 - 3.14) / 20.0))


def measure_tones(x: Int16s, rate: int) -> list[tuple[float, float]]:
    """The two strongest tones of ``x``: (frequency Hz, level dBm0), by frequency.

    Peak of a zero-padded Hann FFT, refined by a parabola, then a least-squares fit of
    both sines at those frequencies for the levels. Independent of the detector.
    """
    xf = x.astype(np.float64)
    n = xf.size
    nfft = 1 << 18
    spec = np.abs(np.fft.rfft(xf * np.hanning(n), nfft))
    freqs = np.fft.rfftfreq(nfft, 1.0 / rate)
    found: list[float] = []
    s = spec.copy()
    for _ in range(2):
        k = int(np.argmax(s))
        a, b, c = np.log(s[k - 1 : k + 2] + 1e-12)
        found.append(freqs[k] + 0.5 * (a - c) / (a - 2 * b + c) * (freqs[1] - freqs[0]))
        lo, hi = np.searchsorted(freqs, [freqs[k] - 4.0 * rate / n, freqs[k] + 4.0 * rate / n])
        s[lo:hi] = 0.0
    t = np.arange(n) / rate
    cols = []
    for f in found:
        cols += [np.cos(2 * np.pi * f * t), np.sin(2 * np.pi * f * t)]
    coef, *_ = np.linalg.lstsq(np.stack(cols, axis=1), xf, rcond=None)
    tones = []
    for i, f in enumerate(found):
        amp = math.hypot(coef[2 * i], coef[2 * i + 1]) / 32768.0
        tones.append((f, 20.0 * math.log10(amp) + 3.14))
    return sorted(tones)


@functools.cache
def sox_tone(
    digit: str,
    rate: int,
    frames: int,
    *,
    low_dbm0: float = -10.0,
    high_dbm0: float = -10.0,
    low_dev: float = 0.0,
    high_dev: float = 0.0,
) -> Int16s:
    """One DTMF tone burst made by sox, checked: frequencies to 0.05 %, levels to 0.2 dB."""
    row, col = divmod(KEYPAD.index(digit), 4)
    f_low = ROW_HZ[row] * (1.0 + low_dev)
    f_high = COL_HZ[col] * (1.0 + high_dev)
    remix = f"1v{amplitude(low_dbm0):.8f},2v{amplitude(high_dbm0):.8f}"
    x = sox_raw(
        ["-c", "2", "-r", str(rate), "-n", *raw_out(rate), "synth", f"{frames}s",
         "sine", f"{f_low:.4f}", "sine", f"{f_high:.4f}", "remix", remix]
    )  # fmt: skip
    assert x.size == frames
    (m_low, l_low), (m_high, l_high) = measure_tones(x, rate)
    assert abs(m_low / f_low - 1.0) < 5e-4 and abs(m_high / f_high - 1.0) < 5e-4, (
        f"sox made {m_low:.1f}/{m_high:.1f} Hz, asked {f_low:.1f}/{f_high:.1f}"
    )
    assert abs(l_low - low_dbm0) < 0.2 and abs(l_high - high_dbm0) < 0.2, (
        f"sox made {l_low:.2f}/{l_high:.2f} dBm0, asked {low_dbm0}/{high_dbm0}"
    )
    x.flags.writeable = False
    return x


def dial(
    digits: str,
    rate: int,
    *,
    on_s: float = 0.05,
    off_s: float = 0.05,
    lead_frames: int = 0,
    tail_s: float = 0.1,
    low_dbm0: float = -10.0,
    high_dbm0: float = -10.0,
    low_dev: float = 0.0,
    high_dev: float = 0.0,
) -> tuple[Int16s, list[tuple[int, int]]]:
    """``digits`` as sox tone bursts with silence between; returns (audio, tone spans)."""
    on = round(on_s * rate)
    parts: list[Int16s] = [np.zeros(lead_frames, dtype=np.int16)]
    spans = []
    pos = lead_frames
    for d in digits:
        parts.append(
            sox_tone(
                d, rate, on, low_dbm0=low_dbm0, high_dbm0=high_dbm0, low_dev=low_dev,
                high_dev=high_dev,
            )
        )  # fmt: skip
        spans.append((pos, pos + on))
        pos += on
        gap = round(off_s * rate)
        parts.append(np.zeros(gap, dtype=np.int16))
        pos += gap
    parts.append(np.zeros(round(tail_s * rate), dtype=np.int16))
    return np.concatenate(parts), spans


def to_multimon_rate(x: Int16s, rate: int) -> bytes:
    """``x`` resampled by sox to multimon-ng's 22 050 Hz, as raw s16le."""
    return sox_raw(
        [*raw_out(rate), *raw_out(MULTIMON_RATE)], stdin=x.astype("<i2").tobytes()
    ).tobytes()


def multimon_raw(raw22k: bytes) -> str:
    """Digits multimon-ng hears in raw s16le audio at 22 050 Hz."""
    assert MULTIMON is not None
    out = subprocess.run(
        ["multimon-ng", "-q", "-c", "-a", "DTMF", "-t", "raw", "-"],
        input=raw22k,
        capture_output=True,
        check=True,
        timeout=120,
    ).stdout.decode()
    return "".join(
        line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("DTMF:")
    )


def multimon(x: Int16s, rate: int) -> str:
    """Digits multimon-ng hears in ``x`` (resampled by sox to its 22 050 Hz)."""
    return multimon_raw(to_multimon_rate(x, rate))


# Speech for talk-off (spoken by espeak-ng): numbers, menus and card prompts, the speech
# most likely to imitate DTMF. The tests use the first eight, the bench all of them.
TALK_OFF_SENTENCES = (
    "Thank you for calling. Please enter your sixteen digit card number, then the hash key.",
    "My number is oh two oh, seven nine four six, eight eight one three. Call me after five.",
    "The total is one hundred and forty seven pounds and ninety nine pence, including tax.",
    "Press one for sales, two for support, three for billing, or hold for an operator.",
    "Your reference is four, seven, seven, nine, two, one, zero, zero, six, three, five, eight.",
    "Nine thousand nine hundred and ninety nine, eight hundred and eighty eight, seven seventy.",
    "Good afternoon, you are through to accounts. How can I help you today? Hello? Hello?",
    "The security code is three five one and the card expires in September twenty eight.",
    "Flight four one two to Glasgow departs from gate nineteen at twenty past six.",
    "Sorry, I did not catch that. Was it double seven or seven one? Let me read it back.",
    "We open at half past eight, Monday to Friday, and at ten on Saturdays. Sunday closed.",
    "Account number three three, four four, five five, six six. Sort code twelve, thirty four.",
)


# Chords (semitones from A4) of a I-V-vi-IV-ish progression, played by several waveforms.
CHORDS = ((-9, -5, -2, 3), (-2, 2, 5, 10), (0, 3, 7, 12), (-7, -3, 0, 5), (-4, 0, 3, 8),
          (1, 5, 8, 13), (3, 7, 10, 15), (-12, -5, 4, 7))  # fmt: skip


def synth_music(rate: int, transpose: int = 0) -> Int16s:
    """About 2 minutes of sox-synthesised "music" at ``rate`` (made at 48 kHz: pluck):
    chords by several waveforms, sweeps, noises and an arpeggio over a bass, all
    ``transpose`` semitones up (the sweeps by as much). For talk-off: tests/test_dtmf.py
    and bench/dtmf_accuracy.py (which transposes it for more than 2 minutes)."""
    t = transpose
    shift = 2 ** (t / 12)
    parts: list[Int16s] = []
    for i, chord in enumerate(CHORDS):
        for kind in ("pluck", "sine", "triangle", "square", "sawtooth"):
            tones = [a for s in chord for a in (kind, f"%{s + 12 * (i % 2) + t}")]
            mix = ",".join(f"{k + 1}v0.2" for k in range(len(chord)))
            parts.append(
                sox_raw(["-c", str(len(chord)), "-r", "48000", "-n", *raw_out(rate), "synth",
                      "0.8", *tones, "remix", mix, "fade", "0.01", "0.8", "0.1"])
            )  # fmt: skip
    for kind in ("sine", "square", "triangle"):
        for a, b in ((300, 3400), (3400, 300), (600, 1700), (1700, 600)):
            lo, hi = round(a * shift), round(b * shift)
            for sweep in (f"{lo}-{hi}", f"{lo}:{hi}"):  # linear, exponential
                parts.append(
                    sox_raw(["-r", str(rate), "-n", *raw_out(rate), "synth", "3", kind, sweep,
                          "vol", "0.3"])
                )  # fmt: skip
    for kind in ("whitenoise", "pinknoise", "brownnoise"):
        parts.append(
            sox_raw(["-r", str(rate), "-n", *raw_out(rate), "synth", "5", kind, "vol", "0.3"])
        )
    for n in [0, 4, 7, 12, 16, 19, 24, 19, 16, 12, 7, 4] * 3:  # arpeggio over a bass
        parts.append(
            sox_raw(["-c", "2", "-r", "48000", "-n", *raw_out(rate), "synth", "0.15", "pluck",
                  f"%{n + t}", "sine", f"%{n + t - 24}", "remix", "1v0.4,2v0.3"])
        )  # fmt: skip
    return np.concatenate(parts)


TALK_OFF_VOICES = (
    "en-gb", "en-us", "en-gb-x-rp", "en-gb-scotland", "en-gb-x-gbclan", "en-029", "en+f1",
    "en+f2", "en+f3", "en+f4", "en+m1", "en+m3", "en+m7", "en-us+f5", "en+klatt",
    "en+klatt2", "en+klatt4", "en+croak", "en+whisper", "en+Tweaky", "en+Annie", "en+belinda",
    "de", "fr", "es", "it", "nl", "pl", "pt", "hi",
)  # fmt: skip
TALK_OFF_PITCHES = (25, 45, 65, 85)


def talk_off_speech(minutes: float, pool: Executor) -> Int16s:
    """``minutes`` of espeak-ng speech at 8 kHz in the telephone band (sox ``sinc
    300-3400``): every voice at every pitch, two sentences each (then played again
    reversed if that is not enough). bench/dtmf_accuracy.py and the hour-long talk-off
    test (tests/test_dtmf_talk.py) use it."""
    jobs = [
        (text, voice, pitch)
        for i, (voice, pitch) in enumerate(
            (v, p) for v in TALK_OFF_VOICES for p in TALK_OFF_PITCHES
        )
        for text in (
            TALK_OFF_SENTENCES[i % len(TALK_OFF_SENTENCES)],
            TALK_OFF_SENTENCES[(i + 5) % len(TALK_OFF_SENTENCES)],
        )
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


# Harmonic number -> amplitude relative to the fundamental (odd ones dominate on mains).
HARMONICS = {1: 1.0, 2: 0.25, 3: 0.4, 5: 0.15}


def hum(mains_hz: float, dbfs: float, frames: int, rate: int) -> npt.NDArray[np.float64]:
    """Mains hum with harmonics, total mean-square power ``dbfs`` (int16 scale)."""
    t = np.arange(frames) / rate
    x = sum(a * np.sin(2 * np.pi * mains_hz * k * t + 0.3 * k) for k, a in HARMONICS.items())
    assert isinstance(x, np.ndarray)
    scaled: npt.NDArray[np.float64] = x * 32768.0 * 10 ** (dbfs / 20) / np.sqrt(np.mean(x**2))
    return scaled
