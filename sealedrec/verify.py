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
from sealedrec.segments import (
    JournalFormatError,
    flac_with_total,
    iter_segments,
    journal_version,
)

_BLOCK = 1024 * 1024


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


def decrypt_segments(path: Path, identities: Sequence[X25519PrivateKey]) -> list[bytes]:
    """A segments journal's audio as FLAC files: version 2, the one stream its records
    make (STREAMINFO's total filled in from them); version 1, one file per record. Empty
    if no record holds audio."""
    with open(path, "rb") as fh:
        version = journal_version(fh)
        fh.seek(0)
        segments = [segment for segment, _ in iter_segments(fh)]
    plains = [decrypt_bytes(segment.payload, identities) for segment in segments]
    if version == 1:
        return plains
    total = sum(segment.frames for segment in segments)
    return [flac_with_total(b"".join(plains), total)] if total else []


def decrypt_samples(
    path: Path, container: str, identities: Sequence[X25519PrivateKey]
) -> npt.NDArray[np.int16]:
    """A blob's samples: one age file (FLAC or Opus inside), or a segments journal."""
    if container == "age":
        with open(path, "rb") as fh:
            return decode_audio(AgeReader(fh, identities).read())
    parts = [decode_audio(flac) for flac in decrypt_segments(path, identities)]
    return np.concatenate(parts) if parts else np.zeros(0, np.int16)


def decrypt_recording(
    directory: Path, identities: Sequence[X25519PrivateKey]
) -> tuple[npt.NDArray[np.int16], int, dict[str, Any]]:
    """The recording's samples, its sample rate and its manifest (no checks)."""
    manifest = read_manifest(directory)
    path = blob_path(directory, manifest)
    rate = int(manifest["sample_rate"])
    if path is None:
        return np.zeros(0, dtype=np.int16), rate, manifest
    return decrypt_samples(path, manifest["container"], identities), rate, manifest


def check_blob(path: Path, manifest: Mapping[str, Any], rec: str) -> list[str]:
    """Problems of a blob against its manifest (size, SHA-256), read in blocks."""
    digest = hashlib.sha256()
    size = 0
    try:
        with open(path, "rb") as fh:
            while block := fh.read(_BLOCK):
                digest.update(block)
                size += len(block)
    except OSError as exc:
        return [f"recording {rec}: blob {path} unreadable ({exc.strerror or exc})"]
    problems = []
    if size != manifest.get("blob_bytes"):
        problems.append(
            f"recording {rec}: blob is {size} bytes, the manifest says {manifest.get('blob_bytes')}"
        )
    if digest.hexdigest() != manifest.get("blob_sha256"):
        problems.append(
            f"recording {rec}: blob sha256 differs from the manifest (altered or corrupt)"
        )
    return problems


def check_recording(
    manifest: Mapping[str, Any],
    blob: Path | None,
    identities: Sequence[X25519PrivateKey] = (),
) -> list[str]:
    """Every problem of a recording's contents against its (signature-checked) manifest,
    each a clear sentence: a recording without audio must say why, the blob must have the
    signed size and SHA-256, and with ``identities`` the decrypted audio the signed frame
    count and (lossless audio) PCM hash. ``blob`` is None when there is no audio file."""
    rec = manifest.get("recording_id", "?")
    if blob is None:
        # Only a discarded call, or one a crash cut before its first journal sync, has none.
        no_audio_ok = manifest.get("discarded") or (
            manifest.get("recovered") and manifest.get("audio_frames") == 0
        )
        return [] if no_audio_ok else [f"recording {rec}: no audio and not marked discarded"]
    problems = check_blob(blob, manifest, rec)
    if not identities or any("unreadable" in p for p in problems):
        return problems
    try:
        samples = decrypt_samples(blob, str(manifest.get("container")), identities)
    except (AgeError, JournalFormatError, RuntimeError) as exc:
        return [*problems, f"recording {rec}: cannot decrypt/decode: {exc}"]
    if samples.shape[0] != manifest.get("audio_frames"):
        problems.append(
            f"recording {rec}: {samples.shape[0]} frames decoded, the manifest says"
            f" {manifest.get('audio_frames')}"
        )
    expected = manifest.get("audio_pcm_sha256")
    # Only lossless audio can be checked against the hash of what was recorded.
    lossless = manifest.get("codec") == "flac"
    pcm_sha = hashlib.sha256(samples.astype("<i2").tobytes()).hexdigest()
    if expected and lossless and pcm_sha != expected:
        problems.append(f"recording {rec}: decoded audio differs from the signed hash")
    return problems


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
    try:
        verify_signature(manifest, device_key)
    except ManifestError as exc:
        report.problems.append(str(exc))
    if "recording_id" not in manifest:
        manifest = {**manifest, "recording_id": directory.name}
    report.problems += check_recording(manifest, blob_path(directory, manifest), identities)
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
