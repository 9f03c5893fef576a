"""``linetap-office ls`` / ``search`` and ``show``: what the index knows, for people
(aligned tables, terminal-safe) or scripts (``--json``).

Each ``cmd_*`` function takes an open :class:`~headoffice.index.Index`, the
:class:`~headoffice.access.Gate` of the account acting (and, for uploads in progress, a
:class:`~headoffice.blobstore.BlobStore`), prints, and returns the exit code: 0 success,
1 an error or a refusal (one line on ``err``, never a traceback).

Access: a search is authorized and logged (one ``search`` leaf with its filters) before the
index is read, and lists only the recordings the account may see the metadata of; ``show``
authorizes and logs ``view_metadata`` on the recording before printing it. A recording out
of the account's scope is answered exactly as an unknown id. ``export`` and ``verify``
are :mod:`headoffice.export` and :mod:`headoffice.storeverify`; the argparse wiring of all
four is :mod:`headoffice.cli_query`.
"""

from __future__ import annotations

from typing import Any, TextIO

from headoffice.access import AccessDenied, Gate
from headoffice.authz import Action, Target, authorize
from headoffice.blobstore import BlobStore, StoreError
from headoffice.index import Index, PendingUpload, StoredRecord, announcements
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


#: How many prefix matches are looked at for one that the account may see.
_PREFIX_MATCHES = 200


def not_found(rec: str) -> QueryError:
    return QueryError(f"no recording {rec!r} in the index")


def lookup(index: Index, rec: str, gate: Gate) -> StoredRecord:
    """A recording by id, or by an id prefix that matches exactly one recording the
    account may see (recordings out of its scope never match a prefix, so neither an
    "ambiguous" answer nor a match tells that they exist). Not yet authorized: see
    :func:`open_record`."""
    record = index.get(rec)
    if record is not None:
        return record
    matches = index.find(rec, limit=_PREFIX_MATCHES) if len(rec) >= 4 else []
    visible = [r for r in matches if gate.may(Action.VIEW_METADATA, r)]
    if len(visible) == 1:
        return visible[0]
    if visible:
        raise QueryError(f"recording id prefix {rec!r} is ambiguous; give more of the id")
    raise not_found(rec)


def open_record(
    index: Index, gate: Gate, rec: str, action: Action, *, detail: str = ""
) -> StoredRecord:
    """:func:`lookup`, then ``action`` authorized and logged on the recording (refusals
    are logged too). A recording out of scope raises the same :class:`QueryError` as an
    unknown id; another refusal (a right not granted, a ledger that cannot take the
    entry) raises :class:`~headoffice.access.AccessDenied`."""
    record = lookup(index, rec, gate)
    try:
        gate.allow(action, record, detail=detail)
    except AccessDenied as exc:
        if exc.hidden:
            raise not_found(rec) from None
        raise
    return record


# --------------------------------------------------------------------------- ls / search


def cmd_ls(
    index: Index,
    gate: Gate,
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
    """List stored recordings matching the filters (``pending``: uploads in progress) that
    the account may see; the search itself is authorized and logged first."""
    out, err = streams(out, err)
    filters: dict[str, Any] = {
        "device": device,
        "line": line,
        "since": since,
        "until": until,
        "caller": caller,
        "digits": digits,
        "min_duration_ms": min_duration_ms,
        "max_duration_ms": max_duration_ms,
        "recovered": recovered,
    }
    try:
        if pending:
            gate.allow(Action.SEARCH, detail=_filters_text("pending uploads", {"device": device}))
            return _ls_pending(index, gate, store, device, as_json=as_json, out=out)
        gate.allow(Action.SEARCH, detail=_filters_text("ls", {**filters, "limit": limit}))
        records = _visible_search(index, gate, limit, filters)
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


def _filters_text(what: str, filters: dict[str, Any]) -> str:
    """The ledger's note of a search: what and its filters, e.g. ``ls line=line1``."""
    given = " ".join(f"{k}={v}" for k, v in filters.items() if v is not None)
    return f"{what} {given}".strip()


def _visible_search(
    index: Index, gate: Gate, limit: int, filters: dict[str, Any]
) -> list[StoredRecord]:
    """Up to ``limit`` matches the account may see the metadata of (the index is asked
    for more while hidden rows fill the page)."""
    fetch = max(limit, 1)
    while True:
        rows = index.search(**filters, limit=fetch)
        visible = [r for r in rows if gate.may(Action.VIEW_METADATA, r)]
        if len(visible) >= limit or len(rows) < fetch:
            return visible[: max(limit, 0)]
        fetch *= 4


def _received(upload: PendingUpload, store: BlobStore | None) -> int:
    if store is None:
        return upload.received
    try:
        return len(store.parked(upload.device_id, upload.recording_id))
    except StoreError:
        return upload.received


def _ls_pending(
    index: Index,
    gate: Gate,
    store: BlobStore | None,
    device: str | None,
    *,
    as_json: bool,
    out: TextIO,
) -> int:
    uploads = index.uploads(device)
    items: list[dict[str, Any]] = []
    for u in uploads:
        manifest = u.init.get("manifest")
        seq = manifest.get("seq") if isinstance(manifest, dict) else None
        line = manifest.get("line") if isinstance(manifest, dict) else None
        target = Target(u.device_id, line if isinstance(line, str) else "")
        if not authorize(gate.actor.principal, Action.VIEW_METADATA, target, gate.sites):
            continue  # an upload of a recording out of scope (no line known: device scope)
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
    gate: Gate,
    rec: str,
    *,
    as_json: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Everything the index knows about one recording (id or unique id prefix), once
    ``view_metadata`` on it is authorized and logged."""
    out, err = streams(out, err)
    try:
        record = open_record(index, gate, rec, Action.VIEW_METADATA, detail="show")
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
        ("announced", announcements.summary(announcements.announcements_of(m))),
        ("audio", audio),
        ("flags", _flags(record) or "none"),
        ("path", record.path),
        ("stored", record.stored_at),
    ]
    width = max(len(k) for k, _ in fields)
    out.writelines(f"{k.ljust(width)}  {terminal_safe(v) or '-'}\n" for k, v in fields)
    return 0
