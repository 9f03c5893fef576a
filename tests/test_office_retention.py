"""The head office's retention rules (headoffice/retention.py): which policy governs a
recording, what the purge deletes, what an erasure may delete. Pure: no disk, no index."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from headoffice.config import load_office_config
from headoffice.retention import (
    Decision,
    Policy,
    RetentionConfig,
    RetentionFacts,
    erasure_verdict,
    governing_policy,
    purge_plan,
    purge_verdict,
)
from runtime.errors import ConfigError

SITES = {"north": ("dev-a", "dev-b"), "south": ("dev-c",)}
NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
CFG = RetentionConfig(
    default_days=365,
    default_min_days=30,
    policy=(
        Policy(name="north", site="north", days=730, min_days=180),
        Policy(name="north-out", site="north", direction="outbound", days=90),
        Policy(name="dev-a-line2", device="dev-a", line="line2", days=3650, min_days=3650),
        Policy(name="any-line9", line="line9", days=0),  # forever
    ),
)


def facts(device: str = "dev-a", *, line: str = "line1", direction: str | None = "inbound",
          age_days: float = 10, hold: bool = False, rid: str = "r1") -> RetentionFacts:  # fmt: skip
    return RetentionFacts(rid, device, line, direction, NOW - timedelta(days=age_days), hold)


@pytest.mark.parametrize(
    ("recording", "policy"),
    [
        (facts(), "north"),
        (facts(direction="outbound"), "north-out"),  # 2 fields beat 1
        (facts(line="line2", direction="outbound"), "dev-a-line2"),  # 2 fields, longer days
        (facts(device="dev-c"), "default"),
        (facts(device="dev-x", line="line9"), "any-line9"),
        (facts(device="dev-b", direction=None), "north"),
    ],
)
def test_the_most_specific_policy_governs(recording: RetentionFacts, policy: str):
    assert governing_policy(CFG, recording, SITES).name == policy


def test_a_tie_keeps_longer_and_forever_is_longest():
    cfg = RetentionConfig(
        policy=(
            Policy(name="a", device="dev-a", days=100),
            Policy(name="b", line="line1", days=200),
            Policy(name="c", direction="inbound", days=0),
        )
    )
    assert governing_policy(cfg, facts(), SITES).name == "c"
    assert governing_policy(cfg, facts(direction="outbound"), SITES).name == "b"


def test_the_purge_deletes_what_expired_and_keeps_the_rest_with_reasons():
    old = facts(age_days=731, rid="old")
    young = facts(age_days=100, rid="young")
    held = facts(age_days=1000, hold=True, rid="held")
    outbound = facts(direction="outbound", age_days=91, rid="out")
    forever = facts(device="dev-x", line="line9", age_days=100_000 / 3, rid="forever")
    plan = purge_plan(CFG, [young, held, forever, outbound, old], SITES, NOW)
    got = [(v.recording_id, v.decision, v.policy) for v in plan]
    assert got == [
        ("old", Decision.DELETE, "north"),  # deletions first, oldest call first
        ("out", Decision.DELETE, "north-out"),
        ("forever", Decision.KEEP, "any-line9"),
        ("held", Decision.KEEP, "north"),
        ("young", Decision.KEEP, "north"),
    ]
    reasons = {v.recording_id: v.reason for v in plan}
    assert reasons["held"] == "on legal hold"
    assert reasons["forever"] == "kept forever"
    assert reasons["old"].startswith("expired 2026-12-05 (730 days, policy north)")
    assert reasons["young"] == f"expires {(NOW + timedelta(days=630)):%Y-%m-%d}"


def test_an_erasure_respects_hold_and_mandatory_retention():
    assert erasure_verdict(CFG, facts(age_days=181), SITES, NOW).decision is Decision.DELETE
    kept = erasure_verdict(CFG, facts(age_days=179), SITES, NOW)
    assert kept.decision is Decision.KEEP
    assert kept.reason.startswith("under mandatory retention until 2026-12-07 (180 days")
    held = erasure_verdict(CFG, facts(age_days=5000, hold=True), SITES, NOW)
    assert (held.decision, held.reason) == (Decision.KEEP, "on legal hold")
    # the default's min_days applies where no policy matches
    assert erasure_verdict(CFG, facts("dev-c", age_days=29), SITES, NOW).decision is Decision.KEEP
    assert erasure_verdict(CFG, facts("dev-c", age_days=31), SITES, NOW).decision is Decision.DELETE


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"policy": [{"name": "x", "days": 10, "min_days": 20}]}, "min_days .20. is longer"),
        ({"policy": [{"name": "x", "days": 1}, {"name": "x", "days": 2}]}, "unique: x"),
        ({"policy": [{"name": "x", "days": -1}]}, "greater than or equal to 0"),
        ({"policy": [{"name": "x", "days": 1, "direction": "sideways"}]}, "pattern"),
        ({"policy": [{"name": "x", "days": 1, "colour": "red"}]}, "Extra inputs"),
        ({"default_days": 10, "default_min_days": 11}, "default_min_days is longer"),
    ],
)
def test_bad_config_is_refused_with_a_reason(table: dict[str, object], message: str):
    with pytest.raises(ValidationError, match=message):
        RetentionConfig.model_validate(table)


recordings = st.builds(
    facts,
    device=st.sampled_from(["dev-a", "dev-b", "dev-c", "dev-x"]),
    line=st.sampled_from(["line1", "line2", "line9"]),
    direction=st.sampled_from(["inbound", "outbound", "unknown", None]),
    age_days=st.floats(0, 5000),
    hold=st.booleans(),
    rid=st.uuids().map(str),
)


@settings(max_examples=300, deadline=None)
@given(recordings)
def test_properties(r: RetentionFacts):
    v = purge_verdict(CFG, r, SITES, NOW)
    policy = governing_policy(CFG, r, SITES)
    age = NOW - r.started
    # deleted exactly when expired under its policy and not held
    expired = policy.days > 0 and age >= timedelta(days=policy.days)
    assert (v.decision is Decision.DELETE) == (expired and not r.on_hold)
    # the governing policy matches and no matching policy is more specific
    assert policy.name == "default" or policy.specificity >= 1
    # an erasure never deletes what the purge must keep for mandatory retention or hold
    e = erasure_verdict(CFG, r, SITES, NOW)
    if e.decision is Decision.DELETE:
        assert not r.on_hold and age >= timedelta(days=policy.min_days)
    # whatever the purge deletes, an erasure could delete too (min_days <= days)
    if v.decision is Decision.DELETE:
        assert e.decision is Decision.DELETE


def test_office_toml_takes_retention_and_refuses_an_unknown_site(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text(
        '[sites]\nnorth = ["dev-a"]\n[retention]\ndefault_days = 365\n'
        '[[retention.policy]]\nname = "north"\nsite = "north"\ndays = 730\nmin_days = 180\n'
    )
    cfg = load_office_config(good)
    assert cfg.retention.policy[0] == Policy(name="north", site="north", days=730, min_days=180)
    bad = tmp_path / "bad.toml"
    bad.write_text('[[retention.policy]]\nname = "x"\nsite = "south"\ndays = 1\n')
    with pytest.raises(ConfigError, match="unknown site south"):
        load_office_config(bad)
