"""The power-safe journal: an append-only log of sealed (already encrypted) segments.

While a call is in progress, every ``journal_sync_s`` of its audio is encoded, sealed
to the office's keys by the caller and appended here as one record, then fsynced. The
journal never sees plain audio and needs no key: after a power cut the valid records
are exactly what was synced, and the file (cut at its last valid record) becomes the
recording the head office receives, flagged ``recovered``.

Format (all integers big-endian)::

    b"LTJOURNAL1\\n"
    record*: b"SEG1" | frames:u32 | length:u32 | payload[length] | crc32:u32

``crc32`` covers the record from its magic to the end of the payload, so a record torn
by a power cut (or blocks the filesystem left zeroed) is recognised and cut off.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from buffers.durable import fsync_dir

FILE_MAGIC = b"LTJOURNAL1\n"
RECORD_MAGIC = b"SEG1"
_HEAD = struct.Struct(">4sII")
_CRC = struct.Struct(">I")
MAX_RECORD_BYTES = 64 * 1024 * 1024  # far above one second of audio; guards bad lengths


class JournalFormatError(ValueError):
    """Not a journal at all (wrong magic)."""


@dataclass(frozen=True, slots=True)
class Segment:
    frames: int
    payload: bytes


def encode_record(payload: bytes, frames: int) -> bytes:
    head = _HEAD.pack(RECORD_MAGIC, frames, len(payload))
    return head + payload + _CRC.pack(zlib.crc32(payload, zlib.crc32(head)))


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


def iter_segments(fh: BinaryIO) -> Iterator[tuple[Segment, int]]:
    """Valid segments of a journal with the file offset just after each; stops at the
    first torn or corrupt record."""
    if fh.read(len(FILE_MAGIC)) != FILE_MAGIC:
        raise JournalFormatError("not a linetap journal (bad magic)")
    offset = len(FILE_MAGIC)
    while True:
        head = fh.read(_HEAD.size)
        if len(head) < _HEAD.size:
            return
        magic, frames, length = _HEAD.unpack(head)
        if magic != RECORD_MAGIC or length > MAX_RECORD_BYTES:
            return
        payload = fh.read(length)
        crc = fh.read(_CRC.size)
        if len(payload) < length or len(crc) < _CRC.size:
            return
        if _CRC.unpack(crc)[0] != zlib.crc32(payload, zlib.crc32(head)):
            return
        offset += _HEAD.size + length + _CRC.size
        yield Segment(frames, payload), offset


@dataclass(frozen=True, slots=True)
class JournalScan:
    records: int
    frames: int
    valid_bytes: int  # length of the file up to the end of its last valid record
    file_bytes: int


def scan_journal(path: Path) -> JournalScan:
    records = frames = 0
    valid = len(FILE_MAGIC)
    with open(path, "rb") as fh:
        for segment, end in iter_segments(fh):
            records += 1
            frames += segment.frames
            valid = end
    return JournalScan(records, frames, valid, path.stat().st_size)


def read_segments(path: Path) -> list[Segment]:
    with open(path, "rb") as fh:
        return [segment for segment, _ in iter_segments(fh)]
