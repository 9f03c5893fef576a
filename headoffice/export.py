"""``linetap-office export``: a stored recording decrypted to a file.

``.wav`` (16-bit PCM) or ``.flac`` for any recording; ``.flac`` / ``.opus`` / ``.ogg``
matching the sealed codec is the sealed stream itself, bit for bit. The blob is checked
against its manifest first (size, SHA-256), and the output appears whole or not at all
(written through a temp file beside it, mode 0600: it is plain audio).

The ``export`` right on the recording is authorized and logged (an ``access`` leaf)
before anything is read from the store or written: a refusal, or a ledger that cannot
take the entry, writes nothing. A recording out of the account's scope is "not found".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import soundfile
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from headoffice.access import Gate
from headoffice.authz import Action
from headoffice.blobstore import BlobStore
from headoffice.index import Index
from headoffice.printing import fail, streams
from headoffice.query import QueryError, open_record
from sealedrec.age import AgeError, AgeReader, load_identities
from sealedrec.durable import atomic_file
from sealedrec.errors import LinetapError
from sealedrec.segments import JournalFormatError
from sealedrec.verify import check_blob, decrypt_samples

# Plaintext suffixes that take a codec's stream as it is (no re-encoding).
NATIVE_SUFFIXES = {"flac": (".flac",), "opus": (".opus", ".ogg")}
WRITE_FORMATS = {".wav": "WAV", ".flac": "FLAC"}


@dataclass(frozen=True, slots=True)
class ExportResult:
    path: Path
    frames: int  # -1: written as it was sealed, not decoded
    sample_rate: int
    format: str


def export_recording(
    index: Index,
    store: BlobStore,
    rec: str,
    identities: Sequence[X25519PrivateKey],
    output: Path,
    *,
    gate: Gate,
) -> ExportResult:
    """Decrypt a stored recording to ``output``: ``.wav`` (16-bit PCM) or ``.flac``
    for any recording; ``.flac`` / ``.opus`` / ``.ogg`` matching the sealed codec is the
    sealed stream itself, bit for bit. ``export`` is authorized and logged through
    ``gate`` first."""
    suffix = output.suffix.lower()
    record = open_record(index, gate, rec, Action.EXPORT, detail=f"export as {suffix or '?'}")
    rid = record.recording_id
    if record.container is None:
        raise QueryError(f"recording {rid} has no audio (discarded, or cut before any was synced)")
    native = record.container == "age" and suffix in NATIVE_SUFFIXES.get(record.codec or "", ())
    if not native and suffix not in WRITE_FORMATS:
        raise QueryError(
            f"output {output}: use a .wav or .flac name"
            + (" (or .opus / .ogg for this Opus recording)" if record.codec == "opus" else "")
        )
    rate = int(record.manifest.get("sample_rate", 0))
    with store.local_blob(record.path) as path:
        problems = check_blob(path, record.manifest, rid)
        if problems:
            raise QueryError(problems[0] + "; run 'linetap-office verify'")
        try:
            with atomic_file(output) as out:
                if native:
                    with open(path, "rb") as fh:
                        out.write(AgeReader(fh, identities).read())
                    return ExportResult(output, -1, rate, suffix[1:])
                samples = decrypt_samples(path, record.container, identities)
                fmt = WRITE_FORMATS[suffix]
                soundfile.write(out, samples, rate, subtype="PCM_16", format=fmt)
                return ExportResult(output, int(samples.shape[0]), rate, fmt)
        except (AgeError, JournalFormatError, RuntimeError) as exc:
            raise QueryError(f"recording {rid}: cannot decrypt/decode: {exc}") from exc


def cmd_export(
    index: Index,
    gate: Gate,
    store: BlobStore,
    rec: str,
    *,
    identity: Path,
    output: Path,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    out, err = streams(out, err)
    try:
        identities = load_identities(identity)
        result = export_recording(index, store, rec, identities, output, gate=gate)
    except (LinetapError, OSError) as exc:
        return fail(err, exc)
    if result.frames >= 0:
        seconds = result.frames / result.sample_rate if result.sample_rate else 0.0
        out.write(
            f"wrote {result.path}: {result.format}, {seconds:.2f} s at {result.sample_rate} Hz\n"
        )
    else:
        out.write(f"wrote {result.path}: the sealed {result.format} stream\n")
    return 0
