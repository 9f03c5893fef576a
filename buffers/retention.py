"""Local retention of acknowledged recordings: which outbox entries to delete, and in what order.

The rule is :func:`next_deletions`: a pure function over plain values, no I/O, so it is
tested without a disk. :func:`apply_retention` is the only caller: it feeds the rule an
outbox's acked entries and the free space the disk reports, deletes what the rule names,
and asks again until the rule names nothing.

The rules, in order:

1. An unacknowledged recording is never chosen, whatever the pressure: the head office
   has not confirmed a durable copy yet (promise 2). A full disk stops new recordings;
   it never costs an old one.
2. Every acked recording older than ``keep_acked_s`` (counted from its ack) goes.
3. While free space is below ``min_free_bytes``, more acked recordings go, oldest ack
   first, one at a time, free space measured again after each: entry sizes do not account
   for block rounding or for whatever else is writing to the partition.

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
    acked_at: float | None  # None = not acknowledged yet: never deleted


def disk_pressure(free_bytes: int, min_free_bytes: int) -> bool:
    """True when the partition has less free space than the configured floor."""
    return free_bytes < min_free_bytes


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


def next_deletions(
    items: Iterable[RetentionItem],
    *,
    now: float,
    keep_acked_s: float,
    free_bytes: int,
    min_free_bytes: int,
) -> list[str]:
    """Recording ids to delete now, in deletion order (see the module doc for the rules):
    every expired item; if none is and the disk is short of space, the oldest acked one;
    else none. ``free_bytes`` is what the disk reports now."""
    acked = deletion_order(items)
    expired = [i.recording_id for i in acked if is_expired(i, now=now, keep_acked_s=keep_acked_s)]
    if expired:
        return expired
    if acked and disk_pressure(free_bytes, min_free_bytes):
        return [acked[0].recording_id]
    return []


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
    """Delete acked entries as :func:`next_deletions` says, asking it again after each
    round with the free space read anew; returns the ids deleted, in order."""
    free_fn = free_bytes_fn or (lambda: shutil.disk_usage(outbox.root).free)
    items = {
        e.recording_id: RetentionItem(e.recording_id, e.seq, e.acked_at)
        for e in outbox.entries(OutboxState.ACKED)
    }
    deleted: list[str] = []
    while batch := next_deletions(
        items.values(),
        now=now,
        keep_acked_s=keep_acked_s,
        free_bytes=free_fn(),
        min_free_bytes=min_free_bytes,
    ):
        for recording_id in batch:  # each round names at least one item: the loop ends
            del items[recording_id]
            if outbox.delete(recording_id):
                deleted.append(recording_id)
    return deleted
