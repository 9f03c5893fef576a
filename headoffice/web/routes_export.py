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
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse

from headoffice.access import AccessDenied, Gate
from headoffice.authz import GRANTS, Action
from headoffice.blobstore import BlobStore
from headoffice.exportzip import (
    CSV_FIELDS,
    EXPORT_FORMATS,
    AudioSource,
    ExportFailed,
    RecordingsZip,
    ZipSink,
    export_name,
    opus_supported,
)
from headoffice.index.records import StoredRecord
from headoffice.web.search import (
    SearchFilters,
    SearchParameterError,
    order_by,
    where_clause,
)

if TYPE_CHECKING:
    from headoffice.web.app import Viewer, _Site
    from headoffice.web.routes_audio import Playback

__all__ = [
    "EXPORT_FORMATS",
    "MAX_ZIP_RECORDINGS",
    "ExportFailed",
    "Exporter",
    "add_export_routes",
    "export_name",
    "opus_supported",
]

MAX_ZIP_RECORDINGS = 1000
ZIP_IGNORED = frozenset({"csrf", "page", "page_size"})  # the ZIP holds all pages


def may_export_any(v: Viewer) -> bool:
    """Whether any role of the viewer grants ``export`` (page-level: show the buttons)."""
    return any(Action.EXPORT in GRANTS[role] for role in v.principal.roles)


class Exporter(AudioSource):
    """Decrypt and encode recordings for export with the office identity the playback
    reads (:meth:`AudioSource.encode`; call after the gate allowed it)."""

    def __init__(self, site: _Site, playback: Playback) -> None:
        super().__init__(site.cfg.root, playback.identities)
        self.site = site
        self.playback = playback


def _text(status: int, message: str) -> Response:
    return PlainTextResponse(message + "\n", status_code=status)


def _zip_stream(
    exporter: Exporter,
    store: BlobStore,
    gate: Gate,
    records: list[StoredRecord],
    query: str,
) -> Iterator[bytes]:
    sink = ZipSink()
    rows = []
    with RecordingsZip(sink) as out:
        for row in out.add_recordings(
            records,
            allow=lambda r: gate.allow(Action.EXPORT, r, detail="web: export wav (zip)"),
            audio=lambda r: exporter.encode(store, r, "wav"),
            name=out.export_name,
        ):
            rows.append(row)
            if chunk := sink.take():
                yield chunk
        doc = {"query": query, "count": len(rows), "recordings": rows}
        out.add_metadata("metadata", CSV_FIELDS, rows, doc)
    yield sink.take()


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
        record = site.record(recording_id)
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
