"""The errors of the device's buffers (journal, outbox); :mod:`firmware.errors`
re-exports them."""

from __future__ import annotations

from sealedrec.errors import LinetapError


class StorageError(LinetapError, OSError):
    """Recordings cannot be written (disk full, read-only, permissions)."""
