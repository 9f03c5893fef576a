"""The notification outbox: a durable queue in the office index (both backends).

``notifications`` keeps every notification (its JSON, and the columns the digest and the
latency figures select by); ``deliveries`` has one row per notification and channel:

- ``pending``: not tried yet; ``failed``: tried, and tried again at ``next_attempt_at``
  (``NULL``: not retried, a failed ``notify test``); ``sent``: delivered at ``sent_at``
  in the message ``message_id``;
- ``claimed_until``: a dispatcher is sending it. Claims are made under a per-channel lock
  (SQLite's write transaction, a PostgreSQL advisory lock), so several ``serve`` workers
  never send one delivery twice; a dispatcher killed mid-send leaves a claim that lapses,
  and the delivery is sent again (at least once: a receiver may see a message twice,
  never zero times).

Nothing is deleted: a delivery that keeps failing stays ``failed`` with its last error
(``linetap-office notify status``) and is retried with back-off until it goes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from headoffice.index import Index, Query
from headoffice.notify.model import SOLO_KINDS, Channel, Kind, Notification, NotifyConfig, iso

PENDING, SENT, FAILED = "pending", "sent", "failed"
#: the most queued deliveries of a channel looked at per claim (the oldest first)
MAX_SCAN = 2000
_SOLO = tuple(k.value for k in SOLO_KINDS)
_ALARM_KINDS = (Kind.ALARM_RAISED.value, Kind.ALARM_ACKNOWLEDGED.value, Kind.ALARM_CLEARED.value)


def utc_now() -> datetime:
    return datetime.now(UTC)


def _when(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(str(text))


@dataclass(frozen=True, slots=True)
class Queued:
    """A delivery waiting to be sent, with its notification."""

    notification: Notification
    state: str  # pending | failed
    attempts: int
    next_attempt_at: datetime
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ChannelState:
    """What a dispatcher decides a channel's next message from (under the claim lock)."""

    channel: Channel
    queued: tuple[Queued, ...]  # oldest first, at most MAX_SCAN
    sent_last_hour: tuple[datetime, ...]  # when each alarm message of the last hour went


@dataclass(frozen=True, slots=True)
class ChannelStatus:
    channel: str
    pending: int
    failed: int
    not_retried: int  # failed for good (a failed test notification)
    oldest_waiting: datetime | None
    next_attempt_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    last_sent_at: datetime | None
    sent_24h: int


@dataclass(frozen=True, slots=True)
class DeliveryTime:
    """One delivered notification's times, for latency figures (raised → sent)."""

    notification_id: str
    kind: str
    channel: str
    raised_at: datetime
    created_at: datetime
    sent_at: datetime
    attempts: int

    @property
    def latency_s(self) -> float:
        return (self.sent_at - self.raised_at).total_seconds()


@dataclass(frozen=True, slots=True)
class AlarmEvent:
    """An alarm notification as the digest lists it."""

    kind: str
    where: str
    alarm: str
    severity: str
    summary: str
    raised_at: datetime


Picker = Callable[[ChannelState], Sequence[str]]


class Outbox:
    """Enqueue notifications, and claim and settle their deliveries."""

    def __init__(
        self, index: Index, cfg: NotifyConfig, clock: Callable[[], datetime] = utc_now
    ) -> None:
        self.index = index
        self.cfg = cfg
        self.clock = clock

    # -- enqueue -------------------------------------------------------------------------
    def enqueue(self, n: Notification, channels: Sequence[Channel] | None = None) -> bool:
        """Store ``n`` and its deliveries in a committed transaction of its own."""
        with self.index.transaction(True) as q:
            return self.enqueue_in(q, n, channels)

    def enqueue_in(
        self, q: Query, n: Notification, channels: Sequence[Channel] | None = None
    ) -> bool:
        """Store ``n`` inside the caller's write transaction (the alarm and its
        notification commit together, or neither does): one row, and one delivery per
        channel (default: every configured one). An id already stored is left as it is
        (False), so a caller that retries does not notify twice."""
        created = self.clock()
        found = q(
            "INSERT INTO notifications (id, kind, device_id, line, alarm, severity, summary, "
            "raised_at, created_at, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (id) DO NOTHING RETURNING id",
            (n.id, n.kind.value, n.device_id, n.line, n.alarm, n.severity.value, n.summary,
             iso(n.raised_at), iso(created), json.dumps(n.to_json(), sort_keys=True)),
        )  # fmt: skip
        if not found:
            return False
        # An alarm waits out the batch window (what arrives meanwhile goes in the same
        # message); a digest or a test goes at once.
        wait = 0 if n.kind in SOLO_KINDS else self.cfg.batch_s
        due = iso(created + timedelta(seconds=wait))
        for channel in self.cfg.channels if channels is None else channels:
            q(
                "INSERT INTO deliveries (notification_id, channel, state, attempts, "
                "next_attempt_at) VALUES (?, ?, ?, 0, ?)",
                (n.id, Channel(channel).value, PENDING, due),
            )
        return True

    def enqueue_claimed(
        self, n: Notification, channel: Channel, now: datetime, lease: timedelta
    ) -> None:
        """Store ``n`` for ``channel`` alone, claimed by the caller in the same
        transaction (``notify test`` sends it itself; no dispatcher may take it first)."""
        with self.index.transaction(True) as q:
            self.enqueue_in(q, n, (channel,))
            q(
                "UPDATE deliveries SET claimed_until = ? WHERE notification_id = ? AND channel = ?",
                (iso(now + lease), n.id, channel.value),
            )

    def exists(self, notification_id: str) -> bool:
        with self.index.transaction(False) as q:
            return bool(q("SELECT 1 FROM notifications WHERE id = ?", (notification_id,)))

    # -- claim and settle ----------------------------------------------------------------
    def claim(
        self, channel: Channel, now: datetime, lease: timedelta, pick: Picker
    ) -> list[Notification]:
        """Under the channel's lock: show ``pick`` the channel's queue and the alarm
        messages of the last hour, and claim the deliveries it names until ``now +
        lease``; their notifications, in the order picked."""
        with self.index.transaction(True) as q:
            self.index.serialize_appends(q, f"notify:{channel.value}")
            state = self._state(q, channel, now)
            chosen = list(pick(state))
            if not chosen:
                return []
            by_id = {item.notification.id: item.notification for item in state.queued}
            until = iso(now + lease)
            for nid in chosen:
                q(
                    "UPDATE deliveries SET claimed_until = ? "
                    "WHERE notification_id = ? AND channel = ?",
                    (until, nid, channel.value),
                )
            return [by_id[nid] for nid in chosen]

    def _state(self, q: Query, channel: Channel, now: datetime) -> ChannelState:
        rows = q(
            "SELECT n.payload, d.state, d.attempts, d.next_attempt_at, n.created_at "
            "FROM deliveries d JOIN notifications n ON n.id = d.notification_id "
            "WHERE d.channel = ? AND d.state IN (?, ?) AND d.next_attempt_at IS NOT NULL "
            "AND (d.claimed_until IS NULL OR d.claimed_until <= ?) "
            "ORDER BY n.created_at, n.id LIMIT ?",
            (channel.value, PENDING, FAILED, iso(now), MAX_SCAN),
        )
        queued = tuple(
            Queued(Notification.from_json(json.loads(payload)), str(st), int(attempts),
                   datetime.fromisoformat(due), datetime.fromisoformat(created))
            for payload, st, attempts, due, created in rows
        )  # fmt: skip
        marks = ", ".join("?" for _ in _SOLO)
        sent = q(
            "SELECT MIN(d.sent_at) FROM deliveries d JOIN notifications n "
            "ON n.id = d.notification_id WHERE d.channel = ? AND d.state = ? "
            f"AND d.sent_at > ? AND n.kind NOT IN ({marks}) GROUP BY d.message_id",
            (channel.value, SENT, iso(now - timedelta(hours=1)), *_SOLO),
        )
        return ChannelState(
            channel, queued, tuple(sorted(datetime.fromisoformat(r[0]) for r in sent))
        )

    def record_sent(
        self, channel: Channel, ids: Sequence[str], message_id: str, sent_at: datetime
    ) -> None:
        """The message went: its deliveries are ``sent``. The channel works again, so
        deliveries waiting out a back-off are due now rather than in up to an hour."""
        at = iso(sent_at)
        with self.index.transaction(True) as q:
            for nid in ids:
                q(
                    "UPDATE deliveries SET state = ?, sent_at = ?, message_id = ?, "
                    "attempts = attempts + 1, last_attempt_at = ?, next_attempt_at = NULL, "
                    "claimed_until = NULL WHERE notification_id = ? AND channel = ?",
                    (SENT, at, message_id, at, nid, channel.value),
                )
            q(
                "UPDATE deliveries SET next_attempt_at = ? WHERE channel = ? AND state = ? "
                "AND next_attempt_at > ?",
                (at, channel.value, FAILED, at),
            )

    def record_failed(
        self,
        channel: Channel,
        ids: Sequence[str],
        error: str,
        at: datetime,
        retry_at: datetime | None,
    ) -> None:
        """The message did not go: ``failed`` with ``error``, tried again at ``retry_at``
        (``None``: not again)."""
        when = iso(at)
        retry = None if retry_at is None else iso(retry_at)
        with self.index.transaction(True) as q:
            for nid in ids:
                q(
                    "UPDATE deliveries SET state = ?, attempts = attempts + 1, "
                    "last_attempt_at = ?, last_error = ?, last_error_at = ?, "
                    "next_attempt_at = ?, claimed_until = NULL "
                    "WHERE notification_id = ? AND channel = ?",
                    (FAILED, when, error[:500], when, retry, nid, channel.value),
                )

    def attempts(self, channel: Channel, ids: Sequence[str]) -> int:
        """The most attempts any of these deliveries has had (for the back-off)."""
        marks = ", ".join("?" for _ in ids)
        with self.index.transaction(False) as q:
            [(most,)] = q(
                f"SELECT COALESCE(MAX(attempts), 0) FROM deliveries WHERE channel = ? "
                f"AND notification_id IN ({marks})",
                (channel.value, *ids),
            )
        return int(most)

    # -- reading -------------------------------------------------------------------------
    def status(self, now: datetime) -> list[ChannelStatus]:
        """Per channel with deliveries, or configured: what waits, and what went."""
        with self.index.transaction(False) as q:
            names = {r[0] for r in q("SELECT DISTINCT channel FROM deliveries", ())}
            names |= {c.value for c in self.cfg.channels}
            return [self._channel_status(q, name, now) for name in sorted(names)]

    def _channel_status(self, q: Query, channel: str, now: datetime) -> ChannelStatus:
        counts: dict[str, int] = dict(
            q(
                "SELECT CASE WHEN state = ? AND next_attempt_at IS NULL THEN 'gave_up' "
                "ELSE state END, COUNT(*) FROM deliveries WHERE channel = ? GROUP BY 1",
                (FAILED, channel),
            )
        )
        [(oldest, next_at)] = q(
            "SELECT MIN(n.created_at), MIN(d.next_attempt_at) FROM deliveries d "
            "JOIN notifications n ON n.id = d.notification_id WHERE d.channel = ? "
            "AND d.state IN (?, ?) AND d.next_attempt_at IS NOT NULL",
            (channel, PENDING, FAILED),
        )
        error = q(
            "SELECT last_error, last_error_at FROM deliveries WHERE channel = ? "
            "AND last_error_at IS NOT NULL ORDER BY last_error_at DESC LIMIT 1",
            (channel,),
        )
        [(last_sent,)] = q(
            "SELECT MAX(sent_at) FROM deliveries WHERE channel = ? AND state = ?",
            (channel, SENT),
        )
        [(sent_24h,)] = q(
            "SELECT COUNT(*) FROM deliveries WHERE channel = ? AND state = ? AND sent_at > ?",
            (channel, SENT, iso(now - timedelta(days=1))),
        )
        return ChannelStatus(
            channel=channel,
            pending=int(counts.get(PENDING, 0)),
            failed=int(counts.get(FAILED, 0)),
            not_retried=int(counts.get("gave_up", 0)),
            oldest_waiting=_when(oldest),
            next_attempt_at=_when(next_at),
            last_error=str(error[0][0]) if error else None,
            last_error_at=_when(error[0][1]) if error else None,
            last_sent_at=_when(last_sent),
            sent_24h=int(sent_24h),
        )

    def delivery_times(self, since: datetime) -> list[DeliveryTime]:
        """Every delivery sent at or after ``since``, oldest first: raised_at, created_at
        (enqueued) and sent_at, for the figure of alarm-to-inbox latency."""
        with self.index.transaction(False) as q:
            rows = q(
                "SELECT d.notification_id, n.kind, d.channel, n.raised_at, n.created_at, "
                "d.sent_at, d.attempts FROM deliveries d JOIN notifications n "
                "ON n.id = d.notification_id WHERE d.state = ? AND d.sent_at >= ? "
                "ORDER BY d.sent_at, d.notification_id",
                (SENT, iso(since)),
            )
        return [
            DeliveryTime(str(nid), str(kind), str(ch), datetime.fromisoformat(raised),
                         datetime.fromisoformat(created), datetime.fromisoformat(sent), int(n))
            for nid, kind, ch, raised, created, sent, n in rows
        ]  # fmt: skip

    def alarm_events(self, start: datetime, end: datetime) -> list[AlarmEvent]:
        """Alarm notifications raised in ``[start, end)``, oldest first."""
        marks = ", ".join("?" for _ in _ALARM_KINDS)
        with self.index.transaction(False) as q:
            rows = q(
                "SELECT kind, device_id, line, alarm, severity, summary, raised_at "
                f"FROM notifications WHERE kind IN ({marks}) AND raised_at >= ? "
                "AND raised_at < ? ORDER BY raised_at, created_at",
                (*_ALARM_KINDS, iso(start), iso(end)),
            )
        return [_event(r) for r in rows]

    def open_alarms(self, at: datetime) -> list[AlarmEvent]:
        """Alarms whose latest notification before ``at`` is not a clear: still open
        (acknowledged ones too), per device, line and alarm kind; oldest first."""
        marks = ", ".join("?" for _ in _ALARM_KINDS)
        with self.index.transaction(False) as q:
            rows = q(
                "SELECT kind, device_id, line, alarm, severity, summary, raised_at FROM ("
                "SELECT kind, device_id, line, alarm, severity, summary, raised_at, "
                "ROW_NUMBER() OVER (PARTITION BY device_id, COALESCE(line, ''), alarm "
                "ORDER BY raised_at DESC, created_at DESC) AS newest "
                f"FROM notifications WHERE kind IN ({marks}) AND raised_at < ?) latest "
                "WHERE newest = 1 AND kind <> ? ORDER BY raised_at",
                (*_ALARM_KINDS, iso(at), Kind.ALARM_CLEARED.value),
            )
        return [_event(r) for r in rows]


def _event(row: Sequence[object]) -> AlarmEvent:
    kind, device, line, alarm, severity, summary, raised = (str(v) if v is not None else None
                                                             for v in row)  # fmt: skip
    where = f"{device}/{line}" if line else str(device)
    return AlarmEvent(
        str(kind), where, str(alarm), str(severity), str(summary),
        datetime.fromisoformat(str(raised)),
    )  # fmt: skip
