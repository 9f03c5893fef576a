"""What the head office needs of a blob store: the :class:`BlobStore` protocol.

The receiver parks an upload's init and chunks, assembles and commits them under a lock,
and drops the parking; ``ls --pending``, ``export`` and ``verify`` read what was stored.
They all go through this protocol and never through a store's paths, so another store
(an S3 bucket, say) can take the filesystem store's place
(:class:`headoffice.store.FileBlobStore`; :class:`headoffice.s3store.S3BlobStore` over an
S3 bucket with Object Lock; :func:`headoffice.stores.open_store` picks one from the
config) without touching them. Every method is idempotent, as a resend or a second worker
may repeat it; a failure is a :class:`StoreError` whose ``reason`` the receiver acts on.

Lifecycle: a stored recording (blob and manifest together) may carry a retention date
(:meth:`BlobStore.retain_until`, extended only, never shortened) and a legal hold
(:meth:`BlobStore.set_legal_hold`); :meth:`BlobStore.delete` is refused while either
applies. On S3 the bucket's Object Lock refuses it (the store itself, so not even an
office admin with the database and the bucket's keys can delete early); on the
filesystem store a registry beside the blobs is the enforcement.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from sealedrec.errors import LinetapError

__all__ = ["BlobStore", "Lifecycle", "StoreError", "check_range", "retention_date"]


class StoreError(LinetapError, OSError):
    """The blob store cannot do what was asked; ``reason`` names what went wrong:
    ``missing`` (chunks not parked), ``size`` / ``sha256`` (the assembled or committed
    blob differs from what it should be), ``conflict`` (a different recording is
    already stored under this id), ``lock`` (lock timeout), ``full`` (no space or quota
    left on the filesystem), ``id``, ``date``, ``io`` (the store failed or could not be
    reached), ``held`` (a delete refused: the recording is on legal hold), ``retained``
    (a delete refused before the retention date, or a retention date that would shorten
    the one set), ``range`` (a byte range outside the blob) or ``config`` (the store is
    not usable as configured: no bucket, no Object Lock, credentials refused, endpoint
    unreachable; the message names the fix)."""

    def __init__(self, message: str, *, reason: str = "io", missing: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.reason = reason
        self.missing = missing


def check_range(stored: str, start: int, end: int, size: int) -> tuple[int, int]:
    """``start``..``end`` (inclusive, as in HTTP Range) within a blob of ``size`` bytes:
    an end past the blob is cut to its last byte; a start past it is a ``range`` error."""
    if start < 0 or end < start:
        raise StoreError(f"{stored}: byte range {start}-{end} is not a range", reason="range")
    if start >= size:
        raise StoreError(
            f"{stored}: byte range {start}-{end} starts past the blob's {size} bytes",
            reason="range",
        )
    return start, min(end, size - 1)


def retention_date(until: datetime) -> datetime:
    """``until`` as a retention date: in UTC, rounded up to a whole second (S3 keeps whole
    seconds, so every store does: the same date set twice then compares equal). A naive
    time is a ``date`` error: it would silently mean the server's own zone."""
    if until.tzinfo is None:
        raise StoreError(f"retention date {until.isoformat()} has no time zone", reason="date")
    until = until.astimezone(UTC)
    if until.microsecond:
        until = until.replace(microsecond=0) + timedelta(seconds=1)
    return until


@dataclass(frozen=True, slots=True)
class Lifecycle:
    """What keeps a stored recording: its retention date (None: none set) and legal hold."""

    retain_until: datetime | None
    legal_hold: bool


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

    def read_range(self, stored: str, start: int, end: int) -> bytes:
        """Bytes ``start``..``end`` of the stored blob, ``end`` included (as in HTTP
        Range); an ``end`` past the blob stops at its last byte, a ``start`` past it is a
        ``range`` error."""
        ...

    def size(self, stored: str) -> int:
        """The stored blob's size in bytes."""
        ...

    # -- lifecycle -----------------------------------------------------------------------
    def retain_until(self, stored: str, until: datetime) -> None:
        """Keep the recording (blob and manifest) at least until ``until`` (aware UTC).
        Extends only: an earlier date than the one set is a ``retained`` error; the same
        date again changes nothing."""
        ...

    def set_legal_hold(self, stored: str, on: bool) -> None:
        """Put the recording on legal hold (``on``) or release it."""
        ...

    def lifecycle(self, stored: str) -> Lifecycle:
        """The recording's retention date and legal hold."""
        ...

    def delete(self, stored: str) -> None:
        """Remove the recording's blob and manifest: refused (``held`` / ``retained``)
        while it is on hold or before its retention date. Already gone: nothing to do."""
        ...

    # -- housekeeping --------------------------------------------------------------------
    def cleanup_tmp(self, older_than_s: float = 3600.0) -> int:
        """Remove temp files crashed workers left; how many."""
        ...

    def cleanup_locks(self) -> int:
        """Remove lock files nobody holds; how many."""
        ...
