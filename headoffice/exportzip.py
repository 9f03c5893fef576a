"""Recordings out of the office as files: decrypted in RAM, written into ZIPs.

Shared by every export that hands out audio: the web's single-file and ZIP exports
(:mod:`headoffice.web.routes_export`, the JSON API), the data-subject access
(:mod:`headoffice.dsar`) and the anonymised training export (:mod:`headoffice.anonymise`).

- :class:`AudioSource` decrypts one recording with the office identity, after checking
  its blob against the manifest (size, SHA-256), and reports the manifest's signature
  (:class:`Checked`). The caller authorizes and logs first (the gate), then calls it.
- :class:`RecordingsZip` writes a ZIP into any writable stream: a file (the command
  line: through :func:`sealedrec.durable.atomic_file`, 0600, whole or not at all), or
  a :class:`ZipSink` that a web response drains after each member (streamed, no seeking
  back: data descriptors). :meth:`RecordingsZip.add_recordings` is the loop all exports
  share: for each recording, ``allow`` (the gate's ledger leaf) *before* its audio is
  read, then its member; a refusal or an unreadable recording is a row saying so.

Plain audio never touches the disk here: it lives in RAM, one recording at a time; the
only file is the ZIP someone asked for.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import re
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any, TypeVar

import numpy as np
import numpy.typing as npt
import soundfile
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from headoffice.access import AccessDenied
from headoffice.blobstore import BlobStore
from headoffice.index.records import StoredRecord
from headoffice.officeroot import device_signing_key
from headoffice.web.audio import PlayableAudio, PlaybackError, decrypt_playable
from sealedrec.durable import atomic_file
from sealedrec.errors import LinetapError
from sealedrec.manifest import ManifestError, verify_signature
from sealedrec.verify import check_blob

__all__ = [
    "CSV_FIELDS",
    "EXPORT_FORMATS",
    "AudioSource",
    "Checked",
    "ExportFailed",
    "OutputError",
    "RecordingsZip",
    "ZipSink",
    "csv_bytes",
    "csv_cell",
    "encode_samples",
    "export_name",
    "opus_supported",
    "record_row",
    "safe_part",
    "write_zip_file",
]

EXPORT_FORMATS = {"wav": "audio/wav", "flac": "audio/flac", "opus": "audio/ogg"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")

#: The metadata of an exported recording (a ZIP's CSV and JSON rows): where it is in the
#: ZIP and whether it was exported, what the index says of it, and its verification.
CSV_FIELDS = (
    "file",
    "status",
    "detail",
    "recording_id",
    "started_utc",
    "ended_utc",
    "duration_ms",
    "device_id",
    "line",
    "seq",
    "direction",
    "caller_number",
    "caller_name",
    "dialled_digits",
    "recovered",
    "codec",
    "container",
    "blob_bytes",
    "blob_sha256",
    "signature_ok",
    "blob_sha256_ok",
)

Row = dict[str, Any]
Samples = npt.NDArray[np.int16]
T = TypeVar("T")


class ExportFailed(LinetapError, ValueError):
    """A recording that cannot be exported: ``status`` is the HTTP answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class OutputError(LinetapError, OSError):
    """The ZIP cannot be written where asked (exists, no such folder, disk full...);
    nothing is left there (the message says so)."""


@dataclass(frozen=True, slots=True)
class Checked:
    """What an export checked of a recording before decrypting it."""

    signature_ok: bool | None  # None: the device's key is not enrolled here
    blob_sha256_ok: bool


def safe_part(text: str) -> str:
    """``text`` reduced to ``[A-Za-z0-9._+-]`` (anything else becomes ``_``)."""
    return _UNSAFE.sub("_", text).strip("._") or "x"


def export_name(record: StoredRecord, ext: str) -> str:
    """``{YYYYmmdd-HHMMSS}_{line}_{caller number or unknown}_{id[:8]}.{ext}``, each part
    reduced to ``[A-Za-z0-9._+-]`` (anything else becomes ``_``)."""
    try:
        stamp = datetime.fromisoformat(record.started_utc).strftime("%Y%m%d-%H%M%S")
    except ValueError:
        stamp = "unknown-time"
    parts = (stamp, record.line, record.caller_number or "unknown", record.recording_id[:8])
    return "_".join(safe_part(p) for p in parts) + "." + ext


def encode_samples(samples: Samples, rate: int, fmt: str, subtype: str = "PCM_16") -> bytes:
    """``samples`` encoded in RAM as libsndfile's ``fmt`` / ``subtype``."""
    buf = io.BytesIO()
    channels = 1 if samples.ndim == 1 else int(samples.shape[1])
    with soundfile.SoundFile(buf, "w", rate, channels, format=fmt, subtype=subtype) as out:
        out.write(samples)
    return buf.getvalue()


def opus_supported() -> bool:
    return "OPUS" in soundfile.available_subtypes("OGG")


def _signature_ok(root: Path, record: StoredRecord) -> bool | None:
    try:
        key = device_signing_key(root, record.device_id)
    except (LinetapError, OSError):
        return None
    try:
        verify_signature(record.manifest, key)
    except ManifestError:
        return False
    return True


class AudioSource:
    """Decrypts recordings with the office identity: ``root`` is the office root (the
    enrolled devices' keys, for the signature), ``identities`` gives the office's age
    identities when first needed (a missing key file is an :class:`ExportFailed` 503)."""

    def __init__(self, root: Path, identities: Callable[[], Sequence[X25519PrivateKey]]) -> None:
        self.root = root
        self.identities = identities

    def playable(self, store: BlobStore, record: StoredRecord) -> tuple[PlayableAudio, Checked]:
        """The recording as it was sealed (RAM only); call after the gate allowed it."""
        rid = record.recording_id
        if record.container is None:
            raise ExportFailed(409, f"recording {rid} has no audio (discarded, or cut early)")
        signature = _signature_ok(self.root, record)
        try:
            keys = self.identities()
        except (LinetapError, OSError) as exc:
            raise ExportFailed(503, f"the office identity cannot decrypt here: {exc}") from exc
        with store.local_blob(record.path) as path:
            problems = check_blob(path, record.manifest, rid)
            if problems:
                raise ExportFailed(409, problems[0] + "; run 'linetap-office verify'")
            try:
                audio = decrypt_playable(path, record.manifest, keys, check=False)
            except PlaybackError as exc:
                raise ExportFailed(409, str(exc)) from exc
        return audio, Checked(signature, True)

    def samples(self, store: BlobStore, record: StoredRecord) -> tuple[Samples, int, Checked]:
        """The recording's decoded samples (int16) and sample rate."""
        audio, checked = self.playable(store, record)
        try:
            return audio.samples(), audio.sample_rate, checked
        except (RuntimeError, ValueError, soundfile.LibsndfileError) as exc:
            raise ExportFailed(
                409, f"recording {record.recording_id}: cannot decode: {exc}"
            ) from exc

    def encode(self, store: BlobStore, record: StoredRecord, fmt: str) -> tuple[bytes, Checked]:
        """The recording as ``fmt`` bytes (:data:`EXPORT_FORMATS`): WAV is 16-bit PCM;
        FLAC and Opus are the sealed stream itself where it is one, else encoded."""
        if fmt == "opus" and record.codec != "opus" and not opus_supported():
            raise ExportFailed(400, "Opus export is not available: this libsndfile has no Opus")
        audio, checked = self.playable(store, record)
        if EXPORT_FORMATS[fmt] == audio.mime:  # flac/opus as sealed (recovered: joined FLAC)
            return audio.data, checked
        samples = audio.samples()
        if fmt == "wav":
            return encode_samples(samples, audio.sample_rate, "WAV"), checked
        if fmt == "flac":
            return encode_samples(samples, audio.sample_rate, "FLAC"), checked
        try:
            return encode_samples(samples, audio.sample_rate, "OGG", "OPUS"), checked
        except (RuntimeError, ValueError, soundfile.LibsndfileError) as exc:
            raise ExportFailed(400, f"cannot encode this recording as Opus: {exc}") from exc


def csv_cell(value: object) -> str:
    """A CSV cell that a spreadsheet will not run as a formula."""
    text = "" if value is None else str(value)
    first = text[:1]
    if first in ("=", "@", "\t", "\r") or (first in ("+", "-") and not text[1:2].isdigit()):
        return "'" + text
    return text


def csv_bytes(fields: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> bytes:
    """``rows`` as UTF-8 CSV with a header (CRLF lines, cells through :func:`csv_cell`)."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(fields), lineterminator="\r\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: csv_cell(row.get(k)) for k in fields})
    return text.getvalue().encode("utf-8")


def record_row(record: StoredRecord) -> Row:
    """The :data:`CSV_FIELDS` the index knows of ``record``."""
    return {k: v for k, v in record.as_dict().items() if k in CSV_FIELDS}


class ZipSink(io.RawIOBase):
    """A write-only, unseekable stream: ``zipfile`` writes into it (data descriptors,
    no seeking back) and a response generator takes what was written."""

    def __init__(self) -> None:
        super().__init__()
        self._parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._parts.append(chunk)
        return len(chunk)

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


def _member(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=datetime.now().timetuple()[:6])
    # Audio does not deflate; the text members do.
    info.compress_type = zipfile.ZIP_STORED if name.endswith(".wav") else zipfile.ZIP_DEFLATED
    info.external_attr = 0o600 << 16
    return info


class RecordingsZip:
    """One ZIP being written into ``stream`` (a file, or a :class:`ZipSink`); use as a
    context manager (the central directory is written when it closes)."""

    def __init__(self, stream: IO[bytes] | ZipSink) -> None:
        self.zf = zipfile.ZipFile(stream, "w", compression=zipfile.ZIP_STORED)
        self.used: set[str] = set()

    def __enter__(self) -> RecordingsZip:
        return self

    def __exit__(self, *exc: object) -> None:
        self.zf.close()

    def add(self, name: str, data: bytes) -> None:
        self.used.add(name)
        self.zf.writestr(_member(name), data)

    def export_name(self, record: StoredRecord, ext: str = "wav") -> str:
        """:func:`export_name`, with the whole id instead of its first 8 characters
        when that name is taken already (two calls of one line in the same second)."""
        name = export_name(record, ext)
        if name in self.used:
            name = name.replace(record.recording_id[:8], safe_part(record.recording_id))
        return name

    def add_recordings(
        self,
        records: Iterable[StoredRecord],
        *,
        allow: Callable[[StoredRecord], None],
        audio: Callable[[StoredRecord], tuple[bytes, Checked]],
        name: Callable[[StoredRecord], str],
        row: Callable[[StoredRecord], Row] = record_row,
    ) -> Iterator[Row]:
        """For each recording: ``allow`` it (the gate: authorized and in the ledger, or
        :class:`AccessDenied`) *before* ``audio`` reads it, then its member ``name``.
        Yields each recording's metadata row (``row`` plus ``file``, ``status``
        exported/refused/error, ``detail``, ``signature_ok``, ``blob_sha256_ok``) once
        its member is written, so a streaming caller can drain its sink in between."""
        for record in records:
            out = {**row(record), "file": "", "status": "exported", "detail": ""}
            out |= {"signature_ok": None, "blob_sha256_ok": None}
            try:
                allow(record)
                data, checked = audio(record)
            except AccessDenied as exc:
                out |= {"status": "refused", "detail": str(exc)}
            except ExportFailed as exc:
                out |= {"status": "error", "detail": str(exc)}
                if exc.status == 409 and "sha256" in str(exc):
                    out["blob_sha256_ok"] = False
            else:
                member = name(record)
                self.add(member, data)
                out |= {"file": member, "signature_ok": checked.signature_ok}
                out["blob_sha256_ok"] = checked.blob_sha256_ok
            yield out

    def add_metadata(
        self, stem: str, fields: Sequence[str], rows: Sequence[Row], doc: Mapping[str, Any]
    ) -> None:
        """``{stem}.csv`` (``rows`` in ``fields``) and ``{stem}.json`` (``doc``)."""
        self.add(f"{stem}.csv", csv_bytes(fields, rows))
        self.add(f"{stem}.json", json.dumps(doc, indent=2).encode("utf-8"))


def write_zip_file(path: Path, fill: Callable[[RecordingsZip], T], *, force: bool = False) -> T:
    """Write a ZIP to ``path`` with ``fill(zip)``: into a temp file beside it (0600),
    renamed onto ``path`` once whole and synced; on any error (a full disk too) the temp
    file is removed and ``path`` is as it was. An existing ``path`` is refused unless
    ``force``. Returns what ``fill`` returned."""
    if path.is_dir():
        raise OutputError(f"{path} is a folder: give the ZIP's file name, e.g. {path}/out.zip")
    if path.exists() and not force:
        raise OutputError(f"{path} exists: give another name, or --force to replace it")
    if not path.parent.is_dir():
        raise OutputError(f"{path}: the folder {path.parent} does not exist")
    try:
        with atomic_file(path) as fh, RecordingsZip(fh) as out:
            return fill(out)
    except LinetapError:
        raise  # fill's own (a refusal, a store that fails: some are OSErrors) as they are
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OutputError(
                f"{path}: the disk is full; the partial ZIP was removed. Free some space, "
                "or write to another disk, and run the command again"
            ) from exc
        raise OutputError(
            f"{path}: cannot write the ZIP ({exc.strerror or exc}); nothing was written"
        ) from exc
