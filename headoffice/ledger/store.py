"""The audit ledger's tables in the index database: append leaves, read them back, keep
signed checkpoints.

``ledger`` rows are the Merkle log's leaves in order: ``idx`` 0, 1, 2, … with no gap
(each append takes max + 1 while appends are serialised: SQLite's write transaction,
PostgreSQL's advisory lock), the leaf's canonical JSON and its RFC 6962 leaf hash.
Triggers refuse UPDATE and DELETE on both backends (and TRUNCATE on PostgreSQL), and the
application role gets INSERT and SELECT only (:func:`headoffice.index.schema.app_role_grants`);
what a database superuser can still do is detected by ``linetap-office audit verify``
(see headoffice/AUDIT.md).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

from headoffice.index import Index
from headoffice.index.records import Query, now_iso
from headoffice.ledger.leaves import AccessLeaf, AdminLeaf, IngestLeaf
from headoffice.ledger.merkle import leaf_hash
from sealedrec.errors import LinetapError
from sealedrec.manifest import canonical_json

AnyLeaf = IngestLeaf | AccessLeaf | AdminLeaf
READ_BATCH = 10_000


class LedgerError(LinetapError, OSError):
    """The ledger cannot be appended to or read; an access that needed it is refused."""


@dataclass(frozen=True, slots=True)
class LedgerRow:
    idx: int
    kind: str
    body: bytes
    leaf_sha256: str
    appended_at: str


@dataclass(frozen=True, slots=True)
class CheckpointRow:
    tree_size: int
    root_sha256: str
    note: str
    made_at: str


class Ledger:
    """The audit ledger of one office index (both backends)."""

    def __init__(self, index: Index) -> None:
        self.index = index

    def append(self, leaf: AnyLeaf) -> int:
        """Append ``leaf`` in its own committed transaction; its index in the log.
        Raises :class:`LedgerError` when it could not be made durable."""
        try:
            with self.index.transaction(True) as q:
                return self.append_in(q, leaf)
        except LinetapError as exc:
            raise LedgerError(f"audit ledger: cannot append a {leaf.kind} leaf ({exc})") from exc

    def append_in(self, q: Query, leaf: AnyLeaf) -> int:
        """Append ``leaf`` inside the caller's write transaction (so an ingest leaf
        commits with the recording's index row, or neither does)."""
        body = leaf.canonical()
        self.index.serialize_appends(q, "ledger")
        [(idx,)] = q("SELECT COALESCE(MAX(idx) + 1, 0) FROM ledger", ())
        q(
            "INSERT INTO ledger (idx, kind, body, leaf_sha256, appended_at) VALUES (?, ?, ?, ?, ?)",
            (int(idx), leaf.kind, body.decode(), leaf_hash(body).hex(), now_iso()),
        )
        return int(idx)

    def size(self) -> int:
        with self.index.transaction(False) as q:
            [(count,)] = q("SELECT COALESCE(MAX(idx) + 1, 0) FROM ledger", ())
        return int(count)

    def rows(self, start: int = 0, end: int | None = None) -> Iterator[LedgerRow]:
        """Rows with ``start <= idx < end`` in order, read in batches (10^6 leaves stream
        in constant memory). Gaps are not filled: the caller checks ``idx``."""
        at = start
        while end is None or at < end:
            limit = READ_BATCH if end is None else min(READ_BATCH, end - at)
            with self.index.transaction(False) as q:
                batch = q(
                    "SELECT idx, kind, body, leaf_sha256, appended_at FROM ledger "
                    "WHERE idx >= ? ORDER BY idx LIMIT ?",
                    (at, limit),
                )
            if not batch:
                return
            for idx, kind, body, leaf, appended in batch:
                if end is not None and int(idx) >= end:
                    return
                yield LedgerRow(int(idx), str(kind), str(body).encode(), str(leaf), str(appended))
            at = int(batch[-1][0]) + 1

    def rows_about(
        self, recording_id: str, *, kind: str | None = None, limit: int | None = None
    ) -> list[LedgerRow]:
        """The leaves naming ``recording_id`` (of ``kind`` when given), oldest first; with
        ``limit``, only the newest that many. Leaves are canonical JSON, so an SQL
        pre-filter on the body's exact ``"recording_id":…`` text finds them without
        reading the whole log; each is confirmed on the parsed leaf."""
        needle = canonical_json({"recording_id": recording_id}).decode()[1:-1]
        pattern = "%" + needle.replace("!", "!!").replace("%", "!%").replace("_", "!_") + "%"
        sql = "SELECT idx, kind, body, leaf_sha256, appended_at FROM ledger "
        sql += "WHERE body LIKE ? ESCAPE '!'"
        params: list[object] = [pattern]
        if kind is not None:
            sql += " AND kind = ?"
            params.append(kind)
        sql += " ORDER BY idx DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        with self.index.transaction(False) as q:
            found = q(sql, params)
        return [
            LedgerRow(int(idx), str(k), str(body).encode(), str(leaf), str(appended))
            for idx, k, body, leaf, appended in reversed(found)
            if json.loads(body).get("recording_id") == recording_id
        ]

    def add_checkpoint(self, tree_size: int, root_sha256: str, note: str) -> CheckpointRow:
        made = now_iso()
        with self.index.transaction(True) as q:
            existing = q("SELECT root_sha256 FROM checkpoints WHERE tree_size = ?", (tree_size,))
            if existing:
                if existing[0][0] != root_sha256:
                    raise LedgerError(
                        f"a checkpoint of size {tree_size} with another root is already kept "
                        "(the ledger was changed after it was signed: run audit verify)"
                    )
                rows = q(
                    "SELECT tree_size, root_sha256, note, made_at FROM checkpoints "
                    "WHERE tree_size = ?",
                    (tree_size,),
                )
                return CheckpointRow(int(rows[0][0]), rows[0][1], rows[0][2], rows[0][3])
            q(
                "INSERT INTO checkpoints (tree_size, root_sha256, note, made_at) "
                "VALUES (?, ?, ?, ?)",
                (tree_size, root_sha256, note, made),
            )
        return CheckpointRow(tree_size, root_sha256, note, made)

    def checkpoints(self) -> list[CheckpointRow]:
        with self.index.transaction(False) as q:
            rows = q(
                "SELECT tree_size, root_sha256, note, made_at FROM checkpoints ORDER BY tree_size",
                (),
            )
        return [CheckpointRow(int(r[0]), r[1], r[2], r[3]) for r in rows]
