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
with few cores, a second worker mostly competes with the uploaders for them. The
devices' data (keys, outboxes) live on a tmpfs (``--device-root``, default /dev/shm):
each real device fsyncs its own SD card, and here the uploaders' outbox fsyncs (claim,
mark acked: several per recording) would otherwise queue on the office's disk and be
measured as the office's capacity. The office's root (store, index) is on disk.

Two loads (``--load``): ``uploaders`` (default), a ``linetap upload`` per device as
in the field; or ``replay``, one process (bench/replay_load.py) speaking the same
protocol for every device from messages prepared before the clock starts. An uploader
costs about as much CPU per recording as a receiver, so on a small machine the
uploaders' run measures the machine; the replay leaves the cores to the receivers and
so measures their capacity. The replay connects and subscribes before the clock starts
(both sides alike); its "wall" starts when it is told to go.

Before vs after: every run is made twice, with the receivers (``linetap-office serve``)
of the code before (``--before DIR``, default ``git archive HEAD``) and of this tree; the
uploaders are this tree's on both sides. Runs are interleaved (before/after, then
after/before, …) ``--repeats`` times per worker count, so machine load hits both sides
alike; min and median are printed. Start-up is treated the same on both sides: the
workers are started and subscribed before the clock starts, the uploaders' start-up is
inside "wall" on both sides and outside "steady".

Run: .venv/bin/python bench/upload_receiver_capacity.py [--devices 4] [--small 200]
     [--small-kb 20] [--large 2] [--large-mib 4] [--workers 1,2] [--repeats 3]
     [--before DIR] [--profile] [--load uploaders|replay]
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import sys
import tempfile
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
    Proc,
    Processes,
    add_synthetic,
    before_tree,
    cores,
    enroll_device,
    index_count,
    index_stored_span,
    log_has,
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
    side: str  # "before" / "after"
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
    device_dir: Path,
    profile: bool,
    nodelay: bool,
    side: str,
    tree: Path | None,
    replay: bool,
) -> Result:
    with Processes(run_dir / "logs") as procs:
        off = relocated(office, run_dir / "office")
        devs = [relocated_device(d, device_dir / d.device_id) for d in devices]
        port, broker = start_broker(procs, off, run_dir)
        tomls = [write_device_toml(d, off, run_dir / f"{d.device_id}.toml", port) for d in devs]
        receivers = []
        for k in range(1, workers + 1):
            name = f"office-receiver-{k}"
            toml = off.write_office_toml(run_dir / f"{name}.toml", port, name)
            prof = run_dir / f"{name}.prof" if profile else None
            receivers.append(
                start_receiver(procs, toml, name, prof=prof, nodelay=nodelay, tree=tree)
            )
        # The replay connects and subscribes before the clock starts; "go" on its stdin.
        load = start_replay(procs, devs, off, port) if replay else None
        broker0 = proc_cpu_s(broker.pid)
        receivers0 = [r.cpu_s() for r in receivers]
        t0 = time.monotonic()
        if load is not None:
            assert load.popen.stdin is not None
            load.popen.stdin.write(b"go\n")
            load.popen.stdin.flush()
            uploaders = [load]
        else:
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
        # The receivers' CPU over the run only (their start-up is before the clock).
        cpu = {
            f"receiver {k}": r.cpu_s() - c0
            for k, (r, c0) in enumerate(zip(receivers, receivers0, strict=True), start=1)
        }
        cpu["replay load" if replay else "uploaders (sum)"] = sum(u.cpu_s() for u in uploaders)
        cpu["mosquitto"] = proc_cpu_s(broker.pid) - broker0
        wait_until(
            (lambda: log_has(uploaders[0], "done "))
            if replay
            else (lambda: sum(d.count(OutboxState.ACKED) for d in devs) >= total),
            60,
            "every recording acked on its device",
            procs,
            interval=0.05,
        )
        for r in receivers:
            procs.stop(r)
        logs = [u.tail(1 << 24) for u in uploaders]
        fin_retries = sum(
            text.count("after fin (round") + sum(map(int, re.findall(r"resends=(\d+)", text)))
            for text in logs
        )
        stored = {r.name: r.tail(1 << 24).count("stored recording ") for r in receivers}
        rejected = sum(r.tail(1 << 24).count("rejected recording ") for r in receivers)
        if rejected:
            raise BenchError(f"{rejected} recordings rejected:\n{procs.tails()}")
    rows, span = index_stored_span(off)
    if rows != total:
        raise BenchError(f"index has {rows} recordings, expected {total}")
    return Result(side, workers, t_done - t0, span, cpu, stored, fin_retries)


def start_replay(procs: Processes, devs: list[Device], office: Office, port: int) -> Proc:
    """bench/replay_load.py for every device, started and subscribed ("ready")."""
    argv: list[str | Path] = [
        sys.executable,
        Path(__file__).with_name("replay_load.py"),
        "--port",
        str(port),
        "--ca",
        office.ca_file,
    ]
    for d in devs:
        argv += ["--device", f"{d.device_id},{d.cert},{d.tls_key},{d.data / 'outbox'}"]
    load = procs.start("replay-load", argv, stdin_pipe=True)
    wait_until(lambda: log_has(load, "ready"), 60, "the replay load to connect", procs)
    return load


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--devices", type=int, default=4, help="devices uploading at once (4)")
    parser.add_argument("--small", type=int, default=200, help="small recordings per device")
    parser.add_argument("--small-kb", type=float, default=20, help="small size, KB (20)")
    parser.add_argument("--large", type=int, default=2, help="large recordings per device (2)")
    parser.add_argument("--large-mib", type=float, default=4, help="large size, MiB (4)")
    parser.add_argument("--workers", default="1,2", help="worker counts to run (1,2)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per side and count (3)")
    parser.add_argument(
        "--before", type=Path, default=None, help="code tree to compare (git archive HEAD)"
    )
    parser.add_argument(
        "--device-root",
        type=Path,
        default=Path("/dev/shm") if Path("/dev/shm").is_dir() else None,
        help="where the devices' data go (default /dev/shm: a tmpfs); none: the work dir",
    )
    parser.add_argument("--profile", action="store_true", help="cProfile the workers")
    parser.add_argument(
        "--load",
        choices=("uploaders", "replay"),
        default="uploaders",
        help="who sends: a 'linetap upload' per device (default), or one process "
        "replaying the same messages prepared in advance (bench/replay_load.py): the "
        "receivers' capacity, without uploaders taking half of a small machine's CPU",
    )
    args = parse_chain_args(parser, argv)
    counts = [int(w) for w in args.workers.split(",")]
    sizes = device_sizes(
        args.small, round(args.small_kb * 1000), args.large, round(args.large_mib * MIB)
    )
    results: list[Result] = []
    wall = time.monotonic()
    with (
        workdir(args.keep, "linetap-upload-cap-") as tmp,
        tempfile.TemporaryDirectory(prefix="linetap-cap-dev-", dir=args.device_root) as dev_tmp,
    ):
        dev_root = Path(dev_tmp)
        old_tree, trees_line = before_tree(args.before)
        trees: dict[str, Path | None] = {"before": old_tree, "after": None}
        names = [f"office-receiver-{k}" for k in range(1, max(counts) + 1)]
        office = make_office(tmp / "pristine" / "office", names)
        devices = []
        for i in range(1, args.devices + 1):
            device = enroll_device(office, f"dev-{i:02d}", dev_root / "pristine" / f"dev-{i:02d}")
            add_synthetic(device, sizes, prefix=device.device_id)  # ids unique office-wide
            devices.append(device)
        total = len(sizes) * len(devices)
        finished: list[Path] = []
        for repeat in range(args.repeats):
            for w in counts:
                order = ["before", "after"] if (repeat + w) % 2 == 0 else ["after", "before"]
                for side in order:
                    run_dir = tmp / f"{side}-workers-{w}-{repeat}"
                    device_dir = dev_root / run_dir.name
                    results.append(
                        run(
                            w,
                            office=office,
                            devices=devices,
                            total=total,
                            run_dir=run_dir,
                            device_dir=device_dir,
                            profile=args.profile,
                            nodelay=args.receiver_nodelay,
                            side=side,
                            tree=trees[side],
                            replay=args.load == "replay",
                        )
                    )
                    if args.profile:
                        for k in range(1, w + 1):
                            print_profile(
                                run_dir / f"office-receiver-{k}.prof",
                                f"{side}, {w} worker(s): receiver {k}",
                            )
                    shutil.rmtree(device_dir, ignore_errors=True)  # a tmpfs: see below
                    # The run's office (store, index) stays until the end: deleting its
                    # thousands of files now would slow the next run's file creations.
                    # ext4 without a journal (this machine's) skips inodes deleted in
                    # the last ~30 s when it allocates one, so creating a file after a
                    # mass deletion cost up to ~0.8 ms instead of ~20 µs: the bench's
                    # clean-up, not the receiver, would be measured.
                    finished.append(run_dir)
        for run_dir in [] if args.keep else finished:
            shutil.rmtree(run_dir, ignore_errors=True)
        wall = time.monotonic() - wall
        print(trees_line)
        print(f"devices' data under {dev_root.parent} (tmpfs: {_is_tmpfs(dev_root)})")
        report(args, results, total, sum(sizes) * len(devices), wall)
    return 0


def _is_tmpfs(path: Path) -> bool:
    """Whether ``path`` is on a tmpfs (from /proc/self/mounts, longest mount point)."""
    best, kind = "", ""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _dev, mount, fstype, *_ = line.split()
        if str(path).startswith(mount) and len(mount) > len(best):
            best, kind = mount, fstype
    return kind == "tmpfs"


def report(
    args: argparse.Namespace, results: list[Result], total: int, total_bytes: int, wall: float
) -> None:
    print(
        f"receiver capacity: {args.devices} devices uploading at once, each {args.small} x "
        f"{args.small_kb:g} KB + {args.large} x {args.large_mib:g} MiB = {total} recordings, "
        f"{total_bytes / MB:.1f} MB; loopback mTLS broker, SQLite index; this machine has "
        f"{cores()} CPU cores, shared by the workers, "
        + ("one replay load" if args.load == "replay" else f"the {args.devices} uploaders")
        + f" and the broker; {args.repeats} interleaved runs per side and worker count"
    )
    print_what_if(args)
    print_table_header(
        f"{'side':<7}{'workers':>7}  {'rec/s min':>9}  {'rec/s med':>9}  {'rec/s max':>9}"
        f"  {'steady min':>10}"
        f"  {'steady med':>10}  {'MB/s med':>8}  {'fin retries':>11}"
    )
    counts = sorted({r.workers for r in results})
    medians: dict[tuple[str, int], tuple[float, float]] = {}
    for w in counts:
        for side in ("before", "after"):
            runs = [r for r in results if r.side == side and r.workers == w]
            if not runs:
                continue
            rate = [total / r.wall_s for r in runs]
            steady = [total / r.span_s for r in runs]
            mbs = statistics.median(total_bytes / MB / r.wall_s for r in runs)
            medians[(side, w)] = (statistics.median(rate), statistics.median(steady))
            print(
                f"{side:<7}{w:>7}  {min(rate):>9.1f}  {statistics.median(rate):>9.1f}  "
                f"{max(rate):>9.1f}  {min(steady):>10.1f}  {statistics.median(steady):>10.1f}  "
                f"{mbs:>8.1f}  {sum(r.fin_retries for r in runs):>11}"
            )
    print()
    for w in counts:
        if ("before", w) in medians and ("after", w) in medians:
            (b_rate, b_steady), (a_rate, a_steady) = medians[("before", w)], medians[("after", w)]
            print(
                f"after/before, {w} worker(s): {a_rate / b_rate:.2f}x (wall), "
                f"{a_steady / b_steady:.2f}x (steady), medians"
            )
    for w in counts:
        per_rec = {
            side: statistics.median(
                1000 * sum(v for k, v in r.cpu.items() if k.startswith("receiver")) / total
                for r in results
                if r.side == side and r.workers == w
            )
            for side in ("before", "after")
            if any(r.side == side and r.workers == w for r in results)
        }
        if len(per_rec) == 2:
            print(
                f"receivers' CPU per stored recording, {w} worker(s): before "
                f"{per_rec['before']:.2f} ms, after {per_rec['after']:.2f} ms "
                f"({per_rec['before'] / per_rec['after']:.2f}x less), medians"
            )
    for side in ("before", "after"):
        if (side, 1) in medians and (side, 2) in medians:
            one, two = medians[(side, 1)], medians[(side, 2)]
            print(
                f"{side}: 2 workers / 1 worker: {two[0] / one[0]:.2f} (wall), "
                f"{two[1] / one[1]:.2f} (steady), medians"
            )
    print()
    for r in results:
        parts = ", ".join(f"{k} {v:.1f}" for k, v in r.cpu.items())
        busy = sum(r.cpu.values()) / r.wall_s
        print(
            f"CPU s, {r.side}, {r.workers} worker(s): {parts}; {busy:.2f} cores busy over "
            f"{r.wall_s:.1f} s; stored per worker {'/'.join(map(str, r.stored.values()))}"
        )
    print(
        "\nrec/s, MB/s = from the moment every uploader process is started (with --load "
        "replay: the replay, connected, is told to go) until the index "
        "has every recording (uploader start-up included, on both sides); steady = over "
        "the index's first-to-last stored_at. A recording counts once its blob and "
        "manifest are fsynced and the index committed. "
        "fin retries = uploader warnings 'store still lacks N chunk(s) ... after fin (round "
        "2+)', each followed by a 0.25-0.5 s backoff: with a shared subscription a fin can "
        "reach one worker before another has parked the recording's last chunk; with "
        "--load replay: inits sent again after 30 s without an ack. "
        "cores busy = all processes' CPU s / wall s: well below the core count means the "
        "run waits on round trips and fsyncs rather than CPU. "
        f"MB = 10^6 bytes. Total {wall:.1f} s wall."
    )


if __name__ == "__main__":
    sys.exit(main())
