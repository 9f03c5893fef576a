"""The backend-neutral index: every query, written once; the backends supply
transactions, the finish lock and ``close``."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from typing import Any, Self

from headoffice.index import announcements
from headoffice.index.records import (
    _ALARM_COLUMNS,
    _SELECT_RECORD,
    AddResult,
    Alarm,
    DeviceState,
    Gap,
    IndexConflictError,
    IndexStoreError,
    PendingUpload,
    Query,
    StoredRecord,
    _alarm,
    _gap_text,
    _like,
    _record,
    now_iso,
    record_of,
    redact_dsn,
    row_from_model,
    utc_iso,
)
from headoffice.index.schema import SCHEMA_VERSION
from sealedrec.manifest import GENESIS_HASH, ChainStub, manifest_hash
from sealedrec.model import CheckedManifest, check_manifest

DEFAULT_LOCK_TIMEOUT_S = 30.0


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

    def _unsynced_transaction(self) -> AbstractContextManager[Query]:
        """A write transaction whose commit is not flushed to disk (a power cut may
        undo it, never half of it; the next synced commit makes it durable too): for
        bookkeeping the receiver can lose, such as an upload in progress."""
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
        elif int(rows[0][0]) < SCHEMA_VERSION:
            # The DDL above only adds tables (IF NOT EXISTS): an older index is upgraded.
            q("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))

    def transaction(self, write: bool) -> AbstractContextManager[Query]:
        """A transaction on the index's connection, for the stores that keep their tables
        in the index database (accounts, the audit ledger): ``q(sql, params)`` with ``?``
        placeholders on both backends; committed when the block ends, rolled back on an
        exception."""
        return self._transaction(write)

    def serialize_appends(self, q: Query, name: str) -> None:
        """Inside a write transaction: make concurrent appenders of ``name`` (e.g. the
        ledger) take turns until commit. SQLite's write transactions are serial already;
        PostgreSQL takes a transaction-scoped advisory lock."""

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
        manifest: Mapping[str, Any] | CheckedManifest,
        path: str | Path,
        stored_at: str | datetime | None = None,
        on_insert: Callable[[Query], object] | None = None,
    ) -> AddResult:
        """Index a stored recording (its manifest already verified) in one committed
        transaction: the row, the device's chain head, and alarms for a gap before it,
        a replay of its seq or a broken hash chain. Idempotent per recording id; the
        same id with a different manifest raises :class:`IndexConflictError` (after
        committing a ``conflict`` alarm). ``on_insert(q)`` runs inside the same
        transaction when the row is new (the receiver appends the ingest leaf of the audit
        ledger there, so the recording and its leaf commit together or not at all). A
        :class:`~sealedrec.model.CheckedManifest` spares checking and hashing it again."""
        checked = manifest if isinstance(manifest, CheckedManifest) else check_manifest(manifest)
        row = row_from_model(checked.model)
        text = checked.canonical.decode()
        digest = checked.sha256
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
                        manifest=checked,
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
                announcements.insert(q, rec, checked.manifest)
                if on_insert is not None:
                    on_insert(q)
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
        # The row as committed, without reading it back (what get() would return).
        stored = record_of(values, checked.manifest)
        return AddResult(stored, True, tuple(alarms))

    def _sequence_alarms(
        self,
        q: Query,
        *,
        manifest: CheckedManifest,
        row: Mapping[str, Any],
        last_seq: int,
        last_hash: str,
        stamp: str,
    ) -> list[Alarm]:
        rec, device, seq = row["recording_id"], row["device_id"], row["seq"]
        digest = manifest.sha256
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
        if before is not None and manifest.model.prev_manifest_sha256 != before:
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

    def chain_stubs(self, device: str) -> list[ChainStub]:
        """The device's deleted recordings (tombstones) as places in its chain, in seq order."""
        with self._transaction(False) as q:
            rows = q(
                "SELECT seq, recording_id, manifest_sha256, prev_manifest_sha256 FROM tombstones"
                " WHERE device_id = ? ORDER BY seq",
                (device,),
            )
        return [ChainStub(int(r[0]), r[1], r[2], r[3]) for r in rows]

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
        """Seq ranges missing now (between 1 and each device's highest stored seq), not
        counting deleted recordings (their tombstones)."""
        # a deleted recording (tombstone) is no gap: its place in the chain is known
        inner = "SELECT device_id, seq FROM recordings"
        stubs = "SELECT device_id, seq FROM tombstones"
        params: tuple[Any, ...] = ()
        if device is not None:
            inner += " WHERE device_id = ?"
            stubs += " WHERE device_id = ?"
            params = (device, device)
        inner = f"{inner} UNION {stubs}"
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
        """Record (or refresh) an upload in progress: its init message and progress.
        Not synced: the device still holds the recording and sends init again after a
        crash of the office (see :meth:`_unsynced_transaction`)."""
        with self._unsynced_transaction() as q:
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
        """End an upload's row (:meth:`add` ends it in the transaction indexing the
        recording: this is for uploads dropped without one)."""
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
