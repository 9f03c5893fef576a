"""The MQTT upload protocol: the one module both the device and the head office import.

Topics (``{device}`` and ``{rec}`` are validated ids, see :func:`parse_topic`)::

    linetap/{device}/up/{rec}/init    JSON Init: manifest, blob size/sha256, chunking
    linetap/{device}/up/{rec}/{index} raw chunk bytes; user property "sha256" = hex
    linetap/{device}/up/{rec}/fin     JSON Fin: blob sha256 and chunk count again
    linetap/{device}/ack/{rec}        JSON Ack from the store: stored | missing | rejected
    linetap/{device}/status           retained JSON telemetry; last will {"state":"offline"}

Every message is idempotent by recording id and sha256. The device (re)sends ``init``
to learn where the store stands: the store answers every ``init`` and ``fin`` with an
ack — ``stored`` (durable: blob fsynced, index committed), ``missing`` (the chunk
indices it still lacks; all of them for a new recording), ``busy`` (the store cannot take
it now — full disk, a quota — with a reason and ``retry_after_s``; the device asks again
with init after that) or ``rejected`` (a reason; the device keeps the recording and raises
an alarm, it never deletes on a rejection). All MQTT v5 at QoS 1.

Everything received is hostile until checked: JSON is parsed with a size, nesting-depth
and number-length limit (no payload can make the parser recurse or build huge integers),
and no float is accepted (a manifest's canonical form has none).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sealedrec.errors import LinetapError

PROTOCOL_VERSION = 1
TOPIC_ROOT = "linetap"
QOS = 1
DEFAULT_CHUNK_SIZE = 256 * 1024
MAX_CHUNK_SIZE = 4 * 1024 * 1024
MIN_CHUNK_SIZE = 1024
MAX_JSON_BYTES = 256 * 1024  # init carries the manifest: a few KiB in practice
MAX_JSON_DEPTH = 16  # a manifest nests 3 deep; the C parser recurses per level
MAX_INT_DIGITS = 20  # any 64-bit integer; int("9" * 5000) costs and raises
MAX_CHUNKS = 1_000_000
# The most chunk indices one ``missing`` ack lists: 16384 × at most 8 bytes = 128 KiB, far
# below any broker's packet limit. An office never accepts an upload of more chunks (its
# ``limits.max_chunks``), so an honest device always gets its whole list in one answer.
MAX_MISSING_LISTED = 16_384
MAX_RETRY_AFTER_S = 3600
SHA256_PROPERTY = "sha256"
OFFLINE_PAYLOAD = b'{"state":"offline"}'

_ID = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
_REC = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_UP = re.compile(rf"^{TOPIC_ROOT}/({_ID})/up/({_REC})/(init|fin|0|[1-9][0-9]{{0,6}})$")
_ACK = re.compile(rf"^{TOPIC_ROOT}/({_ID})/ack/({_REC})$")
_STATUS = re.compile(rf"^{TOPIC_ROOT}/({_ID})/status$")


class ProtocolError(LinetapError, ValueError):
    """A message that does not follow the protocol; ``reason`` says how, for the logs."""


class Kind(StrEnum):
    INIT = "init"
    CHUNK = "chunk"
    FIN = "fin"
    ACK = "ack"
    STATUS = "status"


@dataclass(frozen=True, slots=True)
class Topic:
    kind: Kind
    device: str
    recording: str | None = None
    index: int | None = None


def parse_topic(topic: str) -> Topic:
    m = _UP.match(topic)
    if m:
        device, rec, tail = m.groups()
        if tail in ("init", "fin"):
            return Topic(Kind(tail), device, rec)
        return Topic(Kind.CHUNK, device, rec, int(tail))
    m = _ACK.match(topic)
    if m:
        return Topic(Kind.ACK, m.group(1), m.group(2))
    m = _STATUS.match(topic)
    if m:
        return Topic(Kind.STATUS, m.group(1))
    raise ProtocolError(f"topic {topic[:120]!r} is not a linetap topic")


def _check_id(value: str, pattern: str, what: str) -> str:
    if not re.fullmatch(pattern, value):
        raise ProtocolError(f"{what} {value[:80]!r} is not a valid id")
    return value


def init_topic(device: str, rec: str) -> str:
    return f"{TOPIC_ROOT}/{_check_id(device, _ID, 'device')}/up/{_check_id(rec, _REC, 'recording')}/init"


def chunk_topic(device: str, rec: str, index: int) -> str:
    if not 0 <= index < MAX_CHUNKS:
        raise ProtocolError(f"chunk index {index} out of range")
    return f"{TOPIC_ROOT}/{_check_id(device, _ID, 'device')}/up/{_check_id(rec, _REC, 'recording')}/{index}"


def fin_topic(device: str, rec: str) -> str:
    return f"{TOPIC_ROOT}/{_check_id(device, _ID, 'device')}/up/{_check_id(rec, _REC, 'recording')}/fin"


def ack_topic(device: str, rec: str) -> str:
    return (
        f"{TOPIC_ROOT}/{_check_id(device, _ID, 'device')}/ack/{_check_id(rec, _REC, 'recording')}"
    )


def status_topic(device: str) -> str:
    return f"{TOPIC_ROOT}/{_check_id(device, _ID, 'device')}/status"


def up_filter(device: str = "+") -> str:
    """Subscription for everything devices upload (``+`` = every device)."""
    return f"{TOPIC_ROOT}/{device}/up/#"


def ack_filter(device: str) -> str:
    return f"{TOPIC_ROOT}/{device}/ack/+"


def chunk_count(blob_bytes: int, chunk_size: int) -> int:
    return -(-blob_bytes // chunk_size)


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_JSON_BRACKET = re.compile(rb"[\[\]{}]")


def json_depth(payload: bytes) -> int:
    """The deepest nesting of ``[``/``{`` in a JSON text (strings skipped), without
    parsing it: checked before ``json.loads``, whose C scanner recurses per level."""
    depth = deepest = 0
    for bracket in _JSON_BRACKET.findall(_JSON_STRING.sub(b'""', payload)):
        if bracket in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ProtocolError(f"a number of {len(text)} digits (at most {MAX_INT_DIGITS})")
    return int(text)


def _no_float(text: str) -> float:
    raise ProtocolError(f"number {text[:24]!r} is not an integer (protocol JSON has no floats)")


def parse_json(payload: bytes, what: str, *, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """``payload`` as JSON within the protocol's limits, or :class:`ProtocolError`."""
    if len(payload) > max_bytes:
        raise ProtocolError(f"{what}: {len(payload)} bytes, over the {max_bytes}-byte limit")
    depth = json_depth(payload)
    if depth > MAX_JSON_DEPTH:
        raise ProtocolError(f"{what}: nested {depth} deep (at most {MAX_JSON_DEPTH})")
    try:
        return json.loads(
            payload,
            parse_int=_bounded_int,
            parse_float=_no_float,
            parse_constant=_no_float,
        )
    except ProtocolError as exc:
        raise ProtocolError(f"{what}: {exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ProtocolError(f"{what}: not JSON ({str(exc)[:120]})") from None


def _load_json(payload: bytes, what: str) -> dict[str, Any]:
    data = parse_json(payload, what)
    if not isinstance(data, dict):
        raise ProtocolError(f"{what}: not a JSON object")
    if data.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(
            f"{what}: protocol version {data.get('v')!r}, this end speaks {PROTOCOL_VERSION}"
        )
    return data


def _dump(data: Mapping[str, Any]) -> bytes:
    return json.dumps(
        {"v": PROTOCOL_VERSION, **data}, sort_keys=True, separators=(",", ":")
    ).encode()


def _sha(value: Any, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _HEX64.match(value):
        raise ProtocolError(f"{what}: not a lower-case hex SHA-256")
    return value


def _int(data: Mapping[str, Any], key: str, what: str, lo: int, hi: int) -> int:
    value = data.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ProtocolError(f"{what}: {key} must be an integer in {lo}..{hi}, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Init:
    recording_id: str
    manifest: dict[str, Any]
    blob_bytes: int
    blob_sha256: str | None  # None: no audio (discarded call)
    chunk_size: int

    @property
    def chunk_count(self) -> int:
        return chunk_count(self.blob_bytes, self.chunk_size)

    def message(self) -> dict[str, Any]:
        """The JSON object :meth:`encode` sends (the office keeps it with the upload)."""
        return {
            "v": PROTOCOL_VERSION,
            "recording_id": self.recording_id,
            "manifest": self.manifest,
            "blob_bytes": self.blob_bytes,
            "blob_sha256": self.blob_sha256,
            "chunk_size": self.chunk_size,
            "chunk_count": self.chunk_count,
        }

    def encode(self) -> bytes:
        return _dump(self.message())

    @classmethod
    def decode(cls, payload: bytes, topic: Topic) -> Init:
        data = _load_json(payload, "init")
        rec = data.get("recording_id")
        if rec != topic.recording:
            raise ProtocolError(
                f"init: recording_id {rec!r} does not match the topic's {topic.recording!r}"
            )
        manifest = data.get("manifest")
        if not isinstance(manifest, dict):
            raise ProtocolError("init: manifest missing or not an object")
        if manifest.get("recording_id") != rec or manifest.get("device_id") != topic.device:
            raise ProtocolError("init: manifest is for another recording or device than the topic")
        size = _int(data, "chunk_size", "init", MIN_CHUNK_SIZE, MAX_CHUNK_SIZE)
        blob_bytes = _int(data, "blob_bytes", "init", 0, size * MAX_CHUNKS)
        sha = _sha(data.get("blob_sha256"), "init: blob_sha256")
        if (sha is None) != (blob_bytes == 0):
            raise ProtocolError("init: blob_sha256 must be given exactly when blob_bytes > 0")
        init = cls(str(rec), manifest, blob_bytes, sha, size)
        if data.get("chunk_count") != init.chunk_count:
            raise ProtocolError(
                f"init: chunk_count {data.get('chunk_count')!r} does not fit {blob_bytes} bytes in {size}-byte chunks"
            )
        return init


@dataclass(frozen=True, slots=True)
class Fin:
    recording_id: str
    blob_sha256: str | None
    chunk_count: int

    def encode(self) -> bytes:
        return _dump(
            {
                "recording_id": self.recording_id,
                "blob_sha256": self.blob_sha256,
                "chunk_count": self.chunk_count,
            }
        )

    @classmethod
    def decode(cls, payload: bytes, topic: Topic) -> Fin:
        data = _load_json(payload, "fin")
        if data.get("recording_id") != topic.recording:
            raise ProtocolError("fin: recording_id does not match the topic")
        return cls(
            str(data["recording_id"]),
            _sha(data.get("blob_sha256"), "fin: blob_sha256"),
            _int(data, "chunk_count", "fin", 0, MAX_CHUNKS),
        )


class AckStatus(StrEnum):
    STORED = "stored"
    MISSING = "missing"
    BUSY = "busy"  # cannot take it now (disk full, quota): ask again after retry_after_s
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class Ack:
    recording_id: str
    status: AckStatus
    missing: tuple[int, ...] = ()
    reason: str = ""
    blob_sha256: str | None = None
    retry_after_s: int = 0

    def encode(self) -> bytes:
        body: dict[str, Any] = {"recording_id": self.recording_id, "status": self.status.value}
        if self.status is AckStatus.MISSING:
            if len(self.missing) > MAX_MISSING_LISTED:
                raise ProtocolError(
                    f"ack: {len(self.missing)} missing chunks listed (at most "
                    f"{MAX_MISSING_LISTED}: the answer must fit a broker packet)"
                )
            body["missing"] = list(self.missing)
        if self.reason:
            body["reason"] = self.reason
        if self.blob_sha256 is not None:
            body["blob_sha256"] = self.blob_sha256
        if self.status is AckStatus.BUSY:
            body["retry_after_s"] = max(1, min(self.retry_after_s, MAX_RETRY_AFTER_S))
        return _dump(body)

    @classmethod
    def decode(cls, payload: bytes, topic: Topic) -> Ack:
        data = _load_json(payload, "ack")
        if data.get("recording_id") != topic.recording:
            raise ProtocolError("ack: recording_id does not match the topic")
        try:
            status = AckStatus(str(data.get("status")))
        except ValueError:
            raise ProtocolError(f"ack: unknown status {data.get('status')!r}") from None
        missing = data.get("missing", [])
        if not isinstance(missing, list) or not all(
            isinstance(i, int) and 0 <= i < MAX_CHUNKS for i in missing
        ):
            raise ProtocolError("ack: missing must be a list of chunk indices")
        retry = data.get("retry_after_s", 0)
        if not isinstance(retry, int) or isinstance(retry, bool):
            raise ProtocolError("ack: retry_after_s must be an integer")
        return cls(
            str(data["recording_id"]),
            status,
            tuple(missing),
            str(data.get("reason", ""))[:500],
            _sha(data.get("blob_sha256"), "ack: blob_sha256"),
            max(0, min(retry, MAX_RETRY_AFTER_S)),
        )


def check_chunk(data: bytes, sha256_hex: str | None, init: Init | None, index: int) -> None:
    """A chunk's size and hash against its user property and the init (when known)."""
    if len(data) > MAX_CHUNK_SIZE:
        raise ProtocolError(
            f"chunk {index}: {len(data)} bytes, over the {MAX_CHUNK_SIZE}-byte limit"
        )
    if sha256_hex is None:
        raise ProtocolError(f"chunk {index}: no {SHA256_PROPERTY!r} user property")
    if hashlib.sha256(data).hexdigest() != sha256_hex:
        raise ProtocolError(f"chunk {index}: sha256 does not match its user property (corrupt)")
    if init is not None:
        if index >= init.chunk_count:
            raise ProtocolError(f"chunk {index}: the recording has only {init.chunk_count} chunks")
        expected = min(init.chunk_size, init.blob_bytes - index * init.chunk_size)
        if len(data) != expected:
            raise ProtocolError(f"chunk {index}: {len(data)} bytes, expected {expected}")


def user_property(properties: Sequence[tuple[str, str]] | None, name: str) -> str | None:
    for key, value in properties or ():
        if key == name:
            return value
    return None
