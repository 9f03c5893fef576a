"""Peak memory of sealing a long call: a 2-hour recording against a 1-minute one.

Each measurement runs in a fresh child Python process (this script with ``--child``),
so nothing of the parent or of an earlier run is counted. The child builds a
SealingSink in a temporary directory (new device key and office identity), opens one
recording, writes the audio in 160-frame periods with one sink poll per period, as the
recorder does, then closes it and keeps polling until it is sealed (age stream
finished, blob hashed, signed manifest, moved into the outbox; the sink may seal in
slices across polls). The audio is the 60 s speech sample of bench/sealing_rtf.py,
tiled: only that one minute is ever in memory, however long the call.

The child reports its peak RSS (VmHWM from /proc/self/status; ru_maxrss agrees), its
VmHWM once set up but before the recording opens (imports, the 60 s sample, the sink),
VmRSS every 10 minutes of audio, and the CPU and wall time and sealed size of the call.
If memory does not grow with the length of a call, the 2-hour peak equals the 1-minute
one.

Run: .venv/bin/python bench/sealing_memory.py [--hours 2] [--codec flac] [--codec opus]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench_common import print_table_header, proc_status_kib
from sealing_rtf import (
    PERIOD,
    RATE,
    drain,
    load_audio,
    make_sink,
    recording_end,
    recording_start,
    speech_wav,
)

from firmware.sealing import Codec
from sealedrec.manifest import BLOB_AGE

PROGRESS_S = 600  # report every 10 minutes of audio
SHORT_S = 60


@dataclass(frozen=True)
class ChildResult:
    codec: str
    audio_s: float
    cpu_s: float
    wall_s: float
    sealed_bytes: int
    setup_hwm_kib: int  # VmHWM before the recording opens
    peak_hwm_kib: int  # VmHWM at the end
    maxrss_kib: int  # getrusage(RUSAGE_SELF).ru_maxrss, for comparison
    rss_trace_kib: list[int]  # VmRSS at each progress point
    seal_polls: int  # sink polls (capture periods) from close until sealed


def child(codec: Codec, seconds: int, wav: Path) -> ChildResult:
    audio = load_audio(wav)
    usable = audio.shape[0] - audio.shape[0] % PERIOD  # periods never straddle the wrap
    audio = audio[:usable]
    with tempfile.TemporaryDirectory(prefix="linetap-bench-mem-") as tmp:
        sink = make_sink(Path(tmp), codec)
        setup_hwm = proc_status_kib("VmHWM")
        total = seconds * RATE
        rec_id = f"mem-{codec}-{seconds}"
        trace: list[int] = []
        w0, c0 = time.monotonic(), time.process_time()
        writer = sink.open(recording_start(rec_id))
        written = 0
        next_report = PROGRESS_S * RATE
        while written < total:
            at = written % usable
            n = min(PERIOD, total - written)
            writer.write(audio[at : at + n])
            sink.poll()  # once per capture period, as the recorder does
            written += n
            if written >= next_report:
                rss = proc_status_kib("VmRSS")
                trace.append(rss)
                print(
                    f"  [{codec} {seconds} s] {written // RATE // 60:>4} min of audio, "
                    f"RSS {rss / 1024:6.1f} MiB, CPU {time.process_time() - c0:6.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
                next_report += PROGRESS_S * RATE
        writer.close(recording_end(total))
        polls = drain(sink)
        cpu, wall = time.process_time() - c0, time.monotonic() - w0
        entry = sink.outbox.find(rec_id)
        if entry is None:
            raise RuntimeError(f"{rec_id}: not in the outbox after close")
        sealed = (entry.path / BLOB_AGE).stat().st_size
        return ChildResult(
            codec=codec,
            audio_s=total / RATE,
            cpu_s=cpu,
            wall_s=wall,
            sealed_bytes=sealed,
            setup_hwm_kib=setup_hwm,
            peak_hwm_kib=proc_status_kib("VmHWM"),
            maxrss_kib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            rss_trace_kib=trace,
            seal_polls=polls,
        )


def run_child(codec: Codec, seconds: int, wav: Path) -> ChildResult:
    cmd = [sys.executable, __file__, "--child", codec, str(seconds), str(wav)]
    done = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
    data: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return ChildResult(**data)


def mib(kib: int) -> str:
    return f"{kib / 1024:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--hours", type=float, default=2.0, help="long call (default 2)")
    parser.add_argument(
        "--codec",
        action="append",
        choices=("flac", "opus"),
        help="codec(s) to measure (repeatable; default flac)",
    )
    parser.add_argument("--fresh-audio", action="store_true", help="rebuild the speech sample")
    parser.add_argument(
        "--child", nargs=3, metavar=("CODEC", "SECONDS", "WAV"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.child:
        codec_arg, seconds_arg, wav_arg = args.child
        if codec_arg not in ("flac", "opus"):
            parser.error(f"unknown codec {codec_arg!r}")
        result = child("flac" if codec_arg == "flac" else "opus", int(seconds_arg), Path(wav_arg))
        print(json.dumps(asdict(result)))
        return 0

    codecs: list[Codec] = ["flac" if c == "flac" else "opus" for c in args.codec or ["flac"]]
    long_s = round(args.hours * 3600)
    wav = speech_wav(SHORT_S, fresh=args.fresh_audio)
    results: list[ChildResult] = []
    wall = time.monotonic()
    for codec in codecs:
        for seconds in (SHORT_S, long_s):
            print(f"{codec}: sealing a {seconds} s call in a child process…", file=sys.stderr)
            results.append(run_child(codec, seconds, wav))
    wall = time.monotonic() - wall

    print(
        f"sealing memory: one call per child process, {RATE} Hz mono S16 speech "
        f"(a 60 s sample tiled), {PERIOD}-frame periods, journal_sync_s=1.0"
    )
    print_table_header(
        f"{'codec':<6}  {'call':>7}  {'set-up HWM':>10}  {'peak HWM':>9}  {'call adds':>9}  "
        f"{'ru_maxrss':>9}  {'CPU s':>7}  {'wall s':>7}  {'RTF':>5}  {'sealed MiB':>10}  "
        f"{'B/min':>9}"
    )
    for r in results:
        call = f"{r.audio_s / 60:.0f} min" if r.audio_s < 3600 else f"{r.audio_s / 3600:g} h"
        print(
            f"{r.codec:<6}  {call:>7}  {mib(r.setup_hwm_kib):>10}  {mib(r.peak_hwm_kib):>9}  "
            f"{mib(r.peak_hwm_kib - r.setup_hwm_kib):>9}  {mib(r.maxrss_kib):>9}  "
            f"{r.cpu_s:>7.1f}  {r.wall_s:>7.1f}  {r.audio_s / r.cpu_s:>5.0f}  "
            f"{r.sealed_bytes / 2**20:>10.1f}  {r.sealed_bytes * 60 / r.audio_s:>9,.0f}"
        )
    for codec in codecs:
        short, long = (r for r in results if r.codec == codec)
        trace = ", ".join(mib(k) for k in long.rss_trace_kib)
        print(
            f"{codec}: peak RSS {mib(long.peak_hwm_kib)} MiB for {long.audio_s / 3600:g} h vs "
            f"{mib(short.peak_hwm_kib)} MiB for 1 min "
            f"({(long.peak_hwm_kib - short.peak_hwm_kib) / 1024:+.1f} MiB); "
            f"VmRSS every 10 min of audio (MiB): {trace}; sealed {long.seal_polls} polls "
            f"({long.seal_polls * PERIOD / RATE:.1f} s of capture periods) after close "
            f"({short.seal_polls} for 1 min)"
        )
    print(
        "MiB throughout. set-up HWM = the child's VmHWM after imports, loading the 60 s "
        "sample and building the sink, before the recording opens; peak HWM = VmHWM after "
        "close and sealed; call adds = the difference. CPU/wall = from open until sealed "
        f"(sink polls included). Total {wall:.1f} s wall."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
