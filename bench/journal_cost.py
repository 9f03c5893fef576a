"""The journal's own work per second of audio, HEAD's way and ours, in one process.

For ``bench/sealing_rtf.py --vs-head``: over the speech sample's one-second segments,
each FLAC-encoded as the journal does (``firmware.sealwriter.encode_flac``), then sealed
to one office key either as HEAD does it (``encrypt_bytes``: a fresh file key and
X25519 exchange per segment) or as we do (one ``SegmentSealer`` per call: one exchange,
a fresh payload nonce per segment). The two ways alternate round by round. Prints one
JSON line: ``{"head_s": [...], "ours_s": [...]}``, CPU seconds per second of audio.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile

from firmware.sealwriter import encode_flac
from sealedrec.age import SegmentSealer, encrypt_bytes, generate_identity

RATE = 8000


def journal_second_costs(
    audio: npt.NDArray[np.int16], rounds: int
) -> tuple[list[float], list[float]]:
    recipients = [generate_identity().public_key()]
    seconds = [audio[at : at + RATE] for at in range(0, audio.shape[0] - RATE + 1, RATE)]
    head: list[float] = []
    ours: list[float] = []
    for _ in range(rounds + 1):  # the first round warms up and is dropped
        t0 = time.process_time()
        for second in seconds:
            encrypt_bytes(encode_flac(second, RATE), recipients)
        head.append((time.process_time() - t0) / len(seconds))
        t0 = time.process_time()
        sealer = SegmentSealer(recipients)  # one per call
        for second in seconds:
            sealer.seal(encode_flac(second, RATE))
        sealer.forget()
        ours.append((time.process_time() - t0) / len(seconds))
    return head[1:], ours[1:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--audio", type=Path, required=True, help="the speech sample (WAV)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    audio, rate = soundfile.read(args.audio, dtype="int16")
    if rate != RATE:
        raise SystemExit(f"{args.audio}: {rate} Hz, expected {RATE}")
    head, ours = journal_second_costs(np.ascontiguousarray(audio), args.rounds)
    print(json.dumps({"head_s": head, "ours_s": ours}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
