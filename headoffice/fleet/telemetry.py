"""The status document a device publishes (retained) on ``linetap/{device}/status``, as
one strict, bounded model: :func:`parse_status`.

What the uploader sends (``uploader/telemetry.py:status_document``): its outbox (counts,
unacknowledged recordings and the oldest one's age), the upload link, the data
partition's free bytes, the clock's sync state, the recorder's status (lines with state,
LED and the last second's levels; faults), versions, and the signed head (the seq and
manifest hash of the newest sealed recording). Its last will, and what it publishes when
it stops, is ``{"state":"offline"}``.

A device's TLS key sits on an SD card anyone can pull, so every byte is hostile: the
JSON is read within the protocol's limits (size, nesting depth, digits of a number; a
number with a fraction is accepted here, as telemetry carries dBFS and seconds, but not
NaN or infinity), every field the office reads is typed and bounded, and whatever else a
newer firmware adds is ignored. Every field may be missing (older firmware, a recorder
that is not running); one of the wrong type or out of range refuses the message.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sealedrec.protocol import MAX_INT_DIGITS, MAX_JSON_DEPTH, ProtocolError, json_depth

__all__ = [
    "MAX_STATUS_BYTES",
    "Clock",
    "LineLevels",
    "LineStatus",
    "OutboxStatus",
    "RecorderStatus",
    "StatusDocument",
    "TelemetryError",
    "parse_status",
]

#: The largest status message read (the recorder's part is at most 64 KiB on the device).
MAX_STATUS_BYTES = 128 * 1024
MAX_FLOAT_CHARS = 32
MAX_LINES = 16
INT64 = 2**63 - 1

_Short = Annotated[str, Field(max_length=200)]
_Text = Annotated[str, Field(max_length=500)]
_Name = Annotated[str, Field(min_length=1, max_length=64)]
_Count = Annotated[int, Field(ge=0, le=INT64)]
_Seconds = Annotated[float, Field(ge=0, le=100 * 366 * 86400)]
_Dbfs = Annotated[float, Field(ge=-200, le=50)]


class TelemetryError(ProtocolError):
    """A status message that is not a status document (the reason, for the log)."""


class _Model(BaseModel):
    # Tolerant of what newer firmware adds (ignored), strict about what is read.
    model_config = ConfigDict(frozen=True, extra="ignore", strict=True)


class OutboxStatus(_Model):
    counts: dict[_Name, _Count] | None = Field(None, max_length=16)
    unacked_count: _Count | None = None
    unacked_bytes: _Count | None = None
    oldest_unacked_age_s: _Seconds | None = None
    last_ack_at: _Short | None = None
    error: _Text | None = None

    @field_validator("oldest_unacked_age_s", mode="before")
    @classmethod
    def _whole_is_float(cls, value: object) -> object:
        return _as_float(value)


class Upload(_Model):
    connected: bool | None = None
    backlog: _Count | None = None
    acked: _Count | None = None
    rejected: _Count | None = None
    sent_bytes: _Count | None = None


class Clock(_Model):
    synchronized: bool | None = None
    max_error_us: _Count | None = None
    est_error_us: _Count | None = None
    source: _Short | None = None


class LineLevels(_Model):
    """The last second of a line (``firmware/dsp/levels.py``'s summary)."""

    rms_dbfs: _Dbfs | None = None
    peak_dbfs: _Dbfs | None = None
    clipped_samples: _Count | None = None
    silence_fraction: Annotated[float, Field(ge=0, le=1)] | None = None
    hum: dict[_Name, _Dbfs] | None = Field(None, max_length=8)

    @field_validator("rms_dbfs", "peak_dbfs", "silence_fraction", mode="before")
    @classmethod
    def _whole_is_float(cls, value: object) -> object:
        return _as_float(value)

    @field_validator("hum", mode="before")
    @classmethod
    def _hum_floats(cls, value: object) -> object:
        if isinstance(value, dict):
            return {k: _as_float(v) for k, v in value.items()}
        return value

    @property
    def hum_dbfs(self) -> float | None:
        return max(self.hum.values()) if self.hum else None


class LineStatus(_Model):
    name: _Name
    state: _Short | None = None
    led: _Short | None = None
    levels: LineLevels | None = None


class Faults(_Model):
    audio: _Text | None = None
    storage: _Text | None = None
    # The recording announcement's playback (firmware.announce_output): callers are not
    # told their call is recorded while it is set.
    announce: _Text | None = None


class RecorderStatus(_Model):
    """The recorder's status file as the uploader carries it: its lines and faults, or
    ``state`` ``unknown`` / ``stale`` (with a reason) when the recorder is not running."""

    state: _Short | None = None
    reason: _Text | None = None
    error: _Text | None = None
    lines: list[LineStatus] | None = Field(None, max_length=MAX_LINES)
    status_led: _Short | None = None
    faults: Faults | None = None


class StatusDocument(_Model):
    """A status message: ``online`` with the fields below, or the last will ``offline``."""

    state: Literal["online", "offline"]
    device_id: _Name | None = None
    time_utc: _Short | None = None
    outbox: OutboxStatus | None = None
    upload: Upload | None = None
    disk_free_bytes: _Count | None = None
    clock_sync: Clock | None = None
    recorder: RecorderStatus | None = None
    # The signed head as sent: checked whole by sealedrec's verifier with the enrolled
    # key (headoffice.fleet.ingest) before any of it is believed.
    head: dict[_Name, Any] | None = Field(None, max_length=16)

    @property
    def online(self) -> bool:
        return self.state == "online"


def _as_float(value: object) -> object:
    # JSON writes 0.0 as 0 at times; strict mode would refuse an int for a float field.
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise TelemetryError(f"a number of {len(text)} digits (at most {MAX_INT_DIGITS})")
    return int(text)


def _bounded_float(text: str) -> float:
    if len(text) > MAX_FLOAT_CHARS:
        raise TelemetryError(f"a number of {len(text)} characters (at most {MAX_FLOAT_CHARS})")
    value = float(text)
    if not math.isfinite(value):
        raise TelemetryError(f"number {text[:24]!r} is out of range")
    return value


def _no_constant(text: str) -> float:
    raise TelemetryError(f"{text} is not a number telemetry may carry")


def _load(payload: bytes) -> Any:
    if len(payload) > MAX_STATUS_BYTES:
        raise TelemetryError(
            f"status: {len(payload)} bytes, over the {MAX_STATUS_BYTES}-byte limit"
        )
    depth = json_depth(payload)
    if depth > MAX_JSON_DEPTH:
        raise TelemetryError(f"status: nested {depth} deep (at most {MAX_JSON_DEPTH})")
    try:
        return json.loads(
            payload,
            parse_int=_bounded_int,
            parse_float=_bounded_float,
            parse_constant=_no_constant,
        )
    except TelemetryError as exc:
        raise TelemetryError(f"status: {exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError) as exc:
        raise TelemetryError(f"status: not JSON ({str(exc)[:120]})") from None


def parse_status(payload: bytes, device_id: str) -> StatusDocument:
    """The status document of ``device_id`` (from the topic), or :class:`TelemetryError`
    naming the first field at fault. A document naming another device is refused."""
    data = _load(payload)
    if not isinstance(data, dict):
        raise TelemetryError("status: not a JSON object")
    try:
        doc = StatusDocument.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "status"
        raise TelemetryError(f"status field {where}: {first['msg']}") from None
    if doc.device_id is not None and doc.device_id != device_id:
        raise TelemetryError(
            f"status: names device {doc.device_id!r}, published on {device_id!r}'s topic"
        )
    return doc
