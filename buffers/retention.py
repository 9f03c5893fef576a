"""Local retention of acknowledged recordings: which outbox entries to delete, and in what order.

The rule is :func:`plan_retention` and its helpers: pure functions over plain values, no
I/O, so every rule is tested without a disk. :func:`apply_retention` feeds the rule an
outbox's entries and free space and does the deleting.

The rules, in order:

1. An unacknowledged recording is never chosen, whatever the pressure: the head office
   has not confirmed a durable copy yet (promise 2). A full disk stops new recordings;
   it never costs an old one.
2. Every acked recording older than ``keep_acked_s`` (counted from its ack) goes.
3. If free space, counting what step 2 frees, is still below ``min_free_bytes``, more
   acked recordings go, oldest ack first, until enough is free or none is left.

Order is deterministic: by ack time, then seq, then recording id, so two runs over the
same outbox agree however the entries were listed.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from buffers.outbox import Outbox, OutboxState


@dataclass(frozen=True)
class RetentionItem:
    recording_id: str
    seq: int
    bytes: int
    acked_at: float | None  # None = not acknowledged yet: never deleted


def disk_pressure(free_bytes: int, min_free_bytes: int) -> bool:
    """True when the partition has less free space than the configured floor."""
    return free_bytes < min_free_bytes


def bytes_to_free(free_bytes: int, min_free_bytes: int) -> int:
    """How many bytes must be freed to get back to the floor (0 when there is no pressure)."""
    return max(0, min_free_bytes - free_bytes)


def is_expired(item: RetentionItem, *, now: float, keep_acked_s: float) -> bool:
    """Acked and older than ``keep_acked_s``.

    An ack time in the future (the clock was stepped back after the ack, e.g. a Pi without
    RTC before NTP sync) makes the age negative, so the item is kept: the safe direction.
    """
    return item.acked_at is not None and now - item.acked_at > keep_acked_s


def deletion_order(items: Iterable[RetentionItem]) -> list[RetentionItem]:
    """The acked items, oldest ack first (ties: lower seq, then recording id)."""
    acked = [i for i in items if i.acked_at is not None]
    acked.sort(key=_order_key)
    return acked


def plan_retention(
    items: Iterable[RetentionItem],
    *,
    now: float,
    keep_acked_s: float,
    free_bytes: int,
    min_free_bytes: int,
) -> list[str]:
    """Recording ids to delete, in deletion order (see the module doc for the rules)."""
    plan: list[str] = []
    freed = 0
    candidates = deletion_order(items)
    rest: list[RetentionItem] = []
    for item in candidates:
        if is_expired(item, now=now, keep_acked_s=keep_acked_s):
            plan.append(item.recording_id)
            freed += item.bytes
        else:
            rest.append(item)
    # Expired items have older acks than every kept one, so appending the pressure
    # deletions keeps the whole plan in oldest-ack-first order.
    for item in rest:
        if not disk_pressure(free_bytes + freed, min_free_bytes):
            break
        plan.append(item.recording_id)
        freed += item.bytes
    return plan


def _order_key(item: RetentionItem) -> tuple[float, int, str]:
    assert item.acked_at is not None  # deletion_order filters unacked items first
    return (item.acked_at, item.seq, item.recording_id)


def apply_retention(
    outbox: Outbox,
    *,
    now: float,
    keep_acked_s: float,
    min_free_bytes: int,
    free_bytes_fn: Callable[[], int] | None = None,
) -> list[str]:
    """Delete acked entries as :func:`plan_retention` plans; returns the ids deleted, in
    order.

    Expired entries go first. Under disk pressure, further acked entries go one at a time,
    oldest ack first, planned again on free space re-read after each: entry sizes do not
    account for block rounding or for whatever else is writing to the partition.
    """
    free_fn = free_bytes_fn or (lambda: shutil.disk_usage(outbox.root).free)
    items = {
        e.recording_id: RetentionItem(e.recording_id, e.seq, e.bytes, e.acked_at)
        for e in outbox.entries(OutboxState.ACKED)
    }
    deleted: list[str] = []
    while items:
        plan = plan_retention(
            items.values(),
            now=now,
            keep_acked_s=keep_acked_s,
            free_bytes=free_fn(),
            min_free_bytes=min_free_bytes,
        )
        if not plan:
            break
        # The expired ones go whatever the free space; one deletion for space, then the
        # plan is made again on the free space the disk reports.
        expired = [r for r in plan if is_expired(items[r], now=now, keep_acked_s=keep_acked_s)]
        for recording_id in expired or plan[:1]:
            del items[recording_id]
            if outbox.delete(recording_id):
                deleted.append(recording_id)
    return deleted
