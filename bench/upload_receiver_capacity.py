"""Receiver capacity: recordings/s and MB/s with 1 and 2 ``linetap-office serve`` workers.

Set-up (once): an office CA with receiver certificates ``office-receiver-1..N``,
``--devices`` enrolled devices, and for each an outbox of ``--small`` recordings of
``--small-kb`` KB plus ``--large`` of ``--large-mib`` MiB spread among them (synthetic
sealed entries: random blobs, signed chained manifests).

Per worker count (fresh copies of the office root and the device outboxes, a fresh
broker): the workers start, each with its own certificate, client id and office.toml, on
the office's shared subscription (``$share/<secret group>/linetap/+/up/#``); once they are
subscribed every device's ``linetap upload`` starts at the same moment, and the clock runs
until the office index holds every recording (polled read-only every 50 ms). Two
figures: from the uploaders' start (their Python start-up and TLS handshakes included),
and the index's own first-to-last ``stored_at`` span (steady state). CPU seconds of every
process are read at the end, so it shows which one was busy.

All processes share this machine's CPU cores (printed), uploaders and broker included:
with few cores, a second worker mostly competes with the uploaders for them.

Run: .venv/bin/python bench/upload_receiver_capacity.py [--devices 4] [--small 200]
     [--small-kb 20] [--large 2] [--large-mib 4] [--workers 1,2] [--profile]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench_common import print_table_header
from upload_common import (
    MB,
    MIB,
    BenchError,
    Device,
    Office,
    Processes,
    add_synthetic,
    cores,
    enroll_device,
    index_count,
    index_stored_span,
    make_office,
    parse_chain_args,
    print_profile,
    print_what_if,
    proc_cpu_s,
    relocated,
    relocated_device,
    start_broker,
    start_receiver,
    start_uploader,
    wait_until,
    workdir,
    write_device_toml,
)

from buffers.outbox import OutboxState

RUN_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class Result:
    workers: int
    wall_s: float  # uploaders started → index complete
    span_s: float  # first → last stored_at in the index
    cpu: dict[str, float]
    stored: dict[str, int]  # per worker, from its log
    fin_retries: int  # uploader warnings "store still lacks ... after fin (round N)"


def device_sizes(small: int, small_bytes: int, large: int, large_bytes: int) -> list[int]:
    """``small`` small recordings with ``large`` large ones spread evenly among them."""
    sizes = [small_bytes] * small
    for k in range(large):
        sizes.insert(round((k + 0.5) * len(sizes) / large), large_bytes)
    return sizes


def run(
    workers: int,
    *,
    office: Office,
    devices: list[Device],
    total: int,
    run_dir: Path,
    profile: bool,
    nodelay: bool,
) -> Result:
    with Processes(run_dir / "logs") as procs:
        off = relocated(office, run_dir / "office")
        devs = [relocated_device(d, run_dir / d.device_id) for d in devices]
        port, broker = start_broker(procs, off, run_dir)
        tomls = [write_device_toml(d, off, run_dir / f"{d.device_id}.toml", port) for d in devs]
        receivers = []
        for k in range(1, workers + 1):
            name = f"office-receiver-{k}"
            toml = off.write_office_toml(run_dir / f"{name}.toml", port, name)
            prof = run_dir / f"{name}.prof" if profile else None
            receivers.append(start_receiver(procs, toml, name, prof=prof, nodelay=nodelay))
        broker0 = proc_cpu_s(broker.pid)
        t0 = time.monotonic()
        uploaders = [
            start_uploader(procs, toml, f"uploader-{d.device_id}")
            for d, toml in zip(devs, tomls, strict=True)
        ]
        t_done = wait_until(
            lambda: index_count(off) >= total,
            RUN_TIMEOUT_S,
            f"{total} recordings in the office index",
            procs,
            interval=0.05,
        )
        cpu = {f"receiver {k}": r.cpu_s() for k, r in enumerate(receivers, start=1)}
        cpu["uploaders (sum)"] = sum(u.cpu_s() for u in uploaders)
        cpu["mosquitto"] = proc_cpu_s(broker.pid) - broker0
        wait_until(
            lambda: sum(d.count(OutboxState.ACKED) for d in devs) >= total,
            60,
            "every recording acked on its device",
            procs,
            interval=0.05,
        )
        for r in receivers:
            procs.stop(r)
        fin_retries = sum(u.tail(1 << 24).count("after fin (round") for u in uploaders)
        stored = {r.name: r.tail(1 << 24).count("stored recording ") for r in receivers}
        rejected = sum(r.tail(1 << 24).count("rejected recording ") for r in receivers)
        if rejected:
            raise BenchError(f"{rejected} recordings rejected:\n{procs.tails()}")
    rows, span = index_stored_span(off)
    if rows != total:
        raise BenchError(f"index has {rows} recordings, expected {total}")
    return Result(workers, t_done - t0, span, cpu, stored, fin_retries)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--devices", type=int, default=4, help="devices uploading at once (4)")
    parser.add_argument("--small", type=int, default=200, help="small recordings per device")
    parser.add_argument("--small-kb", type=float, default=20, help="small size, KB (20)")
    parser.add_argument("--large", type=int, default=2, help="large recordings per device (2)")
    parser.add_argument("--large-mib", type=float, default=4, help="large size, MiB (4)")
    parser.add_argument("--workers", default="1,2", help="worker counts to run (1,2)")
    parser.add_argument("--profile", action="store_true", help="cProfile the workers")
    args = parse_chain_args(parser, argv)
    counts = [int(w) for w in args.workers.split(",")]
    sizes = device_sizes(
        args.small, round(args.small_kb * 1000), args.large, round(args.large_mib * MIB)
    )
    results: list[Result] = []
    wall = time.monotonic()
    with workdir(args.keep, "linetap-upload-cap-") as tmp:
        names = [f"office-receiver-{k}" for k in range(1, max(counts) + 1)]
        office = make_office(tmp / "pristine" / "office", names)
        devices = []
        for i in range(1, args.devices + 1):
            device = enroll_device(office, f"dev-{i:02d}", tmp / "pristine" / f"dev-{i:02d}")
            add_synthetic(device, sizes, prefix=device.device_id)  # ids unique office-wide
            devices.append(device)
        total = len(sizes) * len(devices)
        for w in counts:
            run_dir = tmp / f"workers-{w}"
            results.append(
                run(
                    w,
                    office=office,
                    devices=devices,
                    total=total,
                    run_dir=run_dir,
                    profile=args.profile,
                    nodelay=args.receiver_nodelay,
                )
            )
            if args.profile:
                for k in range(1, w + 1):
                    print_profile(
                        run_dir / f"office-receiver-{k}.prof", f"{w} worker(s): receiver {k}"
                    )
            if not args.keep:
                shutil.rmtree(run_dir, ignore_errors=True)
        wall = time.monotonic() - wall
        report(args, results, total, sum(sizes) * len(devices), wall)
    return 0


def report(
    args: argparse.Namespace, results: list[Result], total: int, total_bytes: int, wall: float
) -> None:
    print(
        f"receiver capacity: {args.devices} devices uploading at once, each {args.small} x "
        f"{args.small_kb:g} KB + {args.large} x {args.large_mib:g} MiB = {total} recordings, "
        f"{total_bytes / MB:.1f} MB; loopback mTLS broker, SQLite index; this machine has "
        f"{cores()} CPU cores, shared by the workers, the {args.devices} uploaders and "
        "the broker"
    )
    print_what_if(args)
    print_table_header(
        f"{'workers':>7}  {'rec/s':>7}  {'MB/s':>6}  {'rec/s steady':>12}  {'MB/s steady':>11}"
        f"  {'wall s':>6}  {'stored per worker':>18}  {'fin retries':>11}"
    )
    for r in results:
        print(
            f"{r.workers:>7}  {total / r.wall_s:>7.1f}  {total_bytes / MB / r.wall_s:>6.1f}  "
            f"{total / r.span_s:>12.1f}  {total_bytes / MB / r.span_s:>11.1f}  "
            f"{r.wall_s:>6.1f}  {'/'.join(str(n) for n in r.stored.values()):>18}  "
            f"{r.fin_retries:>11}"
        )
    by = {r.workers: r for r in results}
    if 1 in by and 2 in by:
        print(
            f"ratio 2/1 workers: {by[1].wall_s / by[2].wall_s:.2f} (wall), "
            f"{by[1].span_s / by[2].span_s:.2f} (steady)"
        )
    print()
    for r in results:
        parts = ", ".join(f"{k} {v:.1f}" for k, v in r.cpu.items())
        busy = sum(r.cpu.values()) / r.wall_s
        print(
            f"CPU s with {r.workers} worker(s): {parts}; all together {busy:.2f} cores busy "
            f"on average over {r.wall_s:.1f} s"
        )
    print(
        "\nrec/s, MB/s = from the moment every uploader process is started until the index "
        "has every recording; steady = over the index's first-to-last stored_at. A recording "
        "counts once its blob and manifest are fsynced and the index committed. "
        "fin retries = uploader warnings 'store still lacks N chunk(s) ... after fin (round "
        "2+)', each followed by a 0.25-0.5 s backoff: with a shared subscription a fin can "
        "reach one worker before another has parked the recording's last chunk. "
        "cores busy = all processes' CPU s / wall s: well below the core count means the "
        "run waits on round trips and fsyncs rather than CPU. "
        f"MB = 10^6 bytes. Total {wall:.1f} s wall."
    )


if __name__ == "__main__":
    sys.exit(main())
