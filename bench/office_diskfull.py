"""How long the head office takes to resume storing recordings after its full disk is freed.

Per round (``--rounds``, each from scratch so no state carries over):

1. a real tmpfs of ``--tmpfs-mib`` MiB (tests/helpers.py ``mounted_tmpfs``; needs root)
   holds the office ``root``: its CA, keys, enrolments and the store are made there
   (upload_common ``make_office``). The SQLite index stays off the tmpfs (``index =
   "sqlite:///…"`` in office.toml), so the office can still write its ``disk_full``
   alarm. ``[limits] busy_retry_s`` is ``--busy-retry-s`` (the product default is 15);
2. a private mosquitto with the office's mTLS + ACL config, ``linetap-office serve`` and
   ``linetap upload`` (connected, its outbox empty) run on 127.0.0.1; then the tmpfs is
   filled to the last byte with a filler file, and ``--recordings`` synthetic signed
   recordings of ~``--kib`` KiB go into the device's outbox (off the tmpfs). From the
   uploader's first "head office busy" log line the disk stays full for ``--full-s``
   seconds; meanwhile nothing may be acked and serve must stay up. At the end of that
   window the index must hold a ``disk_full`` alarm;
3. the filler is deleted; from that instant the bench polls the outbox's ``acked/``
   state (every 5 ms): "first ack" and "all acked" after the free.

A refused device waits the ``retry_after_s`` the office announced (``busy_retry_s``)
before asking again (uploader/transfer.py), however long the outage. So the resume time
is what is left of the wait announced with the last busy answer before the free (the
"predicted" column, from the uploader's log, polled every 10 ms) plus one upload: at most
about ``busy_retry_s``. The free falls at the same
phase of that wait every round unless ``--jitter-s`` adds a random 0..J s to the full
window. (The synthetic manifests name no age recipients, so the office also raises a
``recipients`` alarm and stores them anyway; that is not part of the measurement.)
Every wait has a timeout; every process is stopped and the tmpfs unmounted at exit, also
on errors, Ctrl-C and SIGTERM.

Run (as root): .venv/bin/python bench/office_diskfull.py [--busy-retry-s 15] [--rounds 3]
[--recordings 5] [--full-s 5] [--jitter-s 0] [--quick]
"""

from __future__ import annotations

import argparse
import errno
import os
import random
import re
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from bench_common import print_table_header
from upload_common import (
    DEVICE,
    HOST,
    MIB,
    RECEIVER,
    START_TIMEOUT_S,
    BenchError,
    Office,
    Proc,
    Processes,
    UploadSettings,
    add_synthetic,
    cores,
    enroll_device,
    log_has,
    make_office,
    parse_chain_args,
    print_what_if,
    start_broker,
    start_receiver,
    start_uploader,
    wait_until,
    workdir,
    write_device_toml,
)

from buffers.outbox import OutboxState
from firmware.config import load_config
from headoffice.index import open_index
from tests.helpers import mounted_tmpfs
from uploader.client import IDLE_RESCAN_S

KIB = 1024
BUSY_LINE = re.compile(r"head office busy with (\S+) \((.*)\); asking again in (\d+) s")
SERVE_FULL = "office storage is full"  # serve's log line / the busy ack's reason
FIRST_BUSY_TIMEOUT_S = 30.0  # uploader's idle rescan (1 s) + one init round trip, roomily


@dataclass(frozen=True)
class Round:
    first_s: float  # filler deleted -> first recording acked
    all_s: float  # filler deleted -> all recordings acked
    predicted_s: float  # what was left of the last announced wait at the free
    busy_answers: int  # "head office busy" lines before the free
    busy_after_free: int  # and after it (a freed disk should not give any)
    last_wait_s: int  # the wait announced with the last busy answer before the free
    alarms: int  # disk_full alarms in the index at the end of the full window
    free_after_fill: int  # bytes the tmpfs still had free after the fill
    backoff_max_s: float  # the uploader's [upload] settings this round
    ack_timeout_s: float


class BusyWatch:
    """The uploader's "head office busy" log lines: when each was first seen (polled)."""

    def __init__(self, uploader: Proc) -> None:
        self.uploader = uploader
        self.seen: list[tuple[float, int]] = []  # (monotonic when seen, announced wait s)

    def poll(self) -> int:
        lines = BUSY_LINE.findall(self.uploader.tail(1 << 22))
        now = time.monotonic()
        for _rec, _reason, wait in lines[len(self.seen) :]:
            self.seen.append((now, int(wait)))
        return len(self.seen)


def fill(disk: Path) -> tuple[Path, int]:
    """A filler file taking every last byte of ``disk``: (its path, bytes still free)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for size in (MIB, 64 * KIB, 4 * KIB, 1):
            block = b"\0" * size
            while True:
                try:
                    os.write(fd, block)
                except OSError as exc:
                    if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                        raise
                    break
        os.fsync(fd)
    finally:
        os.close(fd)
    st = os.statvfs(disk)
    return filler, st.f_bavail * st.f_frsize


def write_office_toml(
    office: Office, path: Path, port: int, index_url: str, busy_retry_s: int
) -> Path:
    """upload_common's office.toml with the index off the tmpfs and ``busy_retry_s``."""
    office.write_office_toml(path, port, RECEIVER)
    # Top-level keys go before the first table.
    text = f'index = "{index_url}"\n' + path.read_text()
    path.write_text(text + f"\n[limits]\nbusy_retry_s = {busy_retry_s}\n")
    return path


def disk_full_alarms(index_url: str) -> int:
    index = open_index(index_url)
    try:
        return len(index.alarms(kind="disk_full"))
    finally:
        index.close()


def one_round(n: int, base: Path, args: argparse.Namespace, rng: random.Random) -> Round:
    here = base / f"round-{n}"
    here.mkdir()
    try:
        with (
            mounted_tmpfs(here / "tmpfs", args.tmpfs_mib * MIB) as disk,
            Processes(here / "logs") as procs,
        ):
            return _round(disk, here, procs, args, rng)
    except pytest.skip.Exception as exc:  # mounted_tmpfs skips where it cannot mount
        raise BenchError(f"no tmpfs: {exc}") from None


def _round(
    disk: Path, here: Path, procs: Processes, args: argparse.Namespace, rng: random.Random
) -> Round:
    office = make_office(disk / "office", [RECEIVER])
    device = enroll_device(office, DEVICE, here / "device")
    port, _broker = start_broker(procs, office, here)
    index_url = f"sqlite:///{here / 'index.sqlite3'}"
    office_toml = write_office_toml(
        office, here / "office.toml", port, index_url, args.busy_retry_s
    )
    device_toml = write_device_toml(device, office, here / "device.toml", port, UploadSettings())
    receiver = start_receiver(procs, office_toml, RECEIVER, nodelay=args.receiver_nodelay)
    uploader = start_uploader(procs, device_toml, "uploader")
    wait_until(lambda: log_has(uploader, "connected to"), START_TIMEOUT_S, "the uploader", procs)

    filler, left = fill(disk)
    n = args.recordings
    add_synthetic(device, [args.kib * KIB + i for i in range(n)])
    watch = BusyWatch(uploader)
    first_busy = wait_until(
        lambda: watch.poll() > 0, FIRST_BUSY_TIMEOUT_S, "the first 'head office busy'", procs
    )
    full_for = args.full_s + rng.uniform(0.0, args.jitter_s)
    while time.monotonic() < first_busy + full_for:
        watch.poll()
        if device.count(OutboxState.ACKED):
            raise BenchError(f"a recording was acked while the disk was full\n{procs.tails()}")
        procs.check_alive()  # serve (and the rest) must stay up
        time.sleep(0.01)
    alarms = disk_full_alarms(index_url)
    if not alarms:
        raise BenchError(f"no disk_full alarm in {index_url}\n{procs.tails()}")
    if not log_has(receiver, SERVE_FULL):
        raise BenchError(f"serve did not log {SERVE_FULL!r}\n{procs.tails()}")
    busy = watch.poll()
    seen_at, last_wait = watch.seen[-1]
    if device.count(OutboxState.ACKED):
        raise BenchError("a recording was acked while the disk was full")

    filler.unlink()
    freed = time.monotonic()
    upload = load_config(device_toml).upload
    timeout = args.busy_retry_s + upload.backoff_max_s + 30.0 * n
    first = wait_until(
        lambda: device.count(OutboxState.ACKED) >= 1, timeout, "the first ack", procs
    )
    done = wait_until(
        lambda: device.count(OutboxState.ACKED) >= n, timeout, f"all {n} acked", procs
    )
    return Round(
        first_s=first - freed,
        all_s=done - freed,
        predicted_s=seen_at + last_wait - freed,
        busy_answers=busy,
        busy_after_free=watch.poll() - busy,
        last_wait_s=last_wait,
        alarms=alarms,
        free_after_fill=left,
        backoff_max_s=upload.backoff_max_s,
        ack_timeout_s=upload.ack_timeout_s,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each from scratch (3)")
    parser.add_argument("--recordings", type=int, default=5, help="recordings per round (5)")
    parser.add_argument("--kib", type=int, default=200, help="size of each recording (200 KiB)")
    parser.add_argument(
        "--busy-retry-s", type=int, default=15, help="office [limits] busy_retry_s (15)"
    )
    parser.add_argument(
        "--full-s", type=float, default=5.0, help="disk kept full after the first busy (5 s)"
    )
    parser.add_argument(
        "--jitter-s",
        type=float,
        default=0.0,
        help="keep the disk full a random 0..J s longer per round, so the free falls at a "
        "random phase of the uploader's wait (0: off)",
    )
    parser.add_argument("--tmpfs-mib", type=int, default=64, help="office tmpfs size (64 MiB)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round, 2 recordings")
    args = parse_chain_args(parser, argv)
    if args.quick:
        args.rounds, args.recordings = 1, 2
    if args.rounds < 1 or args.recordings < 1:
        parser.error("--rounds and --recordings must be at least 1")
    if os.geteuid() != 0:
        print("office_diskfull: mounting a tmpfs needs root", file=sys.stderr)
        return 2
    rounds: list[Round] = []
    rng = random.Random(1)
    wall = time.monotonic()
    with workdir(args.keep, "linetap-office-diskfull-") as tmp:
        header(args)
        print_table_header(
            f"{'round':>5}{'busy answers':>14}{'last wait s':>13}{'predicted s':>13}"
            f"{'first ack s':>13}{'all acked s':>13}{'busy after':>12}{'alarms':>8}"
            f"{'free after fill':>17}"
        )
        for n in range(1, args.rounds + 1):
            r = one_round(n, tmp, args, rng)
            rounds.append(r)
            print(
                f"{n:>5}{r.busy_answers:>14}{r.last_wait_s:>13}{r.predicted_s:>13.2f}"
                f"{r.first_s:>13.2f}{r.all_s:>13.2f}{r.busy_after_free:>12}{r.alarms:>8}"
                f"{r.free_after_fill:>17,}",
                flush=True,
            )
    summary(args, rounds, time.monotonic() - wall)
    return 0


def header(args: argparse.Namespace) -> None:
    print(
        f"office resume after a full disk is freed: {args.rounds} round(s), "
        f"{args.recordings} recordings of ~{args.kib} KiB each (one "
        f"{UploadSettings().chunk_kib} KiB chunk), disk kept full {args.full_s:g} s"
        f"{f' + random 0..{args.jitter_s:g} s' if args.jitter_s else ''} after "
        f"the first busy answer; loopback ({HOST}) mTLS broker; {cores()} CPU cores"
    )
    print(
        f"office: root (CA, keys, store) on a {args.tmpfs_mib} MiB tmpfs filled to the last "
        "byte; index: SQLite off the tmpfs (so alarms can be written); "
        f"[limits] busy_retry_s = {args.busy_retry_s}"
    )
    print_what_if(args)
    print(
        "times are from the filler's deletion; 'predicted' = what was left then of the "
        "wait announced (rounded to 1 s in the log) with the last busy answer\n"
    )


def summary(args: argparse.Namespace, rounds: list[Round], wall: float) -> None:
    first = [r.first_s for r in rounds]
    done = [r.all_s for r in rounds]
    print(
        f"\nfirst ack after free: min {min(first):.2f} s, median {statistics.median(first):.2f} s"
        f"\nall {args.recordings} acked after free: min {min(done):.2f} s, "
        f"median {statistics.median(done):.2f} s"
        f"\n(busy_retry_s = {args.busy_retry_s} s; resume should take at most about that "
        "plus one upload)"
    )
    r = rounds[0]
    print(
        f"uploader: after a busy answer it waits the announced retry_after_s; idle outbox "
        f"rescan {IDLE_RESCAN_S:g} s; ack_timeout_s = {r.ack_timeout_s:g} s"
    )
    print(f"Total {wall:.1f} s wall.")


if __name__ == "__main__":
    sys.exit(main())
