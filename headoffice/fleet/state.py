"""Fleet health's tables in the index (:func:`headoffice.index.schema._fleet`): each
device's latest telemetry and verified head, each line's latest state, the hourly
rollups, and the alarms (rows; their lifecycle is :mod:`headoffice.fleet.alarms`).

Every worker of a scaled-out office receives every status message (they are retained and
not shared), so storing one is idempotent: under a per-device lock (PostgreSQL: an
advisory lock for the transaction; SQLite's write transactions are serial) a message
already stored (the same bytes) or older than the stored one (by the device's
``time_utc``) changes nothing, and the rollups count each message once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from headoffice.fleet.telemetry import StatusDocument
from headoffice.index import Index
from headoffice.index.records import Query

__all__ = [
    "AlarmRow",
    "DeviceHour",
    "DeviceRow",
    "FleetStore",
    "LineHour",
    "LineRow",
    "VerifiedHead",
    "hour_of",
    "iso",
    "parse_iso",
]

ALARM_COLUMNS = (
    "id, device_id, line, kind, state, first_seen_at, first_raised_at, last_seen_at, "
    "absent_since, cleared_at, count, detail, acked_by, acked_at, ack_note"
)
DEVICE_COLUMNS = (
    "device_id, online, state_since, last_seen_at, device_time_utc, status, head_seq, "
    "head_manifest_sha256, head_recording_id, head_signed_at, rolled_until"
)


#: Two copies of a device's messages reach workers this close together; a document older
#: (by the device's clock) than the stored one within it is a late copy, after it the
#: device's clock was set back, and the document is news.
REORDER = timedelta(seconds=10)


def iso(when: datetime) -> str:
    """An aware time as the index keeps times (UTC, milliseconds): they sort as text."""
    return when.astimezone(UTC).isoformat(timespec="milliseconds")


def parse_iso(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        when = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def hour_of(when: datetime) -> str:
    """The rollup bucket of ``when``: ``YYYY-MM-DDTHH:00:00+00:00``."""
    return when.astimezone(UTC).replace(minute=0, second=0, microsecond=0).isoformat()


@dataclass(frozen=True, slots=True)
class VerifiedHead:
    """A head whose signature checked out with the device's enrolled key."""

    seq: int
    manifest_sha256: str
    recording_id: str | None
    signed_at: str


@dataclass(frozen=True, slots=True)
class DeviceRow:
    device_id: str
    online: bool
    state_since: datetime
    last_seen_at: datetime
    device_time_utc: str | None
    status: StatusDocument | None  # the last online document (kept through an offline)
    head: VerifiedHead | None
    rolled_until: str | None


@dataclass(frozen=True, slots=True)
class LineRow:
    device_id: str
    line: str
    state: str | None
    led: str | None
    levels: dict[str, Any] | None
    updated_at: str


@dataclass(frozen=True, slots=True)
class DeviceHour:
    hour: str
    messages: int
    online_s: int
    max_backlog: int | None
    max_oldest_unacked_s: int | None
    min_disk_free_bytes: int | None


@dataclass(frozen=True, slots=True)
class LineHour:
    line: str
    hour: str
    calls: int
    judged_calls: int
    silent_calls: int
    hum_calls: int
    clipped_calls: int


@dataclass(frozen=True, slots=True)
class AlarmRow:
    id: int
    device_id: str
    line: str | None
    kind: str
    state: str  # pending | raised | acknowledged | cleared
    first_seen_at: str
    first_raised_at: str | None
    last_seen_at: str
    absent_since: str | None
    cleared_at: str | None
    count: int
    detail: str
    acked_by: str | None
    acked_at: str | None
    ack_note: str | None

    @property
    def open(self) -> bool:
        return self.state in ("raised", "acknowledged")

    @property
    def where(self) -> str:
        return f"{self.device_id}/{self.line}" if self.line else self.device_id


def alarm_row(r: tuple[Any, ...]) -> AlarmRow:
    return AlarmRow(
        int(r[0]),
        str(r[1]),
        None if r[2] is None else str(r[2]),
        str(r[3]),
        str(r[4]),
        str(r[5]),
        r[6],
        str(r[7]),
        r[8],
        r[9],
        int(r[10]),
        str(r[11]),
        r[12],
        r[13],
        r[14],
    )


def _device_row(r: tuple[Any, ...]) -> DeviceRow:
    status = StatusDocument.model_validate_json(r[5]) if r[5] else None
    head = None
    if r[6] is not None:
        head = VerifiedHead(int(r[6]), str(r[7]), r[8], str(r[9]))
    return DeviceRow(
        str(r[0]),
        bool(r[1]),
        parse_iso(r[2]) or datetime.fromtimestamp(0, UTC),
        parse_iso(r[3]) or datetime.fromtimestamp(0, UTC),
        r[4],
        status,
        head,
        r[10],
    )


def status_digest(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


class FleetStore:
    """The fleet tables of one index (both backends)."""

    def __init__(self, index: Index) -> None:
        self.index = index

    def lock_device(self, q: Query, device_id: str) -> None:
        """Inside a write transaction: one worker at a time per device (see the module
        docstring); taken before the ledger's own lock, never after it."""
        self.index.serialize_appends(q, f"fleet:{device_id}")

    # -- telemetry --------------------------------------------------------------------
    def store_status(
        self,
        device_id: str,
        doc: StatusDocument,
        digest: str,
        head: VerifiedHead | None,
        now: datetime,
    ) -> bool:
        """Keep ``doc`` as the device's latest state (and ``head``, when verified), its
        lines, and its hour's rollup; False when it was stored already or is older."""
        with self.index.transaction(True) as q:
            self.lock_device(q, device_id)
            rows = q(
                "SELECT online, last_seen_at, device_time_utc, status_sha256, status "
                "FROM fleet_devices WHERE device_id = ?",
                (device_id,),
            )
            old = rows[0] if rows else None
            since_seen = now - (parse_iso(old[1]) or now) if old is not None else timedelta(0)
            if old is not None and (
                old[3] == digest or (since_seen < REORDER and _older(doc, old[2]))
            ):
                return False
            was_online = bool(old[0]) if old is not None else False
            if doc.online:
                status_text = doc.model_dump_json()
            else:  # the last will: keep the last online document, mark the device offline
                status_text = str(old[4]) if old is not None else ""
            self._upsert_device(
                q,
                device_id=device_id,
                doc=doc,
                digest=digest,
                status_text=status_text,
                head=head,
                now=now,
                old=old,
            )
            if doc.online:
                self._store_lines(q, device_id, doc, now)
            online_s = since_seen.total_seconds() if was_online else 0.0
            self._roll_up_device(q, device_id, doc, now, online_s)
        return True

    def _upsert_device(
        self,
        q: Query,
        *,
        device_id: str,
        doc: StatusDocument,
        digest: str,
        status_text: str,
        head: VerifiedHead | None,
        now: datetime,
        old: tuple[Any, ...] | None,
    ) -> None:
        stamp = iso(now)
        if old is None:
            q(
                "INSERT INTO fleet_devices (device_id, online, state_since, last_seen_at, "
                "device_time_utc, status_sha256, status) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (device_id, doc.online, stamp, stamp, doc.time_utc, digest, status_text),
            )
        else:
            changed = bool(old[0]) != doc.online
            q(
                "UPDATE fleet_devices SET online = ?, "
                "state_since = CASE WHEN ? THEN ? ELSE state_since END, last_seen_at = ?, "
                "device_time_utc = COALESCE(?, device_time_utc), status_sha256 = ?, "
                "status = ? WHERE device_id = ?",
                (
                    doc.online,
                    changed,
                    stamp,
                    stamp,
                    doc.time_utc,
                    digest,
                    status_text,
                    device_id,
                ),
            )
        if head is not None:
            q(
                "UPDATE fleet_devices SET head_seq = ?, head_manifest_sha256 = ?, "
                "head_recording_id = ?, head_signed_at = ? WHERE device_id = ?",
                (head.seq, head.manifest_sha256, head.recording_id, head.signed_at, device_id),
            )

    def _store_lines(self, q: Query, device_id: str, doc: StatusDocument, now: datetime) -> None:
        lines = doc.recorder.lines if doc.recorder is not None else None
        for line in lines or ():
            levels = line.levels.model_dump(mode="json") if line.levels is not None else None
            q(
                "INSERT INTO fleet_lines (device_id, line, state, led, levels, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (device_id, line) DO UPDATE SET "
                "state = excluded.state, led = excluded.led, levels = excluded.levels, "
                "updated_at = excluded.updated_at",
                (
                    device_id,
                    line.name,
                    line.state,
                    line.led,
                    None if levels is None else json.dumps(levels, sort_keys=True),
                    iso(now),
                ),
            )

    def _roll_up_device(
        self, q: Query, device_id: str, doc: StatusDocument, now: datetime, online_s: float
    ) -> None:
        """One message into its hour's row: counted, and the hour's worst backlog, oldest
        unacknowledged age and least free disk (read and written under the device lock,
        in Python: SQLite and PostgreSQL spell a two-value MIN differently)."""
        outbox = doc.outbox
        backlog = outbox.unacked_count if outbox is not None else None
        oldest = outbox.oldest_unacked_age_s if outbox is not None else None
        new = (
            backlog,
            None if oldest is None else int(oldest),
            doc.disk_free_bytes,
        )
        hour = hour_of(now)
        rows = q(
            "SELECT messages, online_s, max_backlog, max_oldest_unacked_s, min_disk_free_bytes "
            "FROM fleet_device_hours WHERE device_id = ? AND hour = ?",
            (device_id, hour),
        )
        if not rows:
            q(
                "INSERT INTO fleet_device_hours (device_id, hour, messages, online_s, "
                "max_backlog, max_oldest_unacked_s, min_disk_free_bytes) "
                "VALUES (?, ?, 1, ?, ?, ?, ?)",
                (device_id, hour, min(3600, int(online_s)), *new),
            )
            return
        messages, seconds, *old = rows[0]
        q(
            "UPDATE fleet_device_hours SET messages = ?, online_s = ?, max_backlog = ?, "
            "max_oldest_unacked_s = ?, min_disk_free_bytes = ? WHERE device_id = ? AND hour = ?",
            (
                int(messages) + 1,
                min(3600, int(seconds) + int(online_s)),
                _pick(max, old[0], new[0]),
                _pick(max, old[1], new[1]),
                _pick(min, old[2], new[2]),
                device_id,
                hour,
            ),
        )

    # -- reads ------------------------------------------------------------------------
    def device(self, device_id: str) -> DeviceRow | None:
        with self.index.transaction(False) as q:
            rows = q(
                f"SELECT {DEVICE_COLUMNS} FROM fleet_devices WHERE device_id = ?", (device_id,)
            )
        return _device_row(rows[0]) if rows else None

    def devices(self) -> list[DeviceRow]:
        with self.index.transaction(False) as q:
            rows = q(f"SELECT {DEVICE_COLUMNS} FROM fleet_devices ORDER BY device_id", ())
        return [_device_row(r) for r in rows]

    def due_device_ids(self, quiet_since: datetime) -> list[str]:
        """The devices time alone can change: none of their telemetry since
        ``quiet_since`` (a device that just sent some was evaluated then), or an alarm
        waiting out a hold (pending) or a clearing (absent)."""
        with self.index.transaction(False) as q:
            rows = q(
                "SELECT device_id FROM fleet_devices WHERE last_seen_at < ? UNION "
                "SELECT device_id FROM fleet_alarms WHERE state = 'pending' "
                "OR (state <> 'cleared' AND absent_since IS NOT NULL)",
                (iso(quiet_since),),
            )
        return sorted(str(r[0]) for r in rows)

    def recorded_lines(self, device_id: str) -> set[str]:
        """The lines ``device_id`` has recordings of: one index seek per line along
        ``(device_id, line, started_utc)`` (a loose index scan), not a scan of them all."""
        with self.index.transaction(False) as q:
            rows = q(
                "WITH RECURSIVE l(line) AS ("
                "SELECT MIN(line) FROM recordings WHERE device_id = ? "
                "UNION ALL SELECT (SELECT MIN(r.line) FROM recordings r "
                "WHERE r.device_id = ? AND r.line > l.line) FROM l WHERE l.line IS NOT NULL) "
                "SELECT line FROM l WHERE line IS NOT NULL",
                (device_id, device_id),
            )
        return {str(r[0]) for r in rows}

    def lines(self, device_id: str | None = None) -> list[LineRow]:
        sql = "SELECT device_id, line, state, led, levels, updated_at FROM fleet_lines"
        params: tuple[Any, ...] = ()
        if device_id is not None:
            sql += " WHERE device_id = ?"
            params = (device_id,)
        with self.index.transaction(False) as q:
            rows = q(sql + " ORDER BY device_id, line", params)
        return [
            LineRow(str(r[0]), str(r[1]), r[2], r[3], json.loads(r[4]) if r[4] else None, str(r[5]))
            for r in rows
        ]

    def device_hours(self, device_id: str, since: datetime) -> list[DeviceHour]:
        with self.index.transaction(False) as q:
            rows = q(
                "SELECT hour, messages, online_s, max_backlog, max_oldest_unacked_s, "
                "min_disk_free_bytes FROM fleet_device_hours WHERE device_id = ? AND hour >= ? "
                "ORDER BY hour",
                (device_id, hour_of(since)),
            )
        return [
            DeviceHour(str(r[0]), int(r[1]), int(r[2]), *(_int_or_none(v) for v in r[3:6]))
            for r in rows
        ]

    def line_hours(self, device_id: str, since: datetime) -> list[LineHour]:
        with self.index.transaction(False) as q:
            rows = q(
                "SELECT line, hour, calls, judged_calls, silent_calls, hum_calls, clipped_calls "
                "FROM fleet_line_hours WHERE device_id = ? AND hour >= ? ORDER BY line, hour",
                (device_id, hour_of(since)),
            )
        return [LineHour(str(r[0]), str(r[1]), *(int(v) for v in r[2:])) for r in rows]

    def alarms(
        self,
        *,
        device_id: str | None = None,
        states: tuple[str, ...] = ("raised", "acknowledged"),
        limit: int = 1000,
    ) -> list[AlarmRow]:
        """Alarms in ``states`` (default: the open ones), newest first."""
        marks = ", ".join("?" for _ in states)
        sql = f"SELECT {ALARM_COLUMNS} FROM fleet_alarms WHERE state IN ({marks})"
        params: list[Any] = list(states)
        if device_id is not None:
            sql += " AND device_id = ?"
            params.append(device_id)
        sql += " ORDER BY id DESC LIMIT ?"
        params.append(limit)
        with self.index.transaction(False) as q:
            return [alarm_row(r) for r in q(sql, params)]

    def alarm(self, alarm_id: int) -> AlarmRow | None:
        with self.index.transaction(False) as q:
            rows = q(f"SELECT {ALARM_COLUMNS} FROM fleet_alarms WHERE id = ?", (alarm_id,))
        return alarm_row(rows[0]) if rows else None


def _pick(choose: Callable[[int, int], int], a: object, b: int | None) -> int | None:
    """``choose`` of the two values that are known (None when neither is)."""
    known = [int(str(v)) for v in (a, b) if v is not None]
    return choose(*known) if len(known) == 2 else (known[0] if known else None)


def _int_or_none(value: object) -> int | None:
    return None if value is None else int(str(value))


def _older(doc: StatusDocument, stored_time: str | None) -> bool:
    """An online document whose device time is before the stored one's: a late copy
    (another worker's, or a reordering) that must not overwrite newer state."""
    if not doc.online:
        return False
    new, old = parse_iso(doc.time_utc), parse_iso(stored_time)
    return new is not None and old is not None and new < old
