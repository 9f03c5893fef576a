"""The head office's index of stored recordings: one interface, two backends.

- ``sqlite:///var/lib/linetap-office/index.sqlite3`` — the default, nothing to install
  (WAL, ``synchronous=FULL``: a committed add survives a power cut);
- ``postgresql://user@host/db`` (any libpq DSN) — for several workers on a shared
  subscription. :meth:`Index.finish_lock` is then a PostgreSQL advisory lock, so only one
  worker finishes a recording whose chunks reached several.

Tables: ``recordings`` (one row per stored recording, its signed manifest as canonical
JSON text and the fields people search by), ``devices`` (the highest seq seen and its
manifest hash), ``alarms`` (gaps, replays, chain breaks, conflicts — a log, never
rewritten), ``uploads`` (uploads in progress, for ``ls --pending``; the parked chunk
files are the truth) and ``schema_version``.

:meth:`Index.add` stores a recording, advances its device and raises alarms in one
transaction that is committed before it returns: the receiver acks only after that.
Times are ISO 8601 strings in UTC (``2026-11-25T10:00:00.000+00:00``), so they sort and
compare as text in both backends.
"""

from __future__ import annotations

import re

from headoffice.index.base import DEFAULT_LOCK_TIMEOUT_S, Index
from headoffice.index.postgres import PostgresIndex
from headoffice.index.records import (
    AddResult,
    Alarm,
    DeviceState,
    Gap,
    IndexConflictError,
    IndexStoreError,
    PendingUpload,
    Query,
    Row,
    StoredRecord,
    now_iso,
    redact_dsn,
    row_from_manifest,
    utc_iso,
)
from headoffice.index.schema import SCHEMA_VERSION
from headoffice.index.sqlite import SqliteIndex, _sqlite_path

__all__ = [
    "DEFAULT_LOCK_TIMEOUT_S",
    "SCHEMA_VERSION",
    "AddResult",
    "Alarm",
    "DeviceState",
    "Gap",
    "Index",
    "IndexConflictError",
    "IndexStoreError",
    "PendingUpload",
    "PostgresIndex",
    "Query",
    "Row",
    "SqliteIndex",
    "StoredRecord",
    "now_iso",
    "open_index",
    "redact_dsn",
    "row_from_manifest",
    "utc_iso",
]


def open_index(url: str) -> Index:
    """``sqlite:///path/index.sqlite3`` (``sqlite:relative/path`` too) or a PostgreSQL
    DSN (``postgresql://…``, ``postgres://…`` or libpq ``key=value`` form)."""
    text = url.strip()
    if text.startswith("sqlite:"):
        return SqliteIndex(_sqlite_path(text), text)
    if text.startswith(("postgresql://", "postgres://")) or re.match(r"^\s*\w+\s*=", text):
        return PostgresIndex(text)
    raise IndexStoreError(
        f"index {redact_dsn(text)!r}: use sqlite:///path/index.sqlite3 or "
        "postgresql://user@host/database"
    )
