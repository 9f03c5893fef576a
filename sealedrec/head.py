"""The signed device head: which recording a device sealed last, in its telemetry.

The office sees the recordings it received; the head tells it what the device holds
beyond them. After each sealed recording the recorder signs, with the device key that
signs manifests, the seq and manifest hash of the newest sealed recording (whatever its
outbox state: sealed, uploading or acked) and keeps that document in
``data_dir/state/head.json``; the uploader publishes it as it is, in the ``head`` field of
the retained status (``linetap/{device}/status``). From it the office counts the
recordings it has not received and sees a missing tail (the newest recordings lost
before upload), which gaps between received recordings cannot show.

The document::

    {"device_id": "...", "seq": 42, "manifest_sha256": "<hex>", "recording_id": "...",
     "signed_at": "2026-11-25T10:00:00+00:00",
     "signature": {"alg": "ed25519", "key_id": "<16 hex>", "value": "<base64>"}}

The signature is Ed25519 over the canonical JSON (:func:`sealedrec.manifest.canonical_json`)
of every field but ``signature``, plus ``"kind": "linetap.device_head.v1"``: the tag keeps
a head signature from ever standing for a manifest's (the same key signs both). ``seq``
0 (nothing sealed yet) has the genesis hash and no ``recording_id``.

:func:`verify_head` is the office's check: a pure function, no MQTT.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from sealedrec.errors import LinetapError
from sealedrec.keys import key_id
from sealedrec.manifest import GENESIS_HASH, ManifestError, canonical_json
from sealedrec.model import INT64_MAX, MAX_YEAR, MIN_YEAR, parse_utc

HEAD_KIND = "linetap.device_head.v1"
HEAD_FIELDS = ("device_id", "seq", "manifest_sha256", "recording_id", "signed_at")


class HeadError(LinetapError, ValueError):
    """A device head is malformed, forged, for another device or from the future."""


@dataclass(frozen=True, slots=True)
class DeviceHead:
    """A verified head: every field was covered by the device's signature."""

    device_id: str
    seq: int  # 0: the device has sealed nothing yet
    manifest_sha256: str
    recording_id: str | None
    signed_at: datetime  # aware, UTC
    key_id: str


class _Signature(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    alg: Literal["ed25519"]
    key_id: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    value: Annotated[str, StringConstraints(min_length=1, max_length=128)]


class _HeadDoc(BaseModel):
    """The document's shape; unknown fields are refused (the signature would not cover
    them, and nothing unsigned should ride along as if it were)."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    device_id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    seq: Annotated[int, Field(ge=0, le=INT64_MAX)]
    manifest_sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    recording_id: (
        Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")] | None
    )
    signed_at: Annotated[str, StringConstraints(max_length=64)]
    signature: _Signature


def _payload(fields: Mapping[str, Any]) -> bytes:
    return canonical_json({"kind": HEAD_KIND, **{name: fields[name] for name in HEAD_FIELDS}})


def sign_head(
    *,
    device_id: str,
    seq: int,
    manifest_sha256: str,
    recording_id: str | None,
    signed_at: datetime,
    key: Ed25519PrivateKey,
) -> dict[str, Any]:
    """The head document for the newest sealed recording, signed with the device key."""
    if signed_at.tzinfo is None:
        raise ValueError("sign_head: signed_at must be an aware time (UTC)")
    fields: dict[str, Any] = {
        "device_id": device_id,
        "seq": seq,
        "manifest_sha256": manifest_sha256,
        "recording_id": recording_id,
        "signed_at": signed_at.isoformat(timespec="seconds"),
    }
    signature = {
        "alg": "ed25519",
        "key_id": key_id(key.public_key()),
        "value": base64.b64encode(key.sign(_payload(fields))).decode(),
    }
    return {**fields, "signature": signature}


def verify_head(
    doc: object,
    device_public_key: Ed25519PublicKey,
    *,
    device_id: str,
    now: datetime,
    max_skew_s: float,
) -> DeviceHead:
    """The head ``doc`` (the status document's ``head``, parsed JSON) of the enrolled
    device ``device_id`` whose manifest key is ``device_public_key``, verified; else
    :class:`HeadError` saying what is wrong: malformed, a signature that does not verify
    (forged or altered), another device's id, or signed more than ``max_skew_s`` after
    ``now`` (an aware time). A head signed long ago is valid: a device that records
    nothing re-signs nothing; how old is too old is the caller's judgement."""
    if now.tzinfo is None:
        raise ValueError("verify_head: now must be an aware time")
    if not isinstance(doc, Mapping):
        raise HeadError("device head: not a JSON object")
    try:
        head = _HeadDoc.model_validate(dict(doc))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "head"
        raise HeadError(f"device head field {where}: {first['msg']}") from None
    try:
        signed_at = parse_utc(head.signed_at, "signed_at")
    except ManifestError:
        raise HeadError(
            f"device head field signed_at: {head.signed_at[:40]!r} is not an ISO 8601 time "
            f"in the years {MIN_YEAR}-{MAX_YEAR}"
        ) from None
    if (head.seq == 0) != (head.manifest_sha256 == GENESIS_HASH) or (
        head.seq == 0 and head.recording_id is not None
    ):
        raise HeadError(
            "device head: seq 0 (nothing sealed) goes with the genesis hash and no recording"
        )
    expected_key = key_id(device_public_key)
    if head.signature.key_id != expected_key:
        raise HeadError(
            f"device head of {head.device_id!r}: signed by key {head.signature.key_id}, not by "
            f"the device's key {expected_key} (forged, or the device was re-keyed)"
        )
    try:
        raw = base64.b64decode(head.signature.value, validate=True)
        device_public_key.verify(raw, _payload(head.model_dump()))
    except (InvalidSignature, ValueError):
        raise HeadError(
            f"device head of {head.device_id!r}: the signature does not verify (forged or altered)"
        ) from None
    if head.device_id != device_id:
        raise HeadError(
            f"device head: signed for device {head.device_id!r}, received for {device_id!r}"
        )
    if signed_at > now + timedelta(seconds=max_skew_s):
        raise HeadError(
            f"device head of {device_id!r}: signed at {signed_at.isoformat()}, "
            f"{(signed_at - now).total_seconds():.0f} s in the future (at most {max_skew_s:g} s "
            "of clock skew): the device's clock is wrong, or the head is forged"
        )
    return DeviceHead(
        device_id=head.device_id,
        seq=head.seq,
        manifest_sha256=head.manifest_sha256,
        recording_id=head.recording_id,
        signed_at=signed_at,
        key_id=head.signature.key_id,
    )
