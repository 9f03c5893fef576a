"""Manifests: canonical JSON, Ed25519 signatures and the per-device hash chain.

A manifest describes one sealed recording. Its canonical form (sorted keys, no spaces,
UTF-8, integers only — floats have no single canonical spelling) is what the device
signs; ``manifest_hash`` (SHA-256 of the canonical signed manifest) is what the next
manifest's ``prev_manifest_sha256`` points to, so a missing, altered, reordered or
replayed recording breaks the chain. The head office uses the same functions.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from sealedrec.errors import LinetapError
from sealedrec.keys import key_id

MANIFEST_VERSION = 1
# A sealed recording's directory (outbox entry, store upload): the manifest, and the blob
# named by the manifest's "container" (none for a discarded call).
MANIFEST_FILE = "manifest.json"
BLOB_AGE = "recording.age"
BLOB_SEGMENTS = "recording.segments"
BLOB_FILES = {"age": BLOB_AGE, "segments": BLOB_SEGMENTS}
GENESIS_HASH = "0" * 64
SIGNATURE_FIELD = "signature"


class ManifestError(LinetapError, ValueError):
    """A manifest is malformed, badly signed or out of chain."""


# Exact types that need no look inside: checked with ``type(v) in`` rather than
# isinstance against ABCs (every signed manifest is walked at the office; the generic
# branches below still take subclasses and any other Mapping or sequence).
_PLAIN = frozenset({str, int, bool, type(None)})


def _check_value(value: Any, path: str) -> None:
    if type(value) in _PLAIN:
        return
    if isinstance(value, float):
        raise ManifestError(f"manifest field {path}: floats are not canonical; use integers")
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ManifestError(f"manifest field {path}: keys must be strings")
            if type(v) not in _PLAIN:
                _check_value(v, f"{path}.{k}")
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            if type(v) not in _PLAIN:
                _check_value(v, f"{path}[{i}]")
    elif value is not None and not isinstance(value, str | int | bool):
        raise ManifestError(f"manifest field {path}: unsupported type {type(value).__name__}")


def canonical_json(obj: Mapping[str, Any]) -> bytes:
    _check_value(obj, "")
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign_manifest(body: Mapping[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """Return ``body`` plus its signature block."""
    if SIGNATURE_FIELD in body:
        raise ManifestError("manifest is already signed")
    payload = canonical_json(body)
    signature = {
        "alg": "ed25519",
        "key_id": key_id(key.public_key()),
        "value": base64.b64encode(key.sign(payload)).decode(),
    }
    return {**body, SIGNATURE_FIELD: signature}


def manifest_hash(signed: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(signed)).hexdigest()


def verify_signature(signed: Mapping[str, Any], public_key: Ed25519PublicKey) -> None:
    sig = signed.get(SIGNATURE_FIELD)
    rec = signed.get("recording_id", "?")
    if not isinstance(sig, Mapping) or sig.get("alg") != "ed25519":
        raise ManifestError(f"recording {rec}: manifest has no ed25519 signature")
    device_key_id = key_id(public_key)
    if sig.get("key_id") != device_key_id:
        raise ManifestError(
            f"recording {rec}: signed by key {sig.get('key_id')}, not by the device's key "
            f"{device_key_id}"
        )
    body = {k: v for k, v in signed.items() if k != SIGNATURE_FIELD}
    try:
        public_key.verify(base64.b64decode(str(sig.get("value", ""))), canonical_json(body))
    except (InvalidSignature, ValueError):
        raise ManifestError(
            f"recording {rec}: manifest signature does not verify (the manifest was altered)"
        ) from None


@dataclass(frozen=True, slots=True)
class ChainProblem:
    seq: int | None
    recording_id: str | None
    message: str


@dataclass(frozen=True, slots=True)
class ChainStub:
    """A deleted recording's place in its device's chain (the office keeps it as a
    tombstone): its seq, the hash of its manifest and the hash that manifest pointed back
    to, so the chain stays checkable across the gap. Never built from a device's bytes."""

    seq: int
    recording_id: str
    manifest_sha256: str
    prev_manifest_sha256: str

    def get(self, key: str) -> Any:  # as Mapping.get, the one thing verify_chain asks
        return {"seq": self.seq, "recording_id": self.recording_id,
                "prev_manifest_sha256": self.prev_manifest_sha256}.get(key)  # fmt: skip


def verify_chain(
    manifests: Iterable[Mapping[str, Any] | ChainStub],
    *,
    start_seq: int = 1,
    start_hash: str = GENESIS_HASH,
) -> list[ChainProblem]:
    """Check seq is gapless and each manifest points at its predecessor's hash.

    ``manifests`` in the order they are claimed to come (e.g. sorted by seq); a deleted
    recording may stand as its :class:`ChainStub`. Returns every problem found, so one
    missing recording is reported once, not as a cascade.
    """
    problems: list[ChainProblem] = []
    expected_seq = start_seq
    prev_hash = start_hash
    seen: set[int] = set()
    for m in manifests:
        seq = m.get("seq")
        rec = m.get("recording_id")
        if not isinstance(seq, int):
            problems.append(ChainProblem(None, rec, "manifest has no integer seq"))
            continue
        if seq in seen:
            problems.append(
                ChainProblem(seq, rec, f"seq {seq} appears twice (replayed recording?)")
            )
            continue
        seen.add(seq)
        if seq != expected_seq:
            if seq > expected_seq:
                gap = f"{expected_seq}" if seq == expected_seq + 1 else f"{expected_seq}-{seq - 1}"
                problems.append(ChainProblem(seq, rec, f"gap: seq {gap} missing before seq {seq}"))
            else:
                problems.append(
                    ChainProblem(seq, rec, f"seq {seq} out of order (expected {expected_seq})")
                )
        elif m.get("prev_manifest_sha256") != prev_hash:
            problems.append(
                ChainProblem(
                    seq,
                    rec,
                    f"seq {seq}: prev_manifest_sha256 does not match the manifest of seq {seq - 1} "
                    "(altered, reordered or replaced)",
                )
            )
        expected_seq = seq + 1
        prev_hash = m.manifest_sha256 if isinstance(m, ChainStub) else manifest_hash(m)
    return problems
