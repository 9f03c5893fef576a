"""The journal's own work per second of audio, the previous way and ours, in one process.

For ``bench/sealing_rtf.py --vs-head``: the speech sample journalled as the recorder
does it, fed in ``PERIOD``-frame periods, sealed to one office key under one file key
per call (``SegmentSealer``) and framed as journal records (``encode_record``; no disk,
so the fsync is not counted on either side):

- ``head``: the way before one encoder per call: a fresh libsndfile FLAC encoder for each
  second's segment (``soundfile``), one record per second;
- ``ours``: the call's one libFLAC encoder (:mod:`firmware.flacstream`), a record once
  the frames emitted since the last reach a sync interval less one block (as
  :class:`firmware.sealwriter.SealingWriter` does).

The two ways alternate round by round. Prints one JSON line: ``{"head_s": [...],
"ours_s": [...], "head_bytes": N, "ours_bytes": N}``: CPU seconds per second of audio,
and the journal's bytes for the whole sample.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile

from firmware.flacstream import FlacStreamEncoder, journal_blocksize
from sealedrec.age import SegmentSealer, generate_identity
from sealedrec.segments import encode_record

RATE = 8000
PERIOD = 800  # the recorder's default 100 ms capture period at 8 kHz


def per_second_encoders(audio: npt.NDArray[np.int16], sealer: SegmentSealer) -> int:
    """The previous way: the periods gathered into seconds, each its own FLAC file."""
    written = 0
    for at in range(0, audio.shape[0], RATE):
        second = audio[at : at + RATE]
        flac = io.BytesIO()
        with soundfile.SoundFile(flac, "w", RATE, 1, format="FLAC", subtype="PCM_16") as f:
            f.write(second)
        written += len(encode_record(sealer.seal(flac.getvalue()), second.shape[0]))
    return written


def one_encoder(audio: npt.NDArray[np.int16], sealer: SegmentSealer) -> int:
    """Ours: the call's one encoder, fed period by period, a record per sync less a block."""
    block = journal_blocksize(RATE)
    pending = bytearray()
    counts = [0, 0]  # samples in pending, bytes written

    def on_frames(data: bytes, samples: int) -> None:
        pending.extend(data)
        counts[0] += samples

    def record() -> None:
        counts[1] += len(encode_record(sealer.seal(pending), counts[0]))
        pending.clear()
        counts[0] = 0

    encoder = FlacStreamEncoder(RATE, block, on_frames, lambda _at, _data: None)
    for at in range(0, audio.shape[0], PERIOD):
        encoder.process(audio[at : at + PERIOD])
        if counts[0] >= RATE - block:
            record()
    encoder.finish()
    if counts[0]:
        record()
    return counts[1]


def journal_second_costs(
    audio: npt.NDArray[np.int16], rounds: int
) -> tuple[list[float], list[float], int, int]:
    recipients = [generate_identity().public_key()]
    seconds = audio.shape[0] / RATE
    head: list[float] = []
    ours: list[float] = []
    head_bytes = ours_bytes = 0
    for _ in range(rounds + 1):  # the first round warms up and is dropped
        sealer = SegmentSealer(recipients)  # one per call, on both sides
        t0 = time.process_time()
        head_bytes = per_second_encoders(audio, sealer)
        head.append((time.process_time() - t0) / seconds)
        sealer = SegmentSealer(recipients)
        t0 = time.process_time()
        ours_bytes = one_encoder(audio, sealer)
        ours.append((time.process_time() - t0) / seconds)
    return head[1:], ours[1:], head_bytes, ours_bytes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--audio", type=Path, required=True, help="the speech sample (WAV)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    audio, rate = soundfile.read(args.audio, dtype="int16")
    if rate != RATE:
        raise SystemExit(f"{args.audio}: {rate} Hz, expected {RATE}")
    head, ours, head_bytes, ours_bytes = journal_second_costs(
        np.ascontiguousarray(audio), args.rounds
    )
    print(
        json.dumps(
            {"head_s": head, "ours_s": ours, "head_bytes": head_bytes, "ours_bytes": ours_bytes}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
