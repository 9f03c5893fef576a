"""Hang-up → ack latency of a 5-minute call over the real mTLS chain, in parts.

One process plays the recorder's sink: a :class:`firmware.sealing.SealingSink` made from
the device's config (``firmware.app.make_sealing_sink``: the enrolled device key, the
office's age recipient, the device's journal, chain and outbox). ``linetap-office serve``
and ``linetap upload`` run as subprocesses, connected and idle. Then per call:

1. ``sink.open``, ``--seconds`` of speech written in 20 ms periods with a ``sink.poll()``
   each, as the recorder does (not timed; the uploader is idle meanwhile);
2. a random pause of 0..``--jitter`` s, so the hang-up falls at a random phase of the
   uploader's idle outbox rescan;
3. hang-up: ``writer.close(end)`` and then one ``sink.poll()`` per 20 ms period, paced in
   real time, until the sink has sealed the recording into ``outbox/sealed`` — the
   sink's part (stream finished + fsynced, blob hashed in 256 KiB slices per poll,
   signed manifest, outbox commit);
4. the bench watches the entry (every 1 ms) move to ``uploading/`` (the uploader's claim)
   and to ``acked/``; times are the outbox's own ``sealed_at`` / ``acked_at`` (wall clock).

The first call is a warm-up and not counted. Before step 3 the recorder has already
waited ``call.flash_max_ms`` after the on-hook edge (a shorter on-hook is a hook flash,
not a hang-up) plus up to one capture period; that constant is added for the
edge-to-ack figure.

The speech is espeak-ng tiled to ``--seconds``, band-limited and at 8 kHz (built and cached
by bench/sealing_rtf.py in ``$TMPDIR/linetap-bench/``); without espeak-ng/sox, noise.

Run: .venv/bin/python bench/upload_latency.py [--calls 20] [--seconds 300] [--codec flac]
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime

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
    RECEIVER,
    BenchError,
    Processes,
    UploadSettings,
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
from uploader.client import IDLE_RESCAN_S

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
    parser.add_argument("--calls", type=int, default=20, help="measured calls (20)")
    parser.add_argument("--seconds", type=int, default=300, help="call length in s (300)")
    parser.add_argument("--codec", choices=["flac", "opus"], default="flac")
    parser.add_argument("--jitter", type=float, default=1.0, help="random pause 0..J s (1.0)")
    parser.add_argument("--fresh-audio", action="store_true", help="rebuild the speech sample")
    args = parse_chain_args(parser, argv)
    audio, what = _audio(args.seconds, args.fresh_audio)
    rng = random.Random(1)
    calls: list[Call] = []
    wall = time.monotonic()
    with workdir(args.keep, "linetap-upload-lat-") as tmp, Processes(tmp / "logs") as procs:
        chain = start_single_device_chain(procs, tmp, UploadSettings(codec=args.codec))
        sink = make_sealing_sink(load_config(chain.device_toml), StorageHealth(), chain.device.key)
        start_receiver(procs, chain.office_toml, RECEIVER, nodelay=args.receiver_nodelay)
        uploader = start_uploader(procs, chain.device_toml, "uploader")
        wait_until(lambda: log_has(uploader, "connected to"), 20, "the uploader", procs)
        for n in range(args.calls + 1):
            call = one_call(sink, audio, f"call-{n:03d}", jitter=args.jitter, procs=procs, rng=rng)
            if n:  # call 0 warms up (first index write, first TLS session use, caches)
                calls.append(call)
        sink.close()
    wall = time.monotonic() - wall
    report(args, calls, what, wall)
    return 0


def report(args: argparse.Namespace, calls: list[Call], audio: str, wall: float) -> None:
    flash_ms = CallConfig.model_fields["flash_max_ms"].default
    sizes = [c.blob_bytes for c in calls]
    print(
        f"hang-up -> ack latency: {len(calls)} calls of {args.seconds} s ({args.codec}), "
        f"sealed size median {statistics.median(sizes) / 1e6:.2f} MB "
        f"({min(sizes):,}-{max(sizes):,} bytes); loopback mTLS broker, uploader and "
        f"receiver already connected; {cores()} CPU cores"
    )
    print(f"audio: {audio}")
    print_what_if(args)
    print_table_header(f"{'part (ms)':<40}{'median':>9}{'p99':>9}{'min':>9}{'max':>9}")

    def row(label: str, values: list[float]) -> None:
        ms = [v * 1000 for v in values]
        print(
            f"{label:<40}{statistics.median(ms):>9.0f}{p99(ms):>9.0f}{min(ms):>9.0f}{max(ms):>9.0f}"
        )

    row("sink: close -> in outbox/sealed", [c.seal_s for c in calls])
    row("  (sink CPU for that)", [c.seal_cpu_s for c in calls])
    claimed = [c for c in calls if c.pickup_s is not None and c.transfer_s is not None]
    if claimed:
        row("outbox -> uploader claims it", [c.pickup_s for c in claimed if c.pickup_s is not None])
        row(
            "claim -> acked (init..fin, store, ack)",
            [c.transfer_s for c in claimed if c.transfer_s is not None],
        )
    row("outbox -> acked (sealed_at -> acked_at)", [c.outbox_to_ack_s for c in calls])
    row("close -> acked", [c.close_to_ack_s for c in calls])
    row(
        f"on-hook edge -> acked (+{flash_ms} ms flash_max)",
        [c.close_to_ack_s + flash_ms / 1000 for c in calls],
    )
    polls = [c.seal_polls for c in calls]
    print(
        f"\nThe sink sealed each call in {min(polls)}-{max(polls)} capture periods "
        f"(one poll per {PERIOD_S * 1000:.0f} ms, 256 KiB of blob hashed per poll). "
        f"The uploader looks at an idle outbox every {IDLE_RESCAN_S:g} s "
        "(uploader.client.IDLE_RESCAN_S): the pickup part is uniform over that. "
        f"The recorder ends a call {flash_ms} ms after the on-hook edge (call.flash_max_ms; "
        "shorter on-hooks are hook flashes), plus up to one 20 ms period; that is the "
        "constant in the last row. p99 of "
        f"{len(calls)} samples is interpolated next to the largest. Total {wall:.1f} s wall."
    )


if __name__ == "__main__":
    sys.exit(main())
