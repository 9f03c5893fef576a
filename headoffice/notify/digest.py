"""The daily digest: one mail a day of what was raised and cleared in the 24 hours
before ``digest_at`` (UTC), and what is still open then.

It is a notification like any other (kind ``digest``, e-mail only), with the id
``digest-YYYY-MM-DD``: whichever dispatcher (of several workers, or after a restart)
gets there first enqueues it, the others find it there. An office that was down at
``digest_at`` sends that day's digest when it is back (the same day).
"""

from __future__ import annotations

from datetime import datetime, time, timedelta

from headoffice.notify.model import MAX_DETAILS, Kind, Notification, NotifyConfig, Severity
from headoffice.notify.outbox import AlarmEvent, Outbox

PERIOD = timedelta(days=1)
OFFICE = "office"  # the digest is about the office, not one device


def digest_time(cfg: NotifyConfig, now: datetime) -> datetime | None:
    """Today's digest time once ``now`` has reached it; None before it, or when the
    digest is off."""
    if cfg.digest != "daily":
        return None
    hour, minute = (int(part) for part in cfg.digest_at.split(":"))
    today = datetime.combine(now.date(), time(hour, minute), tzinfo=now.tzinfo)
    return today if today <= now else None


def digest_id(at: datetime) -> str:
    return f"digest-{at:%Y-%m-%d}"


def _entry(e: AlarmEvent, since: bool) -> str:
    when = f"{e.raised_at:%Y-%m-%d %H:%M} UTC"
    head = f"{e.where} {e.alarm} ({e.severity})"
    return f"{head} since {when}: {e.summary}" if since else f"{when} {head}: {e.summary}"


def build_digest(outbox: Outbox, at: datetime) -> Notification:
    """The digest for the day ending at ``at``: details ``open N``, ``raised N`` and
    ``cleared N`` (one per alarm, at most :data:`MAX_DETAILS` in all; ``more`` says how
    many did not fit)."""
    events = outbox.alarm_events(at - PERIOD, at)
    still_open = outbox.open_alarms(at)
    raised = [e for e in events if e.kind == Kind.ALARM_RAISED.value]
    cleared = [e for e in events if e.kind == Kind.ALARM_CLEARED.value]
    entries = [
        *((f"open {i}", _entry(e, True)) for i, e in enumerate(still_open, 1)),
        *((f"raised {i}", _entry(e, False)) for i, e in enumerate(raised, 1)),
        *((f"cleared {i}", _entry(e, False)) for i, e in enumerate(cleared, 1)),
    ]
    details = dict(entries[: MAX_DETAILS - 1])
    if len(entries) > len(details):
        details["more"] = f"{len(entries) - len(details)} more not listed here"
    critical = any(e.severity == Severity.CRITICAL.value for e in still_open)
    return Notification(
        id=digest_id(at),
        kind=Kind.DIGEST,
        device_id=OFFICE,
        alarm="digest",
        severity=Severity.CRITICAL if critical else Severity.INFO,
        summary=f"daily digest {at:%Y-%m-%d}: {len(raised)} raised, {len(cleared)} cleared, "
        f"{len(still_open)} open",
        raised_at=at,
        details=details,
    )
