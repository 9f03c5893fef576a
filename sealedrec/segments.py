"""The segment container: a recovered call's recording, as the device's journal left it.

While a call is in progress the device appends, every ``journal_sync_s``, one record
holding a complete age file (a FLAC of that second, sealed to the office's keys) and
fsyncs it (:mod:`buffers.journal`). After a power cut the valid records are exactly what
was synced, and the file, cut at its last valid record, is the recording the office
receives (container ``segments``, flagged ``recovered``). Both ends read it here.

Format (all integers big-endian)::

    b"LTJOURNAL1\\n"
    record*: b"SEG1" | frames:u32 | length:u32 | payload[length] | crc32:u32

``crc32`` covers the record from its magic to the end of the payload, so a record torn
by a power cut (or blocks the filesystem left zeroed) is recognised and cut off.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

FILE_MAGIC = b"LTJOURNAL1\n"
RECORD_MAGIC = b"SEG1"
HEAD = struct.Struct(">4sII")
CRC = struct.Struct(">I")
MAX_RECORD_BYTES = 64 * 1024 * 1024  # far above one second of audio; guards bad lengths


class JournalFormatError(ValueError):
    """Not a journal at all (wrong magic)."""


@dataclass(frozen=True, slots=True)
class Segment:
    frames: int
    payload: bytes


def encode_record(payload: bytes, frames: int) -> bytes:
    head = HEAD.pack(RECORD_MAGIC, frames, len(payload))
    return head + payload + CRC.pack(zlib.crc32(payload, zlib.crc32(head)))


def iter_segments(fh: BinaryIO) -> Iterator[tuple[Segment, int]]:
    """Valid segments of a journal with the file offset just after each; stops at the
    first torn or corrupt record."""
    if fh.read(len(FILE_MAGIC)) != FILE_MAGIC:
        raise JournalFormatError("not a linetap journal (bad magic)")
    offset = len(FILE_MAGIC)
    while True:
        head = fh.read(HEAD.size)
        if len(head) < HEAD.size:
            return
        magic, frames, length = HEAD.unpack(head)
        if magic != RECORD_MAGIC or length > MAX_RECORD_BYTES:
            return
        payload = fh.read(length)
        crc = fh.read(CRC.size)
        if len(payload) < length or len(crc) < CRC.size:
            return
        if CRC.unpack(crc)[0] != zlib.crc32(payload, zlib.crc32(head)):
            return
        offset += HEAD.size + length + CRC.size
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
