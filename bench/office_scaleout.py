"""Receiver capacity scaled out: 1 and 2 ``linetap-office serve`` workers on PostgreSQL +
SeaweedFS (S3, Object Lock) against 1 worker on the default filesystem store + SQLite,
under the same load; and what one recording costs: round trips, fsyncs, CPU.

Set-up (once): an office CA with receiver certificates, ``--devices`` enrolled devices,
each with an outbox of ``--per-device`` synthetic sealed recordings of ``--kb`` KB
(default: a 3-minute call in the default codec, FLAC at 8 kHz: 612 KB per minute as
bench/sealing_rtf.py measures it).

Per run (fresh copies of everything; a fresh broker, and for S3 a fresh SeaweedFS and
PostgreSQL database): the workers start, each with its own copy of the office root (as
on separate machines: nothing shared but the database, the bucket and the broker's
``$share`` subscription), then every device's ``linetap upload`` at once; the clock runs
until the index holds every recording. Configurations run interleaved, ``--repeats``
times each; rec/s and MB/s print min and median.

Per recording (all workers together, over the run; see bench/scaleout_common.py):
S3 requests by operation and PostgreSQL round trips and new connections, counted inside
the workers; fsyncs by the workers and by ``weed server`` (strace), and PostgreSQL's WAL
syncs (``pg_stat_wal``, the whole cluster); CPU ms of the workers, of ``weed server`` and
of the database's backends (``/proc``). Everything shares this machine's cores (printed),
uploaders and broker included.

Run: .venv/bin/python bench/office_scaleout.py [--devices 4] [--per-device 25] [--kb 1840]
     [--repeats 3] [--configs file1,s3pg1,s3pg2] [--no-fsyncs] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench_common import print_table_header
from scaleout_common import (
    Store,
    Worker,
    backends_cpu_s,
    database_bytes,
    fresh_database,
    pg_scalar,
    pg_stored_span,
    seaweed_store,
    start_worker,
    wal_counters,
)
from upload_common import (
    MB,
    Device,
    Office,
    Processes,
    add_synthetic,
    cores,
    enroll_device,
    exit_on_sigterm,
    index_count,
    index_stored_span,
    make_office,
    proc_cpu_s,
    relocated,
    relocated_device,
    start_broker,
    start_uploader,
    wait_until,
    workdir,
    write_device_toml,
)

from buffers.outbox import OutboxState
from tests.seaweed import ACCESS_KEY, SECRET_KEY

CONFIGS = {"file1": ("file", 1), "s3pg1": ("s3", 1), "s3pg2": ("s3", 2)}
LABELS = {
    "file1": "file + SQLite, 1 worker",
    "s3pg1": "S3 + PostgreSQL, 1 worker",
    "s3pg2": "S3 + PostgreSQL, 2 workers",
}
BUCKET = "recordings"
RUN_TIMEOUT_S = 600.0
FLAC_KB_PER_MIN = 612  # bench/sealing_rtf.py: FLAC, 8 kHz speech, age file bytes per minute


@dataclass(frozen=True)
class Run:
    config: str
    wall_s: float  # uploaders started -> index complete
    span_s: float  # first -> last stored_at in the index
    counts: dict[str, int]  # "s3 PutObject", "pg round trips", ... (all workers)
    fsync_workers: int | None  # None: not counted (--no-fsyncs)
    fsync_store: int | None
    wal_syncs: int | None
    wal_bytes: int | None
    db_bytes: int | None  # growth of the database over the run
    cpu_workers: float
    cpu_store: float
    cpu_pg: float
    stored: list[int]  # per worker, from its log


@dataclass
class Services:
    """What a run's workers share: the broker, and for S3 the database and SeaweedFS."""

    port: int
    dsn: str | None = None
    store: Store | None = None


def worker_toml(path: Path, root: Path, shared: Services) -> Path:
    text = (
        f'root = "{root}"\n'
        + (f'index = "{shared.dsn}"\n' if shared.dsn else "")
        + f'[broker]\nhost = "127.0.0.1"\nport = {shared.port}\n'
        f'ca_file = "{root / "ca" / "ca.crt"}"\nkeepalive_s = 10\n'
    )
    if shared.store is not None:
        text += (
            f'[store]\nbackend = "s3"\nendpoint_url = "{shared.store.weed.endpoint}"\n'
            f'bucket = "{BUCKET}"\naccess_key_id = "{ACCESS_KEY}"\n'
            f'secret_access_key = "{SECRET_KEY}"\n'
        )
    path.write_text(text)
    return path


def run(
    config: str,
    office: Office,
    devices: list[Device],
    run_dir: Path,
    *,
    count_fsyncs: bool,
    weed_fsync: bool,
) -> Run:
    backend, n = CONFIGS[config]
    with contextlib.ExitStack() as stack:
        procs = stack.enter_context(Processes(run_dir / "logs"))
        offices = [relocated(office, run_dir / f"worker-{k}" / "office") for k in range(1, n + 1)]
        shared = Services(start_broker(procs, offices[0], run_dir)[0])
        if backend == "s3":
            shared.dsn = stack.enter_context(fresh_database())
            shared.store = stack.enter_context(
                seaweed_store(
                    run_dir / "weed", BUCKET, count_fsyncs=count_fsyncs, fsync_objects=weed_fsync
                )
            )
        workers = []
        for k, off in enumerate(offices):
            name = off.receivers[k]
            toml = worker_toml(run_dir / f"{name}.toml", off.root, shared)
            workers.append(
                start_worker(procs, toml, name, run_dir / name, count_fsyncs=count_fsyncs)
            )
        return measure(config, procs, workers, shared, offices[0], devices, run_dir)


def measure(  # noqa: PLR0917 - one run's parts
    config: str,
    procs: Processes,
    workers: list[Worker],
    shared: Services,
    office: Office,
    devices: list[Device],
    run_dir: Path,
) -> Run:
    """Start the uploaders, wait for the index to hold everything; the figures."""
    total = sum(d.count(OutboxState.SEALED) for d in devices)
    devs = [relocated_device(d, run_dir / d.device_id) for d in devices]
    tomls = [
        write_device_toml(d, office, run_dir / f"{d.device_id}.toml", shared.port) for d in devs
    ]
    dsn, store = shared.dsn, shared.store

    def count() -> int:
        return pg_scalar(dsn, "SELECT count(*) FROM recordings") if dsn else index_count(office)

    cpu0 = sum(w.cpu_s() for w in workers)
    store_cpu0 = proc_cpu_s(store.pid) if store else 0.0
    wal0 = wal_counters(dsn) if dsn else (0, 0)
    db0 = database_bytes(dsn) if dsn else 0  # the workers made the (empty) tables
    t0 = time.monotonic()
    for d, toml in zip(devs, tomls, strict=True):
        start_uploader(procs, toml, f"uploader-{d.device_id}")
    t_done = wait_until(
        lambda: count() >= total, RUN_TIMEOUT_S, f"{total} recordings", procs, interval=0.05
    )
    cpu_workers = sum(w.cpu_s() for w in workers) - cpu0
    cpu_store = proc_cpu_s(store.pid) - store_cpu0 if store else 0.0
    cpu_pg = backends_cpu_s(dsn) if dsn else 0.0
    wait_until(
        lambda: sum(d.count(OutboxState.ACKED) for d in devs) >= total,
        60,
        "every recording acked on its device",
        procs,
        interval=0.05,
    )
    span = pg_stored_span(dsn) if dsn else index_stored_span(office)[1]
    stored = []
    for w in workers:
        w.stop(procs)
        stored.append(w.proc.tail(1 << 26).count("stored recording "))
    counts: Counter[str] = Counter()
    for w in workers:
        counts.update(w.counts())
    worker_fsyncs = [w.fsyncs() for w in workers]
    fsync_workers = None if None in worker_fsyncs else sum(f or 0 for f in worker_fsyncs)
    fsync_store = store.stop_for_counts() if store else None
    wal = db = None
    if dsn:
        time.sleep(1.0)  # a backend's statistics reach pg_stat_wal when it ends
        wal1 = wal_counters(dsn)
        wal = (wal1[0] - wal0[0], wal1[1] - wal0[1])
        db = database_bytes(dsn) - db0
    return Run(
        config, t_done - t0, span, dict(counts), fsync_workers, fsync_store,
        wal[0] if wal else None, wal[1] if wal else None, db,
        cpu_workers, cpu_store, cpu_pg, stored,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--devices", type=int, default=4, help="devices uploading at once (4)")
    parser.add_argument("--per-device", type=int, default=25, help="recordings per device (25)")
    parser.add_argument(
        "--kb",
        type=float,
        default=3 * FLAC_KB_PER_MIN,
        help="recording size, KB (a 3-min FLAC call)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per configuration (3)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="file1,s3pg1,s3pg2")
    parser.add_argument("--no-fsyncs", action="store_true", help="do not run under strace")
    parser.add_argument(
        "--weed-nofsync",
        action="store_true",
        help="what-if: SeaweedFS as it comes, not fsyncing the objects it is sent",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    configs = args.configs.split(",")
    unknown = sorted(set(configs) - set(CONFIGS))
    if unknown:
        parser.error(f"unknown configuration(s) {unknown}; choose from {sorted(CONFIGS)}")
    size = round(args.kb * 1000)
    results: list[Run] = []
    wall = time.monotonic()
    with workdir(args.keep, "linetap-scaleout-") as tmp:
        office = make_office(
            tmp / "pristine" / "office", ["office-receiver-1", "office-receiver-2"]
        )
        devices = []
        for i in range(1, args.devices + 1):
            device = enroll_device(office, f"dev-{i:02d}", tmp / "pristine" / f"dev-{i:02d}")
            add_synthetic(device, [size] * args.per_device, prefix=device.device_id)
            devices.append(device)
        for repeat in range(args.repeats):
            for config in configs:  # interleaved: a slow spell of the machine hits all
                run_dir = tmp / f"{config}-{repeat}"
                results.append(
                    run(
                        config,
                        office,
                        devices,
                        run_dir,
                        count_fsyncs=not args.no_fsyncs,
                        weed_fsync=not args.weed_nofsync,
                    )
                )
                print(f"  {LABELS[config]}, run {repeat + 1}: {results[-1].wall_s:.1f} s",
                      file=sys.stderr)  # fmt: skip
                if not args.keep:
                    shutil.rmtree(run_dir, ignore_errors=True)
    report(args, results, args.devices * args.per_device, size, time.monotonic() - wall)
    return 0


def _stats(values: list[float]) -> tuple[float, float]:
    return min(values), statistics.median(values)


def report(
    args: argparse.Namespace, results: list[Run], total: int, size: int, wall: float
) -> None:
    print(
        f"office scale-out: {args.devices} devices uploading at once, {args.per_device} "
        f"recordings each of {size / 1000:g} KB = {total} recordings, "
        f"{total * size / MB:.0f} MB per run; {args.repeats} runs per configuration, "
        f"interleaved; mosquitto (mTLS, $share), SeaweedFS and PostgreSQL on this machine, "
        f"which has {cores()} CPU cores, shared by everything"
    )
    if args.weed_nofsync:
        print(
            "WHAT-IF run: SeaweedFS as it comes, NOT fsyncing the objects (--weed-nofsync); "
            "an office configures fs.configure -fsync (headoffice/INSTALL.md)"
        )
    else:
        print("SeaweedFS fsyncs every object of the bucket (fs.configure -fsync), as installed")
    print_table_header(
        f"{'configuration':<28}  {'rec/s min':>9}  {'rec/s med':>9}  {'MB/s min':>8}  "
        f"{'MB/s med':>8}  {'steady rec/s med':>16}  {'stored per worker':>17}"
    )
    by: dict[str, list[Run]] = {}
    for r in results:
        by.setdefault(r.config, []).append(r)
    for config, runs in by.items():
        lo, med = _stats([total / r.wall_s for r in runs])
        steady = statistics.median(total / r.span_s for r in runs if r.span_s > 0)
        print(
            f"{LABELS[config]:<28}  {lo:>9.1f}  {med:>9.1f}  {lo * size / MB:>8.1f}  "
            f"{med * size / MB:>8.1f}  {steady:>16.1f}  {'/'.join(map(str, runs[-1].stored)):>17}"
        )
    print()
    report_costs(by, total)
    print(
        "\nrec/s, MB/s = from the moment every uploader is started until the index has "
        "every recording (a recording counts once its blob and manifest are durable in the "
        "store and the index committed); steady = over the index's first-to-last stored_at. "
        "Per recording: over the whole run and all workers, divided by the recordings; "
        "'median (min)' over the runs. S3 requests and PG round trips are counted inside the "
        "workers (HTTP requests incl. retries; psycopg waits: each statement, BEGIN, COMMIT); "
        "fsyncs = fsync+fdatasync+sync_file_range by strace (worker, weed server); PG WAL "
        "syncs and KB = pg_stat_wal of the whole cluster over the run; PG database KB = "
        "growth of pg_database_size. CPU = user+system "
        f"from /proc. MB = 10^6 bytes. Total {wall:.0f} s wall."
    )


# (label, value of a run, whether only the S3 + PostgreSQL configurations have it)
COST_ROWS: list[tuple[str, Callable[[Run], float | None], bool]] = [
    ("S3 requests", lambda r: sum(v for k, v in r.counts.items() if k.startswith("s3 ")), True),
    ("PG round trips", lambda r: r.counts.get("pg round trips", 0), True),
    ("PG new connections", lambda r: r.counts.get("pg connections", 0), True),
    ("fsyncs, workers", lambda r: r.fsync_workers, False),
    ("fsyncs, SeaweedFS", lambda r: r.fsync_store, True),
    ("PG WAL syncs", lambda r: r.wal_syncs, True),
    ("PG WAL KB", lambda r: None if r.wal_bytes is None else r.wal_bytes / 1000, True),
    ("PG database KB", lambda r: None if r.db_bytes is None else r.db_bytes / 1000, True),
    ("CPU ms, workers", lambda r: 1000 * r.cpu_workers, False),
    ("CPU ms, SeaweedFS", lambda r: 1000 * r.cpu_store, True),
    ("CPU ms, PG backends", lambda r: 1000 * r.cpu_pg, True),
    ("CPU ms, all three", lambda r: 1000 * (r.cpu_workers + r.cpu_store + r.cpu_pg), False),
]


def report_costs(by: dict[str, list[Run]], total: int) -> None:
    configs = list(by)
    print_table_header(f"{'per recording':<22}" + "".join(f"  {LABELS[c]:>28}" for c in configs))
    for label, get, s3_only in COST_ROWS:
        cells = []
        for config in configs:
            values = [get(r) for r in by[config]]
            if s3_only and CONFIGS[config][0] != "s3":
                cells.append("-")
                continue
            if any(v is None for v in values):
                cells.append("not counted")
                continue
            lo, med = _stats([float(v or 0) / total for v in values])
            cells.append(f"{med:.2f} ({lo:.2f})" if med < 100 else f"{med:.0f} ({lo:.0f})")
        print(f"{label:<22}" + "".join(f"  {c:>28}" for c in cells))
    for config in configs:
        ops: Counter[str] = Counter()
        for r in by[config]:
            ops.update({k[3:]: v for k, v in r.counts.items() if k.startswith("s3 ")})
        if ops:
            runs = len(by[config])
            parts = ", ".join(f"{op} {n / runs / total:.2f}" for op, n in ops.most_common())
            print(f"S3 requests per recording, {LABELS[config]} (mean of runs): {parts}")


if __name__ == "__main__":
    sys.exit(main())
