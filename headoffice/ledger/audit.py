"""``linetap-office audit verify``: prove the ledger complete and unaltered, the devices'
chains intact and every stored blob the one its ingest leaf names.

The checks, each naming the first leaf, checkpoint or recording that fails:

1. **Leaves.** ``idx`` runs 0, 1, 2, … without a gap (a deleted row leaves one); each
   body hashes to its stored leaf hash and parses as a leaf (an edited row does not).
2. **Checkpoints.** Each kept checkpoint (and each one given from elsewhere: printed,
   mailed, a WORM bucket) is signed by the office's ledger key, names this log, and its
   root equals the root recomputed from the leaves at its size. A checkpoint larger than
   the ledger means its tail was cut; one whose root differs means the log was rewritten
   or forked after it was signed. Two checkpoints that both match the recomputed log are
   consistent with each other by construction (RFC 6962 consistency proofs are what a
   third party uses instead: ``audit proof``).
3. **Recordings.** Every recording in the index has exactly its ingest leaf (same
   manifest hash, same blob hash); every ingest leaf's recording is in the index unless
   a tombstone leaf records its deletion; each device's seq chain is gapless and each
   manifest points at its predecessor, and the device head is its newest manifest.
4. **Blobs** (unless skipped): every stored blob's SHA-256 is the one in its leaf.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from headoffice.blobstore import BlobStore
from headoffice.index import Index
from headoffice.ledger.leaves import AdminLeaf, IngestLeaf, parse_leaf
from headoffice.ledger.merkle import RootAccumulator, leaf_hash
from headoffice.ledger.note import Verifier, parse_checkpoint, verify_note
from headoffice.ledger.store import Ledger
from sealedrec.errors import LinetapError
from sealedrec.manifest import ChainStub, manifest_hash, verify_chain

_BLOCK = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Problem:
    where: str  # "leaf 17", "checkpoint 120", "recording <id>", "device <id>"
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass(slots=True)
class AuditReport:
    leaves: int = 0
    checkpoints: int = 0
    recordings: int = 0
    blobs: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True, slots=True)
class KeptCheckpoint:
    """A signed checkpoint to check: from the ledger's table or from elsewhere."""

    source: str  # "kept" or the file it came from
    note: str


@dataclass(slots=True)
class _LeafFacts:
    ingests: dict[str, IngestLeaf] = field(default_factory=dict)
    tombstones: set[str] = field(default_factory=set)


def verify_leaves(
    ledger: Ledger,
    checkpoints: Iterable[KeptCheckpoint],
    *,
    origin: str,
    vkey: Verifier,
    report: AuditReport,
) -> _LeafFacts:
    """Checks 1 and 2; returns what the leaves say about recordings (for check 3)."""
    pending = sorted((_parsed(c, origin, vkey, report) for c in checkpoints), key=lambda p: p[0])
    wanted = [(size, root, where) for size, root, where in pending if size >= 0]
    facts = _LeafFacts()
    acc = RootAccumulator()
    _check_roots(wanted, acc, report)  # checkpoints of the empty log
    for row in ledger.rows():
        if row.idx != acc.size:
            report.problems.append(
                Problem(f"leaf {acc.size}", f"missing (the next row is leaf {row.idx}): deleted")
            )
            break
        digest = leaf_hash(row.body)
        if digest.hex() != row.leaf_sha256:
            report.problems.append(
                Problem(f"leaf {row.idx}", "its body does not hash to its leaf hash: edited")
            )
        _note_leaf(row.idx, row.body, facts, report)
        acc.append(digest)
        _check_roots(wanted, acc, report)
    report.leaves = acc.size
    for size, _root, where in wanted:
        if size > acc.size:
            report.problems.append(
                Problem(
                    where,
                    f"signed for {size} leaves, the ledger has {acc.size}: its tail was removed",
                )
            )
    return facts


def _parsed(
    kept: KeptCheckpoint, origin: str, vkey: Verifier, report: AuditReport
) -> tuple[int, bytes, str]:
    report.checkpoints += 1
    where = f"checkpoint ({kept.source})"
    try:
        text = verify_note(kept.note, vkey)
        cp = parse_checkpoint(text)
    except (LinetapError, ValueError) as exc:
        report.problems.append(Problem(where, f"not a valid signed checkpoint: {exc}"))
        return -1, b"", where
    where = f"checkpoint {cp.size} ({kept.source})"
    if cp.origin != origin:
        report.problems.append(Problem(where, f"is for log {cp.origin!r}, not {origin!r}"))
    return cp.size, cp.root, where


def _check_roots(
    wanted: list[tuple[int, bytes, str]], acc: RootAccumulator, report: AuditReport
) -> None:
    while wanted and wanted[0][0] == acc.size:
        size, root, where = wanted.pop(0)
        if root != acc.root():
            report.problems.append(
                Problem(
                    where,
                    f"its root differs from the ledger's first {size} leaves: the log was "
                    "rewritten or forked after it was signed",
                )
            )


def _note_leaf(idx: int, body: bytes, facts: _LeafFacts, report: AuditReport) -> None:
    try:
        leaf = parse_leaf(body)
    except ValueError as exc:
        report.problems.append(Problem(f"leaf {idx}", f"not a leaf ({str(exc)[:120]})"))
        return
    if isinstance(leaf, IngestLeaf):
        if leaf.recording_id in facts.ingests:
            report.problems.append(
                Problem(f"leaf {idx}", f"recording {leaf.recording_id} ingested twice")
            )
        facts.ingests[leaf.recording_id] = leaf
    elif isinstance(leaf, AdminLeaf) and leaf.action == "tombstone":
        facts.tombstones.add(leaf.subject)


def verify_recordings(
    index: Index,
    facts: _LeafFacts,
    report: AuditReport,
    blob_sha256: Callable[[str], str] | None,
) -> None:
    """Checks 3 and 4 (``blob_sha256(stored path)`` hashes a stored blob; None skips)."""
    seen: set[str] = set()
    for device in index.devices():
        records = index.all_for_device(device.device_id)
        stubs = index.chain_stubs(device.device_id)
        chain: list[Mapping[str, Any] | ChainStub] = [r.manifest for r in records]
        chain = sorted([*chain, *stubs], key=lambda m: int(m.get("seq") or 0))
        for problem in verify_chain(chain):
            report.problems.append(
                Problem(
                    f"recording {problem.recording_id}", f"{device.device_id}: {problem.message}"
                )
            )
        if chain:
            newest = chain[-1]
            head = (
                newest.manifest_sha256 if isinstance(newest, ChainStub) else manifest_hash(newest)
            )
            if device.last_seq != newest.get("seq") or device.last_manifest_sha256 != head:
                report.problems.append(
                    Problem(f"device {device.device_id}", "its head is not its newest manifest")
                )
        for record in records:
            report.recordings += 1
            seen.add(record.recording_id)
            leaf = facts.ingests.get(record.recording_id)
            where = f"recording {record.recording_id}"
            if leaf is None:
                report.problems.append(
                    Problem(where, "has no ingest leaf: added behind the ledger")
                )
                continue
            if leaf.manifest_sha256 != manifest_hash(record.manifest) or (
                leaf.blob_sha256 != record.blob_sha256
            ):
                report.problems.append(Problem(where, "differs from its ingest leaf: altered"))
                continue
            if blob_sha256 is not None and record.blob_sha256 is not None:
                report.blobs += 1
                try:
                    actual = blob_sha256(record.path)
                except LinetapError as exc:
                    report.problems.append(Problem(where, f"blob unreadable ({exc})"))
                    continue
                if actual != leaf.blob_sha256:
                    report.problems.append(
                        Problem(where, "its stored blob is not the one ingested: altered")
                    )
    for stub in (s for d in index.devices() for s in index.chain_stubs(d.device_id)):
        if stub.recording_id not in facts.tombstones:
            report.problems.append(
                Problem(f"recording {stub.recording_id}", "deleted without a ledger tombstone")
            )
    for rec in sorted(set(facts.ingests) - seen - facts.tombstones):
        report.problems.append(
            Problem(f"recording {rec}", "ingested but gone from the index, with no tombstone")
        )


def store_hasher(store: BlobStore) -> Callable[[str], str]:
    """``blob_sha256`` for :func:`verify_recordings` over a blob store."""

    def digest(stored: str) -> str:
        sha = hashlib.sha256()
        try:
            with store.local_blob(stored) as path, open(path, "rb") as fh:
                while block := fh.read(_BLOCK):
                    sha.update(block)
        except OSError as exc:
            raise LinetapError(exc.strerror or str(exc)) from exc
        return sha.hexdigest()

    return digest


def audit(
    index: Index,
    store: BlobStore | None,
    *,
    origin: str,
    vkey: Verifier,
    external: Iterable[KeptCheckpoint] = (),
) -> AuditReport:
    """Every check above; ``store`` None skips the blob hashes."""
    ledger = Ledger(index)
    report = AuditReport()
    kept = [KeptCheckpoint("kept", row.note) for row in ledger.checkpoints()]
    facts = verify_leaves(ledger, [*kept, *external], origin=origin, vkey=vkey, report=report)
    verify_recordings(index, facts, report, store_hasher(store) if store else None)
    return report
