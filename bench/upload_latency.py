"""Hang-up → ack latency of a 5-minute call over the real mTLS chain, in parts, before vs after.

Two chains run side by side: "before" (``linetap upload`` and ``linetap-office serve`` of
the code in ``--before DIR``, default ``git archive HEAD``) and "after" (this tree's),
each with its own broker, office and device. The calls alternate between them (before,
after, then after, before, …), so machine load hits both alike. Start-up is outside
every figure on both sides: all processes are started, connected and idle before the
first call (a warm-up call per side is not counted).

This process plays each device's recorder sink: a :class:`firmware.sealing.SealingSink`
made from the device's config (``firmware.app.make_sealing_sink``: the enrolled device
key, the office's age recipient, the device's journal, chain and outbox) — this tree's
sealing code on both sides, so the sink's part is the same code and the comparison is
of delivery. Then per call:

1. ``sink.open``, ``--seconds`` of speech written in capture periods (the recorder's
   default, 100 ms) with a ``sink.poll()`` each, as the recorder does (not timed; the
   uploader is idle meanwhile);
2. a random pause of 0..``--jitter`` s, so the hang-up falls at a random phase of the
   uploader's idle outbox rescan (before: every 1 s; after: the uploader is woken by
   inotify on ``outbox/sealed``);
3. hang-up: ``writer.close(end)`` and then one ``sink.poll()`` per capture period, paced in
   real time, until the sink has sealed the recording into ``outbox/sealed`` — the
   sink's part (stream finished + fsynced, blob hashed in 256 KiB slices per poll,
   signed manifest, outbox commit);
4. the bench watches the entry (every 1 ms) move to ``uploading/`` (the uploader's claim)
   and to ``acked/``; times are the outbox's own ``sealed_at`` / ``acked_at`` (wall clock).

The first call per side is a warm-up and not counted. Before step 3 the recorder has already
waited ``call.flash_max_ms`` after the on-hook edge (a shorter on-hook is a hook flash,
not a hang-up) plus up to one capture period; that constant is added for the
edge-to-ack figure.

The speech is espeak-ng tiled to ``--seconds``, band-limited and at 8 kHz (built and cached
by bench/sealing_rtf.py in ``$TMPDIR/linetap-bench/``); without espeak-ng/sox, noise.

Run: .venv/bin/python bench/upload_latency.py [--calls 100] [--seconds 300] [--codec flac]
     [--before DIR]
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt
from bench_common import print_table_header
from sealing_rtf import (
    PERIOD,
    RATE,
    load_audio,
    recording_end,
    recording_start,
    speech_wav,
    write_periods,
)
from upload_common import (
    DEVICE,
    BenchError,
    Processes,
    UploadSettings,
    before_tree,
    cores,
    log_has,
    parse_chain_args,
    print_what_if,
    start_receiver,
    start_single_device_chain,
    start_uploader,
    wait_until,
    workdir,
)

from buffers.outbox import OutboxState
from firmware.app import make_sealing_sink
from firmware.config import CallConfig, load_config
from firmware.recorder import StorageHealth
from firmware.sealing import SealingSink
from sealedrec.manifest import BLOB_AGE

PERIOD_S = PERIOD / RATE
PREROLL_S = 5.0
ACK_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Call:
    seal_s: float  # close → committed in outbox/sealed (sealed_at - hang-up)
    seal_polls: int
    seal_cpu_s: float
    pickup_s: float | None  # sealed_at → claimed (seen in uploading/)
    transfer_s: float | None  # claimed → acked_at
    outbox_to_ack_s: float  # acked_at - sealed_at
    close_to_ack_s: float  # acked_at - hang-up
    blob_bytes: int


@dataclass
class Side:
    """One chain: its code tree (None: this one), the sink feeding its outbox, its calls."""

    name: str
    sink: SealingSink
    calls: list[Call] = field(default_factory=list)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


def one_call(
    sink: SealingSink,
    audio: npt.NDArray[np.int16],
    rec: str,
    *,
    jitter: float,
    procs: Processes,
    rng: random.Random,
) -> Call:
    start = recording_start(
        rec, device_id=DEVICE, started_utc=_iso(time.time()), preroll_s=PREROLL_S
    )
    writer = sink.open(start)
    write_periods(sink, writer, audio)
    time.sleep(rng.uniform(0.0, jitter))

    hang_wall = time.time()
    m0, c0 = time.monotonic(), time.process_time()
    writer.close(recording_end(int(audio.shape[0]), ended_utc=_iso(hang_wall)))
    polls = 0
    while True:
        sink.poll()  # the recorder polls its sink once per capture period
        polls += 1
        if not sink.pending:
            break
        time.sleep(max(0.0, m0 + polls * PERIOD_S - time.monotonic()))
    seal_cpu = time.process_time() - c0

    entry = sink.outbox.find(rec)
    if entry is None:
        raise BenchError(f"{rec}: not in the outbox after sealing")
    name = entry.path.name
    uploading = sink.outbox.state_dir(OutboxState.UPLOADING) / name
    acked = sink.outbox.state_dir(OutboxState.ACKED) / name
    claimed: float | None = None
    deadline = time.monotonic() + ACK_TIMEOUT_S
    while not acked.exists():
        if claimed is None and uploading.exists():
            claimed = time.time()
        if time.monotonic() > deadline:
            raise BenchError(f"{rec}: not acked within {ACK_TIMEOUT_S:g} s\n{procs.tails()}")
        procs.check_alive()
        time.sleep(0.001)
    done = sink.outbox.find(rec)
    if done is None or done.acked_at is None:
        raise BenchError(f"{rec}: acked but no acked_at")
    return Call(
        seal_s=entry.sealed_at - hang_wall,
        seal_polls=polls,
        seal_cpu_s=seal_cpu,
        pickup_s=claimed - entry.sealed_at if claimed is not None else None,
        transfer_s=done.acked_at - claimed if claimed is not None else None,
        outbox_to_ack_s=done.acked_at - entry.sealed_at,
        close_to_ack_s=done.acked_at - hang_wall,
        blob_bytes=(done.path / BLOB_AGE).stat().st_size,
    )


def _audio(seconds: int, fresh: bool) -> tuple[npt.NDArray[np.int16], str]:
    if shutil.which("espeak-ng") and shutil.which("sox"):
        wav = speech_wav(seconds, fresh=fresh)
        return load_audio(wav), f"speech ({wav})"
    rng = np.random.default_rng(seconds)
    noise = np.clip(rng.normal(0, 3000, seconds * RATE), -32768, 32767).astype(np.int16)
    return noise, "noise (espeak-ng/sox not found)"


def p99(values: list[float]) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[98]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=100, help="measured calls per side (100)")
    parser.add_argument("--seconds", type=int, default=300, help="call length in s (300)")
    parser.add_argument("--codec", choices=["flac", "opus"], default="flac")
    parser.add_argument("--jitter", type=float, default=1.0, help="random pause 0..J s (1.0)")
    parser.add_argument("--fresh-audio", action="store_true", help="rebuild the speech sample")
    parser.add_argument(
        "--before", type=Path, default=None, help="code tree to compare (git archive HEAD)"
    )
    args = parse_chain_args(parser, argv)
    audio, what = _audio(args.seconds, args.fresh_audio)
    rng = random.Random(1)
    wall = time.monotonic()
    with workdir(args.keep, "linetap-upload-lat-") as tmp, Processes(tmp / "logs") as procs:
        old_tree, trees_line = before_tree(args.before)
        sides = [
            _start_side(procs, tmp, name, tree, args)
            for name, tree in (("before", old_tree), ("after", None))
        ]
        for n in range(args.calls + 1):
            for side in sides if n % 2 == 0 else reversed(sides):
                call = one_call(
                    side.sink,
                    audio,
                    f"call-{n:03d}-{side.name}",
                    jitter=args.jitter,
                    procs=procs,
                    rng=rng,
                )
                if n:  # call 0 warms up (first index write, first TLS session use, caches)
                    side.calls.append(call)
        for side in sides:
            side.sink.close()
    wall = time.monotonic() - wall
    print(trees_line)
    report(args, sides, what, wall)
    return 0


def _start_side(
    procs: Processes, tmp: Path, name: str, tree: Path | None, args: argparse.Namespace
) -> Side:
    """A chain for one side, connected and idle; its sink made in this process."""
    chain = start_single_device_chain(
        procs, tmp / name, UploadSettings(codec=args.codec), broker_name=f"mosquitto-{name}"
    )
    sink = make_sealing_sink(load_config(chain.device_toml), StorageHealth(), chain.device.key)
    start_receiver(
        procs, chain.office_toml, f"receiver-{name}", nodelay=args.receiver_nodelay, tree=tree
    )
    uploader = start_uploader(procs, chain.device_toml, f"uploader-{name}", tree=tree)
    wait_until(lambda: log_has(uploader, "connected to"), 20, f"the {name} uploader", procs)
    return Side(name, sink)


def report(args: argparse.Namespace, sides: list[Side], audio: str, wall: float) -> None:
    flash_ms = CallConfig.model_fields["flash_max_ms"].default
    sizes = [c.blob_bytes for side in sides for c in side.calls]
    print(
        f"hang-up -> ack latency: {len(sides[0].calls)} calls of {args.seconds} s "
        f"({args.codec}) per side, interleaved; sealed size median "
        f"{statistics.median(sizes) / 1e6:.2f} MB ({min(sizes):,}-{max(sizes):,} bytes); "
        f"loopback mTLS broker, uploader and receiver already connected (start-up outside "
        f"the figures on both sides); {cores()} CPU cores"
    )
    print(f"audio: {audio}")
    print_what_if(args)
    print_table_header(f"{'part (ms)':<44}{'side':>7}{'min':>8}{'median':>8}{'p99':>8}{'max':>8}")

    def rows(label: str, pick: Callable[[Call], float | None]) -> None:
        for side in sides:
            ms = [v * 1000 for c in side.calls if (v := pick(c)) is not None]
            if not ms:
                continue
            print(
                f"{label:<44}{side.name:>7}{min(ms):>8.0f}{statistics.median(ms):>8.0f}"
                f"{p99(ms):>8.0f}{max(ms):>8.0f}"
            )
            label = ""

    rows("sink: close -> in outbox/sealed", lambda c: c.seal_s)
    rows("  (sink CPU for that)", lambda c: c.seal_cpu_s)
    rows("outbox -> uploader claims it", lambda c: c.pickup_s)
    rows("claim -> acked (init..fin, store, ack)", lambda c: c.transfer_s)
    rows("outbox -> acked (sealed_at -> acked_at)", lambda c: c.outbox_to_ack_s)
    rows("close -> acked (hang-up known -> ack)", lambda c: c.close_to_ack_s)
    rows(
        f"on-hook edge -> acked (+{flash_ms} ms flash_max)",
        lambda c: c.close_to_ack_s + flash_ms / 1000,
    )
    by = {side.name: side for side in sides}
    if "before" in by and "after" in by:
        ratios: list[tuple[str, Callable[[Call], float]]] = [
            ("outbox -> acked", lambda c: c.outbox_to_ack_s),
            ("close -> acked", lambda c: c.close_to_ack_s),
        ]
        for what, pick in ratios:
            before = [pick(c) for c in by["before"].calls]
            after = [pick(c) for c in by["after"].calls]
            print(
                f"after/before, {what}: median {statistics.median(after) / statistics.median(before):.2f}, "
                f"p99 {p99(after) / p99(before):.2f}"
            )
    polls = [c.seal_polls for side in sides for c in side.calls]
    print(
        f"\nThe sink sealed each call in {min(polls)}-{max(polls)} capture periods "
        f"(one poll per {PERIOD_S * 1000:.0f} ms, as the recorder polls it). "
        "Before, the uploader looks at an idle outbox every 1 s (the pickup part is uniform "
        "over that); after, inotify on outbox/sealed wakes it. "
        f"The recorder ends a call {flash_ms} ms after the on-hook edge (call.flash_max_ms; "
        f"shorter on-hooks are hook flashes), plus up to one {PERIOD_S * 1000:.0f} ms period; "
        "that is the "
        "constant in the last row. p99 of "
        f"{len(sides[0].calls)} samples per side is interpolated next to the largest. "
        f"Total {wall:.1f} s wall."
    )


if __name__ == "__main__":
    sys.exit(main())
