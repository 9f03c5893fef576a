"""Retention at the head office: how long each recording is kept, and what the next purge
deletes. Pure rules over plain values (no I/O), like the device's buffers/retention.py;
:mod:`headoffice.purge` feeds them the index and does the deleting.

A recording is kept for the ``days`` of the one policy that governs it
(``[retention]`` in office.toml), counted from the call's start:

- a policy names any of ``site``, ``device``, ``line`` and ``direction``; it matches a
  recording when every field it names matches (a ``line`` without ``device`` matches
  that line name on any device);
- the most specific matching policy governs (the most fields named); among equally
  specific ones the longest ``days`` wins (keeping longer is the safe way to break a
  tie); no match: the ``default_days``;
- ``min_days`` is the mandatory retention: a data-subject erasure cannot delete a
  recording younger than it (the law says keep), and the store's own lock (Object Lock
  on S3, the hold registry on the filesystem) is set to it at commit where configured;
- a recording on legal hold is never deleted, whatever its age (:func:`purge_plan`
  lists it as kept, with the reason).

``days = 0`` in a policy means "keep forever" (never purged by age).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "Decision",
    "Policy",
    "RetentionConfig",
    "RetentionFacts",
    "Verdict",
    "erasure_verdict",
    "governing_policy",
    "purge_plan",
    "purge_verdict",
]

MAX_DAYS = 100 * 366
_TEXT = 200


class Policy(BaseModel):
    """One ``[[retention.policy]]`` table."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=_TEXT, description="named in tombstones")
    site: str | None = Field(None, max_length=_TEXT)
    device: str | None = Field(None, max_length=_TEXT)
    line: str | None = Field(None, max_length=_TEXT)
    direction: str | None = Field(None, pattern="^(inbound|outbound|unknown)$")
    days: int = Field(
        ge=0, le=MAX_DAYS, description="kept this long from the call's start; 0: forever"
    )
    min_days: int = Field(0, ge=0, le=MAX_DAYS, description="mandatory: no erasure before")

    @model_validator(mode="after")
    def _sane(self) -> Self:
        if self.days and self.min_days > self.days:
            raise ValueError(
                f"policy {self.name!r}: min_days ({self.min_days}) is longer than days "
                f"({self.days}); the purge would delete what must be kept"
            )
        return self

    @property
    def specificity(self) -> int:
        return sum(v is not None for v in (self.site, self.device, self.line, self.direction))


class RetentionConfig(BaseModel):
    """``[retention]`` in office.toml: the default and the policies."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    default_days: int = Field(
        0, ge=0, le=MAX_DAYS, description="kept this long when no policy matches; 0: forever"
    )
    default_min_days: int = Field(0, ge=0, le=MAX_DAYS, description="mandatory retention")
    policy: tuple[Policy, ...] = Field((), description="[[retention.policy]] tables")

    @model_validator(mode="after")
    def _unique(self) -> Self:
        names = [p.name for p in self.policy]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"retention policy names must be unique: {', '.join(dupes)}")
        if self.default_days and self.default_min_days > self.default_days:
            raise ValueError("default_min_days is longer than default_days")
        return self

    def default(self) -> Policy:
        return Policy(name="default", days=self.default_days, min_days=self.default_min_days)


@dataclass(frozen=True, slots=True)
class RetentionFacts:
    """What the rules need to know of a recording."""

    recording_id: str
    device_id: str
    line: str
    direction: str | None
    started: datetime  # aware (UTC)
    on_hold: bool = False


def _matches(p: Policy, r: RetentionFacts, site_of: Mapping[str, frozenset[str]]) -> bool:
    return (
        (p.site is None or r.device_id in site_of.get(p.site, frozenset()))
        and (p.device is None or p.device == r.device_id)
        and (p.line is None or p.line == r.line)
        and (p.direction is None or p.direction == r.direction)
    )


def governing_policy(
    cfg: RetentionConfig, r: RetentionFacts, sites: Mapping[str, Iterable[str]]
) -> Policy:
    """The policy that governs ``r`` (the module docstring's rule)."""
    site_of = {name: frozenset(devices) for name, devices in sites.items()}
    matching = [p for p in cfg.policy if _matches(p, r, site_of)]
    if not matching:
        return cfg.default()
    # most specific first; then the longest keep (0 = forever counts as longest); then name
    return min(matching, key=lambda p: (-p.specificity, -(p.days or MAX_DAYS + 1), p.name))


class Decision(StrEnum):
    DELETE = "delete"
    KEEP = "keep"


@dataclass(frozen=True, slots=True)
class Verdict:
    """A rule's answer for one recording: delete or keep, under which policy, and why."""

    recording_id: str
    decision: Decision
    policy: str
    reason: str
    expires: datetime | None  # None: kept forever


def _expiry(policy: Policy, started: datetime) -> datetime | None:
    return started + timedelta(days=policy.days) if policy.days else None


def purge_verdict(
    cfg: RetentionConfig, r: RetentionFacts, sites: Mapping[str, Iterable[str]], now: datetime
) -> Verdict:
    """Does the purge delete ``r`` at ``now``? Expired and not on hold: yes."""
    policy = governing_policy(cfg, r, sites)
    expires = _expiry(policy, r.started)
    if expires is None:
        return Verdict(r.recording_id, Decision.KEEP, policy.name, "kept forever", None)
    if now < expires:
        return Verdict(
            r.recording_id, Decision.KEEP, policy.name, f"expires {expires:%Y-%m-%d}", expires
        )
    if r.on_hold:
        return Verdict(r.recording_id, Decision.KEEP, policy.name, "on legal hold", expires)
    reason = f"expired {expires:%Y-%m-%d} ({policy.days} days, policy {policy.name})"
    return Verdict(r.recording_id, Decision.DELETE, policy.name, reason, expires)


def purge_plan(
    cfg: RetentionConfig,
    recordings: Iterable[RetentionFacts],
    sites: Mapping[str, Iterable[str]],
    now: datetime,
) -> list[Verdict]:
    """The verdict for each recording, deletions first (oldest call first), then kept
    ones: what ``retention plan`` shows and ``retention run`` carries out."""
    items = sorted(recordings, key=lambda r: (r.started, r.recording_id))
    verdicts = [purge_verdict(cfg, r, sites, now) for r in items]
    return sorted(verdicts, key=lambda v: v.decision is not Decision.DELETE)  # stable


def erasure_verdict(
    cfg: RetentionConfig, r: RetentionFacts, sites: Mapping[str, Iterable[str]], now: datetime
) -> Verdict:
    """May a data-subject erasure delete ``r`` at ``now``? Not while on legal hold, nor
    while under its policy's mandatory retention (``min_days``)."""
    policy = governing_policy(cfg, r, sites)
    if r.on_hold:
        return Verdict(r.recording_id, Decision.KEEP, policy.name, "on legal hold", None)
    until = r.started + timedelta(days=policy.min_days)
    if now < until:
        reason = (
            f"under mandatory retention until {until:%Y-%m-%d} "
            f"({policy.min_days} days, policy {policy.name})"
        )
        return Verdict(r.recording_id, Decision.KEEP, policy.name, reason, until)
    return Verdict(r.recording_id, Decision.DELETE, policy.name, "erasure requested", None)
