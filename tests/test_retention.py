"""Retention planning: pure rules, no disk. Never an unacked recording, whatever the pressure."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from buffers.retention import (
    RetentionItem,
    bytes_to_free,
    deletion_order,
    disk_pressure,
    is_expired,
    plan_retention,
)

DAY = 86400.0


def _item(rid: str, seq: int, size: int, acked_at: float | None) -> RetentionItem:
    return RetentionItem(recording_id=rid, seq=seq, bytes=size, acked_at=acked_at)


def test_expired_acked_items_go_oldest_ack_first_and_unacked_ones_stay():
    now = 10 * DAY
    items = [
        _item("young", 4, 100, now - 1 * DAY),
        _item("old-b", 2, 100, now - 8 * DAY),
        _item("unacked-ancient", 1, 100, None),
        _item("old-a", 3, 100, now - 9 * DAY),
    ]
    plan = plan_retention(
        items, now=now, keep_acked_s=7 * DAY, free_bytes=10**9, min_free_bytes=10**6
    )
    assert plan == ["old-a", "old-b"]


def test_pressure_deletes_young_acked_items_until_enough_is_free():
    now = 100.0
    items = [
        _item("a", 1, 300, 10.0),
        _item("b", 2, 300, 20.0),
        _item("c", 3, 300, 30.0),
        _item("u", 4, 10_000, None),
    ]
    # 1000 free, 1500 wanted: two deletions of 300 reach 1600.
    plan = plan_retention(items, now=now, keep_acked_s=DAY, free_bytes=1000, min_free_bytes=1500)
    assert plan == ["a", "b"]
    # Impossible to satisfy: every acked item goes, the unacked one never does.
    plan = plan_retention(items, now=now, keep_acked_s=DAY, free_bytes=0, min_free_bytes=10**9)
    assert plan == ["a", "b", "c"]


def test_expired_deletions_count_towards_the_free_space_goal():
    items = [_item("old", 1, 500, 0.0), _item("new", 2, 500, 95.0)]
    plan = plan_retention(items, now=100.0, keep_acked_s=50.0, free_bytes=600, min_free_bytes=1000)
    assert plan == ["old"]  # 600 + 500 >= 1000: "new" is not needed


def test_ties_in_ack_time_break_by_seq_then_id():
    items = [_item("z", 2, 1, 5.0), _item("y", 2, 1, 5.0), _item("x", 1, 1, 5.0)]
    assert [i.recording_id for i in deletion_order(items)] == ["x", "y", "z"]


def test_small_helpers():
    assert disk_pressure(99, 100) and not disk_pressure(100, 100)
    assert bytes_to_free(40, 100) == 60 and bytes_to_free(400, 100) == 0
    assert is_expired(_item("a", 1, 1, 0.0), now=11.0, keep_acked_s=10.0)
    assert not is_expired(_item("a", 1, 1, 1.0), now=11.0, keep_acked_s=10.0)  # exactly keep
    assert not is_expired(_item("a", 1, 1, None), now=1e12, keep_acked_s=0.0)
    # A clock stepped back after the ack makes the age negative: kept.
    assert not is_expired(_item("a", 1, 1, 500.0), now=100.0, keep_acked_s=0.0)


# -- properties ---------------------------------------------------------------------------

# Integer-valued ack times make ties (same ack time) common, so ordering ties are exercised.
_ack = st.one_of(st.none(), st.integers(0, 1000).map(float), st.floats(0, 1000))
_items = st.lists(st.tuples(_ack, st.integers(0, 5000)), max_size=25).map(
    lambda rows: [_item(f"r{i:02d}", i % 7, size, acked) for i, (acked, size) in enumerate(rows)]
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


@given(_items, _args)
def test_plan_never_names_an_unacked_item(items, args):
    plan = plan_retention(items, **args)
    unacked = {i.recording_id for i in items if i.acked_at is None}
    assert not unacked & set(plan)
    assert len(plan) == len(set(plan))


@given(_items, _args)
def test_plan_contains_every_expired_item_and_is_oldest_ack_first(items, args):
    plan = plan_retention(items, **args)
    by_id = {i.recording_id: i for i in items}
    expired = {
        i.recording_id
        for i in items
        if i.acked_at is not None and args["now"] - i.acked_at > args["keep_acked_s"]
    }
    assert expired <= set(plan)
    keys = [_key(by_id[rid]) for rid in plan]
    assert keys == sorted(keys)
    # Nothing kept is older than anything deleted.
    kept = [i for i in items if i.acked_at is not None and i.recording_id not in plan]
    if plan and kept:
        assert min(_key(i) for i in kept) > keys[-1]


@given(_items, _args)
def test_under_pressure_deletes_only_what_is_needed(items, args):
    plan = plan_retention(items, **args)
    by_id = {i.recording_id: i for i in items}
    free, floor = args["free_bytes"], args["min_free_bytes"]
    freed = 0
    for rid in plan:
        item = by_id[rid]
        if not is_expired(item, now=args["now"], keep_acked_s=args["keep_acked_s"]):
            # A deletion that is not due by age happens only while still short of space.
            assert free + freed < floor
        freed += item.bytes
    acked = [i for i in items if i.acked_at is not None]
    # Either enough is free now, or every acked item was given up.
    assert free + freed >= floor or len(plan) == len(acked)


@given(_items, _args)
def test_without_pressure_nothing_younger_than_keep_is_deleted(items, args):
    args = {**args, "free_bytes": args["min_free_bytes"] + 1}
    plan = plan_retention(items, **args)
    expected = [
        i.recording_id
        for i in sorted((i for i in items if i.acked_at is not None), key=_key)
        if args["now"] - (i.acked_at or 0.0) > args["keep_acked_s"]
    ]
    assert plan == expected


@given(_items, _args, st.randoms(use_true_random=False))
def test_plan_does_not_depend_on_input_order(items, args, rnd):
    shuffled = list(items)
    rnd.shuffle(shuffled)
    assert plan_retention(shuffled, **args) == plan_retention(items, **args)
