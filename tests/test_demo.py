"""`make demo` stays true: record, seal, upload over mTLS, store, verify and decrypt the sample call."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile

from firmware.dsp.dtmf import detect
from tests.conftest import REPO


def test_demo_end_to_end(tmp_path: Path):
    out = tmp_path / "demo"
    run = subprocess.run(
        [sys.executable, "-m", "demo", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "verify (signatures, hashes, chain, audio): OK" in run.stdout
    assert "the office received, verified and decrypted every recording" in run.stdout
    # The office CLI acted as the demo account, whose name and password the demo prints.
    assert "[office]  account demo (supervisor + auditor), password " in run.stdout
    [wav] = (out / "office" / "exports").glob("*.wav")
    decrypted, rate = soundfile.read(wav, dtype="int16")
    source, _ = soundfile.read(REPO / "firmware" / "samples" / "sample_call.flac", dtype="int16")
    # Off-hook at 2.5 s with 5 s pre-roll (clamped to 0), hang-up known at 16.5 s; the
    # card number keyed at 9.6-12.3 s is masked (and only that).
    assert decrypted.shape[0] == round(16.5 * rate)
    assert "".join(e.digit for e in detect(decrypted, rate)) == ""
    assert "".join(e.digit for e in detect(source, rate)) == "4111111111111111#"
    differs = np.flatnonzero(decrypted != source[: decrypted.shape[0]])
    assert round(9.5 * rate) < differs[0] and differs[-1] < round(12.4 * rate)
    assert "inbound call from 02079460123 BRANCH 12; dialled *****************" in run.stdout
