"""`make demo` stays true: record, seal, upload over mTLS, store, verify and decrypt the sample call."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile

from tests.conftest import REPO


def test_demo_end_to_end(tmp_path: Path):
    out = tmp_path / "demo"
    run = subprocess.run(
        [sys.executable, "-m", "firmware.demo", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "verify (signatures, hashes, chain, audio): OK" in run.stdout
    assert "the office received, verified and decrypted every recording" in run.stdout
    [wav] = (out / "office" / "exports").glob("*.wav")
    decrypted, rate = soundfile.read(wav, dtype="int16")
    source, _ = soundfile.read(REPO / "firmware" / "samples" / "sample_call.flac", dtype="int16")
    # Off-hook at 2.5 s with 5 s pre-roll (clamped to 0), hang-up known at 13.5 s.
    np.testing.assert_array_equal(decrypted, source[: round(13.5 * rate)])
