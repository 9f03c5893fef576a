"""The fleet alarms' lifecycle: raised → acknowledged (by whom, with a note) → cleared.

:meth:`FleetAlarms.sync` takes the conditions that hold for a device now
(:func:`headoffice.fleet.rules.evaluate`) and moves its alarms, in one transaction under
the device's lock (so several workers evaluating the same telemetry agree, and the
unique index on open alarms is the last word):

- a new condition is ``pending`` until it has held its ``hold_s`` (``raise_after_s``,
  longer for ``head_ahead``, none for events), then ``raised``; a pending one that goes
  away leaves nothing behind;
- one alarm per device, line and kind: while open, a condition that holds again only
  refreshes ``last_seen_at`` and ``detail``;
- an open alarm whose condition is gone for ``clear_after_s`` is ``cleared``
  (acknowledged or not), by the office;
- a condition back within ``flap_window_s`` of its alarm's clearing reopens that alarm
  (``count`` + 1) instead of making a new one: flapping is one alarm with a count;
- kinds the rules cannot judge now (telemetry of an offline device) stay as they are.

Each raise, acknowledgement and clearing is an ``admin`` leaf of the audit ledger
(``alarm_raised`` / ``alarm_acknowledged`` / ``alarm_cleared``; user ``office`` for the
automatic ones; subject ``fleet:DEVICE[/LINE]:KIND#ID``) and a notification
(:mod:`headoffice.notify`), both in the same transaction as the alarm's row.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from headoffice.fleet.config import FleetConfig
from headoffice.fleet.rules import Condition, Evaluation, severity_of
from headoffice.fleet.state import ALARM_COLUMNS, AlarmRow, FleetStore, alarm_row, iso, parse_iso
from headoffice.index import Index
from headoffice.index.records import Query
from headoffice.ledger.leaves import AdminLeaf
from headoffice.ledger.store import Ledger
from headoffice.notify.model import Kind, Notification, Severity
from sealedrec.errors import LinetapError

__all__ = [
    "OFFICE_USER",
    "AlarmError",
    "Enqueue",
    "FleetAlarms",
    "Transition",
]

log = logging.getLogger(__name__)

OFFICE_USER = "office"  # who raises and clears alarms in the ledger
MAX_NOTE = 500
MAX_DETAIL = 1000

#: Puts a notification into the durable outbox inside the caller's transaction.
Enqueue = Callable[[Query, Notification], object]


class AlarmError(LinetapError, ValueError):
    """An acknowledgement that cannot be made (the message says why, for the person)."""


@dataclass(frozen=True, slots=True)
class Transition:
    """One step an alarm took: ``raised``, ``acknowledged`` or ``cleared``."""

    alarm: AlarmRow
    step: str
    by: str
    at: datetime


def subject(a: AlarmRow) -> str:
    return f"fleet:{a.where}:{a.kind}#{a.id}"


class FleetAlarms:
    """The alarm lifecycle over one index; ``enqueue`` (None: no notifications) hands
    each transition to the notification outbox in the same transaction."""

    def __init__(self, index: Index, cfg: FleetConfig, enqueue: Enqueue | None = None) -> None:
        self.index = index
        self.cfg = cfg
        self.store = FleetStore(index)
        self.ledger = Ledger(index)
        self.enqueue = enqueue

    # -- automatic --------------------------------------------------------------------
    def sync(
        self,
        device_id: str,
        evaluation: Evaluation,
        now: datetime,
        *,
        in_transaction: Callable[[Query], object] | None = None,
    ) -> list[Transition]:
        """Move ``device_id``'s alarms to ``evaluation`` at ``now`` (see the module
        docstring); the transitions made. ``in_transaction(q)`` runs first under the same
        lock and transaction (the ingest rolls its lines up there)."""
        with self.index.transaction(True) as q:
            self.store.lock_device(q, device_id)
            if in_transaction is not None:
                in_transaction(q)
            open_rows = {
                (a.line or "", a.kind): a
                for a in (
                    alarm_row(r)
                    for r in q(
                        f"SELECT {ALARM_COLUMNS} FROM fleet_alarms "
                        "WHERE device_id = ? AND state <> 'cleared'",
                        (device_id,),
                    )
                )
            }
            done: list[Transition] = []
            for c in _unique(evaluation.conditions):
                done += self._holds(q, device_id, c, open_rows.pop(c.key, None), now)
            for a in open_rows.values():
                if a.kind not in evaluation.unknown:
                    done += self._gone(q, a, now)
        for t in done:
            log.warning(
                "fleet alarm %s %s %s: %s", t.step, t.alarm.where, t.alarm.kind, t.alarm.detail
            )
        return done

    def _holds(
        self, q: Query, device_id: str, c: Condition, a: AlarmRow | None, now: datetime
    ) -> list[Transition]:
        stamp, detail = iso(now), c.detail[:MAX_DETAIL]
        if a is not None:
            raise_now = a.state == "pending" and _since(a.first_seen_at, now) >= c.hold_s
            q(
                "UPDATE fleet_alarms SET last_seen_at = ?, absent_since = NULL, detail = ?, "
                "state = ?, first_raised_at = COALESCE(first_raised_at, ?) WHERE id = ?",
                (
                    stamp,
                    detail,
                    "raised" if raise_now else a.state,
                    stamp if raise_now else None,
                    a.id,
                ),
            )
            return [self._step(q, a.id, "raised", OFFICE_USER, now)] if raise_now else []
        recent = q(
            f"SELECT {ALARM_COLUMNS} FROM fleet_alarms WHERE device_id = ? "
            "AND COALESCE(line, '') = ? AND kind = ? AND state = 'cleared' AND cleared_at >= ? "
            "ORDER BY id DESC LIMIT 1",
            (
                device_id,
                c.line or "",
                c.kind,
                iso(now - timedelta(seconds=self.cfg.flap_window_s)),
            ),
        )
        if recent:
            reopened = alarm_row(recent[0])
            q(
                "UPDATE fleet_alarms SET state = 'raised', count = count + 1, cleared_at = NULL, "
                "absent_since = NULL, last_seen_at = ?, detail = ?, acked_by = NULL, "
                "acked_at = NULL, ack_note = NULL WHERE id = ?",
                (stamp, detail, reopened.id),
            )
            return [self._step(q, reopened.id, "raised", OFFICE_USER, now)]
        state = "raised" if c.hold_s <= 0 else "pending"
        [(new_id,)] = q(
            "INSERT INTO fleet_alarms (device_id, line, kind, state, first_seen_at, "
            "first_raised_at, last_seen_at, count, detail) VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?) "
            "RETURNING id",
            (
                device_id,
                c.line,
                c.kind,
                state,
                stamp,
                stamp if state == "raised" else None,
                stamp,
                detail,
            ),
        )
        return [self._step(q, int(new_id), "raised", OFFICE_USER, now)] if state == "raised" else []

    def _gone(self, q: Query, a: AlarmRow, now: datetime) -> list[Transition]:
        if a.state == "pending":  # never raised: nothing to tell, nothing to keep
            q("DELETE FROM fleet_alarms WHERE id = ?", (a.id,))
            return []
        if a.absent_since is None:
            q("UPDATE fleet_alarms SET absent_since = ? WHERE id = ?", (iso(now), a.id))
            if self.cfg.clear_after_s > 0:
                return []
        elif _since(a.absent_since, now) < self.cfg.clear_after_s:
            return []
        q(
            "UPDATE fleet_alarms SET state = 'cleared', cleared_at = ? WHERE id = ?",
            (iso(now), a.id),
        )
        return [self._step(q, a.id, "cleared", OFFICE_USER, now)]

    # -- by a person ------------------------------------------------------------------
    def ack(self, alarm_id: int, by: str, note: str, now: datetime) -> Transition:
        """Acknowledge an open alarm (the caller has checked ``by``'s right through the
        gate); :class:`AlarmError` when it is unknown, pending, cleared or acknowledged
        already, or the note is too long."""
        note = " ".join(note.split())
        if len(note) > MAX_NOTE:
            raise AlarmError(f"the note is too long: {len(note)} characters, at most {MAX_NOTE}")
        a = self.store.alarm(alarm_id)
        if a is None or a.state == "pending":
            raise AlarmError(f"there is no alarm {alarm_id}")
        with self.index.transaction(True) as q:
            self.store.lock_device(q, a.device_id)
            rows = q(f"SELECT {ALARM_COLUMNS} FROM fleet_alarms WHERE id = ?", (alarm_id,))
            a = alarm_row(rows[0])
            if a.state == "cleared":
                raise AlarmError(f"alarm {alarm_id} is cleared already (at {a.cleared_at})")
            if a.state == "acknowledged":
                raise AlarmError(
                    f"alarm {alarm_id} was acknowledged already by {a.acked_by} at {a.acked_at}"
                )
            q(
                "UPDATE fleet_alarms SET state = 'acknowledged', acked_by = ?, acked_at = ?, "
                "ack_note = ? WHERE id = ?",
                (by, iso(now), note, alarm_id),
            )
            t = self._step(q, alarm_id, "acknowledged", by, now, note=note)
        log.info("fleet alarm acknowledged %s %s by %s", t.alarm.where, t.alarm.kind, by)
        return t

    # -- the record of each step ------------------------------------------------------
    def _step(
        self, q: Query, alarm_id: int, step: str, by: str, now: datetime, *, note: str = ""
    ) -> Transition:
        a = alarm_row(q(f"SELECT {ALARM_COLUMNS} FROM fleet_alarms WHERE id = ?", (alarm_id,))[0])
        what = f"{a.detail}" if step != "acknowledged" else f"note: {note}" if note else ""
        if step == "raised" and a.count > 1:
            what = f"again ({a.count} times within the flap window): {what}"
        self.ledger.append_in(
            q,
            AdminLeaf(
                user=by[:200],
                action=f"alarm_{step}",
                subject=subject(a)[:200],
                detail=what[:2000],
                at=iso(now),
            ),
        )
        if self.enqueue is not None:
            self.enqueue(q, _notification(a, step, by, note, now))
        return Transition(a, step, by, now)


def _notification(a: AlarmRow, step: str, by: str, note: str, now: datetime) -> Notification:
    kind = {
        "raised": Kind.ALARM_RAISED,
        "acknowledged": Kind.ALARM_ACKNOWLEDGED,
        "cleared": Kind.ALARM_CLEARED,
    }[step]
    severity = Severity.INFO if step != "raised" else Severity(severity_of(a.kind))
    details = {"alarm id": str(a.id), "detail": a.detail, "count": str(a.count)}
    if a.first_raised_at:
        details["first raised"] = a.first_raised_at
    if step == "acknowledged":
        details["by"] = by
        details["note"] = note
    return Notification(
        # One id per alarm and step (and occurrence): a retried transaction enqueues once.
        id=f"fleet-{a.id}-{step}-{a.count}-{int(now.timestamp())}",
        kind=kind,
        device_id=a.device_id,
        line=a.line,
        alarm=a.kind,
        severity=severity,
        summary=f"{a.where} {a.kind.replace('_', ' ')} {step}: {a.detail}",
        raised_at=now,
        details=details,
    )


def _since(stamp: str | None, now: datetime) -> float:
    when = parse_iso(stamp)
    return (now - when).total_seconds() if when is not None else 0.0


def _unique(conditions: Iterable[Condition]) -> list[Condition]:
    """One condition per device, line and kind (the first; rules make no duplicates)."""
    seen: dict[tuple[str, str], Condition] = {}
    for c in conditions:
        seen.setdefault(c.key, c)
    return list(seen.values())
