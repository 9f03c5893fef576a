"""age encryption throughput: sealedrec.age.AgeWriter against the real ``age -r``.

Encrypts the same 50 MB random file (file to file, 1 MiB reads) with our AgeWriter and
with ``age -r``, then decrypts each result with the other side's decrypter as a
correctness check (not timed). Our figure is process CPU time around the loop; the
tool's is ``getrusage(RUSAGE_CHILDREN)`` user+system time, so it includes the start-up
of the ``age`` process (a few ms). Best of ``--repeats`` runs each. Also times
decryption (our AgeReader vs ``age -d``) the same way.

Run: .venv/bin/python bench/age_throughput.py [--mb 50] [--repeats 3]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench_common import children_cpu_s

from sealedrec import age

BLOCK = 1 << 20


def best_cpu(fn: Callable[[], None], repeats: int, *, child: bool) -> float:
    """Lowest CPU seconds of ``fn`` (ours: this process; the tool's: waited-for children)."""
    best = float("inf")
    for _ in range(repeats):
        before = children_cpu_s() if child else time.process_time()
        fn()
        after = children_cpu_s() if child else time.process_time()
        best = min(best, after - before)
    return best


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(BLOCK):
            h.update(block)
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=50, help="plaintext size in MB (default 50)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per measurement (default 3)")
    args = ap.parse_args()
    tool = shutil.which("age")
    if tool is None:
        sys.exit("age_throughput: the `age` tool is not installed (apt install age)")

    size = args.mb * 1_000_000
    identity = age.generate_identity()
    recipient = age.format_recipient(identity.public_key())
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        plain, ours_out, tool_out = tmp / "plain.bin", tmp / "ours.age", tmp / "tool.age"
        key_file = tmp / "key.txt"
        key_file.write_text(age.format_identity(identity) + "\n")
        with plain.open("wb") as f:
            for _ in range(size // BLOCK):
                f.write(os.urandom(BLOCK))
            f.write(os.urandom(size % BLOCK))
        want = sha256_file(plain)

        def ours_encrypt() -> None:
            with (
                plain.open("rb") as src,
                ours_out.open("wb") as dst,
                age.AgeWriter(dst, [identity.public_key()]) as w,
            ):
                while block := src.read(BLOCK):
                    w.write(block)

        def tool_encrypt() -> None:
            subprocess.run([tool, "-r", recipient, "-o", str(tool_out), str(plain)], check=True)

        def ours_decrypt() -> None:
            with tool_out.open("rb") as src:
                reader = age.AgeReader(src, [identity])
                while reader.read(BLOCK):
                    pass

        def tool_decrypt() -> None:
            subprocess.run(
                [tool, "-d", "-i", str(key_file), "-o", os.devnull, str(ours_out)], check=True
            )

        enc_ours = best_cpu(ours_encrypt, args.repeats, child=False)
        enc_tool = best_cpu(tool_encrypt, args.repeats, child=True)
        dec_ours = best_cpu(ours_decrypt, args.repeats, child=False)
        dec_tool = best_cpu(tool_decrypt, args.repeats, child=True)

        # Correctness, untimed: each side opens the other's file.
        check = tmp / "check.bin"
        subprocess.run(
            [tool, "-d", "-i", str(key_file), "-o", str(check), str(ours_out)], check=True
        )
        assert sha256_file(check) == want, "age -d of our file differs from the plaintext"
        with tool_out.open("rb") as src:
            h = hashlib.sha256()
            for chunk in age.AgeReader(src, [identity]):
                h.update(chunk)
        assert h.hexdigest() == want, "our decryption of age's file differs from the plaintext"

    mb = size / 1e6
    print(f"age throughput, {mb:.0f} MB random plaintext, best CPU time of {args.repeats} runs")
    print(f"{'':10} {'ours MB/s':>10} {'age MB/s':>10} {'ours/age':>9}")
    for what, t_ours, t_tool in (("encrypt", enc_ours, enc_tool), ("decrypt", dec_ours, dec_tool)):
        print(f"{what:10} {mb / t_ours:10.0f} {mb / t_tool:10.0f} {t_tool / t_ours:9.2f}")


if __name__ == "__main__":
    main()
