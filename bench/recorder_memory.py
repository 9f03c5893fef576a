"""Resident memory of `linetap record` with 4 lines, idle and then all recording.

Runs the real daemon (file backend at real speed, simulated hooks: all four lines go
off-hook 4 s in), samples VmRSS from /proc while idle and while recording, and prints
them next to a peer measured in the same run: a bare Python process that imports the
same libraries (numpy, soundfile, pydantic) and does nothing.

    .venv/bin/python bench/recorder_memory.py
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile
from bench_common import proc_status_kib

RATE = 8000
LINES = 4
BIN = Path(sys.executable).parent


def peak_rss(pid: int, seconds: float) -> int:
    peak = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        peak = max(peak, proc_status_kib("VmRSS", pid))
        time.sleep(0.1)
    return peak


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        audio = tmp / "lines.wav"
        rng = np.random.default_rng(1)
        soundfile.write(
            audio,
            rng.integers(-3000, 3000, (RATE * 30, LINES), dtype=np.int16),
            RATE,
            subtype="PCM_16",
        )
        (tmp / "events").write_text("".join(f"4 line{n + 1} offhook\n" for n in range(LINES)))
        lines = "".join(
            f'[[lines]]\nname = "line{n + 1}"\nchannel = {n}\nhook_pin = {17 + n}\nled_pin = {22 + n}\n'
            for n in range(LINES)
        )
        conf = tmp / "linetap.toml"
        conf.write_text(
            f'log_level = "warning"\n[audio]\nbackend = "file"\nfile = "{audio}"\nchannels = {LINES}\n'
            f'[gpio]\nbackend = "sim"\nscript = "{tmp / "events"}"\nstatus_led_pin = 5\n'
            f'[development]\nallow_plain_audio = true\n[storage]\nformat = "wav"\nout_dir = "{tmp / "out"}"\n{lines}'
        )
        proc = subprocess.Popen([str(BIN / "linetap"), "record", "--config", str(conf)])
        peer = subprocess.Popen(
            [sys.executable, "-c", "import numpy, soundfile, pydantic, time; time.sleep(30)"]
        )
        try:
            time.sleep(1.5)
            idle = peak_rss(proc.pid, 2.0)
            time.sleep(1.0)
            recording = peak_rss(proc.pid, 5.0)
            baseline = proc_status_kib("VmRSS", peer.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)
            peer.kill()
            peer.wait()
        recs = len(list((tmp / "out").glob("*.wav")))
    print(f"linetap record, {LINES} lines at {RATE} Hz (VmRSS, peak over the sampling window)")
    print(f"  idle:                       {idle / 1024:6.1f} MiB")
    print(
        f"  recording all {LINES} lines:     {recording / 1024:6.1f} MiB   ({recs} recordings written)"
    )
    print(f"  peer: python + same imports {baseline / 1024:6.1f} MiB")
    print(f"  ratio idle/peer {idle / baseline:.2f}, recording/peer {recording / baseline:.2f}")
    if recs != LINES:
        print(f"  WARNING: expected {LINES} recordings, got {recs}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
