"""The signed device head: the recorder signs it after each sealed recording, the uploader
publishes it in its retained telemetry, the office verifies it (:mod:`sealedrec.head`).

End to end: ``linetap replay --format sealed`` seals calls (the recorder pipeline), a
real ``linetap upload`` process publishes the head on a real mosquitto, and
:func:`verify_head` checks what arrived with the device's public key; a head signed with
another key travels the same way and is refused.
"""

from __future__ import annotations

import base64
import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware.app import device_key_path, make_sealing_sink, make_sink
from firmware.cli import main
from firmware.config import LinetapConfig, StorageConfig, load_config
from firmware.headfile import HeadFile
from firmware.recorder import StorageHealth
from firmware.sealing import ChainState, SealingSink
from firmware.sinks import RecordingEnd, RecordingStart
from sealedrec.head import HEAD_KIND, DeviceHead, HeadError, sign_head, verify_head
from sealedrec.keys import create_device_key, key_id, load_device_key
from sealedrec.manifest import GENESIS_HASH, canonical_json, manifest_hash
from sealedrec.verify import read_manifest
from tests.helpers import RATE, START_UTC, config_text, reaped, replay_inputs
from tests.mqtt_broker import Broker
from tests.test_systemd_units import UPLOADER, unit, values
from tests.test_uploader import StatusWatcher, _daemon_conf, _start_daemon, broker, start_broker
from uploader.telemetry import MAX_HEAD_BYTES, read_device_head

__all__ = ["broker", "start_broker"]  # the uploader tests' broker fixtures, used here

DEVICE = "test-device"  # tests.helpers.config_text's device_id
NOW = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
SKEW_S = 300.0
SHA = "ab" * 32
REC = "2f1c9a54-8d0e-4c38-9d6b-1a2b3c4d5e6f"


def _head(key: Ed25519PrivateKey, **overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "device_id": DEVICE,
        "seq": 42,
        "manifest_sha256": SHA,
        "recording_id": REC,
        "signed_at": NOW - timedelta(minutes=5),
        **overrides,
    }
    return sign_head(key=key, **fields)


def _verify(doc: object, key: Ed25519PrivateKey, **kw: Any) -> DeviceHead:
    args: dict[str, Any] = {"device_id": DEVICE, "now": NOW, "max_skew_s": SKEW_S, **kw}
    return verify_head(doc, key.public_key(), **args)


# -- sign / verify -------------------------------------------------------------------------


def test_a_head_verifies_with_the_device_key_after_a_json_round_trip():
    key = Ed25519PrivateKey.generate()
    doc = json.loads(json.dumps(_head(key)))  # as MQTT carries it
    head = _verify(doc, key)
    assert head == DeviceHead(
        DEVICE, 42, SHA, REC, NOW - timedelta(minutes=5), key_id(key.public_key())
    )
    assert set(doc) == {"device_id", "seq", "manifest_sha256", "recording_id", "signed_at",
                        "signature"}  # fmt: skip
    # What is signed, spelled out here: the fields but the signature, tagged as a head.
    body = {k: v for k, v in doc.items() if k != "signature"}
    raw = base64.b64decode(doc["signature"]["value"])
    key.public_key().verify(raw, canonical_json({"kind": "linetap.device_head.v1", **body}))
    assert HEAD_KIND == "linetap.device_head.v1"


def test_a_head_signed_with_another_key_is_refused():
    device, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    with pytest.raises(HeadError, match=f"signed by key {key_id(other.public_key())}, not by"):
        _verify(_head(other), device)
    # The forger copies the device's key id: the signature itself still fails.
    forged = _head(other)
    forged["signature"]["key_id"] = key_id(device.public_key())
    with pytest.raises(HeadError, match="signature does not verify"):
        _verify(forged, device)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seq", 41),
        ("manifest_sha256", "cd" * 32),
        ("recording_id", "another-recording"),
        ("recording_id", None),
        ("signed_at", "2026-11-25T09:56:00+00:00"),
        ("device_id", "another-device"),
    ],
)
def test_every_field_is_covered_by_the_signature(field: str, value: object):
    key = Ed25519PrivateKey.generate()
    doc = {**_head(key), field: value}
    with pytest.raises(HeadError, match="signature does not verify"):
        _verify(doc, key, device_id=doc["device_id"])


def test_a_head_for_another_device_is_refused():
    key = Ed25519PrivateKey.generate()  # one key enrolled for two devices, say
    with pytest.raises(HeadError, match="signed for device 'test-device', received for 'dev-b'"):
        _verify(_head(key), key, device_id="dev-b")


def test_signed_at_in_the_future_beyond_the_skew_is_refused():
    key = Ed25519PrivateKey.generate()
    assert _verify(_head(key, signed_at=NOW + timedelta(seconds=299)), key).seq == 42
    assert _verify(_head(key, signed_at=NOW - timedelta(days=60)), key).seq == 42  # idle device
    with pytest.raises(HeadError, match="301 s in the future"):
        _verify(_head(key, signed_at=NOW + timedelta(seconds=301)), key)
    with pytest.raises(ValueError, match="aware"):
        _verify(_head(key), key, now=NOW.replace(tzinfo=None))


def test_nothing_sealed_yet_is_seq_0_with_the_genesis_hash():
    key = Ed25519PrivateKey.generate()
    head = _verify(_head(key, seq=0, manifest_sha256=GENESIS_HASH, recording_id=None), key)
    assert (head.seq, head.recording_id) == (0, None)
    with pytest.raises(HeadError, match="seq 0"):
        _verify(_head(key, seq=0, manifest_sha256=GENESIS_HASH), key)
    with pytest.raises(HeadError, match="seq 0"):
        _verify(_head(key, seq=0, recording_id=None), key)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"seq": "42"}, "field seq"),
        ({"seq": -1}, "field seq"),
        ({"seq": 2**63}, "field seq"),
        ({"seq": True}, "field seq"),
        ({"manifest_sha256": "AB" * 32}, "field manifest_sha256"),
        ({"recording_id": "../../etc"}, "field recording_id"),
        ({"device_id": ""}, "field device_id"),
        ({"signed_at": "yesterday"}, "field signed_at"),
        ({"signed_at": "1970-01-01T00:00:00+00:00"}, "field signed_at"),
        ({"signature": "c2lnbmF0dXJl"}, "field signature"),
        ({"signature": {"alg": "rsa", "key_id": "x", "value": "x"}}, "field signature.alg"),
        ({"unsigned_note": "trust me"}, "field unsigned_note"),
    ],
)
def test_malformed_heads_name_the_field(change: dict[str, Any], message: str):
    key = Ed25519PrivateKey.generate()
    with pytest.raises(HeadError, match=message):
        _verify({**_head(key), **change}, key)


@pytest.mark.parametrize("doc", [None, "head", [1, 2], {"error": "head.json: not JSON"}])
def test_what_is_no_head_object_is_malformed(doc: object):
    with pytest.raises(HeadError, match="device head"):
        _verify(doc, Ed25519PrivateKey.generate())


def test_missing_fields_are_malformed():
    key = Ed25519PrivateKey.generate()
    for name in ("device_id", "seq", "manifest_sha256", "recording_id", "signed_at", "signature"):
        doc = {k: v for k, v in _head(key).items() if k != name}
        with pytest.raises(HeadError, match=f"field {name}"):
            _verify(doc, key)


def test_a_signature_value_that_is_not_base64_does_not_verify():
    key = Ed25519PrivateKey.generate()
    doc = _head(key)
    doc["signature"]["value"] = "not base64!"
    with pytest.raises(HeadError, match="does not verify"):
        _verify(doc, key)


# -- the recorder writes it -----------------------------------------------------------------


def _replay_calls(tmp_path: Path, office: tuple[Path, str], calls: int) -> Path:
    """``calls`` calls on one line through `linetap replay --format sealed` into
    ``tmp_path/data`` (a second run there continues the chain, as a restart would)."""
    out = tmp_path / "data"
    conf = tmp_path / "replay.toml"
    conf.write_text(
        config_text(tmp_path / "wav", lines=1, storage_format="sealed", recipients=(office[1],))
    )
    events = "".join(f"{1 + 4 * n} line1 offhook\n{3 + 4 * n} line1 onhook\n" for n in range(calls))
    folder = tmp_path / f"inputs-{len(list(tmp_path.glob('inputs-*')))}"
    folder.mkdir()
    inputs = replay_inputs(folder, events, seconds=4 * calls + 2, channels=1)
    assert main(inputs.argv(conf, out, "--format", "sealed", "--start-utc", START_UTC)) == 0
    return out


def _newest_manifest(out: Path) -> dict[str, Any]:
    entries = sorted((out / "outbox" / "sealed").iterdir())
    return read_manifest(entries[-1])


def _verify_file(out: Path) -> DeviceHead:
    doc = json.loads((out / "state" / "head.json").read_text())
    key = load_device_key(out / "keys" / "device.key")
    return verify_head(doc, key.public_key(), device_id=DEVICE, now=datetime.now(UTC),
                       max_skew_s=SKEW_S)  # fmt: skip


def test_the_recorder_signs_the_newest_sealed_recording(tmp_path: Path, office):
    before = datetime.now(UTC).replace(microsecond=0)
    out = _replay_calls(tmp_path, office, calls=2)
    newest = _newest_manifest(out)
    head = _verify_file(out)
    assert newest["seq"] == 2
    assert (head.seq, head.manifest_sha256, head.recording_id) == (
        2,
        manifest_hash(newest),
        newest["recording_id"],
    )
    assert before <= head.signed_at <= datetime.now(UTC)  # the wall clock, not the replay's
    assert head.key_id == newest["device_key_id"]  # the key that signs the manifests
    # A later run (a restart) continues the chain, and the head with it.
    _replay_calls(tmp_path, office, calls=1)
    head = _verify_file(out)
    newest = _newest_manifest(out)
    assert (head.seq, head.manifest_sha256) == (3, manifest_hash(newest))


def test_at_start_the_recorder_puts_a_stale_or_broken_head_right(
    tmp_path: Path, office, caplog: pytest.LogCaptureFixture
):
    """A crash between the outbox hand-over and the head's write leaves an older head (or,
    say, a torn file from a tool): the next start signs the chain's head again."""
    out = _replay_calls(tmp_path, office, calls=1)
    head_file = out / "state" / "head.json"
    old = head_file.read_bytes()
    out = _replay_calls(tmp_path, office, calls=1)
    current = _verify_file(out)
    cfg = _device_config(tmp_path, office)  # the daemon's view of the same data_dir
    head_file.write_bytes(old)  # seq 1, validly signed, but no longer the newest
    assert _verify_file(out).seq == 1
    make_sink(cfg, StorageHealth())  # what `linetap record` does at start
    assert _verify_file(out).manifest_sha256 == current.manifest_sha256
    head_file.write_text("{torn")
    # The replay's CLI reset the root logger (basicConfig force): listen on the module's.
    headfile_log = logging.getLogger("firmware.headfile")
    headfile_log.addHandler(caplog.handler)
    try:
        make_sink(cfg, StorageHealth())
    finally:
        headfile_log.removeHandler(caplog.handler)
    assert "unreadable" in caplog.text
    again = _verify_file(out)
    assert (again.seq, again.recording_id) == (2, current.recording_id)
    # An intact head is left as it is: not re-signed at every start.
    stamp = head_file.read_bytes()
    make_sink(cfg, StorageHealth())
    assert head_file.read_bytes() == stamp


def _device_config(tmp_path: Path, office: tuple[Path, str]) -> LinetapConfig:
    """A sealed device's config on ``tmp_path/data`` (its key at the default place)."""
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
    return load_config(conf)


def test_a_device_that_sealed_nothing_signs_seq_0(tmp_path: Path, office):
    cfg = _device_config(tmp_path, office)
    create_device_key(device_key_path(cfg))
    make_sink(cfg, StorageHealth())
    head = _verify_file(tmp_path / "data")
    assert (head.seq, head.manifest_sha256, head.recording_id) == (0, GENESIS_HASH, None)


def test_the_head_never_goes_back_to_an_older_recording(tmp_path: Path):
    """Recordings a crash left are sealed at start in directory order, not seq order."""
    key = Ed25519PrivateKey.generate()
    head = HeadFile(tmp_path / "state" / "head.json", DEVICE, key)
    head.advance(5, "05" * 32, "rec-5")
    head.advance(3, "03" * 32, "rec-3")
    again = HeadFile(tmp_path / "state" / "head.json", DEVICE, key)  # a restart reads the file
    again.advance(4, "04" * 32, "rec-4")
    doc = json.loads((tmp_path / "state" / "head.json").read_text())
    assert verify_head(doc, key.public_key(), device_id=DEVICE, now=datetime.now(UTC),
                       max_skew_s=0).seq == 5  # fmt: skip


def test_a_head_that_cannot_be_written_does_not_stop_sealing(
    tmp_path: Path, office, caplog: pytest.LogCaptureFixture
):
    cfg = _device_config(tmp_path, office)
    key = create_device_key(device_key_path(cfg))
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("")  # head.json's parent is a file: every write fails (also as root)
    plain = make_sealing_sink(cfg, StorageHealth(), key)
    sink = SealingSink(
        plain.settings,
        journal_root=cfg.storage.journal_dir,
        outbox=plain.outbox,
        chain=ChainState(cfg.storage.chain_file),
        device_key=key,
        head=HeadFile(blocked / "head.json", DEVICE, key),
    )
    writer = sink.open(RecordingStart("rec-1", DEVICE, "line1", 0, RATE, "offhook", START_UTC,
                                      0, 0, 0.0))  # fmt: skip
    writer.write(np.ones(RATE, dtype=np.int16))
    with caplog.at_level(logging.WARNING, logger="firmware.sealing"):
        writer.close(RecordingEnd("onhook", START_UTC, RATE, 1.0, RATE))
        while sink.pending:
            sink.poll()
    assert [e.seq for e in sink.outbox.entries()] == [1]
    assert "device head" in caplog.text and "not written" in caplog.text


# -- the uploader publishes it ------------------------------------------------------------


def test_read_device_head(tmp_path: Path):
    path = tmp_path / "head.json"
    assert read_device_head(path) is None  # nothing sealed, recorder not started yet
    path.write_text('{"seq": 1}')
    assert read_device_head(path) == {"seq": 1}  # as it is: the office judges it
    path.write_text("{torn")
    assert "not JSON" in read_device_head(path)["error"]  # type: ignore[index]
    path.write_text("[1]")
    assert "not a JSON object" in read_device_head(path)["error"]  # type: ignore[index]
    path.write_text(" " * (MAX_HEAD_BYTES + 1))
    assert "over 4096 bytes" in read_device_head(path)["error"]  # type: ignore[index]


def test_the_uploader_cannot_read_the_signing_key():
    """The key that signs manifests and heads stays with the recorder (same user: only
    the unit's sandbox keeps the uploader from it)."""
    key = StorageConfig().data_dir / "keys" / "device.key"
    assert f"-{key}" in values(unit(UPLOADER), "InaccessiblePaths")


def _has_head(seq: int) -> Any:
    def match(payload: bytes, _retained: bool) -> bool:
        head = json.loads(payload).get("head") if payload.startswith(b"{") else None
        return isinstance(head, dict) and head.get("seq") == seq

    return match


def test_the_uploader_publishes_the_head_and_a_forged_one_is_refused(
    tmp_path: Path, office, broker: Broker
):
    out = _replay_calls(tmp_path, office, calls=2)  # tmp_path/data: the daemon's data_dir
    device = load_device_key(out / "keys" / "device.key").public_key()
    conf = _daemon_conf(tmp_path, broker, telemetry_s=1.0)
    log = tmp_path / "uploader.log"
    with reaped(_start_daemon(conf, log)) as _proc, StatusWatcher(broker) as watcher:
        doc = json.loads(watcher.wait(_has_head(2), "a status with the head", timeout=30))
        head = verify_head(doc["head"], device, device_id=DEVICE, now=datetime.now(UTC),
                           max_skew_s=SKEW_S)  # fmt: skip
        assert head.manifest_sha256 == manifest_hash(_newest_manifest(out))
        # No store answers: both recordings are still on the device, the office has none.
        counts = doc["outbox"]["counts"]
        assert counts["sealed"] + counts["uploading"] == 2 == head.seq
        # A head signed with another key, dropped in the device's state: the uploader
        # publishes what it finds, the office refuses it.
        forged = sign_head(device_id=DEVICE, seq=7, manifest_sha256=SHA, recording_id=REC,
                           signed_at=datetime.now(UTC), key=Ed25519PrivateKey.generate())  # fmt: skip
        (out / "state" / "head.json").write_text(json.dumps(forged))
        doc = json.loads(watcher.wait(_has_head(7), "a status with the forged head"))
        with pytest.raises(HeadError, match="not by the device's key"):
            verify_head(doc["head"], device, device_id=DEVICE, now=datetime.now(UTC),
                        max_skew_s=SKEW_S)  # fmt: skip
    assert "Traceback" not in log.read_text()
