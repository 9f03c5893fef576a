"""An honest device's upload latency while an enrolled but hostile device floods the office.

Set-up (once): an office with small ``[limits]`` (``--max-open-uploads``,
``--max-parked-mib``), a private mosquitto with the office's mTLS + ACL config on
127.0.0.1, ``linetap-office serve``, device B (honest: ``linetap upload``, 64 KiB chunks)
and one hostile device per flood kind, each enrolled like a real appliance (its stolen
certificate and signing key: tests/office_harness.py's ``HostileDevice``), so one flood's
leftovers (open uploads, quota state) do not change another's.

Per case, B gets ``--recordings`` small signed recordings at once; the uploader sends
them one after another (init, chunk, fin, stored ack), so the gap between consecutive
``acked_at`` stamps in B's outbox is one recording's init -> stored-ack time plus the
uploader's bookkeeping (the first recording, which also waits for the uploader's idle
outbox rescan, is not counted). Cases, interleaved and repeated ``--rounds`` times:

- no flood (before each flood case);
- chunks without init: 64 KiB chunks with a valid sha256 property for random ids;
- never-finishing inits: validly signed 1 MiB inits and 3 chunks each, never a fin;
- fins burst: fins for one incomplete upload;
- garbage JSON: 5,000 ``[``, 5,000-digit integers, random bytes on init/fin topics.

Each flood runs in a thread from ``--lead-s`` before B's batch until B's last ack, paced
to at most ``--flood-rate`` messages/s (so it lasts through the batch instead of being
queued at the broker in a fraction of a second) and bounded by ``--flood-max`` messages
and ``--flood-s`` seconds (the table says so when a bound ended it before B was done).
After it stops, the attacker sends one plain signed init and waits for its ack: the
"backlog s" column is how long the office needed to work off what the flood left queued,
and the next case starts only then. At the end: the bytes under the store's ``parking/``
after each never-finishing-init flood, against ``max_parked_bytes``. Everything runs on
127.0.0.1; every process started is stopped at exit.

Run: .venv/bin/python bench/office_flood.py [--recordings 30] [--rounds 3] [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench_common import print_table_header
from upload_common import (
    DEVICE,
    HOST,
    RECEIVER,
    BenchError,
    Device,
    Processes,
    UploadSettings,
    add_synthetic,
    cores,
    enroll_device,
    log_has,
    make_office,
    parse_chain_args,
    start_broker,
    start_receiver,
    start_uploader,
    wait_until,
    workdir,
    write_device_toml,
)

from buffers.outbox import OutboxState
from sealedrec.manifest import GENESIS_HASH, manifest_hash
from tests.mqtt_broker import Broker
from tests.office_harness import (
    DeviceKeys,
    HostileDevice,
    enroll_hostile,
    fin_payload,
    hostile_manifest,
    parked_bytes,
    random_rec,
    up_topic,
)

KIB = 1024
MIB = 1024 * KIB
CHUNK = 64 * KIB
SMALL_BYTES = 20_000  # B's recordings: one 64 KiB chunk each
ACK_TIMEOUT_S = 120.0
NO_FLOOD = "no flood"


@dataclass
class FloodStats:
    sent: int = 0
    seconds: float = 0.0
    hit_bound: bool = False  # stopped by --flood-max / --flood-s before B was done
    backlog_s: float = 0.0  # after the flood stopped, until the office answered this device
    first_ack_s: float = 0.0  # B's batch added -> its first recording acked
    acks: Counter[str] = field(default_factory=Counter)
    error: str = ""


@dataclass(frozen=True)
class Bounds:
    limit: int  # messages at most
    seconds: float  # and this long at most
    rate: float  # messages per second at most (so a flood lasts through B's batch)


Flood = Callable[["Attacker", threading.Event, Bounds], FloodStats]


class Attacker:
    """A hostile device for one flood kind: its MQTT identity and its signing chain."""

    def __init__(self, h: HostileDevice, keys: DeviceKeys) -> None:
        self.h = h
        self.keys = keys
        self.seq = 1
        self.prev = GENESIS_HASH
        self.stall_rec = random_rec("stall")
        self.sentinel: tuple[str, dict[str, object], str] | None = None

    def signed(self, rec: str, blob: bytes) -> dict[str, object]:
        manifest = hostile_manifest(
            self.keys.signing_key, self.keys.device_id, rec, blob=blob, seq=self.seq, prev=self.prev
        )
        self.prev = manifest_hash(manifest)
        self.seq += 1
        return manifest

    def caught_up(self, timeout: float) -> float:
        """Send a signed init and wait for its ack: the office answers it only after
        every message of this device queued before it (one subscriber, broker order).
        Returns the seconds that took (how long the flood's backlog outlived it)."""
        if self.sentinel is None:
            blob = os.urandom(KIB)
            rec = random_rec("sentinel")
            self.sentinel = (rec, self.signed(rec, blob), hashlib.sha256(blob).hexdigest())
        rec, manifest, sha = self.sentinel
        topic = f"linetap/{self.keys.device_id}/ack/{rec}"
        t0 = time.monotonic()
        self.h.init(rec, manifest, blob_bytes=KIB, blob_sha256=sha, chunk_size=KIB)
        deadline = t0 + timeout
        while time.monotonic() < deadline:
            if any(m.topic == topic for m in self.h.probe.drain()):
                return time.monotonic() - t0
            time.sleep(0.01)
        raise BenchError(f"{self.keys.device_id}: no ack for a plain init within {timeout:g} s")

    def take_acks(self, stats: FloodStats) -> None:
        for msg in self.h.probe.drain():  # read and dropped: a flood's acks are not kept
            try:
                status = str(json.loads(msg.payload).get("status"))
            except (ValueError, AttributeError):
                status = "<not JSON>"
            stats.acks[status] += 1


def _run(
    attacker: Attacker,
    stop: threading.Event,
    bounds: Bounds,
    step: Callable[[int], int],
) -> FloodStats:
    """Call ``step(n)`` (returns messages sent) at most ``bounds.rate`` messages/s until
    stopped, ``bounds.limit`` messages or ``bounds.seconds``; collect the acks the
    attacker got meanwhile."""
    stats = FloodStats()
    t0 = time.monotonic()
    n = 0
    try:
        while not stop.is_set():
            if stats.sent >= bounds.limit or time.monotonic() - t0 > bounds.seconds:
                stats.hit_bound = True
                break
            ahead = t0 + stats.sent / bounds.rate - time.monotonic()
            if ahead > 0 and stop.wait(ahead):
                break
            stats.sent += step(n)
            n += 1
            if n % 50 == 0:
                attacker.take_acks(stats)
    except Exception as exc:  # noqa: BLE001 - reported in the table, the bench goes on
        stats.error = f"{type(exc).__name__}: {exc}"
    stats.seconds = time.monotonic() - t0
    time.sleep(0.2)
    attacker.take_acks(stats)
    return stats


def flood_chunks(a: Attacker, stop: threading.Event, bounds: Bounds) -> FloodStats:
    data = os.urandom(CHUNK)
    recs = [random_rec("noinit") for _ in range(64)]

    def step(n: int) -> int:
        a.h.chunk(recs[n % len(recs)], n // len(recs), data)
        return 1

    return _run(a, stop, bounds, step)


def flood_inits(a: Attacker, stop: threading.Event, bounds: Bounds) -> FloodStats:
    blob = os.urandom(MIB)
    sha = hashlib.sha256(blob).hexdigest()

    def step(_n: int) -> int:
        rec = random_rec("open")
        a.h.init(rec, a.signed(rec, blob), blob_bytes=len(blob), blob_sha256=sha, chunk_size=CHUNK)
        for i in range(3):
            a.h.chunk(rec, i, blob[i * CHUNK : (i + 1) * CHUNK])
        return 4

    return _run(a, stop, bounds, step)


def flood_fins(a: Attacker, stop: threading.Event, bounds: Bounds) -> FloodStats:
    blob = os.urandom(4 * CHUNK)
    sha = hashlib.sha256(blob).hexdigest()
    rec = a.stall_rec
    a.h.init(rec, a.signed(rec, blob), blob_bytes=len(blob), blob_sha256=sha, chunk_size=CHUNK)
    a.h.chunk(rec, 0, blob[:CHUNK])
    fin = fin_payload(rec, sha, 4)
    topic = up_topic(a.keys.device_id, rec, "fin")

    def step(_n: int) -> int:
        a.h.publish(topic, fin)
        return 1

    return _run(a, stop, bounds, step)


def flood_garbage(a: Attacker, stop: threading.Event, bounds: Bounds) -> FloodStats:
    device = a.keys.device_id
    digits = "9" * 5000

    def payloads(rec: str) -> Iterator[tuple[str, bytes]]:
        yield up_topic(device, rec, "init"), b"[" * 5000
        yield up_topic(device, rec, "fin"), b"[" * 5000
        yield (
            up_topic(device, rec, "init"),
            f'{{"v":1,"recording_id":"{rec}","chunk_count":{digits}}}'.encode(),
        )
        yield (
            up_topic(device, rec, "fin"),
            f'{{"v":1,"recording_id":"{rec}","chunk_count":{digits}}}'.encode(),
        )
        yield up_topic(device, rec, "init"), os.urandom(512)
        yield up_topic(device, rec, "fin"), b'{"v":1,"recording_id":' + b"\xff" * 64 + b"}"

    def step(_n: int) -> int:
        sent = 0
        for topic, payload in payloads(random_rec("junk")):
            a.h.publish(topic, payload)
            sent += 1
        return sent

    return _run(a, stop, bounds, step)


FLOODS: dict[str, Flood] = {
    "chunks without init": flood_chunks,
    "never-finishing inits": flood_inits,
    "fins burst": flood_fins,
    "garbage JSON": flood_garbage,
}


@dataclass
class Chain:
    procs: Processes
    device: Device
    root: Path
    attackers: dict[str, Attacker]


def b_batch(chain: Chain, n: int) -> tuple[float, list[float]]:
    """``n`` recordings into B's outbox at once; wait for all acks. Returns the seconds
    from the batch to its first ack (pickup by the idle uploader included) and the
    per-recording seconds (gaps between consecutive acked_at, the first left out)."""
    added = time.time()
    ids = add_synthetic(chain.device, [SMALL_BYTES + i for i in range(n)], prefix="b")
    acked_dir = chain.device.data / "outbox" / OutboxState.ACKED.value
    wait_until(
        lambda: len(os.listdir(acked_dir)) >= chain.device.next_seq - 1,
        ACK_TIMEOUT_S,
        f"B's {n} recordings acked",
        chain.procs,
        interval=0.01,
    )
    outbox = chain.device.outbox
    stamps = []
    for rec in ids:
        entry = outbox.find(rec)
        if entry is None or entry.acked_at is None:
            raise BenchError(f"{rec}: acked but no acked_at")
        stamps.append(entry.acked_at)
    stamps.sort()
    return stamps[0] - added, [b - a for a, b in itertools.pairwise(stamps)]


def one_case(chain: Chain, kind: str, args: argparse.Namespace) -> tuple[list[float], FloodStats]:
    if kind == NO_FLOOD:
        first, gaps = b_batch(chain, args.recordings)
        return gaps, FloodStats(first_ack_s=first)
    stop = threading.Event()
    result: list[FloodStats] = []
    flood = FLOODS[kind]
    attacker = chain.attackers[kind]
    bounds = Bounds(args.flood_max, args.flood_s, args.flood_rate)
    thread = threading.Thread(
        target=lambda: result.append(flood(attacker, stop, bounds)),
        name=f"flood {kind}",
        daemon=True,
    )
    thread.start()
    try:
        time.sleep(args.lead_s)  # the flood is under way before B starts
        first, gaps = b_batch(chain, args.recordings)
    finally:
        stop.set()
        thread.join(timeout=args.flood_s + 30)
    chain.procs.check_alive()
    stats = result[0] if result else FloodStats(error="flood thread did not finish")
    # The next case starts only once the office has worked off this flood.
    stats.backlog_s = attacker.caught_up(ACK_TIMEOUT_S)
    stats.first_ack_s = first
    return gaps, stats


def settle_parking(root: Path, timeout: float = 10.0) -> int:
    """Bytes under parking/ once they stop changing (serve has worked off the flood)."""
    last, stable_since = -1, time.monotonic()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = parked_bytes(root)
        if now != last:
            last, stable_since = now, time.monotonic()
        elif time.monotonic() - stable_since > 0.5:
            break
        time.sleep(0.05)
    return last


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--recordings", type=int, default=30, help="B's recordings per case (30)")
    parser.add_argument("--rounds", type=int, default=3, help="repeats of the interleaving (3)")
    parser.add_argument("--flood-max", type=int, default=30000, help="messages per flood (30000)")
    parser.add_argument(
        "--flood-rate", type=float, default=1000.0, help="flood messages/s at most (1000)"
    )
    parser.add_argument("--flood-s", type=float, default=60.0, help="seconds per flood at most")
    parser.add_argument("--lead-s", type=float, default=0.5, help="flood start before B's batch")
    parser.add_argument("--max-open-uploads", type=int, default=4, help="office [limits] (4)")
    parser.add_argument("--max-parked-mib", type=int, default=8, help="office [limits] (8)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 6 recordings, 1 round")
    args = parse_chain_args(parser, argv)
    if args.quick:
        args.recordings, args.rounds, args.flood_max, args.flood_s = 6, 1, 5000, 20.0
    if args.recordings < 2:
        parser.error("--recordings must be at least 2 (the first one is not counted)")
    max_parked = args.max_parked_mib * MIB
    samples: dict[str, list[float]] = {NO_FLOOD: [], **{k: [] for k in FLOODS}}
    floods: dict[str, list[FloodStats]] = {NO_FLOOD: [], **{k: [] for k in FLOODS}}
    parking_after: list[int] = []
    wall = time.monotonic()
    with workdir(args.keep, "linetap-office-flood-") as tmp, Processes(tmp / "logs") as procs:
        office = make_office(tmp / "office", [RECEIVER])
        device = enroll_device(office, DEVICE, tmp / "device")
        hostile_keys = {
            kind: enroll_hostile(office.root, tmp / f"hostile-{n}", f"hostile-{n}")
            for n, kind in enumerate(FLOODS)
        }
        port, broker_proc = start_broker(procs, office, tmp)
        office_toml = office.write_office_toml(tmp / "office.toml", port, RECEIVER)
        with office_toml.open("a") as fh:
            fh.write(
                f"\n[limits]\nmax_open_uploads = {args.max_open_uploads}\n"
                f"max_parked_bytes = {max_parked}\n"
            )
        device_toml = write_device_toml(
            device, office, tmp / "device.toml", port, UploadSettings(chunk_kib=CHUNK // KIB)
        )
        start_receiver(procs, office_toml, RECEIVER)
        uploader = start_uploader(procs, device_toml, "uploader")
        wait_until(lambda: log_has(uploader, "connected to"), 20, "the uploader", procs)
        broker = Broker(
            HOST,
            port,
            broker_proc.popen,
            office.root / "broker" / "mosquitto.conf",
            broker_proc.log,
        )
        hostiles = [
            HostileDevice.connect(broker, keys, office.ca_file) for keys in hostile_keys.values()
        ]
        try:
            chain = Chain(
                procs,
                device,
                office.root,
                {
                    kind: Attacker(h, hostile_keys[kind])
                    for kind, h in zip(FLOODS, hostiles, strict=True)
                },
            )
            b_batch(chain, 2)  # warm-up: first index write, TLS sessions, caches
            for _ in range(args.rounds):
                for kind in FLOODS:
                    for case in (NO_FLOOD, kind):
                        gaps, stats = one_case(chain, case, args)
                        samples[case] += gaps
                        floods[case].append(stats)
                    if kind == "never-finishing inits":
                        parking_after.append(settle_parking(office.root))
        finally:
            for h in hostiles:
                h.probe.close()
    report(
        args,
        samples=samples,
        floods=floods,
        parking_after=parking_after,
        max_parked=max_parked,
        wall=time.monotonic() - wall,
    )
    return 0


def report(
    args: argparse.Namespace,
    *,
    samples: dict[str, list[float]],
    floods: dict[str, list[FloodStats]],
    parking_after: list[int],
    max_parked: int,
    wall: float,
) -> None:
    print(
        f"device B's per-recording upload time (init -> stored ack, {SMALL_BYTES // 1000} KB "
        f"recordings, {args.recordings} per case, first of each batch not counted; "
        "'1st ack s': "
        f"the worst batch-added -> first-ack time, idle-uploader pickup included), with and "
        f"without a flood by an enrolled hostile device; {args.rounds} round(s) interleaved; "
        f"loopback mTLS broker; office [limits] max_open_uploads = {args.max_open_uploads}, "
        f"max_parked_bytes = {max_parked:,}; {cores()} CPU cores"
    )
    print_table_header(
        f"{'case':<24}{'n':>5}{'min ms':>9}{'median ms':>11}{'max ms':>9}{'flood/no-flood':>16}"
        f"{'1st ack s':>11}{'flood msgs':>12}{'msgs/s':>9}{'backlog s':>11}  acks to the attacker"
    )
    base = statistics.median(samples[NO_FLOOD]) if samples[NO_FLOOD] else float("nan")
    for kind, values in samples.items():
        if not values:
            continue
        med = statistics.median(values)
        runs = floods[kind]
        line = (
            f"{kind:<24}{len(values):>5}{min(values) * 1000:>9.1f}{med * 1000:>11.1f}"
            f"{max(values) * 1000:>9.0f}"
        )
        first = f"{max(s.first_ack_s for s in runs):>11.2f}"
        if kind == NO_FLOOD:
            print(f"{line}{'1.00':>16}{first}")
            continue
        sent = sum(s.sent for s in runs)
        secs = sum(s.seconds for s in runs)
        acks: Counter[str] = Counter()
        for s in runs:
            acks += s.acks
        ack_text = ", ".join(f"{k} {v}" for k, v in sorted(acks.items())) or "none"
        backlog = max(s.backlog_s for s in runs)
        rate = sent / secs if secs else 0.0
        print(f"{line}{med / base:>16.2f}{first}{sent:>12}{rate:>9.0f}{backlog:>11.2f}  {ack_text}")
        for s in runs:
            if s.hit_bound:
                print(
                    f"  ({kind}: a flood hit its bound before B was done: {s.sent} msgs, {s.seconds:.1f} s)"
                )
            if s.error:
                print(f"  ({kind}: the flood stopped on {s.error})")
    if parking_after:
        print(
            f"\nbytes under the store's parking/ after each never-finishing-init flood: "
            f"{', '.join(f'{b:,}' for b in parking_after)} "
            f"(max_parked_bytes = {max_parked:,} per device; "
            f"{max(parking_after) / max_parked:.2f} of it at most)"
        )
    print(f"Total {wall:.1f} s wall.")


if __name__ == "__main__":
    sys.exit(main())
