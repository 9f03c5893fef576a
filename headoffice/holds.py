"""Legal holds: a compliance officer puts a recording on hold for a case, and releases it.

A hold lives in two places, on purpose: the index's ``holds`` table (its history: who,
when, which case, why; what the search's "on hold" filter and the web show) and the
blob store's own legal hold (S3 Object Lock legal hold; the filesystem store's hold
registry), which the store enforces even against someone with database access. Setting
writes the store first (so the index never claims a hold the store does not enforce);
releasing clears the store's hold only when no other case still holds the recording.

Each set and release goes through the gate (``hold`` / ``release``: the compliance role,
within its scope), logged as an access leaf with the case and reason before anything
changes; the gate's refusal changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from headoffice.access import Gate
from headoffice.authz import Action
from headoffice.blobstore import BlobStore
from headoffice.index import Index, StoredRecord
from headoffice.index.records import now_iso

__all__ = ["Hold", "HoldError", "Holds", "holds_of"]

MAX_CASE_REF = 100
MAX_REASON = 1000


class HoldError(ValueError):
    """A hold that cannot be set or released (the message says why, for the officer)."""


@dataclass(frozen=True, slots=True)
class Hold:
    id: int
    recording_id: str
    case_ref: str
    reason: str
    set_by: str
    set_at: str
    released_by: str | None
    released_at: str | None
    release_reason: str | None

    @property
    def active(self) -> bool:
        return self.released_at is None


def _text(value: str, what: str, limit: int) -> str:
    text = " ".join(value.split())
    if not text:
        raise HoldError(f"{what} is required")
    if len(text) > limit:
        raise HoldError(f"{what} is too long: at most {limit} characters")
    if any(ord(c) < 32 for c in text):
        raise HoldError(f"{what} must not contain control characters")
    return text


def holds_of(index: Index, recording_id: str) -> list[Hold]:
    """Every hold ever set on a recording, oldest first."""
    with index.transaction(False) as q:
        rows = q(
            "SELECT id, recording_id, case_ref, reason, set_by, set_at, released_by, "
            "released_at, release_reason FROM holds WHERE recording_id = ? ORDER BY id",
            (recording_id,),
        )
    return [Hold(int(r[0]), *r[1:]) for r in rows]


class Holds:
    """Set and release holds as the gate's actor, over one index and blob store."""

    def __init__(self, index: Index, store: BlobStore, gate: Gate) -> None:
        self.index = index
        self.store = store
        self.gate = gate

    def set(self, record: StoredRecord, case_ref: str, reason: str) -> Hold:
        """Put ``record`` on hold for ``case_ref``; a second hold for the same case is an
        error (one case, one hold). Raises AccessDenied (gate) or HoldError."""
        case = _text(case_ref, "case reference", MAX_CASE_REF)
        why = _text(reason, "reason", MAX_REASON)
        rid = record.recording_id
        if any(h.active and h.case_ref == case for h in holds_of(self.index, rid)):
            raise HoldError(f"recording {rid} is already on hold for case {case}")
        self.gate.allow(Action.HOLD, record, detail=f"hold for case {case}: {why}")
        self.store.set_legal_hold(record.path, True)
        with self.index.transaction(True) as q:
            q(
                "INSERT INTO holds (recording_id, case_ref, reason, set_by, set_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (rid, case, why, self.gate.actor.principal.name, now_iso()),
            )
        return next(h for h in holds_of(self.index, rid) if h.active and h.case_ref == case)

    def release(self, record: StoredRecord, case_ref: str, reason: str) -> Hold:
        """Release ``record``'s hold for ``case_ref``; the store's hold goes only when no
        other case holds it still (a crash in between leaves the store holding: the safe
        side). Raises AccessDenied (gate) or HoldError."""
        case = _text(case_ref, "case reference", MAX_CASE_REF)
        why = _text(reason, "reason", MAX_REASON)
        rid = record.recording_id
        active = [h for h in holds_of(self.index, rid) if h.active]
        mine = [h for h in active if h.case_ref == case]
        if not mine:
            cases = ", ".join(h.case_ref for h in active) or "none"
            raise HoldError(f"recording {rid} is not on hold for case {case} (holds: {cases})")
        self.gate.allow(Action.RELEASE, record, detail=f"release case {case}: {why}")
        with self.index.transaction(True) as q:
            q(
                "UPDATE holds SET released_by = ?, released_at = ?, release_reason = ? "
                "WHERE id = ? AND released_at IS NULL",
                (self.gate.actor.principal.name, now_iso(), why, mine[0].id),
            )
        if len(active) == 1:  # that was the last case holding it
            self.store.set_legal_hold(record.path, False)
        return next(h for h in holds_of(self.index, rid) if h.id == mine[0].id)
