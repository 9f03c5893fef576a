"""The upload wire format: every malformed message is refused with a reason, never a crash."""

from __future__ import annotations

import contextlib
import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sealedrec.protocol import (
    Ack,
    AckStatus,
    Fin,
    Init,
    Kind,
    ProtocolError,
    Topic,
    check_chunk,
    chunk_topic,
    fin_topic,
    init_topic,
    parse_topic,
)

REC = "0b8e7a0e-6d0c-4c39-9a51-1f6f2b7d9c11"
SHA = hashlib.sha256(b"blob").hexdigest()


def manifest() -> dict[str, object]:
    return {"recording_id": REC, "device_id": "dev1", "seq": 1}


def init(**over: object) -> Init:
    fields: dict[str, object] = {
        "recording_id": REC,
        "manifest": manifest(),
        "blob_bytes": 600_000,
        "blob_sha256": SHA,
        "chunk_size": 262_144,
    }
    fields.update(over)
    return Init(**fields)  # type: ignore[arg-type]


def test_topics_round_trip():
    assert parse_topic(init_topic("dev1", REC)) == Topic(Kind.INIT, "dev1", REC)
    assert parse_topic(fin_topic("dev1", REC)) == Topic(Kind.FIN, "dev1", REC)
    assert parse_topic(chunk_topic("dev1", REC, 17)) == Topic(Kind.CHUNK, "dev1", REC, 17)
    assert parse_topic("linetap/dev1/ack/" + REC).kind is Kind.ACK
    assert parse_topic("linetap/dev1/status").kind is Kind.STATUS


@pytest.mark.parametrize(
    "topic",
    [
        "linetap/dev1/up/x/007",
        "linetap/../up/x/init",
        "linetap/dev1/up/x/init/extra",
        "other/dev1/up/x/init",
        "linetap/dev1/up//init",
        "linetap/dev 1/up/x/init",
        "linetap/dev1/up/x/-1",
        "",
    ],
)
def test_bad_topics(topic: str):
    with pytest.raises(ProtocolError):
        parse_topic(topic)


def test_init_round_trip_and_chunk_count():
    i = init()
    assert i.chunk_count == 3
    back = Init.decode(i.encode(), Topic(Kind.INIT, "dev1", REC))
    assert back == i


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(v=2), "protocol version"),
        (lambda d: d.update(recording_id="other"), "does not match the topic"),
        (lambda d: d.update(chunk_count=9), "chunk_count"),
        (lambda d: d.update(chunk_size=10), "chunk_size"),
        (lambda d: d.update(blob_sha256="XYZ"), "hex SHA-256"),
        (lambda d: d.update(blob_bytes=-1), "blob_bytes"),
        (lambda d: d["manifest"].update(device_id="dev2"), "another recording or device"),
        (lambda d: d.pop("manifest"), "manifest missing"),
    ],
)
def test_init_refusals(mutate, message: str):
    data = json.loads(init().encode())
    mutate(data)
    with pytest.raises(ProtocolError, match=message):
        Init.decode(json.dumps(data).encode(), Topic(Kind.INIT, "dev1", REC))


def test_not_json_and_oversized():
    t = Topic(Kind.INIT, "dev1", REC)
    with pytest.raises(ProtocolError, match="not JSON"):
        Init.decode(b"\xff\x00garbage", t)
    with pytest.raises(ProtocolError, match="limit"):
        Init.decode(b"{" + b" " * 300_000 + b"}", t)
    with pytest.raises(ProtocolError, match="not a JSON object"):
        Init.decode(b"[1, 2]", t)


def test_ack_and_fin():
    t = Topic(Kind.ACK, "dev1", REC)
    ack = Ack(REC, AckStatus.MISSING, missing=(0, 2))
    assert Ack.decode(ack.encode(), t) == ack
    with pytest.raises(ProtocolError, match="unknown status"):
        Ack.decode(json.dumps({"v": 1, "recording_id": REC, "status": "maybe"}).encode(), t)
    with pytest.raises(ProtocolError, match="chunk indices"):
        Ack.decode(
            json.dumps(
                {"v": 1, "recording_id": REC, "status": "missing", "missing": ["a"]}
            ).encode(),
            t,
        )
    fin = Fin(REC, SHA, 3)
    assert Fin.decode(fin.encode(), Topic(Kind.FIN, "dev1", REC)) == fin


def test_chunk_checks():
    i = init(blob_bytes=300_000)
    data = b"x" * 262_144
    sha = hashlib.sha256(data).hexdigest()
    check_chunk(data, sha, i, 0)
    with pytest.raises(ProtocolError, match="user property"):
        check_chunk(data, None, i, 0)
    with pytest.raises(ProtocolError, match="corrupt"):
        check_chunk(data, SHA, i, 0)
    with pytest.raises(ProtocolError, match="expected 37856"):
        check_chunk(data, sha, i, 1)
    with pytest.raises(ProtocolError, match="only 2 chunks"):
        check_chunk(data, sha, i, 2)


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=2000))
def test_random_payloads_never_crash(payload: bytes):
    for cls, kind in ((Init, Kind.INIT), (Fin, Kind.FIN), (Ack, Kind.ACK)):
        # Anything but ProtocolError (KeyError, TypeError, ...) fails the test.
        with contextlib.suppress(ProtocolError):
            cls.decode(payload, Topic(kind, "dev1", REC))
