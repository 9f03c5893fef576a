"""The linetap-office query commands over a store filled with real sealed recordings:
made by ``linetap replay`` (age + FLAC) and by the sealing sink's crash recovery
(``segments``), uploaded chunk by chunk into the store and the index as the receiver
does, then listed, shown, exported (compared with the real ``age -d``) and verified.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import soundfile
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from firmware.age import load_identities
from firmware.cli import main as linetap_main
from firmware.keys import load_device_key, public_key_b64
from firmware.verify import decrypt_recording
from headoffice.cli_query import (
    add_query_commands,
    cmd_export,
    cmd_ls,
    cmd_show,
    cmd_verify,
    format_table,
)
from headoffice.index import Index, open_index
from headoffice.store import BlobStore
from tests.helpers import RATE, START_UTC, config_text, line_signal, replay_inputs

DEVICE = "test-device"
CHUNK = 16 * 1024


@dataclass(frozen=True)
class Sealed:
    entries: list[Path]  # outbox entries in seq order: age/flac, age/flac, segments
    device_key: Ed25519PublicKey
    segments_input: npt.NDArray[np.int16]


def _recover_a_crashed_call(out: Path, office: tuple[Path, str], tmp: Path) -> np.ndarray:
    """A call the recorder was killed in: its journal becomes a ``segments`` recording."""
    from firmware.app import make_sealing_sink
    from firmware.config import load_config
    from firmware.recorder import StorageHealth
    from firmware.sinks import RecordingStart

    conf = tmp / "recover.toml"
    conf.write_text(
        config_text(
            tmp / "wav", lines=1, storage_format="sealed", recipients=(office[1],), data_dir=out
        )
    )
    cfg = load_config(conf)
    start = RecordingStart(
        "5e9d7c1a-crashed", DEVICE, "line1", 0, RATE, "offhook",
        "2026-11-25T11:00:00.000+00:00", 0, 0, 0.0,
    )  # fmt: skip
    writer = make_sealing_sink(cfg, StorageHealth()).open(start)
    data = line_signal(round(3.5 * RATE), 0)
    for i in range(0, len(data), 160):
        writer.write(data[i : i + 160])
    # The process dies here: nothing is closed or sealed; 3 s were synced to the journal.
    writer._close_stream(finish=False)
    writer._journal.close()
    assert make_sealing_sink(cfg, StorageHealth()).recover() == [start.recording_id]
    return data[: 3 * RATE]


@pytest.fixture(scope="module")
def sealed(tmp_path_factory: pytest.TempPathFactory, office: tuple[Path, str]) -> Sealed:
    tmp = tmp_path_factory.mktemp("sealed")
    out = tmp / "data"
    conf = tmp / "linetap.toml"
    conf.write_text(config_text(out, lines=2, storage_format="sealed", recipients=(office[1],)))
    events = "2 line1 offhook\n9 line1 onhook\n4 line2 offhook\n12 line2 onhook\n"
    inputs = replay_inputs(tmp, events, seconds=16, channels=2)
    assert linetap_main(inputs.argv(conf, out, "--start-utc", START_UTC)) == 0
    segments_input = _recover_a_crashed_call(out, office, tmp)
    entries = sorted((out / "outbox" / "sealed").iterdir(), key=lambda e: manifest_of(e)["seq"])
    assert [manifest_of(e)["seq"] for e in entries] == [1, 2, 3]
    assert [manifest_of(e)["container"] for e in entries] == ["age", "age", "segments"]
    key = load_device_key(out / "keys" / "device.key").public_key()
    return Sealed(entries, key, segments_input)


def manifest_of(entry: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((entry / "manifest.json").read_text())
    return data


def blob_of(entry: Path) -> Path:
    return next(p for p in entry.iterdir() if p.name.startswith("recording."))


def ingest(store: BlobStore, index: Index, entry: Path) -> Path:
    """What the receiver does with an upload: park chunks, assemble, commit, index."""
    m = manifest_of(entry)
    device, rec = m["device_id"], m["recording_id"]
    data = blob_of(entry).read_bytes()
    chunks = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]
    for i, chunk in reversed(list(enumerate(chunks))):  # any order
        store.park_chunk(device, rec, i, chunk)
    with index.finish_lock(device, rec), store.lock(device, rec):
        blob = store.assemble(device, rec, len(chunks), len(data), m["blob_sha256"])
        path = store.commit(device, rec, m["started_utc"], m["container"], blob, m)
        index.add(m, path.relative_to(store.root))
        store.drop_parking(device, rec)
    return path


@dataclass
class Office:
    store: BlobStore
    index: Index
    keys: dict[str, Ed25519PublicKey]
    paths: list[Path]
    manifests: list[dict[str, Any]]
    url: str

    def edit_index(self, sql: str) -> None:
        """Changes the index behind the office's back, as anyone with the database could."""
        with sqlite3.connect(self.url.removeprefix("sqlite:///")) as db:
            db.execute(sql)
        db.close()


def make_office(tmp_path: Path, sealed: Sealed, seqs: tuple[int, ...] = (1, 2, 3)) -> Office:
    store = BlobStore(tmp_path / "store")
    url = f"sqlite:///{tmp_path}/store/index.sqlite3"
    index = open_index(url)
    chosen = [e for e in sealed.entries if manifest_of(e)["seq"] in seqs]
    paths = [ingest(store, index, e) for e in chosen]
    return Office(
        store, index, {DEVICE: sealed.device_key}, paths, [manifest_of(e) for e in chosen], url
    )


@pytest.fixture
def office_store(tmp_path: Path, sealed: Sealed):
    o = make_office(tmp_path, sealed)
    yield o
    o.index.close()


def run_json(fn: Any, *args: Any, **kw: Any) -> tuple[int, Any]:
    out, err = io.StringIO(), io.StringIO()
    code = fn(*args, as_json=True, out=out, err=err, **kw)
    assert err.getvalue() == ""
    return code, json.loads(out.getvalue())


def run_text(fn: Any, *args: Any, **kw: Any) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = fn(*args, out=out, err=err, **kw)
    return code, out.getvalue(), err.getvalue()


def age_decrypt(key: Path, path: Path) -> bytes:
    return subprocess.run(
        ["age", "-d", "-i", str(key), str(path)], check=True, capture_output=True
    ).stdout


# --------------------------------------------------------------------------- ls / show


def test_store_layout_and_index(office_store: Office):
    o = office_store
    for path, m in zip(o.paths, o.manifests, strict=True):
        suffix = ".segments" if m["container"] == "segments" else ".age"
        expected = Path("blobs", DEVICE, "2026", "11", "25", m["recording_id"] + suffix)
        assert path == o.store.root / expected
        record = o.index.get(m["recording_id"])
        assert record is not None and record.path == str(expected) and record.manifest == m
    assert o.index.alarms() == [] and o.index.gaps() == []


def test_ls_filters_and_table(office_store: Office):
    o = office_store
    code, doc = run_json(cmd_ls, o.index)
    assert code == 0 and doc["count"] == 3
    assert [r["seq"] for r in doc["recordings"]] == [1, 2, 3]
    assert "manifest" not in doc["recordings"][0]
    _, doc = run_json(cmd_ls, o.index, line="line2")
    assert [r["line"] for r in doc["recordings"]] == ["line2"]
    _, doc = run_json(cmd_ls, o.index, recovered=True)
    assert [r["container"] for r in doc["recordings"]] == ["segments"]
    _, doc = run_json(cmd_ls, o.index, min_duration_ms=9_000, max_duration_ms=12_000)
    assert [r["seq"] for r in doc["recordings"]] == [1]  # 0..9 s (pre-roll clamped at 0)
    _, doc = run_json(cmd_ls, o.index, since="2026-11-25T10:30:00Z")
    assert [r["seq"] for r in doc["recordings"]] == [3]
    _, doc = run_json(cmd_ls, o.index, device="nobody")
    assert doc == {"count": 0, "recordings": []}

    code, text, err = run_text(cmd_ls, o.index)
    assert code == 0 and err == ""
    lines = text.splitlines()
    assert lines[0].startswith("STARTED (UTC)") and lines[-1] == "3 recordings"
    column = lines[0].index("RECORDING")
    for line, m in zip(lines[1:4], o.manifests, strict=True):
        assert line[column:] == m["recording_id"]
        assert line.startswith(m["started_utc"][:19].replace("T", " "))
    assert "recovered" in lines[3]
    code, _, err = run_text(cmd_ls, o.index, since="last tuesday")
    assert code == 1 and err.count("\n") == 1 and "since" in err and "Traceback" not in err


def test_ls_pending_counts_parked_chunks(office_store: Office):
    o = office_store
    init = {"blob_bytes": 5000, "manifest": {"seq": 4}, "chunk_count": 5}
    o.index.note_upload(DEVICE, "rec-in-flight", init, 5, received=1)
    for i in (0, 3):
        o.store.park_chunk(DEVICE, "rec-in-flight", i, b"x" * 1000)
    code, doc = run_json(cmd_ls, o.index, store=o.store, pending=True)
    assert code == 0
    [up] = doc["uploads"]
    assert (up["recording_id"], up["seq"], up["received"], up["chunk_count"]) == (
        "rec-in-flight", 4, 2, 5,
    )  # fmt: skip
    code, text, _ = run_text(cmd_ls, o.index, pending=True)  # no store: the row's count
    assert code == 0 and "1/5" in text and "rec-in-flight" in text


def test_show(office_store: Office):
    o = office_store
    m = o.manifests[0]
    code, doc = run_json(cmd_show, o.index, m["recording_id"])
    assert code == 0 and doc["manifest"] == m and doc["record"]["seq"] == 1
    code, text, _ = run_text(cmd_show, o.index, m["recording_id"][:13])  # a unique prefix
    assert code == 0
    fields = dict(line.split(None, 1) for line in text.splitlines())
    assert fields["recording"] == m["recording_id"]
    assert fields["device"].startswith(f"{DEVICE} (seq 1")
    assert fields["audio"].startswith(f"flac in age, {m['blob_bytes']} bytes")
    code, out, err = run_text(cmd_show, o.index, "no-such-recording")
    assert code == 1 and out == ""
    assert err == "linetap-office: error: no recording 'no-such-recording' in the index\n"


# --------------------------------------------------------------------------- export


def test_export_wav_equals_the_age_tool(office_store: Office, office, tmp_path: Path):
    o = office_store
    for path, m in zip(o.paths[:2], o.manifests[:2], strict=True):
        wav = tmp_path / f"{m['seq']}.wav"
        code, text, err = run_text(
            cmd_export, o.index, o.store, m["recording_id"], identity=office[0], output=wav
        )
        assert (code, err) == (0, ""), err
        assert text == f"wrote {wav}: WAV, {m['audio_frames'] / RATE:.2f} s at {RATE} Hz\n"
        expected, rate = soundfile.read(io.BytesIO(age_decrypt(office[0], path)), dtype="int16")
        got, got_rate = soundfile.read(wav, dtype="int16")
        assert got_rate == rate == RATE and soundfile.info(wav).subtype == "PCM_16"
        assert len(got) == m["audio_frames"] > RATE
        np.testing.assert_array_equal(got, expected)
        assert (wav.stat().st_mode & 0o777) == 0o600  # plain audio: owner only
    # .flac of a FLAC recording: the sealed stream itself, bit for bit.
    flac = tmp_path / "1.flac"
    code, text, _ = run_text(
        cmd_export, o.index, o.store, o.manifests[0]["recording_id"], identity=office[0],
        output=flac,
    )  # fmt: skip
    assert code == 0 and "the sealed flac stream" in text
    assert flac.read_bytes() == age_decrypt(office[0], o.paths[0])


def test_export_segments(office_store: Office, office, sealed: Sealed, tmp_path: Path):
    o = office_store
    m = o.manifests[2]
    reference, _, _ = decrypt_recording(sealed.entries[2], load_identities(office[0]))
    np.testing.assert_array_equal(reference, sealed.segments_input)
    for name in ("seg.wav", "seg.flac"):
        code, _, err = run_text(
            cmd_export, o.index, o.store, m["recording_id"], identity=office[0],
            output=tmp_path / name,
        )  # fmt: skip
        assert (code, err) == (0, "")
        got, rate = soundfile.read(tmp_path / name, dtype="int16")
        assert rate == RATE
        np.testing.assert_array_equal(got, reference)


def test_export_errors_are_one_line(office_store: Office, office, tmp_path: Path):
    o = office_store
    rec = o.manifests[0]["recording_id"]
    code, _, err = run_text(
        cmd_export, o.index, o.store, rec, identity=office[0], output=tmp_path / "x.mp3"
    )
    assert code == 1 and "use a .wav or .flac name" in err and err.count("\n") == 1
    other = tmp_path / "other.key"
    subprocess.run(["age-keygen", "-o", str(other)], check=True, capture_output=True)
    code, _, err = run_text(
        cmd_export, o.index, o.store, rec, identity=other, output=tmp_path / "x.wav"
    )
    assert code == 1 and "cannot decrypt" in err and err.count("\n") == 1
    code, _, err = run_text(
        cmd_export, o.index, o.store, rec, identity=tmp_path / "nokey", output=tmp_path / "x.wav"
    )
    assert code == 1 and "nokey" in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.glob("x.*")) == []  # nothing half-written
    assert not list(tmp_path.glob(".x.wav.*"))


# --------------------------------------------------------------------------- verify


def test_verify_clean_store(office_store: Office, office):
    o = office_store
    code, doc = run_json(cmd_verify, o.index, o.store, o.keys, identity=office[0])
    assert code == 0 and doc["ok"] and doc["checked"] == 3 and doc["chain"] == []
    assert all(r["problems"] == [] for r in doc["recordings"])
    code, text, _ = run_text(cmd_verify, o.index, o.store, o.keys)
    assert code == 0 and text == "verified 3 recording(s) of 1 device(s): all good\n"


def test_verify_reports_a_flipped_byte(office_store: Office, office):
    o = office_store
    blob = o.paths[1]
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(bytes(data))
    code, doc = run_json(cmd_verify, o.index, o.store, o.keys, identity=office[0])
    assert code == 1 and not doc["ok"]
    bad = {r["seq"]: r["problems"] for r in doc["recordings"] if r["problems"]}
    assert list(bad) == [2]
    assert any("sha256 differs" in p for p in bad[2])
    assert any("cannot decrypt" in p for p in bad[2])  # the AEAD notices too
    code, text, _ = run_text(cmd_verify, o.index, o.store, o.keys)
    assert code == 1 and o.manifests[1]["recording_id"] in text and "1 problem(s)" in text


def test_verify_reports_an_edited_manifest(office_store: Office):
    o = office_store
    path = o.paths[0].with_name(o.manifests[0]["recording_id"] + ".manifest.json")
    m = json.loads(path.read_text())
    m["caller_id"] = {"number": "0800 999 999", "name": "someone else", "source": "fsk"}
    path.write_text(json.dumps(m))
    code, doc = run_json(cmd_verify, o.index, o.store, o.keys)
    assert code == 1
    [bad] = [r for r in doc["recordings"] if r["problems"]]
    assert bad["seq"] == 1
    text = " | ".join(bad["problems"])
    assert "signature does not verify" in text and "index's copy" in text
    # The chain notices too: seq 2 points at the original manifest of seq 1.
    assert [c["seq"] for c in doc["chain"]] == [2]


def test_verify_reports_an_edited_index_row(office_store: Office):
    o = office_store
    o.edit_index("UPDATE recordings SET caller_number = '555' WHERE seq = 3")
    code, doc = run_json(cmd_verify, o.index, o.store, o.keys)
    assert code == 1
    [bad] = [r for r in doc["recordings"] if r["problems"]]
    assert bad["seq"] == 3 and "caller_number" in bad["problems"][0]


def test_verify_reports_a_gap(tmp_path: Path, sealed: Sealed):
    o = make_office(tmp_path, sealed, seqs=(1, 3))
    try:
        assert o.index.gaps() == [(DEVICE, 2, 2)]
        assert [a.kind for a in o.index.alarms()] == ["gap"]
        code, doc = run_json(cmd_verify, o.index, o.store, o.keys)
        assert code == 1
        assert all(r["ok"] for r in doc["recordings"])
        [chain] = doc["chain"]
        assert chain["seq"] == 3 and "gap: seq 2 missing before seq 3" in chain["message"]
        code, text, _ = run_text(cmd_verify, o.index, o.store, o.keys)
        assert code == 1 and "gap: seq 2 missing before seq 3" in text
    finally:
        o.index.close()


def test_verify_reports_a_deleted_latest_recording(office_store: Office):
    o = office_store
    o.edit_index("DELETE FROM recordings WHERE seq = 3")
    code, doc = run_json(cmd_verify, o.index, o.store, o.keys)
    assert code == 1 and doc["checked"] == 2
    assert "seq 3 missing at the end" in doc["chain"][0]["message"]


def test_verify_without_the_device_key(office_store: Office):
    o = office_store
    code, doc = run_json(cmd_verify, o.index, o.store, {})
    assert code == 1
    assert all(
        "no public key known for device test-device" in r["problems"][0] for r in doc["recordings"]
    )
    code, _, err = run_text(cmd_verify, o.index, o.store, o.keys, device="nobody")
    assert code == 1 and "nobody" in err and err.count("\n") == 1


# --------------------------------------------------------------------------- argparse


def test_commands_through_argparse(
    office_store: Office, office, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    o = office_store
    parser = argparse.ArgumentParser(prog="linetap-office")
    add_query_commands(parser.add_subparsers(dest="command", required=True))
    common = ["--store", str(o.store.root)]  # the index defaults to STORE/index.sqlite3

    def run(*argv: str) -> tuple[int, str, str]:
        args = parser.parse_args(list(argv))
        code = args.func(args)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    code, out, _ = run("search", *common, "--line", "line1", "--json")
    assert code == 0 and [r["line"] for r in json.loads(out)["recordings"]] == ["line1", "line1"]
    code, out, _ = run("ls", *common, "--recovered")
    assert code == 0 and out.splitlines()[-1] == "1 recording"
    code, out, _ = run("ls", *common, "--min-duration", "100")
    assert code == 0 and out == "no recordings match\n"
    code, out, _ = run("show", *common, o.manifests[1]["recording_id"])
    assert code == 0 and "line2" in out
    wav = tmp_path / "out.wav"
    code, out, _ = run(
        "export", *common, o.manifests[0]["recording_id"], "-i", str(office[0]), "-o", str(wav)
    )
    assert code == 0 and soundfile.info(wav).frames == o.manifests[0]["audio_frames"]
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / f"{DEVICE}.pub").write_text(public_key_b64(o.keys[DEVICE]) + "\n")
    code, out, _ = run("verify", *common, "--device-keys", str(keys), "-i", str(office[0]))
    assert code == 0 and "all good" in out and "audio decrypted" in out
    os.remove(keys / f"{DEVICE}.pub")
    code, out, _ = run("verify", *common, "--device-keys", str(keys), "--json")
    assert code == 1 and "not found" in json.loads(out)["recordings"][0]["problems"][0]
    code, out, _ = run("verify", *common, "--json")  # default: the keys enrolled in the root
    problems = json.loads(out)["recordings"][0]["problems"]
    assert code == 1 and DEVICE in problems[0] and "enrol" in problems[0]
    code, out, err = run("show", *common, "nope-nope")
    assert (code, out) == (1, "") and err.count("\n") == 1 and "Traceback" not in err
    code, _, err = run("ls", "--store", str(tmp_path / "none"), "--index", "mysql://x")
    assert code == 1 and "use sqlite" in err and err.count("\n") == 1
    code, _, err = run(
        "verify", "--store", str(tmp_path / "none"), "--index", o.url, "--device-keys", str(keys)
    )
    assert code == 1 and "no blob store" in err


def test_format_table_aligns():
    text = format_table(["A", "NUM", "C"], [["x", 5, "end"], ["longer", 1234, ""]])
    assert text.splitlines() == ["A        NUM  C", "x          5  end", "longer  1234"]


def test_blob_sha_is_what_the_device_signed(office_store: Office):
    o = office_store
    for path, m in zip(o.paths, o.manifests, strict=True):
        assert hashlib.sha256(path.read_bytes()).hexdigest() == m["blob_sha256"]
