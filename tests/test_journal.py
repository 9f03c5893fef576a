"""The journal's record format: torn tails and corrupt records are cut, never misread."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from buffers.journal import JournalWriter
from sealedrec.segments import FILE_MAGIC, JournalFormatError, read_segments, scan_journal


def make(path: Path, n: int) -> list[bytes]:
    payloads = [os.urandom(100 + 37 * i) for i in range(n)]
    writer = JournalWriter(path)
    for i, p in enumerate(payloads):
        writer.append(p, 8000 + i)
    writer.close()
    return payloads


def test_round_trip(tmp_path: Path):
    path = tmp_path / "j"
    payloads = make(path, 5)
    segments = read_segments(path)
    assert [s.payload for s in segments] == payloads
    assert [s.frames for s in segments] == [8000 + i for i in range(5)]
    scan = scan_journal(path)
    assert scan.records == 5 and scan.valid_bytes == scan.file_bytes


def test_every_torn_tail_keeps_exactly_the_complete_records(tmp_path: Path):
    path = tmp_path / "j"
    payloads = make(path, 3)
    full = path.read_bytes()
    ends = [len(FILE_MAGIC)]
    for p in payloads:
        ends.append(ends[-1] + 12 + len(p) + 4)
    for cut in range(len(FILE_MAGIC), len(full) + 1, 7):
        path.write_bytes(full[:cut])
        complete = sum(1 for e in ends[1:] if e <= cut)
        assert len(read_segments(path)) == complete, cut


def test_a_corrupt_record_ends_the_valid_part(tmp_path: Path):
    path = tmp_path / "j"
    make(path, 4)
    raw = bytearray(path.read_bytes())
    raw[len(FILE_MAGIC) + 12 + 100 + 4 + 20] ^= 0xFF  # inside the second record's payload
    path.write_bytes(bytes(raw))
    assert len(read_segments(path)) == 1


def test_zeroed_blocks_after_a_power_cut(tmp_path: Path):
    path = tmp_path / "j"
    make(path, 2)
    with open(path, "ab") as fh:
        fh.write(b"\0" * 4096)  # what a filesystem may show for unwritten blocks
    assert len(read_segments(path)) == 2


def test_not_a_journal(tmp_path: Path):
    path = tmp_path / "j"
    path.write_bytes(b"RIFF....")
    with pytest.raises(JournalFormatError):
        read_segments(path)


def test_failed_append_is_cut_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "j"
    writer = JournalWriter(path)
    writer.append(b"a" * 50, 1)
    real_write = os.write
    calls = {"n": 0}

    def half_then_full(fd: int, data: bytes | memoryview) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            return real_write(fd, bytes(data)[:10])  # a short write...
        raise OSError(errno.ENOSPC, "No space left on device")  # ...then the disk is full

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(OSError):
        writer.append(b"b" * 50, 2)
    monkeypatch.setattr(os, "write", real_write)
    writer.append(b"c" * 50, 3)
    writer.close()
    assert [s.payload[:1] for s in read_segments(path)] == [b"a", b"c"]
