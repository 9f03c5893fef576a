"""Sealed recordings end to end: replay -> journal -> age + FLAC/Opus -> signed manifest -> outbox.

The real `age` tool decrypts what the device sealed; samples are compared, not sizes.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware.app import make_sealing_sink
from firmware.cli import main
from firmware.config import load_config
from firmware.recorder import StorageHealth
from firmware.sealwriter import SealingWriter, SealJob
from firmware.sinks import RecordingEnd, RecordingStart
from sealedrec.age import load_identities
from sealedrec.keys import create_device_key, load_device_key
from sealedrec.manifest import sign_manifest, verify_chain
from sealedrec.segments import read_segments
from sealedrec.verify import decrypt_recording, verify_entries
from tests.helpers import RATE, START_UTC, config_text, journal_pcm_by_tools, replay_inputs


def sealed_replay(
    tmp_path: Path,
    office: tuple[Path, str],
    events: str,
    *,
    seconds: float = 30,
    lines: int = 2,
    codec: str = "flac",
    opt_out_mode: str = "pause",
    out: Path | None = None,
) -> tuple[list[Path], np.ndarray, Path]:
    out = out or tmp_path / "data"
    conf = tmp_path / "linetap.toml"
    conf.write_text(
        config_text(
            out,
            lines=lines,
            storage_format="sealed",
            recipients=(office[1],),
            codec=codec,
            opt_out_mode=opt_out_mode,
        )
    )
    inputs = replay_inputs(tmp_path, events, seconds=seconds, channels=lines)
    assert main(inputs.argv(conf, out, "--start-utc", START_UTC)) == 0
    entries = sorted((out / "outbox" / "sealed").iterdir())
    return entries, inputs.capture, out


def age_decrypt(office_key: Path, path: Path) -> bytes:
    return subprocess.run(
        ["age", "-d", "-i", str(office_key), str(path)], check=True, capture_output=True
    ).stdout


def manifest_of(entry: Path) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads((entry / "manifest.json").read_text())
    return manifest


def test_real_age_decrypts_lossless_flac_that_matches_the_input(tmp_path: Path, office):
    entries, data, out = sealed_replay(
        tmp_path, office, "2 line1 offhook\n9 line1 onhook\n4 line2 offhook\n14 line2 onhook\n"
    )
    assert len(entries) == 2
    for entry in entries:
        m = manifest_of(entry)
        assert m["container"] == "age" and m["codec"] == "flac" and not m["recovered"]
        flac = age_decrypt(office[0], entry / "recording.age")
        assert flac[:4] == b"fLaC"
        samples, rate = soundfile.read(io.BytesIO(flac), dtype="int16")
        assert rate == RATE
        channel = m["channel"]
        start = round((m["start_monotonic_ns"]) * RATE / 1_000_000_000)
        expected = data[start : start + m["audio_frames"], channel]
        np.testing.assert_array_equal(samples, expected)
        assert m["audio_pcm_sha256"] == hashlib.sha256(expected.astype("<i2").tobytes()).hexdigest()
    device = load_device_key(out / "keys" / "device.key").public_key()
    reports, chain = verify_entries(entries, device, load_identities(office[0]))
    assert [r.problems for r in reports] == [[], []]
    assert chain == []
    assert [manifest_of(e)["seq"] for e in entries] == [1, 2]


def test_manifest_fields(tmp_path: Path, office):
    entries, _, _ = sealed_replay(
        tmp_path,
        office,
        "2 line1 offhook\n5 line1 optout-on\n6 line1 optout-off\n9 line1 onhook\n",
        lines=1,
    )
    [entry] = entries
    m = manifest_of(entry)
    for key in (
        "recording_id",
        "device_id",
        "line",
        "seq",
        "prev_manifest_sha256",
        "started_utc",
        "ended_utc",
        "duration_ms",
        "start_monotonic_ns",
        "end_monotonic_ns",
        "clock_sync",
        "trigger",
        "direction",
        "caller_id",
        "dialled_digits",
        "masked_spans",
        "consent_events",
        "codec",
        "sample_rate",
        "audio_pcm_sha256",
        "blob_sha256",
        "recovered",
        "signature",
    ):
        assert key in m, key
    assert m["device_id"] == "test-device" and m["line"] == "line1" and m["trigger"] == "offhook"
    assert m["prev_manifest_sha256"] == "0" * 64
    assert (
        m["started_utc"] == "2026-11-25T10:00:00.000+00:00"
    )  # 2 s edge - 5 s pre-roll, clamped at 0
    assert m["duration_ms"] == 10_000
    assert [e["type"] for e in m["consent_events"]] == ["pause", "resume"]
    assert isinstance(m["clock_sync"]["synchronized"], bool)
    # The blob never carries the plaintext.
    blob = (entry / "recording.age").read_bytes()
    assert blob.startswith(b"age-encryption.org/v1\n") and b"fLaC" not in blob


def test_discarded_call_keeps_only_a_signed_manifest(tmp_path: Path, office):
    [entry], _, out = sealed_replay(
        tmp_path,
        office,
        "2 line1 offhook\n5 line1 optout-on\n5.5 line1 optout-off\n9 line1 onhook\n",
        seconds=15,
        lines=1,
        opt_out_mode="discard",
    )
    assert sorted(p.name for p in entry.iterdir() if not p.name.startswith(".")) == [
        "manifest.json"
    ]
    m = manifest_of(entry)
    assert m["discarded"] is True and m["container"] is None and m["blob_sha256"] is None
    device = load_device_key(out / "keys" / "device.key").public_key()
    reports, chain = verify_entries([entry], device)
    assert reports[0].ok and chain == []
    assert not list((out / "journal").iterdir())


def test_opus_option(tmp_path: Path, office):
    entries, _data, _ = sealed_replay(
        tmp_path, office, "0 line1 offhook\n61 line1 onhook\n", seconds=62, lines=1, codec="opus"
    )
    [entry] = entries
    m = manifest_of(entry)
    assert m["codec"] == "opus"
    plain = age_decrypt(office[0], entry / "recording.age")
    assert plain[:4] == b"OggS" and b"OpusHead" in plain[:100]
    samples, rate = soundfile.read(io.BytesIO(plain), dtype="int16")
    assert rate == RATE and abs(len(samples) - m["audio_frames"]) < RATE // 10
    # 16 kb/s target: bytes per minute within a generous band (Ogg framing, VBR).
    per_min = len(plain) * 60_000 / m["duration_ms"]
    assert 16_000 / 8 * 60 * 0.6 < per_min < 16_000 / 8 * 60 * 1.6, per_min


def test_no_plain_audio_anywhere_in_the_data_dir(tmp_path: Path, office):
    _, data, out = sealed_replay(
        tmp_path, office, "1 line1 offhook\n12 line1 onhook\n3 line2 offhook\n8 line2 onhook\n"
    )
    needles = [
        data[i : i + 32, c].astype("<i2").tobytes()
        for c in (0, 1)
        for i in (RATE * 2, RATE * 5, RATE * 7)
    ]
    magics = [b"fLaC", b"RIFF", b"OggS"]
    scanned = 0
    for path in out.rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            scanned += 1
            for needle in needles:
                assert needle not in blob, f"plain PCM found in {path}"
            for magic in magics:
                assert magic not in blob, f"{magic!r} found in {path}"
    assert scanned >= 5


def test_tampering_is_detected_with_clear_messages(tmp_path: Path, office):
    entries, _, out = sealed_replay(
        tmp_path,
        office,
        "1 line1 offhook\n4 line1 onhook\n6 line1 offhook\n9 line1 onhook\n12 line1 offhook\n15 line1 onhook\n",
        lines=1,
    )
    assert len(entries) == 3
    device = load_device_key(out / "keys" / "device.key").public_key()
    ids = load_identities(office[0])

    # 1. A flipped byte in the ciphertext.
    blob = entries[0] / "recording.age"
    raw = bytearray(blob.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    blob.write_bytes(bytes(raw))
    reports, _ = verify_entries([entries[0]], device, ids)
    text = " | ".join(reports[0].problems)
    assert "blob sha256 differs" in text and "cannot decrypt" in text

    # 2. A modified manifest (a later start time), signature left as it was.
    m = manifest_of(entries[1])
    m["started_utc"] = "2026-11-25T11:00:00.000+00:00"
    (entries[1] / "manifest.json").write_text(json.dumps(m))
    reports, _ = verify_entries([entries[1]], device)
    assert any("signature does not verify" in p for p in reports[0].problems)

    # 3. A manifest re-signed by another key.
    m = manifest_of(entries[2])
    body = {k: v for k, v in m.items() if k != "signature"}
    (entries[2] / "manifest.json").write_text(
        json.dumps(sign_manifest(body, Ed25519PrivateKey.generate()))
    )
    reports, _ = verify_entries([entries[2]], device)
    assert any("not by the device's key" in p for p in reports[0].problems)

    # 4. A reordered / missing chain.
    good = [manifest_of(e) for e in entries]
    swapped = [good[1], good[0], good[2]]
    assert any("out of order" in p.message or "gap" in p.message for p in verify_chain(swapped))
    assert [p.message for p in verify_chain([good[0], good[2]])] == [
        "gap: seq 2 missing before seq 3"
    ]
    replaced = [good[0], {**good[1], "prev_manifest_sha256": "f" * 64}, good[2]]
    assert any("prev_manifest_sha256 does not match" in p.message for p in verify_chain(replaced))


def test_seq_and_chain_continue_across_runs(tmp_path: Path, office):
    out = tmp_path / "data"
    sealed_replay(
        tmp_path, office, "1 line1 offhook\n4 line1 onhook\n", lines=1, seconds=8, out=out
    )
    entries, _, _ = sealed_replay(
        tmp_path, office, "1 line1 offhook\n4 line1 onhook\n", lines=1, seconds=8, out=out
    )
    assert [manifest_of(e)["seq"] for e in entries] == [1, 2]
    assert verify_chain([manifest_of(e) for e in entries]) == []


def test_decrypt_recording_helper_matches_real_age(tmp_path: Path, office):
    entries, _data, _ = sealed_replay(
        tmp_path, office, "1 line1 offhook\n6 line1 onhook\n", lines=1, seconds=10
    )
    samples, rate, m = decrypt_recording(entries[0], load_identities(office[0]))
    via_tool, _ = soundfile.read(
        io.BytesIO(age_decrypt(office[0], entries[0] / "recording.age")),
        dtype="int16",
    )
    np.testing.assert_array_equal(samples, via_tool)
    assert rate == RATE and len(samples) == m["audio_frames"]


def _sink_and_writer(tmp_path: Path, office, seconds: int):
    conf = tmp_path / "linetap.toml"
    conf.write_text(
        config_text(
            tmp_path / "wav",
            lines=1,
            storage_format="sealed",
            recipients=(office[1],),
            data_dir=tmp_path / "data",
        )
    )
    cfg = load_config(conf)
    create_device_key(tmp_path / "data" / "keys" / "device.key")
    sink = make_sealing_sink(cfg, StorageHealth())
    start = RecordingStart(
        "rec-1", "dev", "line1", 0, RATE, "offhook", "2026-11-25T10:00:00.000+00:00", 0, 0, 0.0
    )
    writer = sink.open(start)
    data = np.random.default_rng(3).integers(-9000, 9000, seconds * RATE, dtype=np.int16)
    for i in range(0, len(data), 160):
        writer.write(data[i : i + 160])
    end = RecordingEnd(
        "onhook", "2026-11-25T10:01:00.000+00:00", len(data), float(seconds), len(data)
    )
    return cfg, sink, writer, end, data


def test_sealing_is_spread_over_polls_so_capture_never_stalls(tmp_path: Path, office):
    # Closing only queues the work; the capture loop's polls (one per capture period) seal
    # it: the first settles the blob and starts its hash, a later one signs and queues it
    # (test_sealing_hash_thread.py: how long a poll may wait for the hash).
    _, sink, writer, end, data = _sink_and_writer(tmp_path, office, seconds=60)
    writer.close(end)
    assert sink.pending == 1
    polls = 0
    deadline = time.monotonic() + 60
    while sink.pending:
        sink.poll(budget=64 * 1024, wait_s=0.0)
        polls += 1
        assert time.monotonic() < deadline, "sealing never finished"
        time.sleep(0.001)
    assert polls >= 2
    [entry] = sorted((tmp_path / "data" / "outbox" / "sealed").iterdir())
    samples, _, _ = decrypt_recording(entry, load_identities(office[0]))
    np.testing.assert_array_equal(samples, data)


def test_crash_halfway_through_sealing_is_finished_at_the_next_start(tmp_path: Path, office):
    cfg, sink, writer, end, data = _sink_and_writer(tmp_path, office, seconds=20)
    writer.close(end)
    sink.poll(budget=1, wait_s=0.0)  # end record written, blob settled, hashing begun... crash
    journal = tmp_path / "data" / "journal" / "rec-1"
    assert (journal / "recording.age").exists() and not (journal / "manifest.json").exists()
    recovered = make_sealing_sink(cfg, StorageHealth()).recover()
    assert recovered == ["rec-1"]
    [entry] = sorted((tmp_path / "data" / "outbox" / "sealed").iterdir())
    m = manifest_of(entry)
    # A finished recording, not a recovered one: the crash hit after the call had ended.
    assert m["container"] == "age" and m["recovered"] is False and m["seq"] == 1
    samples, _, _ = decrypt_recording(entry, load_identities(office[0]))
    np.testing.assert_array_equal(samples, data)


def test_crash_after_journal_files_dropped_before_the_move_loses_nothing(tmp_path: Path, office):
    """The narrowest window of sealing: manifest written, chain advanced, start.json and
    the other journal-only files already unlinked, the directory not yet in the outbox."""
    cfg, sink, writer, end, data = _sink_and_writer(tmp_path, office, seconds=5)
    writer.close(end)
    while sink.pending:
        sink.poll()
    [entry] = sorted((tmp_path / "data" / "outbox" / "sealed").iterdir())
    chain_before = (tmp_path / "data" / "state" / "chain.json").read_text()
    # Put the directory back where the crash would have left it: in the journal, holding
    # only the manifest and the blob.
    journal = tmp_path / "data" / "journal" / "rec-1"
    entry.rename(journal)
    for marker in journal.glob(".outbox-*"):
        marker.unlink()
    assert sorted(p.name for p in journal.iterdir()) == ["manifest.json", "recording.age"]
    assert make_sealing_sink(cfg, StorageHealth()).recover() == ["rec-1"]
    [again] = sorted((tmp_path / "data" / "outbox" / "sealed").iterdir())
    assert again.name == entry.name  # same seq, same id
    assert (tmp_path / "data" / "state" / "chain.json").read_text() == chain_before
    samples, _, _ = decrypt_recording(again, load_identities(office[0]))
    np.testing.assert_array_equal(samples, data)


def test_a_call_cut_by_a_crash_keeps_the_caller_id_known_at_its_start(tmp_path: Path, office):
    cfg, sink, _, _, _ = _sink_and_writer(tmp_path, office, seconds=3)
    caller = {"number": "5551234", "name": "JOHN DOE", "source": "serial", "format": "text"}
    # A second call whose start record carries its caller ID, then the power goes.
    second = sink.open(
        replace(
            RecordingStart(
                "rec-2", "dev", "line1", 0, RATE, "offhook", "2026-11-25T10:02:00.000+00:00",
                0, 0, 0.0,
            ),
            caller_id=caller,
            direction="inbound",
        )
    )  # fmt: skip
    second.write(np.ones(2 * RATE, dtype=np.int16))
    assert sorted(make_sealing_sink(cfg, StorageHealth()).recover()) == ["rec-1", "rec-2"]
    manifests = {
        m["recording_id"]: m
        for m in map(manifest_of, (tmp_path / "data" / "outbox" / "sealed").iterdir())
    }
    assert manifests["rec-2"]["recovered"] is True
    assert manifests["rec-2"]["caller_id"] == caller
    assert manifests["rec-2"]["direction"] == "inbound"
    assert manifests["rec-1"]["caller_id"] is None  # nothing known, nothing made up


def test_the_writer_knows_no_sink_its_close_returns_the_job(tmp_path: Path, office):
    """The in-call writer and the after-call sealer meet only through the job."""
    _, sink, first, end, data = _sink_and_writer(tmp_path, office, seconds=3)
    first.close(end)  # through the sink: its job is queued
    start = RecordingStart("rec-2", "dev1", "line1", 0, RATE, "offhook", START_UTC, 0, 0, 0.0)
    writer = SealingWriter(tmp_path / "data" / "journal" / "rec-2", start, sink.settings)
    writer.write(data)
    job = writer.close(end)
    assert isinstance(job, SealJob) and job.directory.name == "rec-2"
    assert job.pending is not None and job.pending.ram_bytes == 0
    assert sink.pending == 1  # only the first: nothing queued behind the sealer's back
    sink.enqueue(job)
    while sink.pending:
        sink.poll()
    entries = sorted((tmp_path / "data" / "outbox" / "sealed").iterdir())
    assert [(manifest_of(e)["recording_id"], manifest_of(e)["seq"]) for e in entries] == [
        ("rec-1", 1),
        ("rec-2", 2),
    ]
    samples, _, _ = decrypt_recording(entries[1], load_identities(office[0]))
    np.testing.assert_array_equal(samples, data)


def _age_header_and_nonce(payload: bytes) -> tuple[bytes, bytes]:
    """An age file's header (through the MAC line) and the payload nonce after it."""
    mac_line = payload.index(b"\n--- ") + 1
    header_end = payload.index(b"\n", mac_line) + 1
    return payload[:header_end], payload[header_end : header_end + 16]


def test_journal_records_share_one_key_exchange_each_a_real_age_file(tmp_path: Path, office):
    """One X25519 exchange per call: every record carries the same header (the same
    ephemeral share wrapping the same file key) and a fresh payload nonce; the real
    `age -d` opens each record on its own, and the real `flac -d` decodes the stream they
    make to exactly the audio journalled. Records come a block early (the encoder's lag),
    so the audio not yet durable stays within one sync interval."""
    _, _, writer, _, data = _sink_and_writer(tmp_path, office, seconds=5)
    journal = tmp_path / "data" / "journal" / "rec-1" / "segments.jrn"
    segments = read_segments(journal)
    block = RATE // 10
    assert [s.frames for s in segments] == [RATE - block] * 5
    headers, nonces = zip(*(_age_header_and_nonce(s.payload) for s in segments), strict=True)
    assert len(set(headers)) == 1 and headers[0].count(b"\n-> X25519 ") == 1
    assert len(set(nonces)) == len(nonces)  # a fresh payload key per record
    journalled = journal_pcm_by_tools(journal, office[0], tmp_path)
    np.testing.assert_array_equal(journalled, data[: 5 * (RATE - block)])
    # Not durable yet: what the encoder holds (under a block) and the frames emitted
    # since the last record; together less than one sync interval.
    assert 5 * RATE - journalled.shape[0] < RATE
    writer.discard()
