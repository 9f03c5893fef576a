"""Export routes: one recording as a file, and a ZIP of a search's recordings.

- ``GET /recordings/{id}/export?format=wav|flac|opus``: the ``export`` right on the
  recording is authorized and logged (an ``access`` leaf, refusals too) before the blob
  is read; then the blob is checked against its manifest, decrypted in RAM and sent as an
  attachment named ``{YYYYmmdd-HHMMSS}_{line}_{caller number or unknown}_{id[:8]}.{ext}``
  (:func:`export_name`). WAV is 16-bit PCM; FLAC is the sealed FLAC itself (re-encoded
  for an Opus or recovered recording); Opus is the sealed Ogg Opus itself, else encoded
  with libsndfile's OGG/OPUS when this libsndfile has it (else 400).
- ``POST /export.zip`` (CSRF; the form's fields are the search page's query): every
  recording of the search, all pages, at most :data:`MAX_ZIP_RECORDINGS` (more: 400
  before anything is sent). The ZIP is streamed (``zipfile`` writing into a buffer that
  the response generator drains after each member; no ``Content-Length``, so the
  browser shows the bytes as they come): one WAV per recording, then ``metadata.csv``
  and ``metadata.json`` (the row's fields, the verification result: manifest signature
  and blob SHA-256, and whether it was exported or refused). Each recording gets its own
  ``export`` leaf before its blob is read; one the user may not export is left out and
  listed as refused.

Plain audio never touches the disk: it lives in RAM (one recording at a time for the ZIP).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import soundfile
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse

from headoffice.access import AccessDenied, Gate
from headoffice.authz import GRANTS, Action
from headoffice.blobstore import BlobStore
from headoffice.index.records import StoredRecord
from headoffice.officeroot import device_signing_key
from headoffice.web.audio import PlaybackError, decrypt_playable
from headoffice.web.search import (
    SearchFilters,
    SearchParameterError,
    order_by,
    where_clause,
)
from sealedrec.errors import LinetapError
from sealedrec.manifest import ManifestError, verify_signature
from sealedrec.verify import check_blob

if TYPE_CHECKING:
    from headoffice.web.app import Viewer, _Site
    from headoffice.web.routes_audio import Playback

__all__ = ["EXPORT_FORMATS", "MAX_ZIP_RECORDINGS", "add_export_routes", "export_name"]

MAX_ZIP_RECORDINGS = 1000
MAX_ID = 200
EXPORT_FORMATS = {"wav": "audio/wav", "flac": "audio/flac", "opus": "audio/ogg"}
ZIP_IGNORED = frozenset({"csrf", "page", "page_size"})  # the ZIP holds all pages
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")
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


class ExportFailed(LinetapError, ValueError):
    """A recording that cannot be exported: ``status`` is the HTTP answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _safe(text: str) -> str:
    return _UNSAFE.sub("_", text).strip("._") or "x"


def export_name(record: StoredRecord, ext: str) -> str:
    """``{YYYYmmdd-HHMMSS}_{line}_{caller number or unknown}_{id[:8]}.{ext}``, each part
    reduced to ``[A-Za-z0-9._+-]`` (anything else becomes ``_``)."""
    try:
        stamp = datetime.fromisoformat(record.started_utc).strftime("%Y%m%d-%H%M%S")
    except ValueError:
        stamp = "unknown-time"
    parts = (stamp, record.line, record.caller_number or "unknown", record.recording_id[:8])
    return "_".join(_safe(p) for p in parts) + "." + ext


def may_export_any(v: Viewer) -> bool:
    """Whether any role of the viewer grants ``export`` (page-level: show the buttons)."""
    return any(Action.EXPORT in GRANTS[role] for role in v.principal.roles)


@dataclass(frozen=True, slots=True)
class Checked:
    signature_ok: bool | None  # None: the device's key is not enrolled here
    blob_sha256_ok: bool


def _signature_ok(site: _Site, record: StoredRecord) -> bool | None:
    try:
        key = device_signing_key(site.cfg.root, record.device_id)
    except (LinetapError, OSError):
        return None
    try:
        verify_signature(record.manifest, key)
    except ManifestError:
        return False
    return True


def _encode(samples: Any, rate: int, fmt: str, subtype: str) -> bytes:
    buf = io.BytesIO()
    channels = 1 if samples.ndim == 1 else int(samples.shape[1])
    with soundfile.SoundFile(buf, "w", rate, channels, format=fmt, subtype=subtype) as out:
        out.write(samples)
    return buf.getvalue()


def opus_supported() -> bool:
    return "OPUS" in soundfile.available_subtypes("OGG")


class Exporter:
    """Decrypt and encode recordings for export (the office identity of the playback)."""

    def __init__(self, site: _Site, playback: Playback) -> None:
        self.site = site
        self.playback = playback

    def encode(self, store: BlobStore, record: StoredRecord, fmt: str) -> tuple[bytes, Checked]:
        """The recording as ``fmt`` bytes (RAM only); call after the gate allowed it."""
        rid = record.recording_id
        if record.container is None:
            raise ExportFailed(409, f"recording {rid} has no audio (discarded, or cut early)")
        if fmt == "opus" and record.codec != "opus" and not opus_supported():
            raise ExportFailed(400, "Opus export is not available: this libsndfile has no Opus")
        signature = _signature_ok(self.site, record)
        try:
            keys = self.playback.identities()
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
        checked = Checked(signature, True)
        if EXPORT_FORMATS[fmt] == audio.mime:  # flac/opus as sealed (recovered: joined FLAC)
            return audio.data, checked
        samples = audio.samples()
        if fmt == "wav":
            return _encode(samples, audio.sample_rate, "WAV", "PCM_16"), checked
        if fmt == "flac":
            return _encode(samples, audio.sample_rate, "FLAC", "PCM_16"), checked
        try:
            return _encode(samples, audio.sample_rate, "OGG", "OPUS"), checked
        except (RuntimeError, ValueError, soundfile.LibsndfileError) as exc:
            raise ExportFailed(400, f"cannot encode this recording as Opus: {exc}") from exc


def _text(status: int, message: str) -> Response:
    return PlainTextResponse(message + "\n", status_code=status)


def _csv_cell(value: object) -> str:
    """A CSV cell that a spreadsheet will not run as a formula."""
    text = "" if value is None else str(value)
    first = text[:1]
    if first in ("=", "@", "\t", "\r") or (first in ("+", "-") and not text[1:2].isdigit()):
        return "'" + text
    return text


class _Sink(io.RawIOBase):
    """A write-only, unseekable stream: ``zipfile`` writes into it (data descriptors,
    no seeking back) and the response generator takes what was written."""

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


def _row(record: StoredRecord) -> dict[str, Any]:
    return {k: v for k, v in record.as_dict().items() if k in CSV_FIELDS}


def _zip_stream(
    exporter: Exporter,
    store: BlobStore,
    gate: Gate,
    records: list[StoredRecord],
    query: str,
) -> Iterator[bytes]:
    sink = _Sink()
    rows: list[dict[str, Any]] = []
    used: set[str] = set()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED) as zf:
        for record in records:
            row = {**_row(record), "file": "", "status": "exported", "detail": ""}
            row |= {"signature_ok": None, "blob_sha256_ok": None}
            try:
                gate.allow(Action.EXPORT, record, detail="web: export wav (zip)")
                data, checked = exporter.encode(store, record, "wav")
            except AccessDenied as exc:
                row |= {"status": "refused", "detail": str(exc)}
            except ExportFailed as exc:
                row |= {"status": "error", "detail": str(exc)}
                if exc.status == 409 and "sha256" in str(exc):
                    row["blob_sha256_ok"] = False
            else:
                name = export_name(record, "wav")
                if name in used:
                    name = export_name(record, "wav").replace(
                        record.recording_id[:8], _safe(record.recording_id)
                    )
                used.add(name)
                row |= {"file": name, "signature_ok": checked.signature_ok}
                row["blob_sha256_ok"] = checked.blob_sha256_ok
                zf.writestr(_member(name), data)
            rows.append(row)
            if chunk := sink.take():
                yield chunk
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=CSV_FIELDS, lineterminator="\r\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_cell(row.get(k)) for k in CSV_FIELDS})
        zf.writestr(_member("metadata.csv"), text.getvalue().encode("utf-8"))
        doc = {"query": query, "count": len(rows), "recordings": rows}
        zf.writestr(_member("metadata.json"), json.dumps(doc, indent=2).encode("utf-8"))
    yield sink.take()


def _member(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=datetime.now().timetuple()[:6])
    info.compress_type = zipfile.ZIP_STORED if name.endswith(".wav") else zipfile.ZIP_DEFLATED
    info.external_attr = 0o600 << 16
    return info


def add_export_routes(app: FastAPI, site: _Site) -> None:
    """Register the export routes on ``app`` (after :func:`add_audio_routes`: they share
    its office identity) and the template globals ``may_export(viewer, record=None)``
    and ``export_fields(filters)``."""
    playback: Playback = app.state.playback
    exporter = Exporter(site, playback)

    def may_export(v: Viewer | None, record: StoredRecord | None = None) -> bool:
        if v is None or not may_export_any(v):
            return False
        return record is None or site.gate_of(v).may(Action.EXPORT, record)

    def export_fields(filters: SearchFilters) -> list[tuple[str, str]]:
        """The search's query as (name, value) pairs for the ZIP form's hidden fields."""
        return [(k, val) for k, val in parse_qsl(filters.to_query()) if k not in ZIP_IGNORED]

    site.templates.env.globals["may_export"] = may_export
    site.templates.env.globals["export_fields"] = export_fields
    site.templates.env.globals["max_zip_recordings"] = MAX_ZIP_RECORDINGS

    @app.get("/recordings/{recording_id}/export")
    def export_one(recording_id: str, request: Request, format: str = "wav") -> Response:
        v = site.viewer(request)
        gate = site.gate_of(v)
        fmt = format.lower()
        if fmt not in EXPORT_FORMATS:
            return _text(400, f"format must be one of {', '.join(EXPORT_FORMATS)}")
        record = site.index.get(recording_id) if len(recording_id) <= MAX_ID else None
        try:
            if record is None:
                with contextlib.suppress(AccessDenied):
                    gate.allow(
                        Action.EXPORT, None, detail=f"web: export of no recording {recording_id!r}"
                    )
                return _text(404, "There is no such recording.")
            gate.allow(Action.EXPORT, record, detail=f"web: export {fmt}")
        except AccessDenied as exc:
            if exc.hidden:
                return _text(404, "There is no such recording.")
            return _text(403, str(exc))
        try:
            data, _ = exporter.encode(request.app.state.store, record, fmt)
        except ExportFailed as exc:
            return _text(exc.status, f"This recording cannot be exported: {exc}")
        name = export_name(record, fmt)
        return Response(
            data,
            media_type=EXPORT_FORMATS[fmt],
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    @app.post("/export.zip")
    async def export_zip(request: Request) -> Response:
        v = site.viewer(request)
        gate = site.gate_of(v)
        form = await request.form()
        params = {k: str(val) for k, val in form.items() if k not in ZIP_IGNORED}
        try:
            filters = SearchFilters.from_query(params)
        except SearchParameterError as exc:
            return _text(400, str(exc))
        query = filters.to_query()
        if not may_export_any(v):
            with contextlib.suppress(AccessDenied):
                gate.allow(Action.SEARCH, detail=f"web: export zip refused; {query}")
            return _text(403, f"{v.principal.name} may not export recordings")
        try:
            gate.allow(Action.SEARCH, detail=f"web: export zip; {query}")
        except AccessDenied as exc:
            return _text(403, str(exc))
        where, values = where_clause(filters, v.principal, gate.sites)
        with site.index.transaction(False) as q:
            ids = [
                str(r[0])
                for r in q(
                    f"SELECT recording_id FROM recordings{where}{order_by(filters)} LIMIT ?",
                    (*values, MAX_ZIP_RECORDINGS + 1),
                )
            ]
        if len(ids) > MAX_ZIP_RECORDINGS:
            return _text(
                400,
                f"This search matches more than {MAX_ZIP_RECORDINGS} recordings; "
                "narrow it (dates, line, caller) and export again.",
            )
        records = [r for rid in ids if (r := site.index.get(rid)) is not None]
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        return StreamingResponse(
            _zip_stream(exporter, request.app.state.store, gate, records, query),
            media_type="application/zip",
            headers={
                "Content-Disposition": f'attachment; filename="recordings_{stamp}.zip"',
                "X-Content-Type-Options": "nosniff",
            },
        )
