"""What bench/office_scaleout.py needs around the upload chain of upload_common: a
PostgreSQL database and a SeaweedFS per run, workers that count their own round trips,
and fsyncs counted by strace.

- **Round trips**, counted inside each ``linetap-office serve`` by a wrapper
  (:data:`COUNTING_WRAPPER`) that runs the real CLI: every S3 HTTP request by operation
  (botocore's ``before-send`` event, so retries count), every PostgreSQL round trip
  (``psycopg.Connection.wait``, through which each statement, BEGIN and COMMIT go) and
  every new PostgreSQL connection. Written as JSON when the worker exits.
- **fsyncs**: ``strace -f --seccomp-bpf -c -e trace=fsync,fdatasync,sync_file_range``
  around a worker or ``weed server`` (seccomp-bpf stops the process only at those calls,
  so the rest runs at full speed); the summary is read when it exits. PostgreSQL's own:
  ``pg_stat_wal.wal_sync`` (WAL flushes of the whole cluster: anything else using this
  server during a run counts too).
- **CPU**: ``/proc/PID/stat`` of the worker (the Python process, not strace), of
  ``weed server`` and of the database's backends.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psycopg
from upload_common import BenchError, Proc, Processes, log_has, proc_cpu_s, wait_until

from tests.seaweed import Seaweed, run_seaweed

ADMIN_DSNS = (
    os.environ.get("LINETAP_BENCH_PG", ""),
    "postgresql:///postgres?host=/var/run/postgresql",
    "postgresql://127.0.0.1:5432/postgres",
)
FSYNC_CALLS = ("fsync", "fdatasync", "sync_file_range")
START_TIMEOUT_S = 20.0

COUNTING_WRAPPER = """\
import atexit, collections, json, os, runpy, sys
import psycopg
import headoffice.s3support as s3support

out = sys.argv[1]
counts = collections.Counter()
_wait = psycopg.Connection.wait
def wait(self, *args, **kwargs):
    counts["pg round trips"] += 1
    return _wait(self, *args, **kwargs)
psycopg.Connection.wait = wait
_connect = psycopg.Connection.connect
def connect(cls, *args, **kwargs):
    counts["pg connections"] += 1
    return _connect(*args, **kwargs)
psycopg.Connection.connect = classmethod(connect)
_make_client = s3support.make_client  # before headoffice.stores imports it by name
def make_client(settings):
    client = _make_client(settings)
    def sent(event_name, **kwargs):
        counts["s3 " + event_name.rsplit(".", 1)[-1]] += 1
    client.meta.events.register("before-send.s3", sent)
    return client
s3support.make_client = make_client
with open(out + ".pid", "w") as fh:
    fh.write(str(os.getpid()))
def dump():
    with open(out + ".json", "w") as fh:
        json.dump(counts, fh)
atexit.register(dump)
sys.argv = ["linetap-office", *sys.argv[2:]]
runpy.run_module("headoffice.cli", run_name="__main__", alter_sys=True)
"""


def strace_argv(out: Path) -> list[str]:
    calls = ",".join(FSYNC_CALLS)
    return ["strace", "-f", "--seccomp-bpf", "-c", "-e", f"trace={calls}", "-o", str(out)]


def fsyncs_of(summary: Path) -> int:
    """fsync-family calls in an ``strace -c`` summary (0 when there were none)."""
    total = 0
    for line in summary.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[-1] in FSYNC_CALLS:
            total += int(fields[3])
    return total


def child_pid(pid: int) -> int:
    """The one child of ``pid`` (the program strace runs)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        if children:
            return int(children[0])
    raise BenchError(f"process {pid} has no child")


# --------------------------------------------------------------------------- PostgreSQL


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """A new database for one run (dropped after): its DSN."""
    reasons = []
    for admin in filter(None, ADMIN_DSNS):
        try:
            conn = psycopg.connect(admin, autocommit=True, connect_timeout=3)
        except psycopg.OperationalError as exc:
            reasons.append(f"{admin}: {str(exc).strip().splitlines()[0]}")
            continue
        break
    else:
        raise BenchError(f"PostgreSQL not reachable (set LINETAP_BENCH_PG): {reasons}")
    name = f"linetap_bench_{secrets.token_hex(6)}"
    with conn:
        conn.execute(f"CREATE DATABASE {name}")
        try:
            yield admin.replace("/postgres", f"/{name}", 1)
        finally:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def pg_scalar(dsn: str, sql: str, params: tuple[object, ...] = ()) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            row = conn.execute(sql, params).fetchone()
        except psycopg.errors.UndefinedTable:
            return 0  # the workers have not made the tables yet
    return int(row[0]) if row and row[0] is not None else 0


def wal_counters(dsn: str) -> tuple[int, int]:
    """(WAL syncs, WAL bytes) of the whole cluster so far (pg_stat_wal)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT wal_sync, wal_bytes FROM pg_stat_wal").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def database_bytes(dsn: str) -> int:
    return pg_scalar(dsn, "SELECT pg_database_size(current_database())")


def backends_cpu_s(dsn: str) -> float:
    """CPU seconds of this database's backends so far (the workers' sessions)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        me = conn.info.backend_pid
        pids = [
            int(r[0])
            for r in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            ).fetchall()
            if int(r[0]) != me
        ]
    return sum(proc_cpu_s(pid) for pid in pids)


# --------------------------------------------------------------------------- SeaweedFS


@dataclass
class Store:
    """A SeaweedFS for one run, under strace when fsyncs are counted."""

    weed: Seaweed
    strace_out: Path | None

    @property
    def pid(self) -> int:
        return child_pid(self.weed.proc.pid) if self.strace_out else self.weed.proc.pid

    def stop_for_counts(self) -> int | None:
        """Kill weed (the run is over; its SIGTERM takes 15 s) and read strace's count."""
        if self.strace_out is None:
            return None
        os.kill(self.pid, signal.SIGKILL)
        self.weed.proc.wait(timeout=30)
        return fsyncs_of(self.strace_out)


@contextlib.contextmanager
def seaweed_store(
    workdir: Path, bucket: str, *, count_fsyncs: bool, fsync_objects: bool = True
) -> Iterator[Store]:
    """A SeaweedFS with ``bucket`` (Object Lock). ``fsync_objects``: every object written
    to the bucket is fsynced (``fs.configure -fsync``), as an office must configure it
    (SeaweedFS does not by default, so an acknowledged upload could be lost in a power
    cut of the storage host; headoffice/INSTALL.md)."""
    out = workdir / "weed.strace" if count_fsyncs else None
    with run_seaweed(workdir, wrapper=strace_argv(out) if out else ()) as weed:
        weed.make_bucket(bucket, lock=True)
        if fsync_objects:
            said = weed.shell(f"fs.configure -locationPrefix=/buckets/{bucket}/ -fsync -apply")
            if '"fsync":  true' not in said:
                raise BenchError(f"weed shell did not turn fsync on:\n{said[-2000:]}")
        yield Store(weed, out)


# --------------------------------------------------------------------------- workers


@dataclass
class Worker:
    name: str
    proc: Proc
    out: Path  # prefix of its .pid, .json (counts) and .strace files
    counted_fsyncs: bool

    @property
    def pid(self) -> int:
        """The worker's own Python process (not strace)."""
        return int(Path(f"{self.out}.pid").read_text())

    def cpu_s(self) -> float:
        return proc_cpu_s(self.pid)

    def stop(self, procs: Processes) -> None:
        """SIGTERM to the worker itself (a clean stop writes its counts; strace then
        exits with its summary)."""
        if self.proc.running():
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                procs.stop(self.proc, kill=True)
        procs.stop(self.proc)

    def counts(self) -> dict[str, int]:
        path = Path(f"{self.out}.json")
        return json.loads(path.read_text()) if path.exists() else {}

    def fsyncs(self) -> int | None:
        return fsyncs_of(Path(f"{self.out}.strace")) if self.counted_fsyncs else None


def start_worker(
    procs: Processes, toml: Path, name: str, out: Path, *, count_fsyncs: bool
) -> Worker:
    """``linetap-office serve --config TOML --client NAME`` through the counting wrapper
    (under strace when fsyncs are counted); returns once it subscribed."""
    wrapper = out.parent / "counting_wrapper.py"
    if not wrapper.exists():
        wrapper.write_text(COUNTING_WRAPPER)
    argv: list[str | Path] = [*strace_argv(Path(f"{out}.strace"))] if count_fsyncs else []
    argv += [sys.executable, wrapper, out, "serve", "--config", toml, "--client", name]
    proc = procs.start(name, argv)
    wait_until(lambda: log_has(proc, "subscribing"), START_TIMEOUT_S, f"{name} to connect", procs)
    time.sleep(0.3)  # SUBSCRIBE -> SUBACK (not logged)
    return Worker(name, proc, out, count_fsyncs)


def pg_stored_span(dsn: str) -> float:
    """Seconds from the first to the last ``stored_at`` in a PostgreSQL index."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT min(stored_at), max(stored_at) FROM recordings").fetchone()
    if row is None or row[0] is None:
        return 0.0
    return (datetime.fromisoformat(row[1]) - datetime.fromisoformat(row[0])).total_seconds()
