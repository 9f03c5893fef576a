"""``bench/web_playback.py --minutes 1 --reps 1`` runs to the end and prints its figures
(about 20 s here; the 60-minute bench is ``make bench`` material, this only keeps it
working). The bench checks on its own that our audio is ``age -d``'s output and our
peaks the peer's, and exits non-zero when they differ."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers import run_bench
from tests.test_web_browser import CHROMIUM

pytestmark = [
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)",
    ),
    pytest.mark.slow,  # a bench's smoke run (builds an office, runs Chromium): make test-slow
]


def _quick_run(workdir: Path) -> str:
    return run_bench(
        "web_playback.py", "--minutes", "1", "--reps", "1", "--workdir", workdir,
        cwd=workdir, timeout=180,
    )  # fmt: skip


def test_web_playback_bench_quick_runs_and_reuses_its_office(tmp_path: Path):
    out = _quick_run(tmp_path)
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

    again = _quick_run(tmp_path)
    assert "reusing the office built under" in again
    assert "built the office in" not in again
