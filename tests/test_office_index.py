"""The head-office index, for real on both backends: SQLite (a temp file) and PostgreSQL
(a database made for this run and dropped after it)."""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NoReturn

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from headoffice.index import (
    Gap,
    Index,
    IndexConflictError,
    IndexStoreError,
    open_index,
    redact_dsn,
)
from headoffice.store import FileBlobStore
from sealedrec.manifest import GENESIS_HASH, ManifestError, manifest_hash, sign_manifest

SOCKET_DIRS = ("/var/run/postgresql", "/run/postgresql", "/tmp")


def reset_pg(dsn: str) -> None:
    """Empty the test database: every table and function, whoever added it (the public
    schema is dropped and made again)."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
        # as a new database has it (PostgreSQL 15+): owned by the database owner, usable by all
        conn.execute("ALTER SCHEMA public OWNER TO pg_database_owner")
        conn.execute("GRANT USAGE ON SCHEMA public TO PUBLIC")


def _admin_dsns() -> list[str]:
    dsns = [
        f"postgresql:///postgres?host={d}" for d in SOCKET_DIRS if Path(d, ".s.PGSQL.5432").exists()
    ]
    return [*dsns, "postgresql://127.0.0.1:5432/postgres"]


def postgres_required(env: Mapping[str, str]) -> bool:
    """On CI (CI=true) or with LINETAP_REQUIRE_PG=1 a PostgreSQL server is part of the
    test machine: skipping its tests there would pass a run that never tried them."""
    return env.get("LINETAP_REQUIRE_PG") == "1" or env.get("CI", "").lower() == "true"


def no_postgres(reasons: list[str], env: Mapping[str, str] = os.environ) -> NoReturn:
    """Skip the PostgreSQL tests where no server is expected; fail them where one is."""
    where = "; ".join(reasons)
    if postgres_required(env):
        pytest.fail(
            f"PostgreSQL not reachable ({where}) but required here (CI=true or "
            "LINETAP_REQUIRE_PG=1): start it on /var/run/postgresql or 127.0.0.1:5432",
            pytrace=False,
        )
    pytest.skip(f"PostgreSQL not reachable: {where}")


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """A fresh database for this test run, dropped at the end."""
    import psycopg

    reasons = []
    for admin in _admin_dsns():
        try:
            conn = psycopg.connect(admin, autocommit=True, connect_timeout=3)
        except psycopg.OperationalError as exc:
            reasons.append(f"{admin}: {str(exc).strip().splitlines()[0]}")
            continue
        break
    else:
        no_postgres(reasons)
    name = f"linetap_test_{secrets.token_hex(6)}"
    with conn:
        conn.execute(f"CREATE DATABASE {name}")
        try:
            yield admin.replace("/postgres", f"/{name}", 1)
        finally:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgresql"])
def index_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/index.sqlite3"
    dsn: str = request.getfixturevalue("pg_dsn")
    reset_pg(dsn)
    return dsn


@pytest.fixture
def index(index_url: str) -> Iterator[Index]:
    idx = open_index(index_url)
    try:
        yield idx
    finally:
        idx.close()


class Device:
    """Signs a chain of manifests like a device does."""

    def __init__(self, device_id: str = "dev-a") -> None:
        self.device_id = device_id
        self.key = Ed25519PrivateKey.generate()
        self.prev = GENESIS_HASH
        self.seq = 0

    def manifest(self, seq: int | None = None, **fields: Any) -> dict[str, Any]:
        self.seq = self.seq + 1 if seq is None else seq
        body: dict[str, Any] = {
            "version": 1,
            "recording_id": f"{self.device_id}-rec-{self.seq}-{secrets.token_hex(3)}",
            "device_id": self.device_id,
            "device_key_id": "k",
            "line": "line1",
            "channel": 0,
            "seq": self.seq,
            "prev_manifest_sha256": self.prev,
            "started_utc": f"2026-11-25T10:{self.seq:02d}:00.000+00:00",
            "ended_utc": f"2026-11-25T10:{self.seq:02d}:30.000+00:00",
            "duration_ms": 30_000,
            "trigger": "offhook",
            "end_reason": "onhook",
            "direction": "inbound",
            "caller_id": {"number": "0201234567", "name": "ACME Ltd", "source": "fsk"},
            "dialled_digits": "",
            "masked_spans": [],
            "consent_events": [],
            "events": [],
            "codec": "flac",
            "container": "age",
            "sample_rate": 8000,
            "audio_frames": 240_000,
            "audio_pcm_sha256": "a" * 64,
            "blob_sha256": secrets.token_hex(32),
            "blob_bytes": 1234,
            "recovered": False,
            "discarded": False,
        }
        body.update(fields)
        signed = sign_manifest(body, self.key)
        self.prev = manifest_hash(signed)
        return signed


def test_add_get_and_idempotent(index: Index):
    dev = Device()
    m = dev.manifest()
    result = index.add(m, "blobs/dev-a/x.age", "2026-11-25T11:00:00Z")
    assert result.created and result.alarms == ()
    rec = result.record
    assert rec.recording_id == m["recording_id"] and rec.seq == 1 and rec.manifest == m
    assert rec.caller_number == "0201234567" and rec.caller_name == "ACME Ltd"
    assert rec.recovered is False and rec.discarded is False and rec.blob_bytes == 1234
    assert rec.stored_at == "2026-11-25T11:00:00.000+00:00"
    again = index.add(m, "elsewhere", None)
    assert not again.created and again.record == rec
    assert index.get(m["recording_id"]) == rec
    assert index.get("nope") is None
    assert len(index.search()) == 1 and index.alarms() == []
    [state] = index.devices()
    assert (state.device_id, state.last_seq, state.recordings) == ("dev-a", 1, 1)
    assert state.last_manifest_sha256 == manifest_hash(m)
    assert [r.recording_id for r in index.find(m["recording_id"][:12])] == [m["recording_id"]]


def test_the_index_survives_reopening(index_url: str):
    dev = Device()
    with open_index(index_url) as idx:
        idx.add(dev.manifest(), "p1")
    with open_index(index_url) as idx:
        idx.add(dev.manifest(), "p2")
        assert [r.seq for r in idx.search()] == [1, 2] and idx.alarms() == []


def test_same_id_with_another_manifest_is_a_conflict(index: Index):
    dev = Device()
    m = dev.manifest()
    index.add(m, "p")
    forged = sign_manifest(
        {k: v for k, v in m.items() if k != "signature"} | {"duration_ms": 1}, dev.key
    )
    with pytest.raises(IndexConflictError, match="different manifest"):
        index.add(forged, "p")
    assert [a.kind for a in index.alarms()] == ["conflict"]
    record = index.get(m["recording_id"])
    assert record is not None and record.duration_ms == 30_000


def test_gap_alarm_and_gap_closed(index: Index):
    dev = Device()
    ms = [dev.manifest() for _ in range(7)]
    for m in (ms[0], ms[1], ms[2], ms[3], ms[6]):  # seq 5 and 6 not (yet) here
        index.add(m, "p")
    [gap] = index.alarms("dev-a")
    assert gap.kind == "gap" and gap.seq == 7
    assert "seq 5-6 missing before seq 7" in gap.message
    assert index.gaps() == [Gap("dev-a", 5, 6)]
    assert index.devices()[0].last_seq == 7
    index.add(ms[4], "p")
    assert index.gaps("dev-a") == [("dev-a", 6, 6)]
    result = index.add(ms[5], "p")
    assert [a.kind for a in result.alarms] == ["gap_closed"]
    assert index.gaps() == []
    assert [a.kind for a in index.alarms()] == ["gap", "gap_closed", "gap_closed"]
    assert index.devices()[0].last_seq == 7  # never goes back


def test_a_gap_of_exactly_one_seq_and_of_none(index: Index):
    dev = Device()
    ms = [dev.manifest() for _ in range(5)]
    for m in ms[:3]:  # seq 1, 2, 3: in order, no gap
        assert index.add(m, "p").alarms == ()
    assert index.alarms() == [] and index.gaps() == []
    result = index.add(ms[4], "p")  # seq 5: only seq 4 missing
    [gap] = result.alarms
    assert (gap.kind, gap.seq) == ("gap", 5)
    assert gap.message == "device dev-a: seq 4 missing before seq 5"
    assert index.gaps() == [Gap("dev-a", 4, 4)]
    assert [a.kind for a in index.add(ms[3], "p").alarms] == ["gap_closed"]
    assert index.gaps() == []
    assert [a.kind for a in index.alarms()] == ["gap", "gap_closed"]


def test_first_recording_seen_with_a_later_seq_is_a_gap(index: Index):
    dev = Device()
    for _ in range(4):
        dev.manifest()
    index.add(dev.manifest(), "p")
    [alarm] = index.alarms()
    assert alarm.kind == "gap" and "seq 1-4 missing before seq 5" in alarm.message
    assert index.gaps() == [("dev-a", 1, 4)]


def test_replay_of_a_seq_with_another_recording_id(index: Index):
    dev = Device()
    first = dev.manifest()
    index.add(first, "p")
    index.add(dev.manifest(), "p")
    replay = dev.manifest(seq=1)
    result = index.add(replay, "p")
    assert result.created  # kept: nothing is thrown away, but flagged
    [alarm] = result.alarms
    assert alarm.kind == "replay" and alarm.seq == 1
    assert first["recording_id"] in alarm.message and replay["recording_id"] in alarm.message
    assert [a.kind for a in index.alarms("dev-a")] == ["replay"]
    assert index.devices()[0].last_seq == 2


def test_broken_hash_chain_is_an_alarm(index: Index):
    dev = Device()
    index.add(dev.manifest(), "p")
    dev.prev = "f" * 64  # the device (or someone) lost the real predecessor
    result = index.add(dev.manifest(), "p")
    assert [a.kind for a in result.alarms] == ["chain"]
    assert "seq 2: prev_manifest_sha256 does not match" in result.alarms[0].message


def test_devices_are_independent(index: Index):
    a, b = Device("dev-a"), Device("dev-b")
    index.add(a.manifest(), "p")
    index.add(b.manifest(), "p")
    index.add(a.manifest(), "p")
    assert index.alarms() == []
    assert [(d.device_id, d.last_seq, d.recordings) for d in index.devices()] == [
        ("dev-a", 2, 2),
        ("dev-b", 1, 1),
    ]
    assert [r.device_id for r in index.search(device="dev-b")] == ["dev-b"]


def test_search_filters(index: Index):
    dev = Device()
    other = Device("dev-b")
    m1 = dev.manifest(
        caller_id={"number": "+41 44 555 01 01", "name": "Müller AG", "source": "fsk"},
        dialled_digits="0800123",
        duration_ms=5_000,
    )
    m2 = dev.manifest(caller_id=None, line="line2", duration_ms=90_000, recovered=True)
    m3 = dev.manifest(
        caller_id={"number": "0201234567", "name": "50%_off", "source": "fsk"},
        dialled_digits="**55",
        started_utc="2026-11-26T08:00:00.000+00:00",
    )
    m4 = other.manifest(started_utc="2026-11-25T09:59:59.999+00:00")
    for m in (m1, m2, m3, m4):
        index.add(m, "p")

    def ids(**kw: Any) -> list[str]:
        return [r.recording_id for r in index.search(**kw)]

    assert ids() == [m4["recording_id"], m1["recording_id"], m2["recording_id"], m3["recording_id"]]
    assert ids(device="dev-a", line="line2") == [m2["recording_id"]]
    assert ids(caller="müller") == [m1["recording_id"]]
    assert ids(caller="555 01") == [m1["recording_id"]]
    assert ids(caller="%_") == [m3["recording_id"]]  # wildcards are literal
    assert ids(caller="nobody") == []
    assert ids(digits="0800") == [m1["recording_id"]]
    assert ids(digits="**") == [m3["recording_id"]]
    assert ids(min_duration_ms=60_000) == [m2["recording_id"]]
    assert ids(max_duration_ms=5_000) == [m1["recording_id"]]
    assert ids(recovered=True) == [m2["recording_id"]]
    assert len(ids(recovered=False)) == 3
    assert ids(since="2026-11-26") == [m3["recording_id"]]
    # since inclusive, until exclusive; any ISO spelling and offset.
    assert ids(since="2026-11-25T10:01:00Z", until="2026-11-25T11:02:00+01:00") == [
        m1["recording_id"]
    ]
    assert ids(until="2026-11-25T10:00:00Z") == [m4["recording_id"]]
    assert len(ids(limit=2)) == 2
    with pytest.raises(ManifestError, match="since"):
        index.search(since="yesterday")


def test_malformed_manifest_is_refused(index: Index):
    dev = Device()
    with pytest.raises(ManifestError, match="seq"):
        index.add(dev.manifest(seq=0), "p")
    with pytest.raises(ManifestError, match="started_utc"):
        index.add(dev.manifest(started_utc="noon"), "p")
    assert index.search() == [] and index.alarms() == []


def test_uploads_in_progress(index: Index):
    dev = Device()
    m = dev.manifest()
    init = {"recording_id": m["recording_id"], "manifest": m, "chunk_count": 4}
    index.note_upload("dev-a", m["recording_id"], init, 4)
    index.note_received("dev-a", m["recording_id"], 3)
    index.note_received("dev-a", m["recording_id"], 2)  # a slower worker: never lowers
    [up] = index.uploads()
    assert (up.recording_id, up.chunk_count, up.received) == (m["recording_id"], 4, 3)
    assert up.init == init
    index.add(m, "p")  # finishing the recording ends the upload
    assert index.uploads() == []
    index.note_upload("dev-b", "r2", {}, 1)
    index.drop_upload("dev-b", "r2")
    assert index.uploads("dev-b") == []


def test_receiver_alarm(index: Index):
    alarm = index.raise_alarm("dev-a", "signature", "bad signature", seq=3, recording_id="r")
    assert index.alarms(kind="signature") == [alarm] and alarm.id >= 1
    assert index.alarms(device="dev-b") == []


class Finisher:
    """What a worker does once it holds every chunk: check, assemble, commit, index."""

    def __init__(self, index_url: str, store: FileBlobStore, manifest: dict[str, Any], n: int):
        self.index_url, self.store, self.m, self.n = index_url, store, manifest, n
        self.barrier = threading.Barrier(2, timeout=30)  # a failed opener frees the other
        self.mutex = threading.Lock()
        self.inside = 0
        self.overlap: list[bool] = []
        self.did_work: list[bool] = []
        self.errors: list[BaseException] = []

    def run(self) -> None:
        try:
            with open_index(self.index_url) as idx:  # its own connection(s)
                self.barrier.wait()
                self._finish(idx)
        except BaseException as exc:
            self.errors.append(exc)
            raise

    def _finish(self, idx: Index) -> None:
        m, rec = self.m, self.m["recording_id"]
        with idx.finish_lock("dev-a", rec, timeout=10), self.store.lock("dev-a", rec):
            with self.mutex:
                self.inside += 1
                self.overlap.append(self.inside > 1)
            time.sleep(0.05)  # widen the window a race would need
            worked = idx.get(rec) is None
            if worked:
                blob = self.store.assemble("dev-a", rec, self.n, m["blob_bytes"], m["blob_sha256"])
                path = self.store.commit("dev-a", rec, m["started_utc"], "age", blob, m)
                idx.add(m, path)
                self.store.drop_parking("dev-a", rec)
            with self.mutex:
                self.inside -= 1
            self.did_work.append(worked)


def test_two_workers_finish_the_same_recording_once(index_url: str, tmp_path: Path):
    """Both have every chunk and try to finish at once; exactly one does the work, the
    other finds it done: one row, one blob, no leftovers."""
    store = FileBlobStore(tmp_path / "store")
    data = secrets.token_bytes(5000)
    m = Device().manifest(blob_sha256=hashlib.sha256(data).hexdigest(), blob_bytes=len(data))
    rec = m["recording_id"]
    for i in range(5):
        store.park_chunk("dev-a", rec, i, data[i * 1000 : (i + 1) * 1000])
    finisher = Finisher(index_url, store, m, 5)
    threads = [threading.Thread(target=finisher.run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert finisher.errors == []
    assert finisher.overlap == [False, False]
    assert sorted(finisher.did_work) == [False, True]
    with open_index(index_url) as idx:
        assert [r.recording_id for r in idx.search()] == [rec]
    files = sorted(p.relative_to(store.root) for p in store.root.rglob("*") if p.is_file())
    day = Path("blobs", "dev-a", "2026", "11", "25")
    # The finishing lock's one file for every recording stays; nothing else is left.
    assert files == [
        day / f"{rec}.age",
        day / f"{rec}.manifest.json",
        Path("locks/recordings.lock"),
    ]
    assert (store.root / day / f"{rec}.age").read_bytes() == data


def test_finish_lock_excludes_and_times_out(index_url: str):
    a, b = open_index(index_url), open_index(index_url)
    try:
        with a.finish_lock("dev-a", "rec-1"):
            if index_url.startswith("sqlite:"):
                # SQLite: one machine; the blob store's file lock does the excluding.
                with b.finish_lock("dev-a", "rec-1", timeout=0.1):
                    pass
            else:
                start = time.monotonic()
                with (
                    pytest.raises(IndexStoreError, match="finish lock still held"),
                    b.finish_lock("dev-a", "rec-1", timeout=0.2),
                ):
                    pass
                assert 0.15 < time.monotonic() - start < 2
                with b.finish_lock("dev-a", "rec-2", timeout=0.2):
                    pass  # another recording: free
        with b.finish_lock("dev-a", "rec-1", timeout=0.5):
            pass  # released
    finally:
        a.close()
        b.close()


def test_bad_urls_and_unreachable_server_name_the_dsn_without_password(tmp_path: Path):
    with pytest.raises(IndexStoreError, match="use sqlite"):
        open_index("mysql://x")
    with pytest.raises(IndexStoreError, match="does not exist"):
        open_index(f"sqlite:///{tmp_path}/no/such/dir/index.sqlite3")
    dsn = "postgresql://office:s3cret-pw@127.0.0.1:1/linetap"
    with pytest.raises(IndexStoreError) as err:
        open_index(dsn)
    assert "s3cret-pw" not in str(err.value)
    assert "postgresql://office:***@127.0.0.1:1/linetap" in str(err.value)
    assert "cannot connect" in str(err.value)
    assert redact_dsn("host=db password='a b' user=x") == "host=db password=*** user=x"
    assert redact_dsn("postgresql://h/db?password=pw&sslmode=require") == (
        "postgresql://h/db?password=***&sslmode=require"
    )


def test_sqlite_url_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    with open_index("sqlite:rel.sqlite3") as idx:
        idx.add(Device().manifest(), "p")
    assert (tmp_path / "rel.sqlite3").exists()
    with open_index(f"sqlite:////{tmp_path}/abs.sqlite3"):
        pass
    assert (tmp_path / "abs.sqlite3").exists()


@pytest.mark.parametrize(
    ("env", "required"),
    [
        ({}, False),
        ({"CI": "false", "LINETAP_REQUIRE_PG": "0"}, False),
        ({"CI": "true"}, True),
        ({"CI": "TRUE"}, True),
        ({"LINETAP_REQUIRE_PG": "1"}, True),
    ],
)
def test_an_unreachable_postgres_fails_where_it_is_required_and_skips_elsewhere(
    env: dict[str, str], required: bool
):
    reasons = ["postgresql://127.0.0.1:5432/postgres: connection refused"]
    # Catch both: a skip escaping this test would pass for a skip of the test itself.
    with pytest.raises((pytest.fail.Exception, pytest.skip.Exception)) as raised:
        no_postgres(reasons, env)
    assert raised.type is (pytest.fail.Exception if required else pytest.skip.Exception)
    assert "PostgreSQL not reachable" in str(raised.value)
    assert "127.0.0.1:5432/postgres: connection refused" in str(raised.value)


def test_postgres_reconnects_after_the_server_dropped_it(pg_dsn: str):
    import psycopg

    from headoffice.index import PostgresIndex

    def kill(idx: PostgresIndex) -> None:
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (idx._conn.info.backend_pid,))

    with PostgresIndex(pg_dsn) as busy:
        kill(busy)
        with pytest.raises(IndexStoreError, match="index postgresql"):
            busy.get("x")  # the call in progress fails (no ack: the device resends)
        assert busy.get("x") is None  # the next one reconnects
    with PostgresIndex(pg_dsn, ping_after_s=0) as idle:
        kill(idle)
        assert idle.get("x") is None  # checked before use: reconnects quietly


def test_workers_opening_a_new_sqlite_index_together_all_get_in(tmp_path: Path):
    """Switching a new file to WAL needs it to itself, and SQLite reports "locked" at once
    rather than waiting: workers started together must still all open it. (Without the
    retry, about 1 round in 13 failed here: 40 rounds make a miss unlikely.)"""
    openers, rounds = 4, 40
    errors: list[BaseException] = []

    def open_together(url: str, barrier: threading.Barrier) -> None:
        try:
            barrier.wait()
            with open_index(url) as idx:
                idx.search()
        except (IndexStoreError, threading.BrokenBarrierError) as exc:
            errors.append(exc)

    for n in range(rounds):
        url = f"sqlite:///{tmp_path / f'index-{n}.sqlite3'}"
        barrier = threading.Barrier(openers, timeout=30)
        threads = [
            threading.Thread(target=open_together, args=(url, barrier)) for _ in range(openers)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert errors == []
