"""The power-safe journal: an append-only log of sealed (already encrypted) segments.

While a call is in progress, every ``journal_sync_s`` of its audio is encoded, sealed
to the office's keys by the caller and appended here as one record, then fsynced. The
journal never sees plain audio and needs no key: after a power cut the valid records
are exactly what was synced, and the file (cut at its last valid record) becomes the
recording the head office receives, flagged ``recovered``.

The format (a segment container) and its readers are :mod:`sealedrec.segments`, which
the head office reads too; this module is the device's writer.
"""

from __future__ import annotations

import os
from pathlib import Path

from sealedrec.durable import fsync_dir
from sealedrec.segments import FILE_MAGIC, encode_record


class JournalWriter:
    """Appends records and makes each durable before returning."""

    def __init__(self, path: Path, *, durable: bool = True) -> None:
        self.path = path
        self._durable = durable
        new = not path.exists()
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._valid = os.fstat(self._fd).st_size  # end of the last complete record
        if new:
            self._write(FILE_MAGIC)
            self._valid = len(FILE_MAGIC)
            if durable:
                os.fsync(self._fd)
                fsync_dir(path.parent)
        self.records = 0
        self.frames = 0

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def append(self, payload: bytes, frames: int) -> None:
        """Append one record durably; on failure (disk full) the file is cut back to its
        last complete record, so a later append does not land behind a torn one."""
        record = encode_record(payload, frames)
        try:
            self._write(record)
            if self._durable:
                os.fsync(self._fd)
        except OSError:
            os.ftruncate(self._fd, self._valid)
            raise
        self._valid += len(record)
        self.records += 1
        self.frames += frames

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
