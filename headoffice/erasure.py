"""The one way a recording leaves the head office: :func:`delete_recording`, used by the
retention purge and by data-subject erasure alike.

In this order, so that a crash at any point is finished by the next run and nothing is
ever half-deleted without a trace:

1. a legal hold in the index keeps it (the UI's view of holds; the store enforces its
   own copy too);
2. the blob store deletes the blob and its manifest; the store may refuse by itself
   (S3 Object Lock: a legal hold or an unexpired retention; the filesystem store's hold
   registry), and its refusal keeps the recording, with the store's reason. A blob
   already gone is no error (a crash after this step, then a rerun);
3. one index transaction: the tombstone row (seq and manifest hashes only: the device's
   chain stays checkable across the gap, :class:`sealedrec.manifest.ChainStub`), the
   recording's rows gone (index row, notes, reviewed marks, QA evaluations), and the
   ledger's ``tombstone`` leaf naming the cause (policy or erasure request), appended in
   the same transaction: the deletion and its record commit together or not at all.

The caller decides *whether* (retention rules, authorization); this module only *how*.
"""

from __future__ import annotations

from dataclasses import dataclass

from headoffice.blobstore import BlobStore, StoreError
from headoffice.holds import holds_of
from headoffice.index import Index, StoredRecord
from headoffice.index.records import now_iso
from headoffice.ledger.leaves import AdminLeaf
from headoffice.ledger.store import Ledger
from sealedrec.manifest import GENESIS_HASH, canonical_json, manifest_hash

__all__ = ["Outcome", "active_holds", "delete_recording"]

#: Rows about a recording that go with it (the tombstone and ledger stay).
_DEPENDENTS = (
    "DELETE FROM qa_section_scores WHERE evaluation_id IN "
    "(SELECT id FROM qa_evaluations WHERE recording_id = ?)",
    "DELETE FROM qa_evaluations WHERE recording_id = ?",
    "DELETE FROM notes WHERE recording_id = ?",
    "DELETE FROM announcements WHERE recording_id = ?",
    "DELETE FROM reviews WHERE recording_id = ?",
    "DELETE FROM retention_locks WHERE recording_id = ?",
    "DELETE FROM recordings WHERE recording_id = ?",
)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one recording: deleted, or kept and why."""

    recording_id: str
    deleted: bool
    reason: str


def active_holds(index: Index, recording_id: str) -> list[str]:
    """The case references of the legal holds in force on a recording."""
    return [h.case_ref for h in holds_of(index, recording_id) if h.active]


def delete_recording(
    index: Index, store: BlobStore, record: StoredRecord, *, by: str, cause: str
) -> Outcome:
    """Delete ``record`` (blob, manifest, index rows) leaving its tombstone and ledger
    leaf; ``by`` is who deletes (an account, or ``retention``), ``cause`` why (a policy,
    an erasure request). A hold or the store's refusal keeps it: see the outcome."""
    rid = record.recording_id
    cases = active_holds(index, rid)
    if cases:
        return Outcome(rid, False, f"on legal hold ({', '.join(cases)})")
    try:
        store.delete(record.path)
    except StoreError as exc:
        if exc.reason in ("held", "retained"):
            return Outcome(rid, False, f"the store refuses: {exc}")
        raise
    prev = record.manifest.get("prev_manifest_sha256")
    manifest_sha256 = manifest_hash(record.manifest)
    detail = canonical_json(
        {
            "cause": cause,
            "device_id": record.device_id,
            "seq": record.seq,
            "manifest_sha256": manifest_sha256,
            "blob_sha256": record.blob_sha256,
        }
    ).decode()
    when = now_iso()
    with index.transaction(True) as q:
        q(
            "INSERT INTO tombstones (recording_id, device_id, seq, manifest_sha256, "
            "prev_manifest_sha256, blob_sha256, deleted_at, deleted_by, cause) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (rid, record.device_id, record.seq, manifest_sha256,
             prev if isinstance(prev, str) else GENESIS_HASH, record.blob_sha256, when, by,
             cause[:500]),
        )  # fmt: skip
        for sql in _DEPENDENTS:
            q(sql, (rid,))
        Ledger(index).append_in(
            q, AdminLeaf(user=by, action="tombstone", subject=rid, detail=detail, at=when)
        )
    return Outcome(rid, True, cause)
