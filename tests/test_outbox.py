"""Durable outbox: lifecycle, idempotency, refusal to lose unacked recordings, crash and
concurrency consistency across real processes, and a real full disk (tmpfs)."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from buffers.outbox import (
    ACKED_AT_FILE,
    SEALED_AT_FILE,
    ManifestHead,
    Outbox,
    OutboxEntry,
    OutboxEntryNotFound,
    OutboxError,
    OutboxState,
    OutboxStateError,
    entry_name,
    parse_entry_name,
)
from buffers.retention import apply_retention
from firmware.errors import StorageError
from sealedrec.manifest import manifest_hash
from tests.helpers import mounted_tmpfs

REPO = Path(__file__).resolve().parent.parent
STATE_DIRS = ("sealed", "uploading", "acked")


def _files(rid: str, seq: int, size: int = 3000) -> dict[str, bytes]:
    """Sealer-like files whose content is derived from the id, so completeness is checkable."""
    block = hashlib.sha256(rid.encode()).digest()
    age = (block * (size // len(block) + 1))[:size]
    return {"recording.age": age, "manifest.json": json.dumps({"id": rid, "seq": seq}).encode()}


def _assert_complete(entry_dir: Path, rid: str, seq: int, size: int = 3000) -> None:
    for name, data in _files(rid, seq, size).items():
        assert (entry_dir / name).read_bytes() == data, f"{entry_dir / name} incomplete"
    float((entry_dir / SEALED_AT_FILE).read_text())


def _scan(root: Path) -> dict[str, list[str]]:
    """recording id -> the state directories holding it, straight from the filesystem."""
    where: dict[str, list[str]] = {}
    for state in STATE_DIRS:
        for name in os.listdir(root / state):
            parsed = parse_entry_name(name)
            assert parsed is not None, f"stray {root / state / name}"
            where.setdefault(parsed[1], []).append(state)
    return where


# -- lifecycle ----------------------------------------------------------------------------


def test_full_lifecycle(tmp_path):
    ob = Outbox(tmp_path / "outbox")
    for d in ("tmp", "sealed", "uploading", "acked"):
        assert (tmp_path / "outbox" / d).stat().st_mode & 0o777 == 0o700

    staged = ob.stage(7, "rec-a")
    assert staged.parent == tmp_path / "outbox" / "tmp" and not any(staged.iterdir())
    for name, data in _files("rec-a", 7).items():
        ob.write_file(staged, name, data)
    entry = ob.commit(staged, sealed_at=1000.0)
    assert not staged.exists()
    assert entry == OutboxEntry(
        recording_id="rec-a",
        seq=7,
        state=OutboxState.SEALED,
        path=tmp_path / "outbox" / "sealed" / "000000000007-rec-a",
        bytes=sum(len(d) for d in _files("rec-a", 7).values()),
        sealed_at=1000.0,
        acked_at=None,
    )
    _assert_complete(entry.path, "rec-a", 7)

    claimed = ob.claim("rec-a")
    assert claimed.state is OutboxState.UPLOADING and claimed.path.is_dir()
    assert not entry.path.exists()
    assert ob.claim("rec-a") == claimed  # idempotent
    released = ob.release("rec-a")
    assert released.state is OutboxState.SEALED and released.path == entry.path
    assert ob.release("rec-a") == released
    ob.claim("rec-a")
    acked = ob.mark_acked("rec-a", acked_at=2000.0)
    assert acked.state is OutboxState.ACKED and acked.acked_at == 2000.0
    assert acked.sealed_at == 1000.0 and acked.bytes == entry.bytes
    _assert_complete(acked.path, "rec-a", 7)
    assert ob.mark_acked("rec-a", acked_at=3000.0) == acked  # first ack time kept
    assert ob.release("rec-a") == acked  # nothing to release
    with pytest.raises(OutboxStateError, match="already acked"):
        ob.claim("rec-a")

    assert ob.find("rec-a") == acked
    assert ob.delete("rec-a") is True
    assert ob.find("rec-a") is None and ob.entries() == []
    assert ob.delete("rec-a") is False  # already gone
    with pytest.raises(OutboxEntryNotFound, match="rec-a") as exc:
        ob.claim("rec-a")
    assert isinstance(exc.value, StorageError) and isinstance(exc.value, FileNotFoundError)


def test_entries_are_sorted_by_seq_across_states(tmp_path):
    ob = Outbox(tmp_path)
    for seq, rid in [(12, "c"), (3, "z"), (7, "a"), (100, "b")]:
        ob.add(seq, rid, _files(rid, seq))
    ob.claim("a")
    ob.mark_acked("b")
    assert [(e.seq, e.recording_id) for e in ob.entries()] == [
        (3, "z"),
        (7, "a"),
        (12, "c"),
        (100, "b"),
    ]
    assert [e.recording_id for e in ob.entries(OutboxState.SEALED)] == ["z", "c"]
    assert [e.recording_id for e in ob.entries(OutboxState.UPLOADING)] == ["a"]
    assert [e.recording_id for e in ob.entries(OutboxState.ACKED)] == ["b"]


def test_commit_is_idempotent_by_recording_id(tmp_path):
    ob = Outbox(tmp_path)
    first = ob.add(5, "rec-x", _files("rec-x", 5), sealed_at=10.0)
    # A re-seal after a crash: same id, staged and committed again.
    again = ob.add(5, "rec-x", _files("rec-x", 5), sealed_at=20.0)
    assert again == first and again.sealed_at == 10.0
    assert len(ob.entries()) == 1 and os.listdir(tmp_path / "tmp") == []

    # The same staged path committed twice (the caller retried after a timeout).
    staged = ob.stage(6, "rec-y")
    ob.write_file(staged, "recording.age", b"y")
    one = ob.commit(staged)
    assert ob.commit(staged) == one

    # Also when the existing entry has moved on to another state.
    ob.claim("rec-x")
    ob.mark_acked("rec-x", acked_at=30.0)
    third = ob.add(5, "rec-x", _files("rec-x", 5))
    assert third.state is OutboxState.ACKED and third.acked_at == 30.0
    assert sorted(_scan(tmp_path).items()) == [("rec-x", ["acked"]), ("rec-y", ["sealed"])]
    assert os.listdir(tmp_path / "tmp") == []


def test_deleting_an_unacked_entry_is_refused(tmp_path):
    ob = Outbox(tmp_path)
    ob.add(1, "sealed-one", _files("sealed-one", 1))
    ob.add(2, "uploading-one", _files("uploading-one", 2))
    ob.claim("uploading-one")
    for rid, state in (("sealed-one", "sealed"), ("uploading-one", "uploading")):
        with pytest.raises(OutboxStateError, match=f"refusing to delete .*{state}, not acked") as e:
            ob.delete(rid)
        assert isinstance(e.value, StorageError)
    assert _scan(tmp_path) == {"sealed-one": ["sealed"], "uploading-one": ["uploading"]}
    _assert_complete(tmp_path / "sealed" / entry_name(1, "sealed-one"), "sealed-one", 1)


def test_stats_counts_bytes_oldest_unacked_and_last_ack(tmp_path):
    ob = Outbox(tmp_path)
    empty = ob.stats(now=0.0)
    assert empty.oldest_unacked_age_s is None and empty.last_ack_at is None
    assert empty.unacked_count == 0 and sum(empty.counts.values()) == 0

    sizes = {"a": 1000, "b": 2000, "c": 4000, "d": 8000}
    for seq, (rid, size) in enumerate(sizes.items()):
        ob.add(seq, rid, {"recording.age": b"\0" * size}, sealed_at=100.0 + seq)
    ob.claim("b")
    ob.mark_acked("c", acked_at=500.0)
    ob.mark_acked("a", acked_at=400.0)
    s = ob.stats(now=1000.0)
    assert s.counts == {OutboxState.SEALED: 1, OutboxState.UPLOADING: 1, OutboxState.ACKED: 2}
    assert s.bytes == {
        OutboxState.SEALED: 8000,
        OutboxState.UPLOADING: 2000,
        OutboxState.ACKED: 5000,
    }
    assert s.unacked_count == 2 and s.unacked_bytes == 10000
    assert s.oldest_unacked_age_s == pytest.approx(1000.0 - 101.0)  # "b", sealed at 101
    assert s.last_ack_at == 500.0

    # The last ack time survives retention deleting the acked entries.
    ob.delete("a")
    ob.delete("c")
    assert ob.stats(now=1000.0).last_ack_at == 500.0


def test_cleanup_tmp_removes_partial_adds_only(tmp_path):
    ob = Outbox(tmp_path)
    ob.add(1, "kept", _files("kept", 1))
    for seq in (2, 3):
        staged = ob.stage(seq, f"partial-{seq}")
        (staged / "recording.age").write_bytes(b"half a recor")
    assert ob.cleanup_tmp() == 2
    assert os.listdir(tmp_path / "tmp") == []
    assert [e.recording_id for e in ob.entries()] == ["kept"]
    assert ob.cleanup_tmp() == 0
    # stage() also replaces a leftover of the same name.
    staged = ob.stage(4, "again")
    (staged / "junk").write_bytes(b"x")
    assert list(ob.stage(4, "again").iterdir()) == []


def test_max_seq_spans_every_state_and_survives_deletion(tmp_path):
    ob = Outbox(tmp_path)
    assert ob.max_seq() is None
    ob.stage(999, "never-committed")  # tmp/ does not count
    assert ob.max_seq() is None
    for seq in (4, 9, 6):
        ob.add(seq, f"r{seq}", _files(f"r{seq}", seq))
    assert ob.max_seq() == 9
    ob.claim("r9")
    assert ob.max_seq() == 9
    ob.mark_acked("r9")
    assert ob.max_seq() == 9
    # Retention deleting the newest recording must not make the recorder reuse its seq.
    ob.delete("r9")
    assert ob.max_seq() == 9 and ob.find("r9") is None
    ob.mark_acked("r4")
    ob.mark_acked("r6")
    ob.delete("r6")
    ob.delete("r4")
    assert ob.max_seq() == 9 and ob.entries() == []
    # Only the newest marker is kept, emptied of its payload.
    (marker,) = (tmp_path / "deleted").iterdir()
    assert marker.name == entry_name(9, "r9")
    assert sorted(p.name for p in marker.iterdir()) == [ACKED_AT_FILE, SEALED_AT_FILE]
    assert Outbox(tmp_path).max_seq() == 9


def test_bad_names_and_paths_are_refused(tmp_path):
    ob = Outbox(tmp_path)
    for bad in ("", "../etc", "a/b", ".hidden", "x" * 201):
        with pytest.raises(ValueError, match="recording id"):
            ob.stage(1, bad)
    with pytest.raises(ValueError, match="seq"):
        ob.stage(-1, "ok")
    staged = ob.stage(1, "ok")
    for bad in ("../x", ".outbox-sealed-at", ""):
        with pytest.raises(ValueError, match="file name"):
            ob.write_file(staged, bad, b"")
    with pytest.raises(ValueError, match="not a staged outbox entry"):
        ob.commit(tmp_path / "elsewhere" / entry_name(1, "ok"))
    with pytest.raises(OutboxEntryNotFound, match="stage"):
        ob.commit(tmp_path / "tmp" / entry_name(2, "gone"))
    assert parse_entry_name("000000000012-abc-def") == (12, "abc-def")
    assert parse_entry_name("12-abc") is None


def test_a_stuck_lock_holder_becomes_an_error_not_a_hang(tmp_path):
    ob = Outbox(tmp_path, lock_timeout_s=0.2)
    ob.add(1, "r1", _files("r1", 1))
    fd = os.open(tmp_path / ".lock", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        t0 = time.monotonic()
        with pytest.raises(OutboxError, match=r"\.lock still locked after 0\.2 s"):
            ob.claim("r1")
        assert 0.15 < time.monotonic() - t0 < 2.0
    finally:
        os.close(fd)
    assert ob.claim("r1").state is OutboxState.UPLOADING


def test_an_entry_moved_under_a_stale_lookup_is_found_again(tmp_path, monkeypatch):
    """A rename hitting FileNotFoundError (moved by someone else) looks the entry up again."""
    ob = Outbox(tmp_path)
    stale = ob.add(1, "r1", _files("r1", 1))
    os.rename(stale.path, tmp_path / "uploading" / stale.path.name)  # "the other process"
    real = Outbox._find_locked
    calls = []

    def find_stale_once(self: Outbox, rid: str) -> OutboxEntry | None:
        calls.append(rid)
        return stale if len(calls) == 1 else real(self, rid)

    monkeypatch.setattr(Outbox, "_find_locked", find_stale_once)
    acked = ob.mark_acked("r1", acked_at=5.0)
    assert len(calls) == 2 and acked.state is OutboxState.ACKED and acked.acked_at == 5.0
    assert _scan(tmp_path) == {"r1": ["acked"]}


def test_apply_retention_deletes_expired_then_oldest_acked_under_pressure(tmp_path):
    ob = Outbox(tmp_path)
    for seq, rid in enumerate(["a", "b", "c", "d", "unacked"]):
        ob.add(seq, rid, {"recording.age": b"\0" * 1000})
    for rid, at in (("c", 50.0), ("a", 10.0), ("b", 80.0), ("d", 90.0)):
        ob.mark_acked(rid, acked_at=at)

    # No pressure: only what is older than keep (now - 30 = 70) goes.
    free = {"bytes": 10_000}
    deleted = apply_retention(
        ob, now=100.0, keep_acked_s=30.0, min_free_bytes=5000, free_bytes_fn=lambda: free["bytes"]
    )
    assert deleted == ["a", "c"]

    # Pressure: the free-space function is re-read after each deletion.
    def free_fn() -> int:
        return 3000 + 1000 * (4 - len(ob.entries()))

    deleted = apply_retention(
        ob, now=100.0, keep_acked_s=1e9, min_free_bytes=5500, free_bytes_fn=free_fn
    )
    assert deleted == ["b", "d"]
    # Even with no way to meet the floor, the unacked entry stays.
    deleted = apply_retention(
        ob, now=1e12, keep_acked_s=0.0, min_free_bytes=10**15, free_bytes_fn=lambda: 0
    )
    assert deleted == [] and [e.recording_id for e in ob.entries()] == ["unacked"]


# -- real processes -----------------------------------------------------------------------

_CHILD_PRELUDE = """
import hashlib, json, sys, time
from pathlib import Path
from buffers.outbox import Outbox, OutboxState

def files(rid, seq, size=3000):
    block = hashlib.sha256(rid.encode()).digest()
    age = (block * (size // len(block) + 1))[:size]
    return {"recording.age": age, "manifest.json": json.dumps({"id": rid, "seq": seq}).encode()}

def say(*words):
    print(*words, flush=True)
"""

# Recorder and uploader in one loop; each completed operation is reported before the next.
_CRASH_CHILD = (
    _CHILD_PRELUDE
    + """
ob = Outbox(Path(sys.argv[1]))
ob.cleanup_tmp()
last = ob.max_seq()
if last is not None and ob.find(f"rec-{last}") is not None:
    # The recorder re-seals its last recording after a crash: must not duplicate it.
    e = ob.add(last, f"rec-{last}", files(f"rec-{last}", last))
    assert e.seq == last, e
for e in ob.entries(OutboxState.UPLOADING):  # the uploader's restart
    ob.release(e.recording_id)
for e in ob.entries(OutboxState.SEALED):
    ob.mark_acked(e.recording_id, acked_at=float(e.seq))
    say("acked", e.recording_id)
say("ready")
seq = 0 if last is None else last + 1
while True:
    rid = f"rec-{seq}"
    ob.add(seq, rid, files(rid, seq))
    say("committed", rid, seq)
    ob.claim(rid)
    if seq % 4 == 1:
        ob.release(rid)
    ob.mark_acked(rid, acked_at=float(seq))
    say("acked", rid)
    if seq % 3 == 0 and seq >= 3:
        old = f"rec-{seq - 3}"
        say("deleting", old)
        ob.delete(old)
        say("deleted", old)
    seq += 1
"""
)


def _child(script: str, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=REPO,
        bufsize=0,
    )


def _read_until(proc: subprocess.Popen[bytes], marker: bytes, timeout: float) -> bytes:
    assert proc.stdout is not None and proc.stderr is not None
    buf = b""
    deadline = time.monotonic() + timeout
    while marker not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"child did not print {marker!r} within {timeout} s: {buf!r}")
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                proc.wait(timeout=5)
                raise AssertionError(f"child exited early: {proc.stderr.read().decode()}")
            buf += chunk
    return buf


class _Reported:
    """What the crash child said it had finished, accumulated over all its lives."""

    def __init__(self) -> None:
        self.committed: dict[str, int] = {}
        self.acked: set[str] = set()
        self.deleted: set[str] = set()
        self.in_doubt: set[str] = set()  # delete started, not reported done

    def feed(self, out: bytes) -> None:
        # A kill can land mid-line ("deleted" without its id): a report that did not
        # finish is no report, so only whole lines count.
        whole, _, _cut = out.decode().rpartition("\n")
        for line in whole.splitlines():
            word, *rest = line.split()
            if word == "committed":
                self.committed[rest[0]] = int(rest[1])
            elif word == "acked":
                self.acked.add(rest[0])
            elif word == "deleting":
                self.in_doubt.add(rest[0])
            elif word == "deleted":
                self.deleted.add(rest[0])
                self.in_doubt.discard(rest[0])

    def check(self, root: Path) -> None:
        where = _scan(root)
        assert all(len(states) == 1 for states in where.values()), where
        for rid in self.committed:
            if rid in self.deleted:
                assert rid not in where, f"{rid} deleted but still in {where[rid]}"
            elif rid not in self.in_doubt:
                assert rid in where, f"committed {rid} lost"
                if rid in self.acked:
                    assert where[rid] == ["acked"], f"ack of {rid} lost: {where[rid]}"
        # A delete cut short either happened (the entry left acked/ in one rename) or not.
        for rid in self.in_doubt:
            assert where.get(rid, ["acked"]) == ["acked"], where[rid]
            if rid not in where:
                self.deleted.add(rid)
        self.in_doubt.clear()
        # Every entry present, reported or not (killed between rename and print), is whole.
        for rid, (state,) in where.items():
            seq = int(rid.split("-")[1])
            _assert_complete(root / state / entry_name(seq, rid), rid, seq)


def test_sigkill_at_random_moments_never_loses_or_duplicates(tmp_path):
    root = tmp_path / "outbox"
    rnd = random.Random(20240611)
    reported = _Reported()
    kills = leftovers_seen = 0
    t_end = time.monotonic() + 15.0
    while kills < 30 and time.monotonic() < t_end:
        proc = _child(_CRASH_CHILD, str(root))
        try:
            out = _read_until(proc, b"ready\n", timeout=10.0)
            time.sleep(rnd.uniform(0.0, 0.12))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=5)
        kills += 1
        assert proc.stdout is not None and proc.stderr is not None
        out += proc.stdout.read()
        err = proc.stderr.read().decode()
        proc.stdout.close()
        proc.stderr.close()
        assert err == "", err  # no exception before the kill
        reported.feed(out)
        reported.check(root)

        ob = Outbox(root)
        if reported.committed:
            assert (ob.max_seq() or 0) >= max(reported.committed.values())
        leftovers = len(os.listdir(root / "tmp"))
        leftovers_seen += leftovers > 0
        assert ob.cleanup_tmp() == leftovers
        assert os.listdir(root / "tmp") == []
        assert len(ob.entries()) == len(_scan(root))
    print(f"{kills} kills, {len(reported.committed)} committed, {leftovers_seen} left tmp/ dirty")
    assert kills >= 20 and len(reported.committed) >= 20, (kills, len(reported.committed))


_RECORDER_CHILD = (
    _CHILD_PRELUDE
    + """
root, done, duration = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
ob = Outbox(root)
ob.cleanup_tmp()
seq = 0
end = time.monotonic() + duration
while time.monotonic() < end:
    rid = f"rec-{seq}"
    e = ob.add(seq, rid, files(rid, seq))
    assert e.state is OutboxState.SEALED and e.seq == seq, e
    if seq:
        # Re-commit the previous one while the uploader may be moving it: one entry only.
        prev = ob.add(seq - 1, f"rec-{seq - 1}", files(f"rec-{seq - 1}", seq - 1))
        assert prev.seq == seq - 1, prev
    seq += 1
done.write_text(str(seq))
say(json.dumps({"committed": seq}))
"""
)

_UPLOADER_CHILD = (
    _CHILD_PRELUDE
    + """
root, done = Path(sys.argv[1]), Path(sys.argv[2])
ob = Outbox(root)
released, acked, passes = set(), 0, 0
deadline = time.monotonic() + 20.0
while True:
    finished = done.exists()  # before listing: everything committed by then is listed
    pending = ob.entries(OutboxState.SEALED) + ob.entries(OutboxState.UPLOADING)
    passes += 1
    for e in pending:
        ob.claim(e.recording_id)
        if e.seq % 5 == 0 and e.recording_id not in released:
            ob.release(e.recording_id)  # an abandoned upload, retried on the next pass
            released.add(e.recording_id)
            continue
        ob.mark_acked(e.recording_id)
        acked += 1
    if finished and not pending:
        break
    if time.monotonic() > deadline:
        sys.exit("uploader: recorder did not finish within 20 s")
    if not pending:
        time.sleep(0.002)
say(json.dumps({"acked": acked, "released": len(released), "passes": passes}))
"""
)


def test_recorder_and_uploader_processes_at_once(tmp_path):
    root, done = tmp_path / "outbox", tmp_path / "recorder-done"
    Outbox(root)
    recorder = _child(_RECORDER_CHILD, str(root), str(done), "2.0")
    uploader = _child(_UPLOADER_CHILD, str(root), str(done))
    try:
        rec_out, rec_err = recorder.communicate(timeout=30)
        # A failed recorder never writes `done`: fail now instead of waiting for the uploader.
        assert (recorder.returncode, rec_err.decode()) == (0, "")
        up_out, up_err = uploader.communicate(timeout=30)
    finally:
        for p in (recorder, uploader):
            if p.poll() is None:
                p.kill()
                p.communicate(timeout=5)
    assert (uploader.returncode, up_err.decode()) == (0, "")
    committed = json.loads(rec_out)["committed"]
    report = json.loads(up_out)
    assert committed >= 10
    assert report["acked"] == committed and report["released"] >= 1 and report["passes"] > 2

    where = _scan(root)
    assert where == {f"rec-{i}": ["acked"] for i in range(committed)}
    assert os.listdir(root / "tmp") == []
    entries = Outbox(root).entries()
    assert [e.seq for e in entries] == list(range(committed))
    for e in entries:
        _assert_complete(e.path, e.recording_id, e.seq)


# -- a real full disk ---------------------------------------------------------------------


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB file system (tmpfs), so ENOSPC comes from the kernel, not a mock."""
    with mounted_tmpfs(tmp_path / "mnt", "1m", mode="0700") as mnt:
        yield mnt


def test_disk_full_keeps_the_outbox_consistent_and_recovers(tiny_tmpfs):
    mnt = tiny_tmpfs
    root = mnt / "outbox"
    ob = Outbox(root)
    size = 100 * 1024
    done: list[str] = []
    with pytest.raises(StorageError) as exc:
        for seq in range(50):
            rid = f"rec-{seq}"
            ob.add(seq, rid, _files(rid, seq, size))
            done.append(rid)
    err = exc.value
    assert isinstance(err, OutboxError) and err.errno == errno.ENOSPC
    assert f"outbox {root}: no space left (ENOSPC)" in str(err)
    assert "free space" in str(err)
    assert 5 <= len(done) < 10
    assert os.listdir(root / "tmp") == []  # the failed add took nothing with it
    entries = ob.entries()
    assert [e.recording_id for e in entries] == done
    for seq, e in enumerate(entries):
        _assert_complete(e.path, e.recording_id, seq, size)

    # Staged before the disk fills up, committed after: the commit itself hits ENOSPC.
    late = ob.stage(99, "late")
    ob.write_file(late, "recording.age", b"L" * 5000)
    # Fill the last pages too: acking and deleting must still work on a full disk.
    fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with pytest.raises(OSError) as fill:
            for _ in range(1000):  # 1 MiB is 256 pages: bounded well above that
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)
    assert fill.value.errno == errno.ENOSPC
    with pytest.raises(OutboxError, match=r"ENOSPC\) while committing .*late") as exc:
        ob.commit(late)
    assert exc.value.errno == errno.ENOSPC
    # Nothing half-moved: still staged, not listed, retried below once space is free.
    assert os.listdir(root / "tmp") == [late.name] and ob.find("late") is None
    for rid in done[:3]:
        assert ob.mark_acked(rid, acked_at=1.0).acked_at == 1.0
    with pytest.raises(OutboxStateError):
        ob.delete(done[3])
    deleted = apply_retention(ob, now=2.0, keep_acked_s=0.0, min_free_bytes=0)
    assert deleted == done[:3]

    assert ob.commit(late).state is OutboxState.SEALED
    again = ob.add(100, "after", _files("after", 100, size))
    _assert_complete(again.path, "after", 100, size)
    assert [e.recording_id for e in ob.entries()] == [*done[3:], "late", "after"]


def test_hand_over_recover_staged_and_the_highest_manifest(tmp_path):
    ob = Outbox(tmp_path / "outbox")
    assert ob.highest_manifest() is None
    work = tmp_path / "journal" / "r1"
    first = {"seq": 1, "recording_id": "r1"}

    def sealed_dir() -> None:
        work.mkdir(parents=True)
        (work / "manifest.json").write_text(json.dumps(first))
        (work / "recording.age").write_bytes(b"sealed")

    sealed_dir()
    entry = ob.hand_over(work, 1, "r1")
    assert entry is not None and entry.state is OutboxState.SEALED and not work.exists()
    assert (entry.path / "recording.age").read_bytes() == b"sealed"
    assert ob.highest_manifest() == ManifestHead(1, manifest_hash(first))
    # Handed over again (a crash after the first time): the copy goes, the entry stays.
    sealed_dir()
    assert ob.hand_over(work, 1, "r1") is None and not work.exists()
    assert [e.recording_id for e in ob.entries()] == ["r1"]
    # A crash left one staged entry complete (its manifest written) and one not.
    second = {"seq": 2, "recording_id": "r2"}
    ob.write_file(ob.stage(2, "r2"), "manifest.json", json.dumps(second).encode())
    ob.write_file(ob.stage(3, "r3"), "recording.age", b"half")
    assert [e.recording_id for e in ob.recover_staged()] == ["r2"]
    assert os.listdir(tmp_path / "outbox" / "tmp") == []
    assert ob.highest_manifest() == ManifestHead(2, manifest_hash(second))
    # Retention deleted the newest: its seq is still known, its manifest is not.
    ob.mark_acked("r2")
    assert ob.delete("r2")
    assert ob.highest_manifest() == ManifestHead(2, None)
