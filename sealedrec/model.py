"""The manifest as one typed, bounded model: what a signed manifest must look like before
the head office writes anything because of it.

A manifest comes from a device, and a device's signing key sits on an SD card anyone can
pull: a valid signature proves only that *some* holder of that key wrote it. So every
field the office reads is checked for type, range and length here, once, and everything
else in the manifest (events, clock state, fields of newer firmware) is held to generic
bounds: nesting depth, string length, no NUL, integers within 64 bits. A manifest that
passes can be stored, indexed (SQLite and PostgreSQL take every integer it holds) and
printed without surprises; one that fails names the first field at fault.

The signature is not checked here (:func:`sealedrec.manifest.verify_signature` does that);
the model is checked on the same dict the signature covers, and never rewrites it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from sealedrec.levels import CallLevels
from sealedrec.manifest import ManifestError, canonical_json

INT64_MAX = 2**63 - 1
MAX_DEPTH = 8
MAX_STRING = 4096
MAX_ITEMS = 10_000
MAX_KEY = 64
# A call never lasts a month: the recorder rolls over at call.max_call_s (hours).
MAX_DURATION_MS = 31 * 24 * 3600 * 1000
# Years a recording can honestly claim; outside them a date is a forgery or a broken
# clock, and far enough from datetime's limits that no timezone shift overflows.
MIN_YEAR, MAX_YEAR = 2000, 2999

_Id = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
_RecId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")]
_Hex64 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
_Name = Annotated[str, StringConstraints(min_length=1, max_length=64)]
_Text = Annotated[str, StringConstraints(max_length=256)]
_Count = Annotated[int, Field(ge=0, le=INT64_MAX)]


class _Frozen(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, extra="allow")


class CallerId(_Frozen):
    number: _Text | None = None
    name: _Text | None = None


class MaskedSpan(_Frozen):
    start_ms: _Count
    end_ms: _Count


class Signature(_Frozen):
    alg: Literal["ed25519"]
    key_id: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    value: Annotated[str, StringConstraints(min_length=1, max_length=128)]


class Manifest(_Frozen):
    """The fields the office reads, typed; the rest is kept as sent (``extra``)."""

    version: Literal[1]
    recording_id: _RecId
    device_id: _Id
    line: _Name
    seq: Annotated[int, Field(ge=1, le=INT64_MAX)]
    prev_manifest_sha256: _Hex64
    started_utc: str
    ended_utc: str | None = None
    duration_ms: Annotated[int, Field(ge=0, le=MAX_DURATION_MS)]
    caller_id: CallerId | None = None
    dialled_digits: Annotated[str, StringConstraints(pattern=r"^[0-9A-D*#]{0,1024}$")] = ""
    direction: Literal["inbound", "outbound", "unknown"] | None = None
    masked_spans: Annotated[list[MaskedSpan], Field(max_length=MAX_ITEMS)] = []
    codec: Annotated[str, StringConstraints(max_length=32)] | None = None
    container: Literal["age", "segments"] | None
    blob_sha256: _Hex64 | None
    blob_bytes: _Count
    recipients: Annotated[list[_Text], Field(max_length=16)] | None = None
    recovered: bool = False
    discarded: bool = False
    # Newer firmware: the stored audio's level summary (sealedrec.levels); older
    # manifests have none, and a discarded or recovered call has it null.
    levels: CallLevels | None = None
    signature: Signature

    @property
    def started(self) -> datetime:
        return parse_utc(self.started_utc, "started_utc")

    @property
    def ended(self) -> datetime | None:
        return None if self.ended_utc is None else parse_utc(self.ended_utc, "ended_utc")


def parse_utc(text: str, field: str) -> datetime:
    """An ISO 8601 time with an offset, as aware UTC within the years a recording can
    claim (a naive time is taken as UTC, as the device writes them with ``+00:00``)."""
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ManifestError(
            f"manifest field {field}: {text[:40]!r} is not an ISO 8601 time"
        ) from None
    if not MIN_YEAR <= when.year <= MAX_YEAR:
        raise ManifestError(
            f"manifest field {field}: year {when.year} is outside {MIN_YEAR}-{MAX_YEAR}"
        )
    if when.tzinfo is None:
        return when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


def _check_bounds(value: Any, path: str, depth: int) -> None:
    """Generic bounds on every value of the manifest, typed field or not."""
    if depth > MAX_DEPTH:
        raise ManifestError(f"manifest field {path}: nested deeper than {MAX_DEPTH}")
    if isinstance(value, str):
        if len(value) > MAX_STRING:
            raise ManifestError(
                f"manifest field {path}: {len(value)} characters (at most {MAX_STRING})"
            )
        if "\0" in value:
            raise ManifestError(f"manifest field {path}: contains a NUL character")
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int):
        if not -INT64_MAX - 1 <= value <= INT64_MAX:
            raise ManifestError(f"manifest field {path}: integer outside 64 bits")
    elif isinstance(value, Mapping):
        if len(value) > MAX_ITEMS:
            raise ManifestError(f"manifest field {path}: {len(value)} keys (at most {MAX_ITEMS})")
        for key, item in value.items():
            if not isinstance(key, str) or not key or len(key) > MAX_KEY or "\0" in key:
                raise ManifestError(f"manifest field {path}: a key that is not a short name")
            _check_bounds(item, f"{path}.{key}" if path else key, depth + 1)
    elif isinstance(value, list | tuple):
        if len(value) > MAX_ITEMS:
            raise ManifestError(f"manifest field {path}: {len(value)} items (at most {MAX_ITEMS})")
        for i, item in enumerate(value):
            _check_bounds(item, f"{path}[{i}]", depth + 1)
    else:
        raise ManifestError(f"manifest field {path}: unsupported type {type(value).__name__}")


_LOC_PART = re.compile(r"^\d+$")


def _where(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        text = str(part)
        out += f"[{text}]" if _LOC_PART.match(text) else (f".{text}" if out else text)
    return out or "manifest"


def validate_manifest(manifest: Mapping[str, Any]) -> Manifest:
    """The typed manifest, or :class:`ManifestError` naming the first field at fault."""
    if not isinstance(manifest, Mapping):
        raise ManifestError("manifest: not a JSON object")
    _check_bounds(manifest, "", 0)
    try:
        model = Manifest.model_validate(dict(manifest))
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ManifestError(
            f"manifest field {_where(tuple(first['loc']))}: {first['msg']}"
        ) from None
    # Both times must parse; their order is not checked: a device clock stepped by NTP
    # during a call can end it "before" it started, and the call is still real.
    model.started  # noqa: B018 - parsed for its ManifestError
    model.ended  # noqa: B018
    if (model.container is None) != (model.blob_sha256 is None):
        raise ManifestError("manifest field container: given exactly when there is a blob")
    if (model.blob_sha256 is None) != (model.blob_bytes == 0):
        raise ManifestError("manifest field blob_bytes: non-zero exactly when there is a blob")
    return model


@dataclass(frozen=True, slots=True)
class CheckedManifest:
    """A manifest that passed :func:`check_manifest`, with what every later step needs of
    it computed once: the office's ledger leaf and index row both want its canonical
    bytes and hash, and walking a manifest is most of the receiver's own CPU. Make it
    with :func:`check_manifest` only; ``manifest`` is the dict as sent (not rewritten)."""

    manifest: Mapping[str, Any]
    model: Manifest
    canonical: bytes  # canonical_json(manifest)
    sha256: str  # manifest_hash(manifest): SHA-256 hex of ``canonical``


def check_manifest(manifest: Mapping[str, Any]) -> CheckedManifest:
    """:func:`validate_manifest`, plus the manifest's canonical bytes and hash."""
    model = validate_manifest(manifest)
    canonical = canonical_json(manifest)
    return CheckedManifest(manifest, model, canonical, hashlib.sha256(canonical).hexdigest())
