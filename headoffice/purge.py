"""The retention purge: ``linetap-office retention plan|run``.

:func:`retention_facts` reads what the rules need of every recording (one SELECT, holds
included); :func:`headoffice.retention.purge_plan` decides; :func:`run_purge` deletes the
expired ones through :func:`headoffice.erasure.delete_recording` (store first, then the
index with its tombstone and ledger leaf), one at a time so that a failure of one is
reported and the others still go. A rerun after a crash finishes what was begun: the
store's delete is idempotent, and what is still in the index is judged again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from headoffice.blobstore import BlobStore, StoreError
from headoffice.erasure import Outcome, delete_recording
from headoffice.index import Index
from headoffice.index.records import utc_iso
from headoffice.retention import (
    Decision,
    RetentionConfig,
    RetentionFacts,
    Verdict,
    governing_policy,
    purge_plan,
)
from sealedrec.errors import LinetapError

__all__ = ["RETENTION_ACTOR", "PurgeReport", "lock_mandatory", "retention_facts", "run_purge"]

log = logging.getLogger(__name__)

#: Who deletes in a retention run (the ledger's tombstone ``user``): the office itself,
#: by its configured policies, not a person.
RETENTION_ACTOR = "retention"


def retention_facts(index: Index, ids: Iterable[str] | None = None) -> list[RetentionFacts]:
    """What the rules need of every recording (of ``ids`` only, when given)."""
    sql = (
        "SELECT r.recording_id, r.device_id, r.line, r.direction, r.started_utc, "
        "EXISTS (SELECT 1 FROM holds h WHERE h.recording_id = r.recording_id "
        "AND h.released_at IS NULL) FROM recordings r"
    )
    params: tuple[str, ...] = ()
    if ids is not None:
        params = tuple(ids)
        if not params:
            return []
        sql += f" WHERE r.recording_id IN ({', '.join('?' for _ in params)})"
    with index.transaction(False) as q:
        rows = q(sql + " ORDER BY r.started_utc, r.recording_id", params)
    return [
        RetentionFacts(r[0], r[1], r[2], r[3], datetime.fromisoformat(utc_iso(r[4])), bool(r[5]))
        for r in rows
    ]


@dataclass
class PurgeReport:
    """A run's result: each verdict, and for each deletion attempted its outcome."""

    verdicts: list[Verdict] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (recording, error)
    locked: int = 0  # recordings whose store lock was set or extended

    @property
    def deleted(self) -> int:
        return sum(o.deleted for o in self.outcomes)

    @property
    def due(self) -> int:
        return sum(v.decision is Decision.DELETE for v in self.verdicts)


def run_purge(
    index: Index,
    store: BlobStore,
    cfg: RetentionConfig,
    sites: Mapping[str, Iterable[str]],
    now: datetime,
    *,
    dry_run: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> PurgeReport:
    """Judge every recording at ``now`` and (unless ``dry_run``) have the store lock each
    one for its mandatory retention (:func:`lock_mandatory`), then delete the expired
    ones not on hold. ``progress(done, due)`` after each deletion."""
    facts = retention_facts(index)
    report = PurgeReport(verdicts=purge_plan(cfg, facts, sites, now))
    if dry_run:
        return report
    lock_mandatory(index, store, cfg, sites, facts=facts, now=now, report=report)
    due = [v for v in report.verdicts if v.decision is Decision.DELETE]
    for done, verdict in enumerate(due, 1):
        record = index.get(verdict.recording_id)
        if record is None:  # gone since the plan (another run, an erasure)
            continue
        try:
            outcome = delete_recording(
                index, store, record, by=RETENTION_ACTOR, cause=f"retention: {verdict.reason}"
            )
        except (StoreError, LinetapError) as exc:
            log.error("retention: recording %s not deleted: %s", verdict.recording_id, exc)
            report.failures.append((verdict.recording_id, str(exc)))
            continue
        report.outcomes.append(outcome)
        if not outcome.deleted:
            log.warning("retention: recording %s kept: %s", outcome.recording_id, outcome.reason)
        if progress is not None:
            progress(done, len(due))
    return report


def lock_mandatory(
    index: Index,
    store: BlobStore,
    cfg: RetentionConfig,
    sites: Mapping[str, Iterable[str]],
    *,
    facts: Iterable[RetentionFacts],
    now: datetime,
    report: PurgeReport,
) -> None:
    """Have the blob store itself enforce each recording's mandatory retention (its
    governing policy's ``min_days`` from the call's start: S3 Object Lock, the filesystem
    store's registry), so that not even someone with database access deletes it early.
    Extends only (a shortened policy leaves the longer lock: the store refuses to
    shorten); asks the store only where the date changed (``retention_locks``).
    ``facts``: :func:`retention_facts` as the run read them."""
    with index.transaction(False) as q:
        known = {
            r[0]: r[1] for r in q("SELECT recording_id, retain_until FROM retention_locks", ())
        }
    for fact in facts:
        policy = governing_policy(cfg, fact, sites)
        if not policy.min_days:
            continue
        until = fact.started + timedelta(days=policy.min_days)
        if until <= now:  # served its mandatory time: nothing left to lock
            continue
        stamp = utc_iso(until)
        if fact.recording_id in known and known[fact.recording_id] >= stamp:
            continue
        record = index.get(fact.recording_id)
        if record is None:
            continue
        try:
            store.retain_until(record.path, until)
        except (StoreError, LinetapError) as exc:
            log.error("retention: recording %s not locked: %s", fact.recording_id, exc)
            report.failures.append((fact.recording_id, f"lock: {exc}"))
            continue
        with index.transaction(True) as q:
            q("DELETE FROM retention_locks WHERE recording_id = ?", (fact.recording_id,))
            q("INSERT INTO retention_locks VALUES (?, ?)", (fact.recording_id, stamp))
        report.locked += 1
