"""bench/upload_receiver_capacity.py with its replay load runs to the end: every
recording, small and multi-chunk, stored by one and by two workers, for both sides.

Slow (~30 s here): the default suite keeps to its time budget; this keeps the bench
working, its figures are the bench's own business."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers import REPO, run_bench


@pytest.mark.slow
def test_receiver_capacity_bench_with_the_replay_load_runs(tmp_path: Path):
    out = run_bench(
        "upload_receiver_capacity.py",
        *("--load", "replay", "--devices", "2", "--small", "6", "--large", "1"),
        *("--large-mib", "1", "--workers", "1,2", "--repeats", "1", "--before", REPO),
        cwd=tmp_path,
    )
    assert "shared by the workers, one replay load and the broker" in out
    # 2 devices x 7 recordings, each run: every recording stored, by the workers there were.
    runs = re.findall(r"replay load [\d.]+, .*stored per worker ([\d/]+)", out)
    assert len(runs) == 4, out
    assert sorted(sum(map(int, r.split("/"))) for r in runs) == [14] * 4
    assert "after/before, 2 worker(s)" in out and "after: 2 workers / 1 worker" in out
