"""Upload throughput over the real mTLS broker on loopback: MB/s, ours against mosquitto_pub.

Ours: ``--recordings`` synthetic sealed recordings of ``--mib`` MiB each (random blobs,
signed chained manifests) in a fresh outbox; ``linetap-office serve`` running and
subscribed; then ``linetap upload`` is started and the clock runs until the device's
outbox has every one of them acked (the store has fsynced blob and manifest, committed the
index and sent the ack). "wall" runs from the uploader's process start (Python start-up,
TLS handshake, CONNACK/SUBACK included), "steady" from its first claim (the first entry
leaving ``sealed/``).

Peers, the same bytes in the same message sizes (``--chunk-kib`` chunks, the tail of each
recording its own message), QoS 1, MQTT v5, with the device's certificate, key and client
id, on ``linetap/{device}/up/x/0`` (the ACL lets the device publish there):

- ``pub -f --repeat``: ``mosquitto_pub -f CHUNK --repeat N``, one process per recording.
  Stop-and-wait: in mosquitto 2.0.11 (client/pub_client.c) the next publish goes out
  from the PUBACK callback, and the loop polls with a 0 ms timeout meanwhile (busy).
- ``pub -l``: one ``mosquitto_pub -l`` fed every message as a line on stdin (the bytes
  contain no NUL or newline): publishes as fast as the broker's receive maximum (20)
  lets it. It sleeps 100 ms before its first publish.

Both are drained by ``mosquitto_sub -C total`` with an office client certificate on
``linetap/+/up/#`` (payload lengths only, read by this script), so both ends pay TLS. The
clock runs from the first mosquitto_pub's start ("wall"), or from the first message at the
subscriber ("steady", scaled by n/(n-1)), to the last message at the subscriber. The
peers run while neither our uploader (same client id: the broker would disconnect it)
nor our receiver (it would get the peer's messages) is connected. The peers store
nothing; ours parks (fsyncs) every chunk, then assembles and indexes each recording.

Repeats interleave the peers and ours; medians are printed, with each process's CPU s.

Run: .venv/bin/python bench/upload_throughput.py [--recordings 4] [--mib 16] [--repeats 3]
     [--chunk-kib 256] [--window 16] [--profile] [--receiver-nodelay]
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bench_common import children_cpu_s, print_table_header
from upload_common import (
    HOST,
    MB,
    MIB,
    BenchError,
    Processes,
    SingleDeviceChain,
    UploadSettings,
    add_synthetic,
    cores,
    parse_chain_args,
    print_profile,
    print_what_if,
    proc_cpu_s,
    start_receiver,
    start_single_device_chain,
    start_uploader,
    wait_until,
    workdir,
)

from buffers.outbox import OutboxState

PEER_SUB = "office-peer"
UPLOAD_TIMEOUT_S = 120.0


@dataclass
class Run:
    wall_s: float  # uploader start (ours) / first mosquitto_pub start (peer) → all done
    steady_s: float  # ours: first claim → all acked; peer: first → last message at the sub
    cpu: dict[str, float]


def run_ours(
    procs: Processes,
    chain: SingleDeviceChain,
    sizes: list[int],
    *,
    n: int,
    profile_dir: Path | None,
    nodelay: bool,
) -> Run:
    device, broker_pid = chain.device, chain.broker.pid
    add_synthetic(device, sizes, prefix=f"r{n}")
    before = device.count(OutboxState.ACKED)
    target = before + len(sizes)
    prof = (profile_dir / f"receiver-{n}.prof") if profile_dir else None
    receiver = start_receiver(procs, chain.office_toml, f"receiver-{n}", prof=prof, nodelay=nodelay)
    broker0 = proc_cpu_s(broker_pid)
    t0 = time.monotonic()
    uploader = start_uploader(
        procs,
        chain.device_toml,
        f"uploader-{n}",
        prof=(profile_dir / f"uploader-{n}.prof") if profile_dir else None,
    )
    t_claim = wait_until(
        lambda: device.count(OutboxState.SEALED) < len(sizes),
        UPLOAD_TIMEOUT_S,
        "the uploader's first claim",
        procs,
        interval=0.002,
    )
    t_done = wait_until(
        lambda: device.count(OutboxState.ACKED) >= target,
        UPLOAD_TIMEOUT_S,
        f"{len(sizes)} recordings acked",
        procs,
        interval=0.005,
    )
    cpu = {
        "uploader": uploader.cpu_s(),
        "receiver": receiver.cpu_s(),
        "mosquitto": proc_cpu_s(broker_pid) - broker0,
    }
    procs.stop(uploader)
    procs.stop(receiver)
    return Run(t_done - t0, t_done - t_claim, cpu)


class _Sub:
    """mosquitto_sub -d -F %l -C count: ready at its "Subscribed" line; notes when each
    payload (a line of digits: its length) arrives; done when it exits."""

    def __init__(self, argv: list[str]) -> None:
        self.ready = threading.Event()
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self.lines: list[str] = []
        self.arrivals: list[float] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            now = time.monotonic()
            line = raw.decode(errors="replace").rstrip()
            if line.isdigit():
                self.arrivals.append(now)
                continue
            if len(self.lines) < 200:
                self.lines.append(line)
            if line.startswith("Subscribed"):
                self.ready.set()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.thread.join(timeout=5)


def _filler(size: int) -> bytes:
    """``size`` bytes with neither NUL nor newline (mosquitto_pub -l uses fgets/strlen)."""
    return (bytes(range(32, 127)) * (size // 95 + 1))[:size]


@dataclass(frozen=True)
class PeerInput:
    """The peer's messages: per mosquitto_pub -f run (file, repeat count), and all of
    them as the lines of one file for mosquitto_pub -l; ``total`` messages."""

    runs: list[tuple[Path, int]]
    lines: Path
    total: int


def peer_input(tmp: Path, sizes: list[int], chunk: int) -> PeerInput:
    full_bytes = _filler(chunk)
    full = tmp / "peer-chunk.bin"
    full.write_bytes(full_bytes)
    lines = tmp / "peer-lines.txt"
    runs: list[tuple[Path, int]] = []
    total = 0
    with lines.open("wb") as fh:
        for n, size in enumerate(sizes):
            count, tail = divmod(size, chunk)
            if count:
                runs.append((full, count))
                fh.write((full_bytes + b"\n") * count)
                total += count
            if tail:
                tail_file = tmp / f"peer-tail-{n}.bin"
                tail_file.write_bytes(_filler(tail))
                runs.append((tail_file, 1))
                fh.write(_filler(tail) + b"\n")
                total += 1
    return PeerInput(runs, lines, total)


def run_peer(mode: str, chain: SingleDeviceChain, messages: PeerInput) -> Run:
    """``repeat``: mosquitto_pub -f CHUNK --repeat N per recording (stop-and-wait);
    ``lines``: one mosquitto_pub -l with every message a line on stdin (windowed)."""
    office, device, port, broker_pid = chain.office, chain.device, chain.port, chain.broker.pid
    tls = ["-h", HOST, "-p", str(port), "-V", "mqttv5", "-q", "1", "--cafile", str(office.ca_file)]
    sub_cert, sub_key = office.client_files(PEER_SUB)
    total = messages.total
    base = [
        "mosquitto_pub",
        *tls,
        "--cert",
        str(device.cert),
        "--key",
        str(device.tls_key),
        "-i",
        device.device_id,
        "-t",
        f"linetap/{device.device_id}/up/x/0",
    ]
    pubs: list[list[str]] = []
    if mode == "lines":
        pubs.append([*base, "-l"])
    else:
        for path, count in messages.runs:
            pubs.append([*base, "-f", str(path), *(["--repeat", str(count)] if count > 1 else [])])
    sub = _Sub(
        [
            "stdbuf",
            "-oL",
            "mosquitto_sub",
            *tls,
            "--cert",
            str(sub_cert),
            "--key",
            str(sub_key),
            "-i",
            PEER_SUB,
            "-t",
            "linetap/+/up/#",
            "-C",
            str(total),
            "-W",
            str(int(UPLOAD_TIMEOUT_S)),
            "-d",
            "-F",
            "%l",
        ]
    )
    try:
        if not sub.ready.wait(15):
            raise BenchError("mosquitto_sub did not subscribe:\n" + "\n".join(sub.lines))
        broker0 = proc_cpu_s(broker_pid)
        children0 = children_cpu_s()
        t0 = time.monotonic()
        for argv in pubs:
            with messages.lines.open("rb") as stdin:
                done = subprocess.run(
                    argv,
                    stdin=stdin if mode == "lines" else subprocess.DEVNULL,
                    capture_output=True,
                    check=False,
                    timeout=UPLOAD_TIMEOUT_S,
                )
            if done.returncode or done.stderr:
                raise BenchError(
                    f"{' '.join(argv)}: exit {done.returncode}: "
                    + done.stderr.decode(errors="replace")
                )
        rc = sub.proc.wait(timeout=UPLOAD_TIMEOUT_S)
        children = children_cpu_s() - children0
        sub.thread.join(timeout=5)
        if rc != 0 or len(sub.arrivals) != total:
            raise BenchError(
                f"mosquitto_sub exit {rc}, {len(sub.arrivals)}/{total} messages:\n"
                + "\n".join(sub.lines[-20:])
            )
        t_last = sub.arrivals[-1]
        steady = (t_last - sub.arrivals[0]) * total / max(1, total - 1)
        cpu = {"pub+sub": children, "mosquitto": proc_cpu_s(broker_pid) - broker0}
        return Run(t_last - t0, steady, cpu)
    finally:
        sub.stop()


PEERS = ("repeat", "lines")
LABELS = {"ours": "ours", "repeat": "pub -f --repeat", "lines": "pub -l"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--recordings", type=int, default=4, help="recordings per run (4)")
    parser.add_argument("--mib", type=float, default=16, help="MiB per recording (16)")
    parser.add_argument("--chunk-kib", type=int, default=256, help="upload.chunk_kib (256)")
    parser.add_argument("--window", type=int, default=16, help="upload.window (16)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each (median; 3)")
    parser.add_argument("--profile", action="store_true", help="cProfile uploader + receiver")
    args = parse_chain_args(parser, argv)
    for tool in ("mosquitto_pub", "mosquitto_sub", "stdbuf"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found (apt install mosquitto-clients coreutils)")
    chunk = args.chunk_kib * 1024
    sizes = [round(args.mib * MIB)] * args.recordings
    runs: dict[str, list[Run]] = {"ours": [], **{m: [] for m in PEERS}}
    wall = time.monotonic()
    with workdir(args.keep, "linetap-upload-tput-") as tmp, Processes(tmp / "logs") as procs:
        settings = UploadSettings(chunk_kib=args.chunk_kib, window=args.window)
        chain = start_single_device_chain(procs, tmp, settings, other_clients=[PEER_SUB])
        profile_dir = tmp if args.profile else None
        messages = peer_input(tmp, sizes, chunk)
        for n in range(args.repeats):
            for mode in PEERS:
                runs[mode].append(run_peer(mode, chain, messages))
            runs["ours"].append(
                run_ours(
                    procs,
                    chain,
                    sizes,
                    n=n,
                    profile_dir=profile_dir,
                    nodelay=args.receiver_nodelay,
                )
            )
        wall = time.monotonic() - wall
        report(args, sum(sizes), runs, wall)
        if args.profile:
            last = args.repeats - 1
            print_profile(tmp / f"uploader-{last}.prof", f"uploader, run {last + 1}")
            print_profile(tmp / f"receiver-{last}.prof", f"receiver, run {last + 1}")
    return 0


def _mbps(total: int, seconds: float) -> float:
    return total / MB / seconds


def report(args: argparse.Namespace, total: int, runs: dict[str, list[Run]], wall: float) -> None:
    print(
        f"upload throughput on loopback over mTLS (mosquitto {_mosquitto_version()}): "
        f"{args.recordings} x {args.mib:g} MiB = {total / MB:.1f} MB per run, "
        f"{args.chunk_kib} KiB messages, QoS 1, our window {args.window}; "
        f"{args.repeats} runs each, interleaved; {cores()} CPU cores"
    )
    print_what_if(args)
    names = list(runs)
    print_table_header(
        "MB/s (wall | steady)".ljust(21) + "".join(f"{LABELS[k]:>20}" for k in names)
    )
    rows = [(f"run {n + 1}", [runs[k][n] for k in names]) for n in range(args.repeats)]
    for label, cells in rows:
        print(
            label.ljust(21)
            + "".join(
                f"{_mbps(total, r.wall_s):>12.1f} | {_mbps(total, r.steady_s):>5.1f}" for r in cells
            )
        )
    med_wall = {k: statistics.median(r.wall_s for r in runs[k]) for k in names}
    med_steady = {k: statistics.median(r.steady_s for r in runs[k]) for k in names}
    print(
        "median".ljust(21)
        + "".join(
            f"{_mbps(total, med_wall[k]):>12.1f} | {_mbps(total, med_steady[k]):>5.1f}"
            for k in names
        )
    )
    print(
        "ours / peer".ljust(21)
        + " " * 20
        + "".join(
            f"{med_wall[k] / med_wall['ours']:>12.2f} | {med_steady[k] / med_steady['ours']:>5.2f}"
            for k in PEERS
        )
    )
    print()
    print_table_header("CPU s (median)".ljust(21) + "".join(f"{LABELS[k]:>20}" for k in names))
    parts: dict[str, tuple[str, ...]] = {"ours": ("uploader", "receiver", "mosquitto")}
    for k in PEERS:
        parts[k] = ("pub+sub", "mosquitto")
    for part in ("uploader", "receiver", "pub+sub", "mosquitto"):
        texts: list[str] = []
        for k in names:
            have = part in parts[k]
            value = statistics.median(r.cpu[part] for r in runs[k]) if have else None
            texts.append(f"{value:>20.2f}" if value is not None else f"{'':>20}")
        print(part.ljust(21) + "".join(texts))
    print(
        "\nwall = bytes / (start -> last byte delivered): ours from the uploader process "
        "start to the last recording acked on the device (stored, fsynced, indexed); peers "
        "from the first mosquitto_pub start to mosquitto_sub's last message. steady = from "
        "our first claim (after Python start-up, TLS, CONNACK/SUBACK) / from the peer's "
        "first message at the subscriber (scaled by n/(n-1)). "
        "pub -f --repeat = mosquitto_pub -f CHUNK --repeat N, one process per recording: "
        "stop-and-wait QoS 1, and it busy-polls (mosquitto_loop timeout 0) while waiting for "
        "each PUBACK. pub -l = one mosquitto_pub -l fed the same messages as lines on stdin: "
        "QoS 1 with up to the broker's receive maximum (20) in flight; it sleeps 100 ms "
        "before its first publish. The peers store nothing; ours parks every chunk "
        "(fsync), assembles, fsyncs and indexes each recording before its ack. "
        "ours / peer = peer time / our time (above 1: ours is faster). MB = 10^6 bytes. "
        "CPU s = user+system over the timed part (mosquitto: its delta). "
        f"Total {wall:.1f} s wall."
    )


def _mosquitto_version() -> str:
    try:
        out = subprocess.run(
            ["mosquitto_pub", "--help"], capture_output=True, text=True, check=False
        ).stdout
    except OSError:
        return "?"
    m = re.search(r"version (\S+)", out)
    return m.group(1) if m else "?"


if __name__ == "__main__":
    sys.exit(main())
