"""Local retention: the one rule (pure, no disk), then the product's pass over a real outbox.

Never an unacked recording, whatever the pressure. ``next_deletions`` is the rule;
``apply_retention`` asks it round after round, deleting what it names, with the free space
measured again each time; the properties hold for both.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from buffers.outbox import Outbox
from buffers.retention import (
    RetentionItem,
    apply_retention,
    deletion_order,
    disk_pressure,
    is_expired,
    next_deletions,
)

DAY = 86400.0
# The outbox fsyncs every step: on tmpfs a property's hundred outboxes take a second.
SCRATCH = "/dev/shm" if Path("/dev/shm").is_dir() else None


def _item(rid: str, seq: int, acked_at: float | None) -> RetentionItem:
    return RetentionItem(recording_id=rid, seq=seq, acked_at=acked_at)


def test_expired_acked_items_go_oldest_ack_first_and_unacked_ones_stay():
    now = 10 * DAY
    items = [
        _item("young", 4, now - 1 * DAY),
        _item("old-b", 2, now - 8 * DAY),
        _item("unacked-ancient", 1, None),
        _item("old-a", 3, now - 9 * DAY),
    ]
    # With or without pressure: the expired ones first, all at once.
    for free in (10**9, 0):
        deletions = next_deletions(
            items, now=now, keep_acked_s=7 * DAY, free_bytes=free, min_free_bytes=10**6
        )
        assert deletions == ["old-a", "old-b"]


def test_pressure_names_the_oldest_acked_item_one_at_a_time():
    items = [_item("b", 2, 20.0), _item("a", 1, 10.0), _item("u", 3, None)]

    def deletions(items: list[RetentionItem], free_bytes: int) -> list[str]:
        return next_deletions(
            items, now=100.0, keep_acked_s=DAY, free_bytes=free_bytes, min_free_bytes=1500
        )

    assert deletions(items, 1000) == ["a"]
    assert deletions(items, 1500) == []  # at the floor: enough
    assert deletions([items[2]], 0) == []  # only an unacked one


def test_ties_in_ack_time_break_by_seq_then_id():
    items = [_item("z", 2, 5.0), _item("y", 2, 5.0), _item("x", 1, 5.0)]
    assert [i.recording_id for i in deletion_order(items)] == ["x", "y", "z"]


def test_small_helpers():
    assert disk_pressure(99, 100) and not disk_pressure(100, 100)
    assert is_expired(_item("a", 1, 0.0), now=11.0, keep_acked_s=10.0)
    assert not is_expired(_item("a", 1, 1.0), now=11.0, keep_acked_s=10.0)  # exactly keep
    assert not is_expired(_item("a", 1, None), now=1e12, keep_acked_s=0.0)
    # A clock stepped back after the ack makes the age negative: kept.
    assert not is_expired(_item("a", 1, 500.0), now=100.0, keep_acked_s=0.0)


# -- properties of the rule ---------------------------------------------------------------

# Integer-valued ack times make ties (same ack time) common, so ordering ties are exercised.
_ack = st.one_of(st.none(), st.integers(0, 1000).map(float), st.floats(0, 1000))
_rows = st.lists(st.tuples(_ack, st.integers(0, 5000)), max_size=25)
_items = _rows.map(
    lambda rows: [_item(f"r{i:02d}", i % 7, acked) for i, (acked, _) in enumerate(rows)]
)
_args = st.fixed_dictionaries(
    {
        "now": st.floats(0, 2000),
        "keep_acked_s": st.floats(0, 1000),
        "free_bytes": st.integers(0, 60_000),
        "min_free_bytes": st.integers(0, 60_000),
    }
)


def _key(item: RetentionItem) -> tuple[float, int, str]:
    assert item.acked_at is not None
    return (item.acked_at, item.seq, item.recording_id)


def _expired(items: list[RetentionItem], now: float, keep_acked_s: float) -> list[str]:
    """The expired ids, oldest ack first, computed here independently of the module."""
    old = [i for i in items if i.acked_at is not None and now - i.acked_at > keep_acked_s]
    return [i.recording_id for i in sorted(old, key=_key)]


@given(_items, _args)
def test_the_rule_never_names_an_unacked_item(items, args):
    deletions = next_deletions(items, **args)
    unacked = {i.recording_id for i in items if i.acked_at is None}
    assert not unacked & set(deletions)
    assert len(deletions) == len(set(deletions))


@given(_items, _args)
def test_the_rule_names_every_expired_item_oldest_ack_first_and_nothing_younger(items, args):
    deletions = next_deletions(items, **args)
    by_id = {i.recording_id: i for i in items}
    keys = [_key(by_id[rid]) for rid in deletions]
    assert keys == sorted(keys)
    # Nothing kept is older than anything deleted.
    kept = [i for i in items if i.acked_at is not None and i.recording_id not in deletions]
    if deletions and kept:
        assert min(_key(i) for i in kept) > keys[-1]
    expired = _expired(items, args["now"], args["keep_acked_s"])
    if expired or not disk_pressure(args["free_bytes"], args["min_free_bytes"]):
        assert deletions == expired


@given(_items, _args)
def test_under_pressure_with_nothing_expired_the_rule_names_the_oldest_acked_item(items, args):
    args = {**args, "keep_acked_s": 1e9, "free_bytes": 0, "min_free_bytes": 1}
    acked = sorted((i for i in items if i.acked_at is not None), key=_key)
    assert next_deletions(items, **args) == [i.recording_id for i in acked[:1]]


@given(_items, _args, st.randoms(use_true_random=False))
def test_the_rule_does_not_depend_on_input_order(items, args, rnd):
    shuffled = list(items)
    rnd.shuffle(shuffled)
    assert next_deletions(shuffled, **args) == next_deletions(items, **args)


# -- the product's pass: real outbox, a partition whose free space grows per deletion -----


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(_ack, st.integers(0, 5000)), max_size=8),
    st.floats(0, 2000),
    st.floats(0, 1000),
    st.integers(0, 30_000),
    st.integers(0, 30_000),
)
def test_apply_retention_deletes_what_is_due_and_under_pressure_only_what_is_needed(
    rows: list[tuple[float | None, int]],
    now: float,
    keep_acked_s: float,
    free_at_start: int,
    floor: int,
):
    with tempfile.TemporaryDirectory(dir=SCRATCH) as scratch:
        outbox = Outbox(Path(scratch))
        sizes: dict[str, int] = {}
        items: list[RetentionItem] = []
        for seq, (acked_at, size) in enumerate(rows, start=1):
            rid = f"r{seq:02d}"
            outbox.add(seq, rid, {"recording.age": b"x"})
            if acked_at is not None:
                outbox.mark_acked(rid, acked_at=acked_at)
            sizes[rid] = size
            items.append(_item(rid, seq, acked_at))

        def free_now() -> int:
            present = {e.recording_id for e in outbox.entries()}
            return free_at_start + sum(n for rid, n in sizes.items() if rid not in present)

        deleted = apply_retention(
            outbox,
            now=now,
            keep_acked_s=keep_acked_s,
            min_free_bytes=floor,
            free_bytes_fn=free_now,
        )
        left = {e.recording_id for e in outbox.entries()}
    assert left == set(sizes) - set(deleted)
    assert {i.recording_id for i in items if i.acked_at is None} <= left
    by_id = {i.recording_id: i for i in items}
    keys = [_key(by_id[rid]) for rid in deleted]
    assert keys == sorted(keys)
    expired = _expired(items, now, keep_acked_s)
    assert deleted[: len(expired)] == expired  # the expired ones first, all of them
    freed = sum(sizes[rid] for rid in expired)
    for rid in deleted[len(expired) :]:
        assert free_at_start + freed < floor  # a deletion not due by age: still short
        freed += sizes[rid]
    acked = [i for i in items if i.acked_at is not None]
    # Either enough is free now, or every acked recording was given up.
    assert free_at_start + freed >= floor or len(deleted) == len(acked)
