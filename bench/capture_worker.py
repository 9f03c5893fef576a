"""One measured run of the whole recorder, for bench/capture_rtf.py (a worker process).

Imports the project from ``LINETAP_BENCH_TREE`` (ours or HEAD's, see head_compare.py),
then runs the recorder as the daemon does, through alsa-lib's ``file`` PCM (the tests'
tests/alsa_pcm.py), with the SEALING sink (FLAC, age to an office key, the power-safe
journal, signed manifests into an outbox), sim GPIO, every line's DSP:

- ``speech``: every line off-hook from the start, each carrying the speech sample
  (bench/sealing_rtf.py: espeak-ng voices, telephone band, 8 kHz) from its own offset;
- ``idle``: every line on-hook, carrying line noise only (no call).

A short warm-up run first (imports, alsa-lib's configuration, first-call costs), then the
measured run: process CPU time from the recorder's start until it has stopped and sealed
everything. Prints one JSON line: ``{"cpu_s": ..., "audio_s": ..., "sealed": n}`` (n:
recordings in the outbox, one per line for speech, none when idle).

Run by capture_rtf.py: LINETAP_BENCH_TREE=<tree> python bench/capture_worker.py
--lines N --scenario speech|idle --seconds S --audio speech.wav
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import soundfile
from head_compare import use_tree

use_tree()  # the project's modules below come from the tree under test

from drivers.gpio.sim import ScriptedLevel, SimPinFactory  # noqa: E402
from firmware.app import device_key_path, make_sealing_sink  # noqa: E402
from firmware.config import parse_config  # noqa: E402
from firmware.recorder import NS_PER_S, Recorder, StorageHealth  # noqa: E402
from sealedrec.age import format_recipient, generate_identity  # noqa: E402
from sealedrec.keys import create_device_key  # noqa: E402
from tests.alsa_pcm import FilePcm, PacedClock, make_file_pcm  # noqa: E402
from tests.helpers import config_text  # noqa: E402

RATE = 8000
WARMUP_S = 3
LINE_NOISE_RMS = 40.0  # about -58 dBFS, as in the speech sample's pauses
LINE_OFFSET_S = 7  # each line's speech starts this much further into the sample


def line_audio(
    scenario: str, speech: npt.NDArray[np.int16], lines: int, frames: int
) -> npt.NDArray[np.int16]:
    """(frames, lines) of speech (each line from its own offset) or of line noise."""
    if scenario == "idle":
        noise = np.random.default_rng(lines).normal(0.0, LINE_NOISE_RMS, (frames, lines))
        return np.clip(np.rint(noise), -32768, 32767).astype(np.int16)
    reps = -(-frames // speech.shape[0]) + 1
    long = np.tile(speech, reps)
    columns = [long[n * LINE_OFFSET_S * RATE :][:frames] for n in range(lines)]
    return np.ascontiguousarray(np.stack(columns, axis=1))


def run_recorder(
    pcm: FilePcm, root: Path, lines: int, seconds: int, off_hook: bool
) -> tuple[float, int]:
    """CPU seconds of one recorder run over ``seconds`` of the loaded audio, and the
    number of recordings it sealed into the outbox."""
    office = generate_identity()
    cfg = parse_config(
        config_text(
            root / "wav",
            lines=lines,
            storage_format="sealed",
            recipients=(format_recipient(office.public_key()),),
            data_dir=root / "data",
            alsa_device=pcm.name,
        )
    )
    create_device_key(device_key_path(cfg))
    sink = make_sealing_sink(cfg, StorageHealth())
    # The tree's own default capture period, as its daemon would run.
    period = cfg.audio.period_frames
    capture = pcm.capture(
        rate=RATE, channels=lines, period=period, clock=PacedClock(period * NS_PER_S // RATE)
    )
    # Hooks are active low: level False is off-hook (a call all along), True on-hook.
    pins = SimPinFactory(script=[ScriptedLevel(0, 17 + n, not off_hook) for n in range(lines)])
    stop = threading.Event()
    recorder: Recorder

    def tick() -> None:
        if recorder.lines[0].ring.end_frame >= RATE * seconds:
            stop.set()

    recorder = Recorder(
        cfg,
        capture,
        pins,
        sink,
        stop=stop,
        clock=time.monotonic_ns,
        wall_offset_ns=time.time_ns() - time.monotonic_ns(),
        device_id="bench",
        on_tick=tick,
    )
    t0 = time.process_time()
    try:
        recorder.run()
    finally:
        capture.close()
    cpu = time.process_time() - t0
    return cpu, sum(1 for _ in (cfg.storage.outbox_dir / "sealed").glob("*"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--lines", type=int, required=True)
    parser.add_argument("--scenario", choices=("speech", "idle"), required=True)
    parser.add_argument("--seconds", type=int, required=True)
    parser.add_argument("--audio", type=Path, required=True, help="the speech sample (WAV)")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # the recorder's per-call lines are not the output
    speech, rate = soundfile.read(args.audio, dtype="int16")
    if rate != RATE:
        raise SystemExit(f"{args.audio}: {rate} Hz, expected {RATE}")
    off_hook = args.scenario == "speech"
    with (
        tempfile.TemporaryDirectory(prefix="linetap-capture-") as tmp,
        pytest.MonkeyPatch.context() as env,  # ALSA_CONFIG_PATH for this process
    ):
        pcm = make_file_pcm(Path(tmp), env)
        warm = line_audio(args.scenario, speech, args.lines, RATE * (WARMUP_S + 1))
        pcm.load(warm)
        run_recorder(pcm, Path(tmp) / "warmup", args.lines, WARMUP_S, off_hook)
        # A little more audio than measured: the recorder stops on the tick after it.
        pcm.load(line_audio(args.scenario, speech, args.lines, RATE * (args.seconds + 1)))
        cpu, sealed = run_recorder(pcm, Path(tmp) / "run", args.lines, args.seconds, off_hook)
    print(json.dumps({"cpu_s": cpu, "audio_s": args.seconds, "sealed": sealed}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
