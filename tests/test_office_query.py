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

from firmware.cli import main as linetap_main
from headoffice.access import Gate
from headoffice.authz import Role, Scope
from headoffice.cli import main as office_main
from headoffice.cli_query import add_query_commands
from headoffice.config import OfficeConfig, resolve_office
from headoffice.export import cmd_export
from headoffice.index import Index, open_index
from headoffice.printing import format_table, terminal_safe
from headoffice.query import cmd_ls, cmd_show
from headoffice.store import FileBlobStore
from headoffice.storeverify import cmd_verify
from sealedrec.age import load_identities
from sealedrec.keys import load_device_key, public_key_b64
from sealedrec.verify import decrypt_recording
from tests.helpers import RATE, START_UTC, config_text, line_signal, replay_inputs
from tests.office_accounts import Login, SteppingClock, add_account, gate_for, use_clock

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
    # The process dies here: nothing is closed or sealed. A journal record comes every
    # sync interval less one FLAC block (0.9 s: the encoder's lag), so 3 records hold 2.7 s.
    inner = writer._writer  # type: ignore[attr-defined]  # the SealingWriter behind it
    inner._close_stream(finish=False)
    inner._journal.close()
    assert make_sealing_sink(cfg, StorageHealth()).recover() == [start.recording_id]
    return data[: 3 * (RATE - RATE // 10)]


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


def ingest(store: FileBlobStore, index: Index, entry: Path) -> Path:
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
    store: FileBlobStore
    index: Index
    keys: dict[str, Ed25519PublicKey]
    paths: list[Path]
    manifests: list[dict[str, Any]]
    url: str
    gate: Gate  # an office-wide supervisor's, for calling the cmd_* functions directly

    def edit_index(self, sql: str) -> None:
        """Changes the index behind the office's back, as anyone with the database could."""
        with sqlite3.connect(self.url.removeprefix("sqlite:///")) as db:
            db.execute(sql)
        db.close()


def make_office(tmp_path: Path, sealed: Sealed, seqs: tuple[int, ...] = (1, 2, 3)) -> Office:
    store = FileBlobStore(tmp_path / "store")
    url = f"sqlite:///{tmp_path}/store/index.sqlite3"
    index = open_index(url)
    chosen = [e for e in sealed.entries if manifest_of(e)["seq"] in seqs]
    paths = [ingest(store, index, e) for e in chosen]
    return Office(
        store,
        index,
        {DEVICE: sealed.device_key},
        paths,
        [manifest_of(e) for e in chosen],
        url,
        gate_for(index),
    )


def cli_accounts(o: Office, monkeypatch: pytest.MonkeyPatch) -> tuple[Login, Login]:
    """The accounts the CLI tests act as (the office's default [accounts]): a viewer
    (reviewer + auditor: search, show, verify; no code needed) and an office-wide
    supervisor with TOTP (export, verify --identity), on a clock a step per code."""
    clock = use_clock(monkeypatch, SteppingClock())
    viewer = add_account(o.index, "viewer", [Role.REVIEWER, Role.AUDITOR], Scope.all())
    sup = add_account(o.index, "sup", [Role.SUPERVISOR], Scope.all(), clock=clock)
    return viewer, sup


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
    code, doc = run_json(cmd_ls, o.index, o.gate)
    assert code == 0 and doc["count"] == 3
    assert [r["seq"] for r in doc["recordings"]] == [1, 2, 3]
    assert "manifest" not in doc["recordings"][0]
    _, doc = run_json(cmd_ls, o.index, o.gate, line="line2")
    assert [r["line"] for r in doc["recordings"]] == ["line2"]
    _, doc = run_json(cmd_ls, o.index, o.gate, recovered=True)
    assert [r["container"] for r in doc["recordings"]] == ["segments"]
    _, doc = run_json(cmd_ls, o.index, o.gate, min_duration_ms=9_000, max_duration_ms=12_000)
    assert [r["seq"] for r in doc["recordings"]] == [1]  # 0..9 s (pre-roll clamped at 0)
    _, doc = run_json(cmd_ls, o.index, o.gate, since="2026-11-25T10:30:00Z")
    assert [r["seq"] for r in doc["recordings"]] == [3]
    _, doc = run_json(cmd_ls, o.index, o.gate, device="nobody")
    assert doc == {"count": 0, "recordings": []}

    code, text, err = run_text(cmd_ls, o.index, o.gate)
    assert code == 0 and err == ""
    lines = text.splitlines()
    assert lines[0].startswith("STARTED (UTC)") and lines[-1] == "3 recordings"
    column = lines[0].index("RECORDING")
    for line, m in zip(lines[1:4], o.manifests, strict=True):
        assert line[column:] == m["recording_id"]
        assert line.startswith(m["started_utc"][:19].replace("T", " "))
    assert "recovered" in lines[3]
    code, _, err = run_text(cmd_ls, o.index, o.gate, since="last tuesday")
    assert code == 1 and err.count("\n") == 1 and "since" in err and "Traceback" not in err


def test_ls_pending_counts_parked_chunks(office_store: Office):
    o = office_store
    init = {"blob_bytes": 5000, "manifest": {"seq": 4}, "chunk_count": 5}
    o.index.note_upload(DEVICE, "rec-in-flight", init, 5, received=1)
    for i in (0, 3):
        o.store.park_chunk(DEVICE, "rec-in-flight", i, b"x" * 1000)
    code, doc = run_json(cmd_ls, o.index, o.gate, store=o.store, pending=True)
    assert code == 0
    [up] = doc["uploads"]
    assert (up["recording_id"], up["seq"], up["received"], up["chunk_count"]) == (
        "rec-in-flight", 4, 2, 5,
    )  # fmt: skip
    code, text, _ = run_text(cmd_ls, o.index, o.gate, pending=True)  # no store: the row's count
    assert code == 0 and "1/5" in text and "rec-in-flight" in text


def test_show(office_store: Office):
    o = office_store
    m = o.manifests[0]
    code, doc = run_json(cmd_show, o.index, o.gate, m["recording_id"])
    assert code == 0 and doc["manifest"] == m and doc["record"]["seq"] == 1
    code, text, _ = run_text(cmd_show, o.index, o.gate, m["recording_id"][:13])  # a unique prefix
    assert code == 0
    fields = dict(line.split(None, 1) for line in text.splitlines())
    assert fields["recording"] == m["recording_id"]
    assert fields["device"].startswith(f"{DEVICE} (seq 1")
    assert fields["audio"].startswith(f"flac in age, {m['blob_bytes']} bytes")
    code, out, err = run_text(cmd_show, o.index, o.gate, "no-such-recording")
    assert code == 1 and out == ""
    assert err == "linetap-office: error: no recording 'no-such-recording' in the index\n"


# --------------------------------------------------------------------------- export


def test_export_wav_equals_the_age_tool(office_store: Office, office, tmp_path: Path):
    o = office_store
    for path, m in zip(o.paths[:2], o.manifests[:2], strict=True):
        wav = tmp_path / f"{m['seq']}.wav"
        code, text, err = run_text(
            cmd_export, o.index, o.gate, o.store, m["recording_id"], identity=office[0], output=wav
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
        cmd_export, o.index, o.gate, o.store, o.manifests[0]["recording_id"], identity=office[0],
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
            cmd_export, o.index, o.gate, o.store, m["recording_id"], identity=office[0],
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
        cmd_export, o.index, o.gate, o.store, rec, identity=office[0], output=tmp_path / "x.mp3"
    )
    assert code == 1 and "use a .wav or .flac name" in err and err.count("\n") == 1
    other = tmp_path / "other.key"
    subprocess.run(["age-keygen", "-o", str(other)], check=True, capture_output=True)
    code, _, err = run_text(
        cmd_export, o.index, o.gate, o.store, rec, identity=other, output=tmp_path / "x.wav"
    )
    assert code == 1 and "cannot decrypt" in err and err.count("\n") == 1
    code, _, err = run_text(
        cmd_export,
        o.index,
        o.gate,
        o.store,
        rec,
        identity=tmp_path / "nokey",
        output=tmp_path / "x.wav",
    )
    assert code == 1 and "nokey" in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.glob("x.*")) == []  # nothing half-written
    assert not list(tmp_path.glob(".x.wav.*"))


# --------------------------------------------------------------------------- verify


def test_verify_clean_store(office_store: Office, office):
    o = office_store
    code, doc = run_json(cmd_verify, o.index, o.gate, o.store, o.keys, identity=office[0])
    assert code == 0 and doc["ok"] and doc["checked"] == 3 and doc["chain"] == []
    assert all(r["problems"] == [] for r in doc["recordings"])
    code, text, _ = run_text(cmd_verify, o.index, o.gate, o.store, o.keys)
    assert code == 0 and text == "verified 3 recording(s) of 1 device(s): all good\n"


def test_verify_reports_a_flipped_byte(office_store: Office, office):
    o = office_store
    blob = o.paths[1]
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(bytes(data))
    code, doc = run_json(cmd_verify, o.index, o.gate, o.store, o.keys, identity=office[0])
    assert code == 1 and not doc["ok"]
    bad = {r["seq"]: r["problems"] for r in doc["recordings"] if r["problems"]}
    assert list(bad) == [2]
    assert any("sha256 differs" in p for p in bad[2])
    assert any("cannot decrypt" in p for p in bad[2])  # the AEAD notices too
    code, text, _ = run_text(cmd_verify, o.index, o.gate, o.store, o.keys)
    assert code == 1 and o.manifests[1]["recording_id"] in text and "1 problem(s)" in text


def test_verify_reports_an_edited_manifest(office_store: Office):
    o = office_store
    path = o.paths[0].with_name(o.manifests[0]["recording_id"] + ".manifest.json")
    m = json.loads(path.read_text())
    m["caller_id"] = {"number": "0800 999 999", "name": "someone else", "source": "fsk"}
    path.write_text(json.dumps(m))
    code, doc = run_json(cmd_verify, o.index, o.gate, o.store, o.keys)
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
    code, doc = run_json(cmd_verify, o.index, o.gate, o.store, o.keys)
    assert code == 1
    [bad] = [r for r in doc["recordings"] if r["problems"]]
    assert bad["seq"] == 3 and "caller_number" in bad["problems"][0]


def test_verify_reports_a_gap(tmp_path: Path, sealed: Sealed):
    o = make_office(tmp_path, sealed, seqs=(1, 3))
    try:
        assert o.index.gaps() == [(DEVICE, 2, 2)]
        assert [a.kind for a in o.index.alarms()] == ["gap"]
        code, doc = run_json(cmd_verify, o.index, o.gate, o.store, o.keys)
        assert code == 1
        assert all(r["ok"] for r in doc["recordings"])
        [chain] = doc["chain"]
        assert chain["seq"] == 3 and "gap: seq 2 missing before seq 3" in chain["message"]
        code, text, _ = run_text(cmd_verify, o.index, o.gate, o.store, o.keys)
        assert code == 1 and "gap: seq 2 missing before seq 3" in text
    finally:
        o.index.close()


def test_verify_reports_a_deleted_latest_recording(office_store: Office):
    o = office_store
    o.edit_index("DELETE FROM recordings WHERE seq = 3")
    code, doc = run_json(cmd_verify, o.index, o.gate, o.store, o.keys)
    assert code == 1 and doc["checked"] == 2
    assert "seq 3 missing at the end" in doc["chain"][0]["message"]


def test_verify_without_the_device_key(office_store: Office):
    o = office_store
    code, doc = run_json(cmd_verify, o.index, o.gate, o.store, {})
    assert code == 1
    assert all(
        "no public key known for device test-device" in r["problems"][0] for r in doc["recordings"]
    )
    code, _, err = run_text(cmd_verify, o.index, o.gate, o.store, o.keys, device="nobody")
    assert code == 1 and "nobody" in err and err.count("\n") == 1


# --------------------------------------------------------------------------- argparse


def test_commands_through_argparse(
    office_store: Office, office, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
):  # fmt: skip
    o = office_store
    parser = argparse.ArgumentParser(prog="linetap-office")
    add_query_commands(parser.add_subparsers(dest="command", required=True))
    common = ["--store", str(o.store.root)]  # the index defaults to STORE/index.sqlite3
    viewer, sup = cli_accounts(o, monkeypatch)

    def run(*argv: str, login: Login = viewer) -> tuple[int, str, str]:
        login.apply(monkeypatch)
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
        "export", *common, o.manifests[0]["recording_id"], "-i", str(office[0]), "-o", str(wav),
        login=sup,
    )  # fmt: skip
    assert code == 0 and soundfile.info(wav).frames == o.manifests[0]["audio_frames"]
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / f"{DEVICE}.pub").write_text(public_key_b64(o.keys[DEVICE]) + "\n")
    code, out, _ = run(
        "verify", *common, "--device-keys", str(keys), "-i", str(office[0]), login=sup
    )
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


# --------------------------------------------------------------------------- hostile text

# What a device can sign into a manifest: clear the screen, ring the bell, return to the
# line's start and reverse what follows (U+202E), here in caller name, number and line.
HOSTILE_NAME = "\x1b[2JEvil\x07 Corp\r\u202eraboof"
HOSTILE_NUMBER = "0207\x1b[31m946\u2066"
HOSTILE_LINE = "line1\x9b2J"  # C1 CSI
RAW = ("\x1b", "\x07", "\r", "\u202e", "\u2066", "\x9b")


def hostile_entry(sealed: Sealed, tmp_path: Path) -> Path:
    """A copy of the first outbox entry whose manifest carries control characters, signed
    by the real device key (so it verifies: only the text is hostile)."""
    from sealedrec.manifest import SIGNATURE_FIELD, sign_manifest

    source = sealed.entries[0]
    entry = tmp_path / "hostile" / source.name
    entry.mkdir(parents=True)
    for f in source.iterdir():
        (entry / f.name).write_bytes(f.read_bytes())
    body = {k: v for k, v in manifest_of(source).items() if k != SIGNATURE_FIELD}
    body["caller_id"] = {"number": HOSTILE_NUMBER, "name": HOSTILE_NAME, "source": "fsk"}
    body["line"] = HOSTILE_LINE
    key = load_device_key(source.parents[2] / "keys" / "device.key")
    (entry / "manifest.json").write_text(json.dumps(sign_manifest(body, key)))
    return entry


def test_ls_and_show_escape_control_characters(tmp_path: Path, sealed: Sealed):
    store = FileBlobStore(tmp_path / "store")
    index = open_index(f"sqlite:///{tmp_path}/store/index.sqlite3")
    try:
        entry = hostile_entry(sealed, tmp_path)
        rec = manifest_of(entry)["recording_id"]
        ingest(store, index, entry)
        record = index.get(rec)
        assert record is not None and record.caller_name == HOSTILE_NAME  # stored exactly
        gate = gate_for(index)

        for text in (run_text(cmd_ls, index, gate)[1], run_text(cmd_show, index, gate, rec)[1]):
            assert not [c for c in RAW if c in text], repr(text)
            assert "\\x1b[2JEvil\\x07 Corp\\x0d\\u202eraboof" in text
            assert "0207\\x1b[31m946\\u2066" in text and "line1\\x9b2J" in text
        code, _, err = run_text(cmd_show, index, gate, "\x1b[2Jnone\u202e")
        assert code == 1 and "\\x1b[2Jnone\\u202e" in err and "\x1b" not in err

        for fn, args in ((cmd_ls, ()), (cmd_show, (rec,))):
            out = io.StringIO()
            assert fn(index, gate, *args, as_json=True, out=out, err=io.StringIO()) == 0
            raw = out.getvalue()
            assert raw.isascii() and not [c for c in RAW if c in raw], raw
            doc = json.loads(raw)  # exact strings back
            row = doc["recordings"][0] if fn is cmd_ls else doc["record"]
            assert (row["caller_name"], row["caller_number"], row["line"]) == (
                HOSTILE_NAME, HOSTILE_NUMBER, HOSTILE_LINE,
            )  # fmt: skip
        code, text, _ = run_text(cmd_verify, index, gate, store, {DEVICE: sealed.device_key})
        assert code == 0 and "all good" in text
    finally:
        index.close()


def test_terminal_safe():
    assert terminal_safe("Jane Doe, 0207 946 0000 — café") == "Jane Doe, 0207 946 0000 — café"
    assert terminal_safe("a\tb\nc\x7fd\x85e") == "a\\x09b\\x0ac\\x7fd\\x85e"
    assert terminal_safe("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069") == (
        "\\u202a\\u202b\\u202c\\u202d\\u202e\\u2066\\u2067\\u2068\\u2069"
    )
    assert terminal_safe("x\ud800y\u2028\U000e0041") == "x\\ud800y\\u2028\\U000e0041"
    assert format_table(["A"], [["\x1b[2J"]]) == "A\n\\x1b[2J"


# --------------------------------------------------------------------------- --config


def test_every_query_command_takes_the_config(
    office_store: Office, office, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
):  # fmt: skip
    o = office_store
    conf = tmp_path / "office.toml"
    conf.write_text('root = "store"\n')  # relative to the config's directory
    monkeypatch.delenv("LINETAP_OFFICE_CONFIG", raising=False)
    monkeypatch.delenv("LINETAP_OFFICE_STORE", raising=False)
    viewer, sup = cli_accounts(o, monkeypatch)

    def run(*argv: str, login: Login = viewer) -> tuple[int, str, str]:
        login.apply(monkeypatch)
        code = office_main(list(argv))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    with_config = ["--config", str(conf)]
    code, out, _ = run("ls", *with_config, "--json")
    assert code == 0 and json.loads(out)["count"] == 3
    code, out, _ = run("show", *with_config, o.manifests[1]["recording_id"])
    assert code == 0 and "line2" in out
    wav = tmp_path / "c.wav"
    rec = o.manifests[0]["recording_id"]
    code, _, err = run("export", *with_config, rec, "-i", str(office[0]), "-o", str(wav), login=sup)
    assert code == 0 and soundfile.info(wav).frames == o.manifests[0]["audio_frames"], err
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / f"{DEVICE}.pub").write_text(public_key_b64(o.keys[DEVICE]) + "\n")
    code, out, _ = run("verify", *with_config, "--device-keys", str(keys))
    assert code == 0 and "all good" in out
    # The config's index = ...: a URL it names is used.
    conf.write_text(f'root = "store"\nindex = "sqlite:///{tmp_path}/other/i.sqlite3"\n')
    code, _, err = run("ls", *with_config)
    assert code == 1 and "other" in err and err.count("\n") == 1
    # $LINETAP_OFFICE_CONFIG when no option is given.
    conf.write_text('root = "store"\n')
    monkeypatch.setenv("LINETAP_OFFICE_CONFIG", str(conf))
    code, out, _ = run("ls", "--json")
    assert code == 0 and json.loads(out)["count"] == 3
    # --store/--root still work, and win over the config's root.
    code, out, _ = run("ls", "--root", str(o.store.root), "--json")
    assert code == 0 and json.loads(out)["count"] == 3


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "no such file; pass --config"),
        ("root = [", "cannot read"),
        ("root = 5\n", "root: Input is not a valid path"),
        ("rooot = '/x'\n", "rooot: Extra inputs are not permitted"),
    ],
    ids=["missing", "not-toml", "bad-value", "typo"],
)
@pytest.mark.parametrize("command", ["ls", "show", "export", "verify", "init", "serve"])
def test_bad_config_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, expected: str,
    command: str,
):  # fmt: skip
    conf = tmp_path / "office.toml"
    if content is not None:
        conf.write_text(content)
    extra = {
        "show": ["abcd"], "export": ["abcd", "-i", "k", "-o", "x.wav"], "init": ["--name", "X"],
    }.get(command, [])  # fmt: skip
    code = office_main([command, "--config", str(conf), *extra])
    captured = capsys.readouterr()
    assert code == 2, captured
    assert captured.err.count("\n") == 1 and expected in captured.err, captured.err
    assert str(conf) in captured.err and "Traceback" not in captured.err


def test_no_config_anywhere_says_what_to_pass(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    import headoffice.config

    monkeypatch.delenv("LINETAP_OFFICE_CONFIG", raising=False)
    monkeypatch.delenv("LINETAP_OFFICE_STORE", raising=False)
    monkeypatch.setattr(headoffice.config, "DEFAULT_CONFIG", tmp_path / "etc" / "office.toml")
    for argv in (["ls"], ["serve"], ["office-client"], ["verify", "--json"]):
        assert office_main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        assert "no office config" in err and "pass --config office.toml" in err, err
        assert str(tmp_path / "etc" / "office.toml") in err


def test_resolve_office_precedence(tmp_path: Path):
    conf = tmp_path / "office.toml"
    conf.write_text('root = "r"\nindex = "postgresql://db/office"\n')
    env = {"LINETAP_OFFICE_CONFIG": str(conf)}
    where = resolve_office(environ=env)
    assert (where.root, where.index_url) == (tmp_path / "r", "postgresql://db/office")
    assert where.config is not None and where.config.broker.client_id == "office-receiver"
    where = resolve_office(root=tmp_path / "s", environ=env)  # --root alone: no config
    assert where.root == tmp_path / "s" and where.config is None
    assert where.index_url == f"sqlite:///{tmp_path}/s/index.sqlite3"
    where = resolve_office(conf, tmp_path / "s", "sqlite:///x.db", environ={})
    assert (where.root, where.index_url) == (tmp_path / "s", "sqlite:///x.db")
    store_env = {"LINETAP_OFFICE_STORE": str(tmp_path / "old"), "LINETAP_OFFICE_INDEX": "i"}
    where = resolve_office(environ=store_env)
    assert (where.root, where.index_url, where.config) == (tmp_path / "old", "i", None)


def test_office_commands_with_the_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    """init, office-client, broker-config and serve --client find the root in the config."""
    import headoffice.service

    conf = tmp_path / "etc" / "office.toml"
    conf.parent.mkdir()
    root = tmp_path / "office"
    conf.write_text(f'root = "{root}"\n[broker]\ncert_file = "a.crt"\nkey_file = "a.key"\n')
    c = ["--config", str(conf)]
    assert office_main(["init", *c, "--name", "ACME"]) == 0
    assert (root / "ca" / "ca.crt").is_file() and (root / "keys" / "office.key").is_file()
    assert office_main(["office-client", *c, "--name", "office-receiver-2"]) == 0
    assert (root / "office" / "office-receiver-2.crt").is_file()
    assert office_main(["broker-config", *c]) == 0
    assert "user office-receiver-2" in (root / "broker" / "acl").read_text()
    assert office_main(["init", "--root", str(tmp_path / "r2"), "--name", "B"]) == 0  # as before
    capsys.readouterr()

    seen: list[OfficeConfig] = []

    def fake_serve(cfg: OfficeConfig, _receiver: object) -> int:
        seen.append(cfg)
        return 0

    monkeypatch.setattr(headoffice.service, "serve", fake_serve)
    assert office_main(["serve", *c, "--client", "office-receiver-2"]) == 0
    assert office_main(["serve", *c]) == 0
    worker, plain = seen
    assert worker.broker.client_id == "office-receiver-2"
    assert worker.broker.cert_file == root / "office" / "office-receiver-2.crt"
    assert worker.broker.key_file == root / "office" / "office-receiver-2.key"
    assert (plain.broker.client_id, plain.broker.cert_file) == (
        "office-receiver", conf.parent / "a.crt",
    )  # fmt: skip
