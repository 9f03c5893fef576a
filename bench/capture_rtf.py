"""Capture-path real-time factor: audio seconds captured per CPU second.

Runs AlsaCapture.read() in a loop over alsa-lib's ``file`` PCM (null slave, raw infile;
no sound card needed, and unpaced, so the loop measures pure CPU cost), with and
without the per-line work the recorder does on each block (one column copy into a
preallocated pre-roll ring per line). As a peer, ``arecord`` reads the same PCM, once
with its default period and once with ours; its CPU time comes from
``getrusage(RUSAGE_CHILDREN)`` and so includes its process start-up and config parsing.

The PCM is the tests' (tests/alsa_pcm.py), made visible with
``ALSA_CONFIG_PATH=<system alsa.conf>:<its conf>`` for the run (set before the first PCM
open; arecord inherits it). ``$HOME/.asoundrc`` would work too for a fresh process, but
alsa-lib caches its configuration per process.

Run: .venv/bin/python bench/capture_rtf.py [--seconds 60] [--repeats 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from bench_common import children_cpu_s, print_table_header

# The repository root, for the tests' file PCM (run as `python bench/capture_rtf.py`).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from buffers.ring import PrerollRing
from drivers.gpio.sim import ScriptedLevel, SimPinFactory
from firmware.config import parse_config
from firmware.recorder import NS_PER_S, Recorder
from firmware.sinks import WavSink
from tests.alsa_pcm import FilePcm, PacedClock, make_file_pcm

RATE = 8000
PERIOD = 160  # 20 ms, the config default
PERIODS = 4  # the ALSA buffer FilePcm.capture() asks for
PREROLL_S = 10
LINE_COUNTS = (1, 4)


def _load_noise(pcm: FilePcm, channels: int, seconds: int) -> None:
    # Speech-like level noise; the content does not change the cost, but zeros might
    # flatter a future optimisation (e.g. silence detection) so avoid them.
    rng = np.random.default_rng(channels)
    frames = RATE * seconds
    pcm.load(rng.normal(0, 3000, size=(frames, channels)).astype(np.int16))


def _run_ours(pcm: FilePcm, channels: int, seconds: int, with_rings: bool) -> float:
    """CPU seconds to capture ``seconds`` of audio (open to close, all in-process)."""
    cap = pcm.capture(rate=RATE, channels=channels, period=PERIOD)
    rings = [PrerollRing(RATE * PREROLL_S) for _ in range(channels)] if with_rings else []
    target = RATE * seconds
    got = 0
    t0 = time.process_time()
    cap.open()
    try:
        while got < target:
            block = cap.read()
            if block is None:
                raise RuntimeError("capture ended early")
            for line, ring in enumerate(rings):
                if block.gap_frames:
                    ring.push_silence(block.gap_frames)
                ring.push(block.samples[:, line])
            got += block.frames
    finally:
        cap.close()
    return time.process_time() - t0


def _run_recorder(
    pcm: FilePcm, channels: int, seconds: int, out: Path, *, line_dsp: bool = True
) -> float:
    """CPU seconds of the whole recorder (every line off-hook, WAV sink) over ``seconds``.

    ``line_dsp=False`` removes each line's analyser (DTMF, caller ID, levels, masking)
    after construction, to show what the telephony DSP costs in the same run."""
    lines = "".join(
        f'[[lines]]\nname = "line{n}"\nchannel = {n}\nhook_pin = {17 + n}\n'
        for n in range(channels)
    )
    cfg = parse_config(
        f'[audio]\ndevice = "{pcm.name}"\nchannels = {channels}\nperiods = {PERIODS}\n'
        f'[gpio]\nbackend = "sim"\n[development]\nallow_plain_audio = true\n[storage]\nformat = "wav"\nout_dir = "{out}"\n{lines}'
    )
    capture = pcm.capture(
        rate=RATE, channels=channels, period=PERIOD, clock=PacedClock(PERIOD * NS_PER_S // RATE)
    )
    # All hooks off-hook (active low) from the start: every line records all along.
    pins = SimPinFactory(script=[ScriptedLevel(0, 17 + n, False) for n in range(channels)])
    stop = threading.Event()
    recorder: Recorder

    def tick() -> None:
        if recorder.lines[0].ring.end_frame >= RATE * seconds:
            stop.set()

    recorder = Recorder(
        cfg,
        capture,
        pins,
        WavSink(out),
        stop=stop,
        clock=time.monotonic_ns,
        wall_offset_ns=0,
        device_id="bench",
        on_tick=tick,
    )
    if not line_dsp:
        for line in recorder.lines:
            line.analyser = None
    t0 = time.process_time()
    try:
        recorder.run()
    finally:
        capture.close()
    return time.process_time() - t0


def _run_arecord(
    arecord: str, pcm: FilePcm, channels: int, seconds: int, period: int | None
) -> float:
    """CPU seconds (user + system) of one arecord run, from the children's rusage."""
    cmd = [arecord, "-q", "-D", pcm.name, "-c", str(channels), "-r", str(RATE)]
    cmd += ["-f", "S16_LE", "-t", "raw", "-d", str(seconds)]
    if period is not None:
        cmd += [f"--period-size={period}", f"--buffer-size={period * PERIODS}"]
    cmd.append("/dev/null")
    before = children_cpu_s()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return children_cpu_s() - before


def _rtf(seconds: int, cpu_s: list[float]) -> float:
    # Floor at 1 µs: arecord can finish below rusage's resolution on a fast machine.
    return seconds / max(statistics.median(cpu_s), 1e-6)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=int, default=60, help="audio per run (default 60)")
    parser.add_argument("--repeats", type=int, default=7, help="runs per cell (median)")
    args = parser.parse_args(argv)
    seconds: int = args.seconds
    repeats: int = args.repeats

    arecord = shutil.which("arecord")
    rows: list[tuple[int, float, float, float, float, float | None, float | None]] = []
    wall = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="linetap-bench-") as tmp,
        pytest.MonkeyPatch.context() as env,  # ALSA_CONFIG_PATH for this run only
    ):
        pcm = make_file_pcm(Path(tmp), env)
        out = Path(tmp) / "out"
        for channels in LINE_COUNTS:
            _load_noise(pcm, channels, seconds)
            # Warm-up run (alsa-lib config parse, imports, CPU clock ramp-up), then the
            # two variants interleaved so that drift during the bench hits both alike.
            _run_ours(pcm, channels, seconds, True)
            read_only: list[float] = []
            with_rings: list[float] = []
            recorder: list[float] = []
            no_dsp: list[float] = []
            for _ in range(repeats):
                read_only.append(_run_ours(pcm, channels, seconds, False))
                with_rings.append(_run_ours(pcm, channels, seconds, True))
                recorder.append(_run_recorder(pcm, channels, seconds, out))
                no_dsp.append(_run_recorder(pcm, channels, seconds, out, line_dsp=False))
            ar_default = ar_matched = None
            if arecord:
                ar_default = _rtf(
                    seconds,
                    [_run_arecord(arecord, pcm, channels, seconds, None) for _ in range(repeats)],
                )
                ar_matched = _rtf(
                    seconds,
                    [_run_arecord(arecord, pcm, channels, seconds, PERIOD) for _ in range(repeats)],
                )
            rows.append(
                (
                    channels,
                    _rtf(seconds, read_only),
                    _rtf(seconds, with_rings),
                    _rtf(seconds, no_dsp),
                    _rtf(seconds, recorder),
                    ar_default,
                    ar_matched,
                )
            )
    wall = time.monotonic() - wall

    print(
        f"capture real-time factor (audio s / CPU s): {RATE} Hz S16_LE, period {PERIOD} "
        f"frames, {seconds} s of audio per run, median of {repeats}"
    )
    print_table_header(
        f"{'lines':>5}  {'ours read()':>12}  {'ours +rings':>12}  {'rec. no DSP':>11}  "
        f"{'recorder':>10}  "
        f"{'arecord':>10}  {'arecord p160':>12}  {'recorder / arecord p160':>24}"
    )
    for channels, ours, ours_rings, bare, full, ar_def, ar_160 in rows:
        ratio = f"{full / ar_160:.3f}" if ar_160 else "n/a"
        print(
            f"{channels:>5}  {ours:>12,.0f}  {ours_rings:>12,.0f}  {bare:>11,.0f}  {full:>10,.0f}  "
            f"{f'{ar_def:,.0f}' if ar_def else 'n/a':>10}  "
            f"{f'{ar_160:,.0f}' if ar_160 else 'n/a':>12}  {ratio:>24}"
        )
    if not arecord:
        print("arecord not found (apt install alsa-utils): no peer measurement")
    print(
        "recorder = the whole pipeline (ALSA read, rings, call machines, line DSP: DTMF, "
        "FSK caller ID, levels, masking; WAV writes) with every line recording; "
        "rec. no DSP = the same without the line DSP. "
        "arecord = the given command (its default period); arecord p160 = same period and "
        f"buffer as ours. arecord's CPU includes process start-up. Total {wall:.1f} s wall."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
