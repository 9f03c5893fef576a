"""Sealed calls measured in one process, for ``bench/sealing_rtf.py --vs-head`` (a worker).

Imports the project from ``LINETAP_BENCH_TREE`` (ours or HEAD's, see head_compare.py),
then drives the SealingSink exactly as bench/sealing_rtf.py does (160-frame periods, a
poll per period, close, polls until the recording is in the outbox): one warm-up call,
then ``--calls`` measured calls of the speech sample, FLAC. For each it takes the process
CPU time and what the sealing path wrote, from ``/proc/self/io``:

- ``wchar``: bytes handed to write(2) (journal records, the age stream, JSON files);
- ``write_bytes``: bytes this process caused to be sent to the block device (fsync'd
  pages, so a page rewritten by each second's journal append counts each time), less
  ``cancelled_write_bytes`` (dirty pages dropped before write-back, e.g. unlinked).

The data directory is made under ``--dir`` (default $TMPDIR): put it on the disk you mean.
Prints one JSON line: ``{"audio_s", "cpu_s": [...], "wchar": [...], "write_bytes": [...]}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from head_compare import use_tree

use_tree()  # sealing_rtf's project imports come from the tree under test

from sealing_rtf import RATE, load_audio, make_sink, seal_call  # noqa: E402


def proc_io() -> dict[str, int]:
    fields = {}
    for line in Path("/proc/self/io").read_text().splitlines():
        name, value = line.split(":")
        fields[name] = int(value)
    return fields


def disk_bytes(io: dict[str, int]) -> int:
    return io["write_bytes"] - io["cancelled_write_bytes"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--audio", type=Path, required=True, help="the speech sample (WAV)")
    parser.add_argument("--calls", type=int, default=1, help="measured calls (default 1)")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args(argv)
    audio = load_audio(args.audio)
    cpu: list[float] = []
    wchar: list[int] = []
    written: list[int] = []
    with tempfile.TemporaryDirectory(prefix="linetap-sealing-", dir=args.dir) as tmp:
        sink = make_sink(Path(tmp), "flac")
        seal_call(sink, audio, "warmup")
        for n in range(args.calls):
            before = proc_io()
            t0 = time.process_time()
            seal_call(sink, audio, f"call-{n}")
            cpu.append(time.process_time() - t0)
            after = proc_io()
            wchar.append(after["wchar"] - before["wchar"])
            written.append(disk_bytes(after) - disk_bytes(before))
    out = {"audio_s": audio.shape[0] / RATE, "cpu_s": cpu, "wchar": wchar, "write_bytes": written}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
