"""``bench/web_playback.py --minutes 1 --reps 1`` runs to the end and prints its figures
(about 20 s here; the 60-minute bench is ``make bench`` material, this only keeps it
working). The bench checks on its own that our audio is ``age -d``'s output and our
peaks the peer's, and exits non-zero when they differ."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_web_browser import CHROMIUM

REPO = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)",
    ),
    pytest.mark.slow,  # a bench's smoke run (builds an office, runs Chromium): make test-slow
]


def run_bench(workdir: Path) -> str:
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "web_playback.py"), "--minutes", "1", "--reps", "1",
         "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        cwd=workdir,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_web_playback_bench_quick_runs_and_reuses_its_office(tmp_path: Path):
    out = run_bench(tmp_path)
    assert "built the office in" in out
    # Exactly 60 s at 8 kHz (on-hook 1 s before the end), 100 peak buckets a second.
    assert "recording: 1.0 min at 8000 Hz" in out
    assert "6000 peak buckets" in out
    assert "16 masked spans" in out  # the 16 digits of the card number, one span each
    for row in ("first audio byte, cold", "peaks JSON complete, cold", "drawn waveform in Chromium, cold"):  # fmt: skip
        line = next(x for x in out.splitlines() if x.startswith(row))
        assert len(re.findall(r"\d+\.\d+", line)) >= 2, line
    hwm = next(x for x in out.splitlines() if x.startswith("VmHWM after the peaks"))
    assert 20 < float(hwm.split()[-1]) < 2000, hwm  # MiB: a live process's peak

    again = run_bench(tmp_path)
    assert "reusing the office built under" in again
    assert "built the office in" not in again
