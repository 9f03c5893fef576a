"""The index's records and errors, and the helpers that turn manifests and rows into
them: what both backends store and return."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sealedrec.errors import LinetapError
from sealedrec.manifest import ManifestError
from sealedrec.model import Manifest, validate_manifest

Row = tuple[Any, ...]
Query = Callable[[str, Sequence[Any]], list[Row]]


class IndexStoreError(LinetapError, OSError):
    """The index cannot be opened, read or written (the message names the index, never
    a password)."""


class IndexConflictError(IndexStoreError):
    """A recording id is already stored with a different manifest (alarm ``conflict``)."""


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class StoredRecord:
    recording_id: str
    device_id: str
    line: str
    seq: int
    started_utc: str
    ended_utc: str | None
    duration_ms: int
    caller_number: str | None
    caller_name: str | None
    dialled_digits: str
    direction: str | None
    recovered: bool
    discarded: bool
    codec: str | None
    container: str | None
    blob_sha256: str | None
    blob_bytes: int
    path: str
    manifest: dict[str, Any]
    stored_at: str

    def as_dict(self, *, manifest: bool = False) -> dict[str, Any]:
        data = asdict(self)
        if not manifest:
            del data["manifest"]
        return data


@dataclass(frozen=True, slots=True)
class Alarm:
    id: int
    device_id: str
    kind: str  # gap | replay | chain | gap_closed | conflict | anything the receiver raises
    message: str
    seq: int | None
    recording_id: str | None
    raised_at: str


@dataclass(frozen=True, slots=True)
class DeviceState:
    device_id: str
    last_seq: int
    last_manifest_sha256: str
    recordings: int
    updated_at: str


class Gap(NamedTuple):
    device_id: str
    first_missing: int
    last_missing: int


@dataclass(frozen=True, slots=True)
class PendingUpload:
    device_id: str
    recording_id: str
    init: dict[str, Any]
    chunk_count: int
    received: int
    updated_at: str


@dataclass(frozen=True, slots=True)
class AddResult:
    record: StoredRecord
    created: bool  # False: this recording id was already stored (idempotent resend)
    alarms: tuple[Alarm, ...]


# --------------------------------------------------------------------------- helpers


def utc_iso(value: str | datetime, what: str = "time") -> str:
    """``value`` as ``YYYY-MM-DDTHH:MM:SS.mmm+00:00`` (naive times are taken as UTC)."""
    if isinstance(value, datetime):
        when = value
    else:
        try:
            when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except (AttributeError, ValueError):
            raise ManifestError(
                f"{what} {str(value)[:40]!r} is not an ISO 8601 time (e.g. 2026-11-25T10:00:00Z)"
            ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).isoformat(timespec="milliseconds")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def redact_dsn(dsn: str) -> str:
    """The DSN with any password replaced by ``***`` (URL or key=value form)."""
    try:
        parts = urlsplit(dsn)
    except ValueError:
        parts = None
    if parts is not None and parts.scheme and "://" in dsn:
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            if ":" in userinfo:
                netloc = f"{userinfo.split(':', 1)[0]}:***@{host}"
        query = urlencode(
            [
                (k, "***" if k.lower() == "password" else v)
                for k, v in parse_qsl(parts.query, keep_blank_values=True)
            ],
            safe="/:*",
        )
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", dsn, flags=re.I)


def _like(text: str) -> str:
    return "%" + text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def row_from_manifest(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The searchable columns a signed manifest yields (raises ManifestError): through
    the one typed model, so the index never takes a value the receiver did not check."""
    return row_from_model(validate_manifest(manifest))


def row_from_model(m: Manifest) -> dict[str, Any]:
    """:func:`row_from_manifest` of a manifest already through the model."""
    caller = m.caller_id
    return {
        "recording_id": m.recording_id,
        "device_id": m.device_id,
        "line": m.line,
        "seq": m.seq,
        "started_utc": utc_iso(m.started, "manifest field started_utc"),
        "ended_utc": utc_iso(m.ended, "manifest field ended_utc") if m.ended else None,
        "duration_ms": m.duration_ms,
        "caller_number": caller.number if caller else None,
        "caller_name": caller.name if caller else None,
        "dialled_digits": m.dialled_digits,
        "direction": m.direction,
        "recovered": m.recovered,
        "discarded": m.discarded,
        "codec": m.codec,
        "container": m.container,
        "blob_sha256": m.blob_sha256,
        "blob_bytes": m.blob_bytes,
    }


_RECORD_COLUMNS = (
    "recording_id",
    "device_id",
    "line",
    "seq",
    "started_utc",
    "ended_utc",
    "duration_ms",
    "caller_number",
    "caller_name",
    "dialled_digits",
    "direction",
    "recovered",
    "discarded",
    "codec",
    "container",
    "blob_sha256",
    "blob_bytes",
    "path",
    "manifest",
    "stored_at",
)
_SELECT_RECORD = f"SELECT {', '.join(_RECORD_COLUMNS)} FROM recordings"
_ALARM_COLUMNS = "id, device_id, kind, message, seq, recording_id, raised_at"


def _record(row: Row) -> StoredRecord:
    data = dict(zip(_RECORD_COLUMNS, row, strict=True))
    return _stored(data, json.loads(data["manifest"]))


def record_of(values: Mapping[str, Any], manifest: Mapping[str, Any]) -> StoredRecord:
    """A row just written (its column ``values``) as :func:`_record` reads it back, with
    its manifest as given rather than parsed from its text again."""
    return _stored({name: values[name] for name in _RECORD_COLUMNS}, manifest)


def _stored(data: dict[str, Any], manifest: Mapping[str, Any]) -> StoredRecord:
    data["recovered"] = bool(data["recovered"])
    data["discarded"] = bool(data["discarded"])
    data["manifest"] = dict(manifest)
    return StoredRecord(**data)


def _alarm(row: Row) -> Alarm:
    return Alarm(int(row[0]), row[1], row[2], row[3], row[4], row[5], row[6])


def _gap_text(first: int, last: int) -> str:
    return f"seq {first}" if first == last else f"seq {first}-{last}"
