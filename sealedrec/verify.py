"""Checking sealed recordings: signature, blob hashes, chain, and (with an office
identity) the audio inside. The device's tests and the head office use the same code.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import soundfile
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from sealedrec.age import AgeError, AgeReader, decrypt_bytes
from sealedrec.manifest import (
    BLOB_FILES,
    MANIFEST_FILE,
    ManifestError,
    verify_chain,
    verify_signature,
)
from sealedrec.segments import JournalFormatError, iter_segments


@dataclass
class EntryReport:
    directory: Path
    manifest: dict[str, Any] | None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def read_manifest(directory: Path) -> dict[str, Any]:
    try:
        data = json.loads((directory / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ManifestError(f"{directory}: manifest unreadable ({exc})") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{directory}: manifest is not a JSON object")
    return data


def blob_path(directory: Path, manifest: Mapping[str, Any]) -> Path | None:
    container = manifest.get("container")
    return directory / BLOB_FILES[container] if container in BLOB_FILES else None


def decode_audio(encoded: bytes) -> npt.NDArray[np.int16]:
    samples, _ = soundfile.read(io.BytesIO(encoded), dtype="int16", always_2d=False)
    return np.asarray(samples, dtype=np.int16)


def decrypt_recording(
    directory: Path, identities: Sequence[X25519PrivateKey]
) -> tuple[npt.NDArray[np.int16], int, dict[str, Any]]:
    """The recording's samples, its sample rate and its manifest (no checks)."""
    manifest = read_manifest(directory)
    path = blob_path(directory, manifest)
    rate = int(manifest["sample_rate"])
    if path is None:
        return np.zeros(0, dtype=np.int16), rate, manifest
    if manifest["container"] == "age":
        with open(path, "rb") as fh:
            plain = AgeReader(fh, identities).read()
        return decode_audio(plain), rate, manifest
    parts = []
    with open(path, "rb") as fh:
        for segment, _ in iter_segments(fh):
            parts.append(decode_audio(decrypt_bytes(segment.payload, identities)))
    return (np.concatenate(parts) if parts else np.zeros(0, np.int16)), rate, manifest


def verify_entry(
    directory: Path,
    device_key: Ed25519PublicKey,
    identities: Sequence[X25519PrivateKey] = (),
) -> EntryReport:
    """Every problem with one outbox/store entry, each a clear sentence."""
    try:
        manifest = read_manifest(directory)
    except ManifestError as exc:
        return EntryReport(directory, None, [str(exc)])
    report = EntryReport(directory, manifest)
    rec = manifest.get("recording_id", directory.name)
    try:
        verify_signature(manifest, device_key)
    except ManifestError as exc:
        report.problems.append(str(exc))
    path = blob_path(directory, manifest)
    if path is None:
        # Only a discarded call, or one a crash cut before its first journal sync, has none.
        no_audio_ok = manifest.get("discarded") or (
            manifest.get("recovered") and manifest.get("audio_frames") == 0
        )
        if not no_audio_ok:
            report.problems.append(f"recording {rec}: no audio and not marked discarded")
        return report
    try:
        data = path.read_bytes()
    except OSError as exc:
        report.problems.append(f"recording {rec}: blob {path.name} unreadable ({exc.strerror})")
        return report
    if len(data) != manifest.get("blob_bytes"):
        report.problems.append(
            f"recording {rec}: blob is {len(data)} bytes, manifest says {manifest.get('blob_bytes')}"
        )
    if hashlib.sha256(data).hexdigest() != manifest.get("blob_sha256"):
        report.problems.append(
            f"recording {rec}: blob sha256 differs from the manifest (altered or corrupt)"
        )
    if identities:
        try:
            samples, _, _ = decrypt_recording(directory, identities)
        except (AgeError, JournalFormatError, RuntimeError) as exc:
            report.problems.append(f"recording {rec}: cannot decrypt/decode: {exc}")
            return report
        if samples.shape[0] != manifest.get("audio_frames"):
            report.problems.append(
                f"recording {rec}: {samples.shape[0]} frames decoded, manifest says {manifest.get('audio_frames')}"
            )
        expected = manifest.get("audio_pcm_sha256")
        # Only lossless audio can be checked against the hash of what was recorded.
        lossless = manifest.get("codec") == "flac"
        pcm_sha = hashlib.sha256(samples.astype("<i2").tobytes()).hexdigest()
        if expected and lossless and pcm_sha != expected:
            report.problems.append(f"recording {rec}: decoded audio differs from the signed hash")
    return report


def verify_entries(
    directories: Iterable[Path],
    device_key: Ed25519PublicKey,
    identities: Sequence[X25519PrivateKey] = (),
) -> tuple[list[EntryReport], list[str]]:
    """Reports per entry, plus chain problems across them (sorted by seq)."""
    reports = [verify_entry(d, device_key, identities) for d in directories]
    manifests = sorted((r.manifest for r in reports if r.manifest), key=lambda m: m.get("seq", 0))
    chain = [p.message for p in verify_chain(manifests)]
    return reports, chain
