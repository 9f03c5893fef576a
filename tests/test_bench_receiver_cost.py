"""bench/receiver_cost.py runs to the end: both sides store every recording of the
prepared uploads in process, and the table and ratios are printed.

Slow (~7 s here): the default suite keeps to its time budget; this keeps the bench
working, its figures are the bench's own business."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers import REPO, run_bench


@pytest.mark.slow
def test_receiver_cost_bench_runs(tmp_path: Path):
    # The bench exits non-zero unless every run stored all 2 x 5 recordings.
    out = run_bench(
        "receiver_cost.py",
        *("--devices", "2", "--recordings", "5", "--repeats", "2", "--before", REPO),
        cwd=tmp_path,
    )
    assert "(10 stored per run" in out
    rows = re.findall(r"^(before|after) +([\d.]+) +([\d.]+) +([\d.]+) +([\d.]+)$", out, re.M)
    assert [r[0] for r in rows] == ["before", "after"], out
    assert all(float(v) > 0 for row in rows for v in row[1:])
    assert re.search(r"after/before, medians: [\d.]+x less CPU, [\d.]+x the recordings/s", out)
