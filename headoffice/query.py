"""``linetap-office ls`` / ``search`` and ``show``: what the index knows, for people
(aligned tables, terminal-safe) or scripts (``--json``).

Each ``cmd_*`` function takes an open :class:`~headoffice.index.Index` (and, for uploads in
progress, a :class:`~headoffice.blobstore.BlobStore`), prints, and returns the exit code:
0 success, 1 an error (one line on ``err``, never a traceback). ``export`` and ``verify``
are :mod:`headoffice.export` and :mod:`headoffice.storeverify`; the argparse wiring of all
four is :mod:`headoffice.cli_query`.
"""

from __future__ import annotations

from typing import Any, TextIO

from headoffice.blobstore import BlobStore, StoreError
from headoffice.index import Index, PendingUpload, StoredRecord
from headoffice.printing import (
    fail,
    format_duration,
    format_table,
    streams,
    terminal_safe,
    write_json,
)
from sealedrec.errors import LinetapError


class QueryError(LinetapError, ValueError):
    """A query command cannot do what was asked (no such recording, bad output name…)."""


def _short_time(iso: str | None) -> str:
    return "" if not iso else iso[:19].replace("T", " ")


def _caller(record: StoredRecord) -> str:
    return " ".join(p for p in (record.caller_number, record.caller_name) if p)


def _flags(record: StoredRecord) -> str:
    return ",".join(
        f for f, on in (("recovered", record.recovered), ("discarded", record.discarded)) if on
    )


def lookup(index: Index, rec: str) -> StoredRecord:
    """A recording by id or by an unambiguous id prefix."""
    record = index.get(rec)
    if record is not None:
        return record
    matches = index.find(rec, limit=2) if len(rec) >= 4 else []
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise QueryError(f"recording id prefix {rec!r} is ambiguous; give more of the id")
    raise QueryError(f"no recording {rec!r} in the index")


# --------------------------------------------------------------------------- ls / search


def cmd_ls(
    index: Index,
    *,
    store: BlobStore | None = None,
    device: str | None = None,
    line: str | None = None,
    since: str | None = None,
    until: str | None = None,
    caller: str | None = None,
    digits: str | None = None,
    min_duration_ms: int | None = None,
    max_duration_ms: int | None = None,
    recovered: bool | None = None,
    limit: int = 1000,
    pending: bool = False,
    as_json: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """List stored recordings matching the filters (``pending``: uploads in progress)."""
    out, err = streams(out, err)
    try:
        if pending:
            return _ls_pending(index, store, device, as_json, out)
        records = index.search(
            device=device,
            line=line,
            since=since,
            until=until,
            caller=caller,
            digits=digits,
            min_duration_ms=min_duration_ms,
            max_duration_ms=max_duration_ms,
            recovered=recovered,
            limit=limit,
        )
    except (LinetapError, OSError) as exc:
        return fail(err, exc)
    if as_json:
        write_json(out, {"count": len(records), "recordings": [r.as_dict() for r in records]})
        return 0
    if not records:
        out.write("no recordings match\n")
        return 0
    rows = [
        [
            _short_time(r.started_utc),
            r.device_id,
            r.line,
            r.seq,
            format_duration(r.duration_ms),
            r.direction or "",
            _caller(r),
            r.dialled_digits,
            _flags(r),
            r.recording_id,
        ]
        for r in records
    ]
    headers = ["STARTED (UTC)", "DEVICE", "LINE", "SEQ", "DURATION", "DIRECTION", "CALLER"]
    out.write(format_table([*headers, "DIGITS", "FLAGS", "RECORDING"], rows) + "\n")
    more = " (the limit; narrow the search or raise --limit)" if len(records) >= limit else ""
    out.write(f"{len(records)} recording{'s' if len(records) != 1 else ''}{more}\n")
    return 0


def _received(upload: PendingUpload, store: BlobStore | None) -> int:
    if store is None:
        return upload.received
    try:
        return len(store.parked(upload.device_id, upload.recording_id))
    except StoreError:
        return upload.received


def _ls_pending(
    index: Index, store: BlobStore | None, device: str | None, as_json: bool, out: TextIO
) -> int:
    uploads = index.uploads(device)
    items: list[dict[str, Any]] = []
    for u in uploads:
        manifest = u.init.get("manifest")
        seq = manifest.get("seq") if isinstance(manifest, dict) else None
        items.append(
            {
                "device_id": u.device_id,
                "recording_id": u.recording_id,
                "seq": seq,
                "chunk_count": u.chunk_count,
                "received": _received(u, store),
                "blob_bytes": u.init.get("blob_bytes"),
                "updated_at": u.updated_at,
            }
        )
    if as_json:
        write_json(out, {"count": len(items), "uploads": items})
        return 0
    if not items:
        out.write("no uploads in progress\n")
        return 0
    rows = [
        [
            i["device_id"],
            i["seq"],
            f"{i['received']}/{i['chunk_count']}",
            i["blob_bytes"],
            _short_time(str(i["updated_at"])),
            i["recording_id"],
        ]
        for i in items
    ]
    out.write(
        format_table(["DEVICE", "SEQ", "CHUNKS", "BYTES", "UPDATED (UTC)", "RECORDING"], rows)
        + "\n"
    )
    return 0


# --------------------------------------------------------------------------- show


def cmd_show(
    index: Index,
    rec: str,
    *,
    as_json: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Everything the index knows about one recording (id or unique id prefix)."""
    out, err = streams(out, err)
    try:
        record = lookup(index, rec)
    except (LinetapError, OSError) as exc:
        return fail(err, exc)
    m = record.manifest
    if as_json:
        write_json(out, {"record": record.as_dict(), "manifest": m})
        return 0
    caller = m.get("caller_id") or {}
    consent = ", ".join(
        f"{e.get('type')}@{e.get('audio_ms', e.get('at_ms', '?'))}ms"
        for e in m.get("consent_events") or []
    )
    audio = (
        f"{record.codec} in {record.container}, {record.blob_bytes} bytes, "
        f"sha256 {record.blob_sha256}"
        if record.container
        else "none"
    )
    fields = [
        ("recording", record.recording_id),
        ("device", f"{record.device_id} (seq {record.seq}, key {m.get('device_key_id', '?')})"),
        ("line", f"{record.line} (channel {m.get('channel', '?')})"),
        ("started", record.started_utc),
        ("ended", record.ended_utc or "(not recorded)"),
        (
            "duration",
            f"{format_duration(record.duration_ms)} ({m.get('audio_frames', '?')} frames "
            f"at {m.get('sample_rate', '?')} Hz)",
        ),
        ("trigger", f"{m.get('trigger', '?')} -> {m.get('end_reason', '?')}"),
        ("direction", record.direction or ""),
        (
            "caller",
            f"{_caller(record)} ({caller.get('source', '?')})" if _caller(record) else "",
        ),
        ("dialled", record.dialled_digits),
        ("masked", str(len(m.get("masked_spans") or [])) + " span(s)"),
        ("consent", consent or "none"),
        ("audio", audio),
        ("flags", _flags(record) or "none"),
        ("path", record.path),
        ("stored", record.stored_at),
    ]
    width = max(len(k) for k, _ in fields)
    out.writelines(f"{k.ljust(width)}  {terminal_safe(v) or '-'}\n" for k, v in fields)
    return 0
