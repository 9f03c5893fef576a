"""Regenerates sample_call.flac (+ sample_call.events): one line, 8 kHz, 18 s.

Run from the repository root: ``.venv/bin/python firmware/samples/make_sample_call.py``.
Everything in it is made by tools nobody here wrote: espeak-ng (speech), sox (noise,
DTMF tones, resampling), minimodem (the FSK caller ID, Bell 202, made at 48 kHz and
resampled by sox because ``minimodem --tx -R 8000`` runs ~5 % slow).

    0.3 s   caller ID between the rings: channel seizure, mark, MDMF (number, name, time)
    2.0 s   "Hello?" (before the off-hook at 2.5 s: the pre-roll keeps it)
    3.0 s   conversation; at 9.6 s the caller keys in a 16-digit card number and '#'
    15.5 s  hang-up (the recording ends 1 s later, when on-hook has held flash_max_ms)

At the end the file is checked with ``linetap analyze``: the caller ID and the digits
must be there, or the script fails.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile

from firmware.analyze import analyze_file
from firmware.dsp.cid_messages import build_mdmf

HERE = Path(__file__).resolve().parent
RATE = 8000
GEN_RATE = 48000
SECONDS = 18.0
NUMBER, NAME, TIME = "02079460123", "BRANCH 12", "11251405"
CARD = "4111111111111111#"
# Bell 202: mark 1200 Hz, space 2200 Hz, 1200 baud.
MARK_HZ, SPACE_HZ, BAUD = 1200, 2200, 1200


def run(cmd: list[str], stdin: bytes | None = None) -> bytes:
    return subprocess.run(cmd, input=stdin, capture_output=True, check=True).stdout


def wav_samples(path: Path) -> np.ndarray:
    data, rate = soundfile.read(path, dtype="float64")
    assert rate == RATE, f"{path}: {rate} Hz"
    return np.asarray(data)


def to_rate(src: Path, dst: Path) -> np.ndarray:
    run(["sox", "-R", str(src), "-r", str(RATE), "-c", "1", "-b", "16", str(dst)])
    return wav_samples(dst)


def say(text: str, voice: str, tmp: Path, name: str) -> np.ndarray:
    wav = run(["espeak-ng", "-v", voice, "-s", "150", "--stdout", text])
    (tmp / f"{name}.raw.wav").write_bytes(wav)
    return to_rate(tmp / f"{name}.raw.wav", tmp / f"{name}.wav")


def minimodem(data: bytes, tmp: Path, name: str) -> np.ndarray:
    out = tmp / f"{name}.wav"
    cmd = ["minimodem", "--tx", "-q", "-R", str(GEN_RATE), "-M", str(MARK_HZ)]
    cmd += ["-S", str(SPACE_HZ), "-f", str(out), str(BAUD)]
    run(cmd, stdin=data)
    samples, rate = soundfile.read(out, dtype="float64")
    assert rate == GEN_RATE
    return np.asarray(samples)


def caller_id(tmp: Path) -> np.ndarray:
    """Seizure (30 framed 0x55 = 300 alternating bits), 150 bits of mark, the message."""
    seizure = minimodem(b"\x55" * 30, tmp, "seizure")
    t = np.arange(round(150 * GEN_RATE / BAUD)) / GEN_RATE
    mark = 0.7 * np.sin(2 * np.pi * MARK_HZ * t)
    message = minimodem(build_mdmf(time=TIME, number=NUMBER, name=NAME), tmp, "message")
    burst = np.concatenate([seizure, mark, message])
    soundfile.write(tmp / "cid48.wav", burst, GEN_RATE, subtype="PCM_16")
    return to_rate(tmp / "cid48.wav", tmp / "cid.wav")


def dtmf(digits: str, tmp: Path) -> np.ndarray:
    """80 ms tones, 80 ms gaps, each tone pair at about -10 dBm0 per tone."""
    rows, cols = (697, 770, 852, 941), (1209, 1336, 1477, 1633)
    keypad = "123A456B789C*0#D"
    parts = []
    for n, d in enumerate(digits):
        r, c = divmod(keypad.index(d), 4)
        out = tmp / f"dtmf{n}.wav"
        run(["sox", "-R", "-n", "-r", str(RATE), "-c", "1", "-b", "16", str(out), "synth",
             "0.08", "sine", str(rows[r]), "sine", str(cols[c]), "remix", "1,2",
             "vol", "0.22", "pad", "0", "0.08"])  # fmt: skip
        parts.append(wav_samples(out))
    return np.concatenate(parts)


def main() -> int:
    line = np.zeros(round(SECONDS * RATE))
    with tempfile.TemporaryDirectory(prefix="sample-call-") as name:
        tmp = Path(name)
        noise = tmp / "noise.wav"
        run(["sox", "-R", "-n", "-r", str(RATE), "-c", "1", "-b", "16", str(noise),
             "synth", str(SECONDS), "whitenoise", "vol", "0.003"])  # fmt: skip
        line += wav_samples(noise)[: line.size]
        placed = [
            (0.3, 0.25 * caller_id(tmp)),
            (2.0, say("Hello?", "en-us", tmp, "a")),
            (
                3.0,
                say(
                    "Good morning, linetap payments. Please key in your card number, then the hash key.",
                    "en-gb",
                    tmp,
                    "b",
                ),
            ),
            (9.6, dtmf(CARD, tmp)),
            (12.6, say("Thank you. That is all done. Goodbye.", "en-gb", tmp, "c")),
        ]
        for at, signal in placed:
            start = round(at * RATE)
            line[start : start + signal.size] += signal[: line.size - start]
    pcm = np.clip(np.round(line * 32767), -32768, 32767).astype(np.int16)
    flac = HERE / "sample_call.flac"
    soundfile.write(flac, pcm, RATE, subtype="PCM_16", format="FLAC")
    report = analyze_file(flac)
    numbers = [m["number"] for m in report["caller_id"]]
    digits = "".join(d["digit"] for d in report["dtmf"])
    print(f"{flac}: {report['seconds']} s; caller ID {numbers}; DTMF {digits}")
    if numbers != [NUMBER] or digits != CARD:
        print("the sample does not analyse as intended", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
