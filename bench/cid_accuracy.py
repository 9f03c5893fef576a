"""FSK caller-ID decode rate against signal-to-noise ratio, and the decoder's real-time factor.

For each standard (Bell 202, V.23) ``--bursts`` different messages are made by
``minimodem --tx`` at 48 kHz and resampled by ``sox`` (``tests/cid_signals.py``: seizure,
mark, message, baud rate measured). Bell 202 bursts alternate SDMF and MDMF; V.23 bursts
are MDMF (ETSI sends MDMF). Each burst sits at -20 dBFS between 0.3 s of silence; white
Gaussian noise over the whole band is added at each SNR (relative to the burst's power)
and the clip is decoded by ``CallerIdDecoder`` in 20 ms blocks.

A burst counts as decoded when exactly one caller ID comes out and its number, name and
time are the ones sent. "wrong" counts caller IDs whose contents differ from what was sent
(must stay 0: that is what the checksum is for); "errors" counts bursts reported as
errors (bad checksum, truncated).

Peers, on the same noisy clips (written as 16-bit WAV):

* ``minimodem --rx callerid`` (Bell 202 tones; ``-M 1300 -S 2100`` for V.23), decoded when
  its Phone line carries the number sent;
* ``multimon-ng -a CLIPFSK`` (V.23 / ETSI CLIP, MDMF only), decoded when its CID field is
  the number sent. multimon-ng has no Bell 202 caller-ID decoder (its AFSK1200 is AX.25).

Real-time factor: seconds of audio per CPU second of ``process()`` for one line, on 60 s
of noise (the steady state: no caller ID) and over the bursts, at 8 and 16 kHz.

Run: .venv/bin/python bench/cid_accuracy.py [--bursts 50] [--rates 8000 16000] [--no-peers]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from firmware.dsp.cid_messages import CallerIdMessage, build_mdmf, build_sdmf
from firmware.dsp.fsk import CallerIdDecoder
from tests.cid_signals import (
    BELL202,
    MODEMS,
    V23,
    Burst,
    Modem,
    add_noise,
    at_level,
    make_burst,
    missing_tools,
    to_int16,
)

SNRS = (30.0, 20.0, 15.0, 12.0, 9.0, 6.0)
LEVEL_DBFS = -20.0
PAD_S = 0.3
NAMES = ("JOHN DOE", "ACME PLUMBING", "SMITH J", "O'BRIEN MARY", "DR WHO", "")


@dataclass(frozen=True)
class Sent:
    number: str
    name: str | None
    time: str
    burst: Burst


def messages(modem: Modem, count: int, rng: np.random.Generator, rate: int) -> list[Sent]:
    out: list[Sent] = []
    for i in range(count):
        number = "".join(str(d) for d in rng.integers(0, 10, int(rng.integers(7, 12))))
        time_ = f"{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}"
        time_ += f"{rng.integers(0, 24):02d}{rng.integers(0, 60):02d}"
        name = NAMES[i % len(NAMES)] or None
        if modem is BELL202 and i % 2 == 0:
            raw, name = build_sdmf(time_, number), None
        else:
            raw = build_mdmf(time=time_, number=number, name=name)
        out.append(Sent(number, name, time_, make_burst(raw, modem, rate)))
    return out


def clip(sent: Sent, snr: float, rng: np.random.Generator) -> np.ndarray:
    b = sent.burst
    pad = np.zeros(round(PAD_S * b.rate))
    tone = at_level(b.samples, LEVEL_DBFS)
    x = np.concatenate((pad, tone, pad))
    return to_int16(add_noise(x, snr, rng, tone))


def feed(dec: CallerIdDecoder, x: np.ndarray, rate: int) -> list[CallerIdMessage]:
    """``x`` through the decoder in 20 ms blocks, as the recorder feeds a line."""
    block = rate // 50
    found: list[CallerIdMessage] = []
    for i in range(0, len(x), block):
        found += dec.process(x[i : i + block], i)
    return found


def decode(x: np.ndarray, rate: int, sent: Sent) -> tuple[str, float]:
    """('ok' | 'wrong' | 'error' | 'miss', CPU seconds in process())."""
    dec = CallerIdDecoder(rate)
    t0 = time.process_time()
    found = feed(dec, x, rate)
    spent = time.process_time() - t0
    good = [m for m in found if (m.number, m.name, m.time) == (sent.number, sent.name, sent.time)]
    if len(found) > len(good):
        return "wrong", spent
    if len(good) == 1:
        return "ok", spent
    return ("error" if dec.errors else "miss"), spent


def peer_output(argv: list[str]) -> str:
    """What a peer decoder prints (whatever its exit status: a miss is not an error)."""
    return subprocess.run(
        argv, check=False, capture_output=True, text=True, errors="replace", timeout=30
    ).stdout


def minimodem_peer(wav: Path, modem: Modem, sent: Sent) -> bool:
    cmd = ["minimodem", "--rx", "-q", "-M", str(modem.mark), "-S", str(modem.space)]
    out = peer_output([*cmd, "callerid", "-f", str(wav)])
    phones = [re.sub(r"\D", "", m) for m in re.findall(r"Phone:\s*(\S+)", out)]
    return sent.number in phones


def multimon_peer(wav: Path, sent: Sent) -> bool:
    out = peer_output(["multimon-ng", "-q", "-c", "-a", "CLIPFSK", "-t", "wav", str(wav)])
    return sent.number in re.findall(r"CID=(\d+)", out)


def rtf_noise(rate: int, seconds: float = 60.0) -> float:
    rng = np.random.default_rng(7)
    x = to_int16(rng.normal(0, 300, round(seconds * rate)))
    dec = CallerIdDecoder(rate)
    t0 = time.process_time()
    feed(dec, x, rate)
    return seconds / (time.process_time() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bursts", type=int, default=50)
    ap.add_argument("--rates", type=int, nargs="+", default=[8000, 16000])
    ap.add_argument("--no-peers", action="store_true")
    args = ap.parse_args()
    if missing_tools():
        print(f"missing: {' '.join(missing_tools())} (make sysdeps)", file=sys.stderr)
        return 1
    peers = not args.no_peers and bool(shutil.which("multimon-ng"))
    started = time.monotonic()
    for rate in args.rates:
        print(f"\n== {rate} Hz, {args.bursts} bursts per standard, burst at {LEVEL_DBFS} dBFS")
        print(f"real-time factor on noise (no caller ID): {rtf_noise(rate):.0f}x per line")
        header = f"{'standard':9} {'SNR dB':>6}  {'decoded':>8} {'errors':>6} {'wrong':>5}"
        if peers:
            header += f"  {'minimodem':>9} {'multimon-ng':>11}"
        print(header)
        for modem in MODEMS:
            rng = np.random.default_rng(rate + modem.mark)
            sent = messages(modem, args.bursts, rng, rate)
            bauds = [s.burst.baud for s in sent]
            print(f"{modem.name}: generated baud {min(bauds):.2f}..{max(bauds):.2f}")
            audio_s = cpu_s = 0.0
            with tempfile.TemporaryDirectory(prefix="cidbench-") as tmp:
                wav = Path(tmp) / "clip.wav"
                for snr in SNRS:
                    tally = {"ok": 0, "wrong": 0, "error": 0, "miss": 0}
                    mm = mon = mon_n = 0
                    for s in sent:
                        x = clip(s, snr, rng)
                        verdict, spent = decode(x, rate, s)
                        tally[verdict] += 1
                        audio_s += len(x) / rate
                        cpu_s += spent
                        if peers:
                            soundfile.write(wav, x, rate, subtype="PCM_16")
                            mm += minimodem_peer(wav, modem, s)
                            if modem is V23:
                                mon_n += 1
                                mon += multimon_peer(wav, s)
                    n = len(sent)
                    line = f"{modem.name:9} {snr:6.0f}  {100 * tally['ok'] / n:7.0f}%"
                    line += f" {tally['error']:6d} {tally['wrong']:5d}"
                    if peers:
                        mon_txt = f"{100 * mon / mon_n:10.0f}%" if mon_n else f"{'-':>11}"
                        line += f"  {100 * mm / n:8.0f}% {mon_txt}"
                    print(line, flush=True)
            print(f"{modem.name}: real-time factor over the clips {audio_s / cpu_s:.0f}x")
    print(f"\ntotal {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
