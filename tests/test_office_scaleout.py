"""Stateless scale-out, the whole chain (``make test-slow``): two ``linetap-office serve``
processes with their own directories (as on two machines: no shared disk), one
PostgreSQL, one SeaweedFS and mosquitto (TLS, ACL, ``$share``); four real ``linetap
upload`` devices with 200 recordings; a worker and then the object store SIGKILLed
mid-upload and restarted. In the end every recording is stored exactly once and the
audit is clean. The same parts in process, fast: tests/test_office_shared_workers.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from buffers.outbox import Outbox, OutboxState
from headoffice import brokerconf, enroll
from headoffice.config import load_office_config
from headoffice.index import open_index
from headoffice.ledger.audit import audit
from headoffice.ledger.checkpoint import keygen, load_verifier
from headoffice.ledger.leaves import IngestLeaf, parse_leaf
from headoffice.ledger.store import Ledger
from headoffice.ledger.worm import open_worm
from headoffice.officeroot import CaLayout
from headoffice.stores import open_store
from sealedrec.manifest import GENESIS_HASH, manifest_hash
from tests.conftest import VENV_BIN
from tests.helpers import signed_manifest
from tests.mqtt_broker import office_broker_conf, run_mosquitto
from tests.office_harness import DeviceKeys, enroll_hostile
from tests.seaweed import ACCESS_KEY, SECRET_KEY, Seaweed, run_seaweed
from tests.test_office_index import pg_dsn, reset_pg  # noqa: F401 - fixture
from tests.test_office_shared_workers import BUCKET, versions

# --------------------------------------------------------------------------------------
# Two `linetap-office serve` processes, four `linetap upload` devices, kills (slow)
# --------------------------------------------------------------------------------------
DEVICES = 4
PER_DEVICE = 50
OFFICE_PREFIX = "office/"
ORIGIN = "scaleout.test/ledger"
WORKERS = ("office-receiver-1", "office-receiver-2")
WORM_BUCKET = "scaleout-worm"  # [audit] worm_bucket: the checkpoint at the end


class Procs:
    """Subprocesses with their output appended to a log each; all stopped at the end."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.running: dict[str, subprocess.Popen[bytes]] = {}
        logs.mkdir(parents=True, exist_ok=True)

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with self.log(name).open("ab") as fh:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fh, stderr=fh)
        self.running[name] = proc
        return proc

    def kill(self, name: str) -> None:
        proc = self.running.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def alive(self) -> None:
        for name, proc in self.running.items():
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.returncode}\n{self.tails()}")

    def tails(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(self.logs.glob("*.log"))
        )

    def close(self) -> None:
        for proc in reversed(list(self.running.values())):  # uploaders before workers
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.running.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.running.clear()


@dataclass
class Fleet:
    """The office as installed on several machines: an admin's root (CA, enrolments,
    ledger key), copied to each worker's own directory, and the devices."""

    tmp: Path
    admin: Path
    recipient: str
    devices: list[DeviceKeys]
    recordings: dict[str, list[str]]  # device -> its recording ids, in seq order

    def device_data(self, device: str) -> Path:
        return self.tmp / "devices" / device

    def acked(self, device: str) -> int:
        return len(Outbox(self.device_data(device) / "outbox").entries(OutboxState.ACKED))


def _make_fleet(tmp: Path) -> Fleet:
    admin = tmp / "admin" / "office"
    setup = enroll.init_ca(admin, "Scale-out Office")
    for name in WORKERS:
        enroll.issue_office_client(admin, name)
    brokerconf.office_share_group(admin)  # made once: every worker's copy has the same
    keygen(ORIGIN, tmp / "admin" / "ledger.key", admin)
    devices, recordings = [], {}
    for d in range(1, DEVICES + 1):
        name = f"dev-{d}"
        keys = enroll_hostile(admin, tmp / "devices" / name, name)  # as an installer does
        devices.append(keys)
        outbox = Outbox(tmp / "devices" / name / "outbox")
        prev, ids = GENESIS_HASH, []
        for seq in range(1, PER_DEVICE + 1):
            # Mostly one-chunk calls; every 7th spans 4 chunks of 64 KiB (which then reach
            # both workers through the shared subscription).
            blob = os.urandom(200_000 if seq % 7 == 0 else 2_000 + 997 * seq)
            rec = f"{name}-{seq:04d}-{uuid.uuid4().hex[:8]}"
            manifest = signed_manifest(
                keys.signing_key,
                device_id=name,
                rec=rec,
                seq=seq,
                prev=prev,
                blob=blob,
                recipients=[setup.recipient],
            )
            prev = manifest_hash(manifest)
            outbox.add(
                seq, rec, {"manifest.json": json.dumps(manifest).encode(), "recording.age": blob}
            )
            ids.append(rec)
        recordings[name] = ids
    return Fleet(tmp, admin, setup.recipient, devices, recordings)


def _device_toml(fleet: Fleet, keys: DeviceKeys, port: int) -> Path:
    data = fleet.device_data(keys.device_id)
    path = data.parent / f"{keys.device_id}.toml"
    path.write_text(
        f'device_id = "{keys.device_id}"\n'
        '[audio]\nbackend = "file"\nfile = "unused.wav"\nsample_rate = 8000\nchannels = 1\n'
        '[gpio]\nbackend = "sim"\n'
        f'[storage]\nformat = "sealed"\ndata_dir = "{data}"\n'
        f'[sealing]\nrecipients = ["{fleet.recipient}"]\n'
        f'[upload]\nhost = "127.0.0.1"\nport = {port}\ntls = true\n'
        f'ca_file = "{CaLayout(fleet.admin).broker_ca}"\ncert_file = "{keys.cert}"\n'
        f'key_file = "{keys.tls_key}"\nchunk_kib = 64\nack_timeout_s = 5\ntelemetry_s = 2\n'
        "backoff_max_s = 2\n"
        '[[lines]]\nname = "line1"\nchannel = 0\nhook_pin = 17\n'
    )
    return path


def _worker_toml(fleet: Fleet, name: str, port: int, pg: str, weed: Seaweed) -> Path:
    """A worker machine: its own copy of the office root (public keys, CA certificate,
    enrolments; no store), its own config; the database, bucket and broker are shared."""
    home = fleet.tmp / name
    root = home / "office"
    # As INSTALL.md copies it: without the CA's and the office's private keys.
    shutil.copytree(fleet.admin, root, ignore=shutil.ignore_patterns("ca.key", "office.key"))
    path = home / "office.toml"
    path.write_text(
        f'root = "{root}"\nindex = "{pg}"\n'
        f'[broker]\nhost = "127.0.0.1"\nport = {port}\nca_file = "{CaLayout(root).broker_ca}"\n'
        "keepalive_s = 5\n"
        # A device told "busy" while the store is down asks again after 1 s; leftovers of
        # killed workers are looked for every 5 s.
        "[limits]\nbusy_retry_s = 1\nhousekeeping_s = 5\n"
        f'[store]\nbackend = "s3"\nendpoint_url = "{weed.endpoint}"\nbucket = "{BUCKET}"\n'
        f'access_key_id = "{ACCESS_KEY}"\nsecret_access_key = "{SECRET_KEY}"\n'
        f'prefix = "{OFFICE_PREFIX}"\nconnect_timeout_s = 2\nread_timeout_s = 20\n'
        f'[audit]\nworm_bucket = "{WORM_BUCKET}"\nworm_retain_days = 1\n'
    )
    return path


def _count(pg: str, sql: str) -> int:
    with psycopg.connect(pg, autocommit=True) as conn:
        try:
            row = conn.execute(sql).fetchone()
        except psycopg.errors.UndefinedTable:
            return 0  # the first worker has not made the tables yet
    return int(row[0]) if row else 0


def _wait(predicate: Callable[[], bool], timeout: float, what: str, procs: Procs) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        procs.alive()
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:g} s waiting for {what}\n{procs.tails()}"
            )
        time.sleep(0.1)


def _serve(procs: Procs, name: str, toml: Path) -> None:
    marker = procs.log(name).read_text().count("subscribing") if procs.log(name).exists() else 0
    procs.start(name, [str(VENV_BIN / "linetap-office"), "serve", "--config", str(toml),
                       "--client", name])  # fmt: skip
    _wait(
        lambda: procs.log(name).read_text().count("subscribing") > marker,
        30,
        f"{name} to subscribe",
        procs,
    )


@pytest.fixture
def database(pg_dsn: str) -> str:  # noqa: F811 - the imported fixture
    reset_pg(pg_dsn)
    return pg_dsn


@pytest.mark.slow
def test_two_workers_store_200_recordings_once_through_kills(tmp_path: Path, database: str):
    pg = database
    """Two workers with their own directories (no shared disk), one PostgreSQL, one
    SeaweedFS, mosquitto's ``$share``; four devices upload 200 recordings; a worker is
    SIGKILLed and restarted, then SeaweedFS. Every recording is stored exactly once (one
    index row, one ingest leaf, one version of its blob and of its manifest), every
    device has every ack, nothing is left parked, and the audit is clean."""
    fleet = _make_fleet(tmp_path)
    procs = Procs(tmp_path / "logs")
    # Its own SeaweedFS (not the module's): this test kills and restarts it.
    with (
        run_seaweed(tmp_path / "seaweed") as weed,
        run_mosquitto(tmp_path, office_broker_conf(fleet.admin, tmp_path / "broker")) as broker,
    ):
        weed.make_bucket(BUCKET, lock=True)
        weed.make_bucket(WORM_BUCKET, lock=True)
        tomls = {name: _worker_toml(fleet, name, broker.port, pg, weed) for name in WORKERS}
        try:
            _upload_through_kills(fleet, procs, tomls=tomls, port=broker.port, pg=pg, weed=weed)
        finally:
            procs.close()
        logs = {name: procs.log(name).read_text() for name in WORKERS}
        assert all(text.count("stored recording ") > 0 for text in logs.values()), logs
        _check_stored_once(fleet, pg, weed, tomls[WORKERS[1]])


def _upload_through_kills(
    fleet: Fleet, procs: Procs, *, tomls: dict[str, Path], port: int, pg: str, weed: Seaweed
) -> None:
    total = DEVICES * PER_DEVICE
    stored = "SELECT count(*) FROM recordings"
    for name in WORKERS:
        _serve(procs, name, tomls[name])
    time.sleep(0.3)  # SUBSCRIBE -> SUBACK
    for keys in fleet.devices:
        toml = _device_toml(fleet, keys, port)
        procs.start(f"upload-{keys.device_id}",
                    [str(VENV_BIN / "linetap"), "upload", "--config", str(toml)])  # fmt: skip
    # 1. A worker dies mid-upload and comes back.
    _wait(lambda: _count(pg, stored) >= 40, 120, "40 recordings stored", procs)
    procs.kill(WORKERS[0])
    at_worker_kill = _count(pg, stored)
    time.sleep(0.5)
    _serve(procs, WORKERS[0], tomls[WORKERS[0]])
    # 2. The object store dies mid-upload and comes back.
    _wait(lambda: _count(pg, stored) >= 110, 120, "110 recordings stored", procs)
    weed.stop(kill=True)
    at_store_kill = _count(pg, stored)
    time.sleep(2)
    weed.start()
    _wait(
        lambda: all(fleet.acked(k.device_id) == PER_DEVICE for k in fleet.devices),
        300,
        "every recording acked on its device",
        procs,
    )
    assert at_worker_kill < total and at_store_kill < total, "the faults hit too late"
    # Leftovers of the kills (parked for recordings stored meanwhile) go at the next
    # housekeeping (every 5 s here).
    _wait(lambda: versions(weed, f"{OFFICE_PREFIX}parking/") == [], 30, "nothing parked", procs)
    checkpoint = subprocess.run(
        [str(VENV_BIN / "linetap-office"), "audit", "checkpoint", "--config",
         str(tomls[WORKERS[1]]), "--key", str(fleet.tmp / "admin" / "ledger.key")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert checkpoint.returncode == 0, checkpoint.stderr


def _check_stored_once(fleet: Fleet, pg: str, weed: Seaweed, toml: Path) -> None:
    total = DEVICES * PER_DEVICE
    cfg = load_office_config(toml)
    with open_index(pg) as index:
        rows = index.search(limit=10 * total)
        ids = [r.recording_id for r in rows]
        assert len(ids) == total and set(ids) == {r for v in fleet.recordings.values() for r in v}
        for device, recs in fleet.recordings.items():
            assert sorted(r.seq for r in rows if r.device_id == device) == list(
                range(1, PER_DEVICE + 1)
            )
            outbox = Outbox(fleet.device_data(device) / "outbox")
            assert len(outbox.entries(OutboxState.ACKED)) == PER_DEVICE
            assert outbox.entries(OutboxState.SEALED) == []
            assert [e.recording_id for e in outbox.entries(OutboxState.ACKED)] == recs
        assert index.gaps() == []
        assert {a.kind for a in index.alarms()} <= {"store"}  # the store's outage: busy
        assert index.uploads() == []
        ingests = [parse_leaf(row.body) for row in Ledger(index).rows()]
        assert sorted(leaf.recording_id for leaf in ingests if isinstance(leaf, IngestLeaf)) == (
            sorted(ids)
        )
        assert len(ingests) == total
        # Object versions: exactly one of each blob and each manifest, nothing else.
        blobs = versions(weed, f"{OFFICE_PREFIX}blobs/")
        keys = [key for key, _ in blobs]
        assert len(keys) == len(set(keys)) == 2 * total
        assert set(keys) == {OFFICE_PREFIX + r.path for r in rows} | {
            OFFICE_PREFIX + r.path.removesuffix(".age") + ".manifest.json" for r in rows
        }
        assert versions(weed, f"{OFFICE_PREFIX}locks/") == []  # the advisory lock did it
        store = open_store(cfg, cfg.root, index=index)
        worm = open_worm(cfg)
        assert worm is not None
        external = worm.kept()
        report = audit(index, store, origin=ORIGIN, vkey=load_verifier(cfg.root), external=external)
    assert report.ok, [str(p) for p in report.problems[:10]]
    assert (report.leaves, report.recordings, report.blobs) == (total, total, total)
    assert len(external) == 1 and report.checkpoints == 2  # the table's and the bucket's
