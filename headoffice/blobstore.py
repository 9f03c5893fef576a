"""What the head office needs of a blob store: the :class:`BlobStore` protocol.

The receiver parks an upload's init and chunks, assembles and commits them under a lock,
and drops the parking; ``ls --pending``, ``export`` and ``verify`` read what was stored.
They all go through this protocol and never through a store's paths, so another store
(an S3 bucket, say) can take the filesystem store's place
(:class:`headoffice.store.FileBlobStore`) without touching them. Every method is
idempotent, as a resend or a second worker may repeat it; a failure is a
:class:`StoreError` whose ``reason`` the receiver acts on.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

from sealedrec.errors import LinetapError

__all__ = ["BlobStore", "StoreError"]


class StoreError(LinetapError, OSError):
    """The blob store cannot do what was asked; ``reason`` names what went wrong:
    ``missing`` (chunks not parked), ``size`` / ``sha256`` (the assembled or committed
    blob differs from what it should be), ``conflict`` (a different recording is
    already stored under this id), ``lock`` (lock timeout), ``full`` (no space or quota
    left on the filesystem), ``id``, ``date`` or ``io``."""

    def __init__(self, message: str, *, reason: str = "io", missing: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.reason = reason
        self.missing = missing


class BlobStore(Protocol):
    """A store shared by every worker: parked uploads, stored blobs and manifests, locks.

    ``stored`` is where :meth:`commit` put a recording, as the index keeps it (text)."""

    # -- uploads in progress -------------------------------------------------------------
    def park_init(self, device: str, rec: str, data: bytes) -> None:
        """Park an upload's checked init message: the licence to park its chunks."""
        ...

    def parked_init(self, device: str, rec: str) -> bytes | None:
        """The parked init of an upload, or None."""
        ...

    def park_chunk(self, device: str, rec: str, index: int, data: bytes) -> object:
        """Park chunk ``index`` whole or not at all; the same bytes again change nothing."""
        ...

    def parked(self, device: str, rec: str) -> set[int]:
        """The indexes of the chunks parked for an upload."""
        ...

    def list_parking(self) -> list[tuple[str, str, float]]:
        """Every parked upload: (device, recording, wall time of its newest entry)."""
        ...

    def drop_parking(self, device: str, rec: str) -> None:
        """Remove an upload's parked init and chunks (nothing there: nothing to do)."""
        ...

    # -- finishing a recording -----------------------------------------------------------
    def lock(
        self, device: str, rec: str, timeout: float | None = None
    ) -> AbstractContextManager[None]:
        """Exclusive across workers while one finishes or drops a recording; a
        :class:`StoreError` (``lock``) after ``timeout`` seconds."""
        ...

    def assemble(
        self, device: str, rec: str, chunk_count: int, blob_bytes: int, blob_sha256: str | None
    ) -> Path:
        """The parked chunks joined into a local temp file checked against the init's size
        and SHA-256 (``missing`` / ``size`` / ``sha256`` otherwise), for :meth:`commit`."""
        ...

    def commit(  # noqa: PLR0917 - mirrors the init message, as the receiver calls it
        self,
        device: str,
        rec: str,
        started_utc: str,
        container: str | None,
        blob_tmp: Path | None,
        manifest: Mapping[str, Any],
    ) -> str | os.PathLike[str]:
        """Store the assembled blob unchanged and its manifest beside it, durably; where
        (the index keeps it as text). The same recording again changes nothing; another
        one under this id is a ``conflict``."""
        ...

    # -- reading what is stored ----------------------------------------------------------
    def stored_manifest(self, stored: str) -> dict[str, Any]:
        """The manifest stored with a recording."""
        ...

    def local_blob(self, stored: str) -> AbstractContextManager[Path]:
        """A local file holding the stored blob, for as long as the ``with`` block runs."""
        ...

    # -- housekeeping --------------------------------------------------------------------
    def cleanup_tmp(self, older_than_s: float = 3600.0) -> int:
        """Remove temp files crashed workers left; how many."""
        ...

    def cleanup_locks(self) -> int:
        """Remove lock files nobody holds; how many."""
        ...
