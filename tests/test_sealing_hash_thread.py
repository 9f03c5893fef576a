"""Sealing hashes the finished blob on a thread of its own (issue 21: hang-up -> ack).

The recorder polls its sink once per capture period (100 ms by default); a poll waits
for the blob's SHA-256 at most ``HASH_WAIT_S`` (a long call must not hold capture up),
and a recording whose hash is done by then is in the outbox when that poll returns
(not a capture period later: that was most of the hang-up -> ack time). The hashing
thread is held up here until the test lets it go, so a poll that waited for it would
take that long.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import pytest

from firmware import sealing
from tests.test_sealing import _sink_and_writer

HELD_S = 10.0  # how long the hashing thread waits for the test (were it never released)
POLLS = 5


def test_polls_do_not_wait_for_the_blob_hash(
    tmp_path: Path, office: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
):
    _, sink, writer, end, _data = _sink_and_writer(tmp_path, office, seconds=60)
    release = threading.Event()
    hashed_on: list[threading.Thread] = []
    real_hash = sealing._Progress.hash_blob

    def held(self: sealing._Progress, path: Path) -> None:
        hashed_on.append(threading.current_thread())
        release.wait(HELD_S)
        real_hash(self, path)

    monkeypatch.setattr(sealing._Progress, "hash_blob", held)
    writer.close(end)
    for _ in range(POLLS):  # capture periods while the hash is held up
        t0 = time.monotonic()
        sink.poll()
        waited = time.monotonic() - t0
        assert waited < sealing.HASH_WAIT_S + 0.5, "a poll waited for the hashing"
    assert sink.pending == 1
    assert hashed_on and hashed_on[0] is not threading.current_thread()
    release.set()
    deadline = time.monotonic() + HELD_S
    while sink.pending:
        assert time.monotonic() < deadline, "sealing did not finish after the hash"
        sink.poll()
        time.sleep(0.002)
    [entry] = sorted((tmp_path / "data" / "outbox" / "sealed").iterdir())
    blob = (entry / "recording.age").read_bytes()
    manifest = json.loads((entry / "manifest.json").read_text())
    assert manifest["blob_sha256"] == hashlib.sha256(blob).hexdigest()
    assert manifest["blob_bytes"] == len(blob)


def test_close_waits_for_the_hash_and_seals_everything(tmp_path: Path, office: tuple[Path, str]):
    _, sink, writer, end, _data = _sink_and_writer(tmp_path, office, seconds=20)
    writer.close(end)
    sink.poll()  # starts the hashing
    sink.close()  # shutdown: waits for it
    assert sink.pending == 0
    [entry] = sorted((tmp_path / "data" / "outbox" / "sealed").iterdir())
    blob = (entry / "recording.age").read_bytes()
    manifest = json.loads((entry / "manifest.json").read_text())
    assert manifest["blob_sha256"] == hashlib.sha256(blob).hexdigest()


def test_a_quick_hash_seals_in_the_poll_that_started_it(tmp_path: Path, office: tuple[Path, str]):
    """A 60 s call (its blob far over the per-poll budget) hashes in a few ms: the poll
    after close settles it, waits for the hash and puts it in the outbox. With no wait
    (the previous design, or a planted HASH_WAIT_S = 0) it takes a second poll."""
    _, sink, writer, end, _data = _sink_and_writer(tmp_path, office, seconds=60)
    writer.close(end)
    blob = max((p.stat().st_size for p in (tmp_path / "data" / "journal").rglob("*")), default=0)
    assert blob > sealing.SEAL_BYTES_PER_POLL  # not the whole-blob budget path
    sink.poll()
    assert sink.pending == 0
    assert len(list((tmp_path / "data" / "outbox" / "sealed").iterdir())) == 1
