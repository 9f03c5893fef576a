"""The segment container: a recovered call's recording, as the device's journal left it.

While a call is in progress the device appends, about every ``journal_sync_s``, one
record holding a complete age file (sealed to the office's keys) and fsyncs it
(:mod:`buffers.journal`). After a power cut the valid records are exactly what was
synced, and the file, cut at its last valid record, is the recording the office
receives (container ``segments``, flagged ``recovered``). Both ends read it here.

Format (all integers big-endian)::

    b"LTJOURNAL2\\n"   (or b"LTJOURNAL1\\n", see below)
    record*: b"SEG1" | frames:u32 | length:u32 | payload[length] | crc32:u32

Version 2 (one FLAC encoder per call): the records' decrypted payloads, in order, are
consecutive pieces of one FLAC stream, each ending on a frame boundary (the first
starts with ``fLaC`` and the metadata), and ``frames`` counts the samples in its FLAC
frames. Any prefix of the records is therefore a FLAC stream; its STREAMINFO does not
know the total (the encoder wrote it first), and :func:`flac_with_total` fills that in
from the records' frames. Version 1 (firmware before 2026-12): each payload is a whole
FLAC file of its own; the office still reads it.

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

FILE_MAGIC = b"LTJOURNAL2\n"
FILE_MAGIC_V1 = b"LTJOURNAL1\n"
VERSIONS = {FILE_MAGIC_V1: 1, FILE_MAGIC: 2}
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


def journal_version(fh: BinaryIO) -> int:
    """The journal's format version (1 or 2), read from its magic at the current offset."""
    version = VERSIONS.get(fh.read(len(FILE_MAGIC)))
    if version is None:
        raise JournalFormatError("not a linetap journal (bad magic)")
    return version


def iter_segments(fh: BinaryIO) -> Iterator[tuple[Segment, int]]:
    """Valid segments of a journal (either version) with the file offset just after
    each; stops at the first torn or corrupt record."""
    journal_version(fh)
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


# STREAMINFO's total-samples field: 36 bits from the low nibble of byte 21 of the file
# (b"fLaC", a 4-byte block header, then 13.5 bytes of block sizes, rate and format).
_FLAC_HEAD = b"fLaC"
_TOTAL_AT = 21


def flac_with_total(stream: bytes | bytearray, total: int) -> bytes:
    """A version-2 journal's FLAC stream with STREAMINFO's total samples filled in
    (decoders such as libsndfile size their output by it)."""
    if stream[:4] != _FLAC_HEAD or len(stream) < 42 or stream[4] & 0x7F != 0:
        raise JournalFormatError("journal audio does not start with a FLAC STREAMINFO")
    if not 0 <= total < 1 << 36:
        raise JournalFormatError(f"journal audio: {total} samples cannot be a FLAC total")
    out = bytearray(stream)
    out[_TOTAL_AT] = (out[_TOTAL_AT] & 0xF0) | (total >> 32)
    out[_TOTAL_AT + 1 : _TOTAL_AT + 5] = (total & 0xFFFFFFFF).to_bytes(4, "big")
    return bytes(out)
