"""The head office's index of stored recordings: one interface, two backends.

- ``sqlite:///var/lib/linetap-office/index.sqlite3`` — the default, nothing to install
  (WAL, ``synchronous=FULL``: a committed add survives a power cut);
- ``postgresql://user@host/db`` (any libpq DSN) — for several workers on a shared
  subscription. :meth:`Index.finish_lock` is then a PostgreSQL advisory lock, so only one
  worker finishes a recording whose chunks reached several.

Tables: ``recordings`` (one row per stored recording, its signed manifest as canonical
JSON text and the fields people search by), ``devices`` (the highest seq seen and its
manifest hash), ``alarms`` (gaps, replays, chain breaks, conflicts — a log, never
rewritten), ``uploads`` (uploads in progress, for ``ls --pending``; the parked chunk
files are the truth) and ``schema_version``.

:meth:`Index.add` stores a recording, advances its device and raises alarms in one
transaction that is committed before it returns: the receiver acks only after that.
Times are ISO 8601 strings in UTC (``2026-11-25T10:00:00.000+00:00``), so they sort and
compare as text in both backends.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Self
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from firmware.errors import LinetapError
from firmware.manifest import GENESIS_HASH, ManifestError, canonical_json, manifest_hash

if TYPE_CHECKING:
    import psycopg

SCHEMA_VERSION = 1
DEFAULT_LOCK_TIMEOUT_S = 30.0
_LOCK_POLL_S = 0.02

Row = tuple[Any, ...]
Query = Callable[[str, Sequence[Any]], list[Row]]


class IndexStoreError(LinetapError, OSError):
    """The index cannot be opened, read or written (the message names the index, never
    a password)."""


class IndexConflictError(IndexStoreError):
    """A recording id is already stored with a different manifest (alarm ``conflict``)."""


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class StoredRecord:
    recording_id: str
    device_id: str
    line: str
    seq: int
    started_utc: str
    ended_utc: str | None
    duration_ms: int
    caller_number: str | None
    caller_name: str | None
    dialled_digits: str
    direction: str | None
    recovered: bool
    discarded: bool
    codec: str | None
    container: str | None
    blob_sha256: str | None
    blob_bytes: int
    path: str
    manifest: dict[str, Any]
    stored_at: str

    def as_dict(self, *, manifest: bool = False) -> dict[str, Any]:
        data = asdict(self)
        if not manifest:
            del data["manifest"]
        return data


@dataclass(frozen=True, slots=True)
class Alarm:
    id: int
    device_id: str
    kind: str  # gap | replay | chain | gap_closed | conflict | anything the receiver raises
    message: str
    seq: int | None
    recording_id: str | None
    raised_at: str


@dataclass(frozen=True, slots=True)
class DeviceState:
    device_id: str
    last_seq: int
    last_manifest_sha256: str
    recordings: int
    updated_at: str


class Gap(NamedTuple):
    device_id: str
    first_missing: int
    last_missing: int


@dataclass(frozen=True, slots=True)
class PendingUpload:
    device_id: str
    recording_id: str
    init: dict[str, Any]
    chunk_count: int
    received: int
    updated_at: str


@dataclass(frozen=True, slots=True)
class AddResult:
    record: StoredRecord
    created: bool  # False: this recording id was already stored (idempotent resend)
    alarms: tuple[Alarm, ...]


# --------------------------------------------------------------------------- helpers


def utc_iso(value: str | datetime, what: str = "time") -> str:
    """``value`` as ``YYYY-MM-DDTHH:MM:SS.mmm+00:00`` (naive times are taken as UTC)."""
    if isinstance(value, datetime):
        when = value
    else:
        try:
            when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except (AttributeError, ValueError):
            raise ManifestError(
                f"{what} {str(value)[:40]!r} is not an ISO 8601 time (e.g. 2026-11-25T10:00:00Z)"
            ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).isoformat(timespec="milliseconds")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def redact_dsn(dsn: str) -> str:
    """The DSN with any password replaced by ``***`` (URL or key=value form)."""
    try:
        parts = urlsplit(dsn)
    except ValueError:
        parts = None
    if parts is not None and parts.scheme and "://" in dsn:
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            if ":" in userinfo:
                netloc = f"{userinfo.split(':', 1)[0]}:***@{host}"
        query = urlencode(
            [
                (k, "***" if k.lower() == "password" else v)
                for k, v in parse_qsl(parts.query, keep_blank_values=True)
            ],
            safe="/:*",
        )
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", dsn, flags=re.I)


def _scrub(message: str, dsn: str) -> str:
    """Remove a password that an error message might quote."""
    try:
        password = urlsplit(dsn).password
    except ValueError:
        password = None
    if password is None:
        m = re.search(r"password\s*=\s*'?([^'\s]+)", dsn, re.I)
        password = m.group(1) if m else None
    if password:
        message = message.replace(password, "***")
    return " ".join(message.split())


def _like(text: str) -> str:
    return "%" + text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _opt_str(manifest: Mapping[str, Any], key: str) -> str | None:
    value = manifest.get(key)
    if value is not None and not isinstance(value, str):
        raise ManifestError(f"manifest field {key}: expected a string, got {value!r}")
    return value


def _int(manifest: Mapping[str, Any], key: str, *, lo: int = 0, optional: bool = False) -> int:
    value = manifest.get(key)
    if value is None and optional:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < lo:
        raise ManifestError(f"manifest field {key}: expected an integer >= {lo}, got {value!r}")
    return value


def row_from_manifest(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The searchable columns a signed manifest yields (raises ManifestError)."""
    rec = manifest.get("recording_id")
    device = manifest.get("device_id")
    line = manifest.get("line")
    started = manifest.get("started_utc")
    for key, value in (
        ("recording_id", rec),
        ("device_id", device),
        ("line", line),
        ("started_utc", started),
    ):
        if not isinstance(value, str) or not value:
            raise ManifestError(f"manifest field {key}: expected a non-empty string")
    caller = manifest.get("caller_id")
    if caller is not None and not isinstance(caller, Mapping):
        raise ManifestError("manifest field caller_id: expected null or an object")
    caller = caller or {}
    ended = _opt_str(manifest, "ended_utc")
    return {
        "recording_id": rec,
        "device_id": device,
        "line": line,
        "seq": _int(manifest, "seq", lo=1),
        "started_utc": utc_iso(str(started), "manifest field started_utc"),
        "ended_utc": utc_iso(ended, "manifest field ended_utc") if ended else None,
        "duration_ms": _int(manifest, "duration_ms"),
        "caller_number": _opt_str(caller, "number"),
        "caller_name": _opt_str(caller, "name"),
        "dialled_digits": _opt_str(manifest, "dialled_digits") or "",
        "direction": _opt_str(manifest, "direction"),
        "recovered": bool(manifest.get("recovered")),
        "discarded": bool(manifest.get("discarded")),
        "codec": _opt_str(manifest, "codec"),
        "container": _opt_str(manifest, "container"),
        "blob_sha256": _opt_str(manifest, "blob_sha256"),
        "blob_bytes": _int(manifest, "blob_bytes", optional=True),
    }


_RECORD_COLUMNS = (
    "recording_id",
    "device_id",
    "line",
    "seq",
    "started_utc",
    "ended_utc",
    "duration_ms",
    "caller_number",
    "caller_name",
    "dialled_digits",
    "direction",
    "recovered",
    "discarded",
    "codec",
    "container",
    "blob_sha256",
    "blob_bytes",
    "path",
    "manifest",
    "stored_at",
)
_SELECT_RECORD = f"SELECT {', '.join(_RECORD_COLUMNS)} FROM recordings"
_ALARM_COLUMNS = "id, device_id, kind, message, seq, recording_id, raised_at"


def _record(row: Row) -> StoredRecord:
    data = dict(zip(_RECORD_COLUMNS, row, strict=True))
    data["recovered"] = bool(data["recovered"])
    data["discarded"] = bool(data["discarded"])
    data["manifest"] = json.loads(data["manifest"])
    return StoredRecord(**data)


def _alarm(row: Row) -> Alarm:
    return Alarm(int(row[0]), row[1], row[2], row[3], row[4], row[5], row[6])


def _schema(pg: bool) -> list[str]:
    boolean = "BOOLEAN" if pg else "INTEGER"
    serial = (
        "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
        if pg
        else "INTEGER PRIMARY KEY AUTOINCREMENT"
    )
    return [
        "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
        f"""CREATE TABLE IF NOT EXISTS recordings (
            recording_id TEXT PRIMARY KEY,
            device_id TEXT NOT NULL,
            line TEXT NOT NULL,
            seq BIGINT NOT NULL,
            started_utc TEXT NOT NULL,
            ended_utc TEXT,
            duration_ms BIGINT NOT NULL,
            caller_number TEXT,
            caller_name TEXT,
            dialled_digits TEXT NOT NULL,
            direction TEXT,
            recovered {boolean} NOT NULL,
            discarded {boolean} NOT NULL,
            codec TEXT,
            container TEXT,
            blob_sha256 TEXT,
            blob_bytes BIGINT NOT NULL,
            path TEXT NOT NULL,
            manifest TEXT NOT NULL,
            manifest_sha256 TEXT NOT NULL,
            stored_at TEXT NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS recordings_device_seq ON recordings (device_id, seq)",
        "CREATE INDEX IF NOT EXISTS recordings_started ON recordings (started_utc)",
        """CREATE TABLE IF NOT EXISTS devices (
            device_id TEXT PRIMARY KEY,
            last_seq BIGINT NOT NULL,
            last_manifest_sha256 TEXT NOT NULL,
            updated_at TEXT NOT NULL)""",
        f"""CREATE TABLE IF NOT EXISTS alarms (
            id {serial},
            device_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            message TEXT NOT NULL,
            seq BIGINT,
            recording_id TEXT,
            raised_at TEXT NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS alarms_device ON alarms (device_id, id)",
        """CREATE TABLE IF NOT EXISTS uploads (
            device_id TEXT NOT NULL,
            recording_id TEXT NOT NULL,
            init TEXT NOT NULL,
            chunk_count BIGINT NOT NULL,
            received BIGINT NOT NULL,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (device_id, recording_id))""",
    ]


def _gap_text(first: int, last: int) -> str:
    return f"seq {first}" if first == last else f"seq {first}-{last}"


# --------------------------------------------------------------------------- interface


class Index:
    """The index; use :func:`open_index`. Thread-safe (one connection, serialised)."""

    #: appended to the device-row SELECT inside :meth:`add` (PostgreSQL: FOR UPDATE)
    _for_update = ""

    def __init__(self, url: str) -> None:
        self.url = url
        self.display = redact_dsn(url)
        self._mutex = threading.RLock()

    # -- backend hooks -------------------------------------------------------------------
    def _transaction(self, write: bool) -> AbstractContextManager[Query]:
        raise NotImplementedError

    def finish_lock(
        self, device: str, rec: str, timeout: float = DEFAULT_LOCK_TIMEOUT_S
    ) -> AbstractContextManager[None]:
        """Held while a worker finishes (assembles, commits, indexes) a recording."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- schema --------------------------------------------------------------------------
    def _check_version(self, q: Query) -> None:
        rows = q("SELECT version FROM schema_version", ())
        if not rows:
            q("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
        elif int(rows[0][0]) > SCHEMA_VERSION:
            raise IndexStoreError(
                f"index {self.display}: schema version {rows[0][0]} is newer than this "
                f"linetap-office understands ({SCHEMA_VERSION}); upgrade linetap-office"
            )

    # -- recordings ----------------------------------------------------------------------
    def get(self, recording_id: str) -> StoredRecord | None:
        with self._transaction(False) as q:
            rows = q(f"{_SELECT_RECORD} WHERE recording_id = ?", (recording_id,))
        return _record(rows[0]) if rows else None

    def find(self, prefix: str, limit: int = 2) -> list[StoredRecord]:
        """Recordings whose id starts with ``prefix`` (for people typing ids)."""
        pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        with self._transaction(False) as q:
            rows = q(
                f"{_SELECT_RECORD} WHERE recording_id LIKE ? ESCAPE '\\' "
                "ORDER BY recording_id LIMIT ?",
                (pattern, limit),
            )
        return [_record(r) for r in rows]

    def add(
        self,
        manifest: Mapping[str, Any],
        path: str | Path,
        stored_at: str | datetime | None = None,
    ) -> AddResult:
        """Index a stored recording (its manifest already verified) in one committed
        transaction: the row, the device's chain head, and alarms for a gap before it,
        a replay of its seq or a broken hash chain. Idempotent per recording id; the
        same id with a different manifest raises :class:`IndexConflictError` (after
        committing a ``conflict`` alarm)."""
        row = row_from_manifest(manifest)
        text = canonical_json(manifest).decode()
        digest = manifest_hash(manifest)
        rec, device, seq = row["recording_id"], row["device_id"], row["seq"]
        stamp = utc_iso(stored_at, "stored_at") if stored_at is not None else now_iso()
        alarms: list[Alarm] = []
        conflict: str | None = None
        with self._transaction(True) as q:
            q(
                "INSERT INTO devices (device_id, last_seq, last_manifest_sha256, updated_at) "
                "VALUES (?, 0, ?, ?) ON CONFLICT (device_id) DO NOTHING",
                (device, GENESIS_HASH, stamp),
            )
            [(last_seq, last_hash)] = q(
                "SELECT last_seq, last_manifest_sha256 FROM devices WHERE device_id = ?"
                + self._for_update,
                (device,),
            )
            existing = q(
                f"{_SELECT_RECORD} WHERE recording_id = ?",
                (rec,),
            )
            if existing:
                old = _record(existing[0])
                if manifest_hash(old.manifest) == digest:
                    return AddResult(old, False, ())
                conflict = (
                    f"recording {rec} is already stored (device {old.device_id}, seq "
                    f"{old.seq}) with a different manifest; the new one (seq {seq}) was refused"
                )
                alarms.append(
                    self._insert_alarm(
                        q,
                        device=device,
                        kind="conflict",
                        message=conflict,
                        seq=seq,
                        rec=rec,
                        stamp=stamp,
                    )
                )
            else:
                alarms.extend(
                    self._sequence_alarms(
                        q,
                        manifest=manifest,
                        row=row,
                        last_seq=int(last_seq),
                        last_hash=str(last_hash),
                        stamp=stamp,
                    )
                )
                values = {
                    **row,
                    "path": str(path),
                    "manifest": text,
                    "manifest_sha256": digest,
                    "stored_at": stamp,
                }
                names = ", ".join(values)
                marks = ", ".join("?" for _ in values)
                q(f"INSERT INTO recordings ({names}) VALUES ({marks})", tuple(values.values()))
                if seq > int(last_seq):
                    q(
                        "UPDATE devices SET last_seq = ?, last_manifest_sha256 = ?, updated_at = ? "
                        "WHERE device_id = ?",
                        (seq, digest, stamp, device),
                    )
                q(
                    "DELETE FROM uploads WHERE device_id = ? AND recording_id = ?",
                    (device, rec),
                )
        if conflict is not None:
            raise IndexConflictError(conflict)
        stored = self.get(rec)
        assert stored is not None
        return AddResult(stored, True, tuple(alarms))

    def _sequence_alarms(
        self,
        q: Query,
        *,
        manifest: Mapping[str, Any],
        row: Mapping[str, Any],
        last_seq: int,
        last_hash: str,
        stamp: str,
    ) -> list[Alarm]:
        rec, device, seq = row["recording_id"], row["device_id"], row["seq"]
        digest = manifest_hash(manifest)
        alarms: list[Alarm] = []

        def alarm(kind: str, message: str) -> None:
            alarms.append(
                self._insert_alarm(
                    q, device=device, kind=kind, message=message, seq=seq, rec=rec, stamp=stamp
                )
            )

        same_seq = q(
            "SELECT recording_id FROM recordings WHERE device_id = ? AND seq = ? "
            "ORDER BY stored_at LIMIT 1",
            (device, seq),
        )
        if same_seq:
            alarm(
                "replay",
                f"device {device}: seq {seq} is already stored as recording {same_seq[0][0]}; "
                f"recording {rec} claims it again (replayed or forged)",
            )
            return alarms
        if seq > last_seq + 1:
            alarm(
                "gap",
                f"device {device}: {_gap_text(last_seq + 1, seq - 1)} missing before seq {seq}",
            )
        elif seq <= last_seq:
            alarm(
                "gap_closed",
                f"device {device}: seq {seq} arrived after seq {last_seq} (late; its gap is closed)",
            )
        # The hash chain with whichever neighbours are stored.
        if seq == 1:
            before: str | None = GENESIS_HASH
        elif seq == last_seq + 1:
            before = last_hash
        else:
            prev = q(
                "SELECT manifest_sha256 FROM recordings WHERE device_id = ? AND seq = ? "
                "ORDER BY stored_at LIMIT 1",
                (device, seq - 1),
            )
            before = prev[0][0] if prev else None
        if before is not None and manifest.get("prev_manifest_sha256") != before:
            alarm(
                "chain",
                f"device {device}: seq {seq}: prev_manifest_sha256 does not match the stored "
                f"manifest of seq {seq - 1} (altered, reordered or replaced)",
            )
        after = q(
            "SELECT recording_id, manifest FROM recordings WHERE device_id = ? AND seq = ? "
            "ORDER BY stored_at LIMIT 1",
            (device, seq + 1),
        )
        if after and json.loads(after[0][1]).get("prev_manifest_sha256") != digest:
            alarm(
                "chain",
                f"device {device}: seq {seq + 1} (recording {after[0][0]}) does not point at "
                f"the manifest of seq {seq} (altered, reordered or replaced)",
            )
        return alarms

    def _insert_alarm(
        self,
        q: Query,
        *,
        device: str,
        kind: str,
        message: str,
        seq: int | None,
        rec: str | None,
        stamp: str,
    ) -> Alarm:
        [(alarm_id,)] = q(
            "INSERT INTO alarms (device_id, kind, message, seq, recording_id, raised_at) "
            "VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
            (device, kind, message, seq, rec, stamp),
        )
        return Alarm(int(alarm_id), device, kind, message, seq, rec, stamp)

    def raise_alarm(
        self,
        device: str,
        kind: str,
        message: str,
        *,
        seq: int | None = None,
        recording_id: str | None = None,
    ) -> Alarm:
        """Record an alarm of the receiver's own (e.g. ``signature``, ``rejected``)."""
        with self._transaction(True) as q:
            return self._insert_alarm(
                q,
                device=device,
                kind=kind,
                message=message,
                seq=seq,
                rec=recording_id,
                stamp=now_iso(),
            )

    def search(  # noqa: PLR0917
        self,
        device: str | None = None,
        line: str | None = None,
        since: str | datetime | None = None,
        until: str | datetime | None = None,
        caller: str | None = None,
        digits: str | None = None,
        min_duration_ms: int | None = None,
        max_duration_ms: int | None = None,
        recovered: bool | None = None,
        limit: int = 1000,
    ) -> list[StoredRecord]:
        """Recordings by start time (then device, seq). ``since`` is inclusive and
        ``until`` exclusive (``--until 2026-11-26`` keeps all of the 25th); ``caller``
        matches the number or name and ``digits`` the dialled digits, as substrings
        ignoring case."""
        where: list[str] = []
        params: list[Any] = []
        if device is not None:
            where.append("device_id = ?")
            params.append(device)
        if line is not None:
            where.append("line = ?")
            params.append(line)
        if since is not None:
            where.append("started_utc >= ?")
            params.append(utc_iso(since, "since"))
        if until is not None:
            where.append("started_utc < ?")
            params.append(utc_iso(until, "until"))
        if caller:
            where.append(
                "(LOWER(COALESCE(caller_number, '')) LIKE ? ESCAPE '\\' "
                "OR LOWER(COALESCE(caller_name, '')) LIKE ? ESCAPE '\\')"
            )
            params += [_like(caller), _like(caller)]
        if digits:
            where.append("LOWER(dialled_digits) LIKE ? ESCAPE '\\'")
            params.append(_like(digits))
        if min_duration_ms is not None:
            where.append("duration_ms >= ?")
            params.append(min_duration_ms)
        if max_duration_ms is not None:
            where.append("duration_ms <= ?")
            params.append(max_duration_ms)
        if recovered is not None:
            where.append("recovered = ?")
            params.append(recovered)
        sql = _SELECT_RECORD
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY started_utc, device_id, seq, recording_id LIMIT ?"
        params.append(max(0, limit))
        with self._transaction(False) as q:
            rows = q(sql, tuple(params))
        return [_record(r) for r in rows]

    def all_for_device(self, device: str) -> list[StoredRecord]:
        """Every recording of a device in seq order (for chain verification)."""
        with self._transaction(False) as q:
            rows = q(f"{_SELECT_RECORD} WHERE device_id = ? ORDER BY seq, stored_at", (device,))
        return [_record(r) for r in rows]

    # -- alarms, gaps, devices -----------------------------------------------------------
    def alarms(self, device: str | None = None, kind: str | None = None) -> list[Alarm]:
        where, params = [], []
        if device is not None:
            where.append("device_id = ?")
            params.append(device)
        if kind is not None:
            where.append("kind = ?")
            params.append(kind)
        sql = f"SELECT {_ALARM_COLUMNS} FROM alarms"
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._transaction(False) as q:
            return [_alarm(r) for r in q(sql + " ORDER BY id", tuple(params))]

    def gaps(self, device: str | None = None) -> list[Gap]:
        """Seq ranges missing now (between 1 and each device's highest stored seq)."""
        inner = "SELECT DISTINCT device_id, seq FROM recordings"
        params: tuple[Any, ...] = ()
        if device is not None:
            inner += " WHERE device_id = ?"
            params = (device,)
        sql = (
            "SELECT device_id, prev + 1, seq - 1 FROM ("
            "SELECT device_id, seq, LAG(seq, 1, 0) OVER (PARTITION BY device_id ORDER BY seq)"
            f" AS prev FROM ({inner}) s) t WHERE seq > prev + 1 ORDER BY device_id, seq"
        )
        with self._transaction(False) as q:
            return [Gap(r[0], int(r[1]), int(r[2])) for r in q(sql, params)]

    def devices(self) -> list[DeviceState]:
        with self._transaction(False) as q:
            rows = q(
                "SELECT d.device_id, d.last_seq, d.last_manifest_sha256, "
                "(SELECT COUNT(*) FROM recordings r WHERE r.device_id = d.device_id), "
                "d.updated_at FROM devices d ORDER BY d.device_id",
                (),
            )
        return [DeviceState(r[0], int(r[1]), r[2], int(r[3]), r[4]) for r in rows]

    # -- uploads in progress -------------------------------------------------------------
    def note_upload(
        self,
        device: str,
        rec: str,
        init: Mapping[str, Any],
        chunk_count: int,
        received: int = 0,
    ) -> None:
        """Record (or refresh) an upload in progress: its init message and progress."""
        with self._transaction(True) as q:
            q(
                "INSERT INTO uploads (device_id, recording_id, init, chunk_count, received, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (device_id, recording_id) "
                "DO UPDATE SET init = excluded.init, chunk_count = excluded.chunk_count, "
                "received = excluded.received, updated_at = excluded.updated_at",
                (
                    device,
                    rec,
                    json.dumps(dict(init), sort_keys=True),
                    chunk_count,
                    received,
                    now_iso(),
                ),
            )

    def note_received(self, device: str, rec: str, received: int) -> None:
        """Raise an upload's received count (never lowers it: workers race)."""
        with self._transaction(True) as q:
            q(
                "UPDATE uploads SET received = CASE WHEN received < ? THEN ? ELSE received END, "
                "updated_at = ? WHERE device_id = ? AND recording_id = ?",
                (received, received, now_iso(), device, rec),
            )

    def drop_upload(self, device: str, rec: str) -> None:
        with self._transaction(True) as q:
            q("DELETE FROM uploads WHERE device_id = ? AND recording_id = ?", (device, rec))

    def uploads(self, device: str | None = None) -> list[PendingUpload]:
        sql = "SELECT device_id, recording_id, init, chunk_count, received, updated_at FROM uploads"
        params: tuple[Any, ...] = ()
        if device is not None:
            sql += " WHERE device_id = ?"
            params = (device,)
        with self._transaction(False) as q:
            rows = q(sql + " ORDER BY updated_at, device_id, recording_id", params)
        return [
            PendingUpload(r[0], r[1], json.loads(r[2]), int(r[3]), int(r[4]), r[5]) for r in rows
        ]


# --------------------------------------------------------------------------- SQLite


class SqliteIndex(Index):
    """SQLite backend: one file, WAL, ``synchronous=FULL``."""

    def __init__(self, path: Path, url: str) -> None:
        super().__init__(url)
        self.path = path
        if not path.parent.is_dir():
            raise IndexStoreError(
                f"index {url}: directory {path.parent} does not exist; create it first"
            )
        try:
            self._conn = sqlite3.connect(
                path, timeout=30.0, isolation_level=None, check_same_thread=False
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error as exc:
            raise IndexStoreError(f"index {url}: cannot open ({exc})") from exc
        try:
            with self._transaction(True) as q:
                for statement in _schema(pg=False):
                    q(statement, ())
                self._check_version(q)
        except IndexStoreError:
            self._conn.close()
            raise

    @contextmanager
    def _transaction(self, write: bool) -> Iterator[Query]:
        def q(sql: str, params: Sequence[Any]) -> list[Row]:
            cur = self._conn.execute(sql, tuple(params))
            return cur.fetchall() if cur.description else []

        with self._mutex:
            try:
                if write:
                    self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield q
                except BaseException:
                    if write and self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    raise
                if write:
                    self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise IndexStoreError(f"index {self.display}: {exc}") from exc

    @contextmanager
    def _no_lock(self) -> Iterator[None]:
        yield

    def finish_lock(
        self, device: str, rec: str, timeout: float = DEFAULT_LOCK_TIMEOUT_S
    ) -> AbstractContextManager[None]:
        """A no-op: one SQLite file means one machine, where the store's file lock rules."""
        return self._no_lock()

    def close(self) -> None:
        with self._mutex:
            self._conn.close()


def _sqlite_path(url: str) -> Path:
    rest = url[len("sqlite:") :]
    if rest.startswith("//"):
        rest = rest[2:]
        if not rest.startswith("/"):
            raise IndexStoreError(
                f"index URL {url!r}: use sqlite:///absolute/path.sqlite3 or sqlite:relative/path"
            )
        rest = "/" + rest.lstrip("/")
    rest = rest.split("?", 1)[0]
    if not rest:
        raise IndexStoreError(f"index URL {url!r}: no file path")
    return Path(rest)


# --------------------------------------------------------------------------- PostgreSQL


class PostgresIndex(Index):
    """PostgreSQL backend (psycopg 3). A connection the server dropped fails the call
    in progress (the receiver then does not ack, and the device resends) and is
    replaced at the next; after ``ping_after_s`` idle it is checked before use."""

    _for_update = " FOR UPDATE"

    def __init__(self, dsn: str, *, connect_timeout: int = 10, ping_after_s: float = 10.0) -> None:
        super().__init__(dsn)
        self._connect_timeout = connect_timeout
        self._ping_after_s = ping_after_s
        self._conn = self._connect()
        self._last_used = time.monotonic()
        try:
            with self._transaction(True) as q:
                # Workers starting together must not race each other's CREATE TABLE.
                q("SELECT pg_advisory_xact_lock(hashtext('linetap-office schema'))", ())
                for statement in _schema(pg=True):
                    q(statement, ())
                self._check_version(q)
        except IndexStoreError:
            self._conn.close()
            raise

    def _connect(self) -> psycopg.Connection[Row]:
        import psycopg

        try:
            return psycopg.connect(
                self.url,
                autocommit=True,
                connect_timeout=self._connect_timeout,
                application_name="linetap-office",
            )
        except psycopg.Error as exc:
            raise IndexStoreError(
                f"index {self.display}: cannot connect ({_scrub(str(exc), self.url)})"
            ) from None

    @contextmanager
    def _transaction(self, write: bool) -> Iterator[Query]:
        import psycopg

        with self._mutex:
            if not (self._conn.closed or self._conn.broken) and (
                time.monotonic() - self._last_used >= self._ping_after_s
            ):
                # Idle a while: the server may have restarted. Find out before the real
                # work, so that a dead connection costs a reconnect, not an error.
                try:
                    self._conn.execute("SELECT 1")
                except psycopg.OperationalError:
                    self._conn.close()
            if self._conn.closed or self._conn.broken:
                self._conn = self._connect()
            self._last_used = time.monotonic()
            conn = self._conn
            try:
                with conn.cursor() as cur:

                    def q(sql: str, params: Sequence[Any]) -> list[Row]:
                        cur.execute(sql.replace("?", "%s"), tuple(params))
                        return list(cur.fetchall()) if cur.description else []

                    if write:
                        with conn.transaction():
                            yield q
                    else:
                        yield q
            except psycopg.Error as exc:
                raise IndexStoreError(
                    f"index {self.display}: {_scrub(str(exc), self.url)}"
                ) from exc

    @contextmanager
    def _advisory(self, device: str, rec: str, timeout: float) -> Iterator[None]:
        import psycopg

        conn = self._connect()  # its own session: advisory locks are per session
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    row = conn.execute(
                        "SELECT pg_try_advisory_lock(hashtext(%s), hashtext(%s))",
                        ("linetap:" + device, rec),
                    ).fetchone()
                except psycopg.Error as exc:
                    raise IndexStoreError(
                        f"index {self.display}: finish lock: {_scrub(str(exc), self.url)}"
                    ) from exc
                if row and row[0]:
                    break
                if time.monotonic() >= deadline:
                    raise IndexStoreError(
                        f"recording {rec}: finish lock still held after {timeout:g} s "
                        "(another worker is finishing it, or is stuck)"
                    )
                time.sleep(_LOCK_POLL_S)
            yield
        finally:
            conn.close()  # ends the session, which releases the lock

    def finish_lock(
        self, device: str, rec: str, timeout: float = DEFAULT_LOCK_TIMEOUT_S
    ) -> AbstractContextManager[None]:
        """``pg_try_advisory_lock`` (polled until ``timeout``) on a connection of its own."""
        return self._advisory(device, rec, timeout)

    def close(self) -> None:
        with self._mutex:
            self._conn.close()


# --------------------------------------------------------------------------- open


def open_index(url: str) -> Index:
    """``sqlite:///path/index.sqlite3`` (``sqlite:relative/path`` too) or a PostgreSQL
    DSN (``postgresql://…``, ``postgres://…`` or libpq ``key=value`` form)."""
    text = url.strip()
    if text.startswith("sqlite:"):
        return SqliteIndex(_sqlite_path(text), text)
    if text.startswith(("postgresql://", "postgres://")) or re.match(r"^\s*\w+\s*=", text):
        return PostgresIndex(text)
    raise IndexStoreError(
        f"index {redact_dsn(text)!r}: use sqlite:///path/index.sqlite3 or "
        "postgresql://user@host/database"
    )
