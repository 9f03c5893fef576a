"""What the manifest's level summary costs the recorder: CPU per line, and per call.

:class:`firmware.dsp.calllevels.CallLevelMeter` runs in the sealing writer on every
capture period of every recording line (20 ms periods, as the recorder hands them over).
This times it alone over ``--seconds`` of speech-like noise per sample rate, and beside
it the whole :class:`firmware.sealwriter.SealingWriter` path (FLAC + age + journal) that
it rides in, so the share it adds is plain. Process CPU time (``time.process_time``),
median of ``--repeats`` runs after a warm-up; ``% core`` is CPU seconds per audio second:
what one recording line costs one core.

Run: .venv/bin/python bench/call_levels.py [--seconds 60] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
from bench_common import print_table_header

# The repository root (run as `python bench/call_levels.py`).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from firmware.dsp.calllevels import CallLevelMeter
from firmware.sealwriter import SealingSettings, SealingWriter
from firmware.sinks import RecordingEnd, RecordingStart
from sealedrec.age import generate_identity

PERIOD_S = 0.02  # the recorder's default capture period
RATES = (8000, 16000)


def _audio(rate: int, seconds: int) -> npt.NDArray[np.int16]:
    # Noise at a speech level with a quiet stretch every other second: the content does
    # not change the cost, but zeros could flatter it.
    rng = np.random.default_rng(rate)
    audio = rng.normal(0, 3000, rate * seconds)
    audio[: rate * seconds].reshape(seconds, rate)[1::2] *= 0.01
    return audio.astype(np.int16)


def _periods(audio: npt.NDArray[np.int16], rate: int) -> list[npt.NDArray[np.int16]]:
    step = round(PERIOD_S * rate)
    return [audio[i : i + step] for i in range(0, audio.shape[0], step)]


def meter_cpu(audio: npt.NDArray[np.int16], rate: int) -> float:
    periods = _periods(audio, rate)
    c0 = time.process_time()
    meter = CallLevelMeter(rate)
    for period in periods:
        meter.update(period)
    meter.summary()
    return time.process_time() - c0


def writer_cpu(audio: npt.NDArray[np.int16], rate: int, root: Path, n: int) -> float:
    """The sealing writer's in-call path (the meter included), open to close."""
    periods = _periods(audio, rate)
    start = RecordingStart(f"rec-{rate}-{n}", "bench", "line1", 0, rate, "offhook",
                           "2026-11-25T10:00:00+00:00", 0, 0, 0.0)  # fmt: skip
    frames = int(audio.shape[0])
    end = RecordingEnd("onhook", "2026-11-25T10:01:00+00:00", frames, frames / rate, frames)
    settings = SealingSettings(recipients=(generate_identity().public_key(),))
    c0 = time.process_time()
    writer = SealingWriter(root / start.recording_id, start, settings)
    for period in periods:
        writer.write(period)
    writer.close(end)
    writer.flush_ended()
    return time.process_time() - c0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"{args.seconds} s of audio per run, {PERIOD_S * 1000:g} ms periods, "
          f"median of {args.repeats} runs after a warm-up")  # fmt: skip
    print_table_header(
        f"{'rate':>6}  {'meter CPU s':>11}  {'% core':>7}  {'writer CPU s':>12}  {'% core':>7}"
        f"  {'meter share':>11}"
    )
    with tempfile.TemporaryDirectory(prefix="linetap-bench-") as tmp:
        for rate in RATES:
            audio = _audio(rate, args.seconds)
            meter_cpu(audio, rate)  # warm-up: numpy, the hum projector's cache
            meter = statistics.median(meter_cpu(audio, rate) for _ in range(args.repeats))
            writer = statistics.median(
                writer_cpu(audio, rate, Path(tmp), n) for n in range(args.repeats)
            )
            print(
                f"{rate:>6}  {meter:>11.4f}  {100 * meter / args.seconds:>6.3f}%"
                f"  {writer:>12.4f}  {100 * writer / args.seconds:>6.3f}%"
                f"  {100 * meter / writer:>10.1f}%"
            )


if __name__ == "__main__":
    main()
