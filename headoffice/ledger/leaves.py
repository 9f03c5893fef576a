"""What the audit ledger records: one typed leaf per event, as canonical JSON.

Three kinds, each a frozen model whose canonical JSON (sorted keys, no spaces, UTF-8,
integers only: :func:`sealedrec.manifest.canonical_json`) is the leaf's bytes in the
RFC 6962 Merkle tree:

- ``ingest``: a recording stored: device, seq, recording id, the SHA-256 of its signed
  manifest (canonical) and of its blob, when;
- ``access``: who did what to which recording (or to nothing: a search, reading the
  ledger), as which role, from where, in which session; appended *before* any byte of
  audio or metadata leaves, and a failed append refuses the access;
- ``admin``: user, role and policy changes, and deletions as tombstones with their
  reason.

Leaves are facts, never secrets: no password, no session token (its SHA-256 prefix
names the session), no audio.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from sealedrec.manifest import canonical_json

_Short = Annotated[str, Field(max_length=200)]
_Hex64 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class _Leaf(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    def canonical(self) -> bytes:
        return canonical_json(self.model_dump(mode="json"))


class IngestLeaf(_Leaf):
    kind: Literal["ingest"] = "ingest"
    device_id: _Short
    seq: int
    recording_id: _Short
    manifest_sha256: _Hex64
    blob_sha256: _Hex64 | None
    at: _Short


class AccessLeaf(_Leaf):
    kind: Literal["access"] = "access"
    user: _Short
    roles: tuple[_Short, ...]
    action: _Short
    recording_id: _Short | None = None
    detail: Annotated[str, Field(max_length=500)] = ""
    client: _Short
    session: _Short
    at: _Short


class AdminLeaf(_Leaf):
    kind: Literal["admin"] = "admin"
    user: _Short
    action: _Short  # user_add, user_disable, role_set, scope_set, policy_set, tombstone, …
    subject: _Short
    detail: Annotated[str, Field(max_length=2000)] = ""
    at: _Short


Leaf = Annotated[IngestLeaf | AccessLeaf | AdminLeaf, Field(discriminator="kind")]
_LEAF: TypeAdapter[IngestLeaf | AccessLeaf | AdminLeaf] = TypeAdapter(Leaf)


def parse_leaf(body: bytes | str) -> IngestLeaf | AccessLeaf | AdminLeaf:
    """A stored leaf body as its model (raises pydantic's ValidationError, or
    ValueError for text that is not JSON)."""
    return _LEAF.validate_python(json.loads(body), strict=False)
