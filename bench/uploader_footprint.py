"""What `linetap upload` loads: modules by package and resident memory, after it started.

DESIGN.md promises that the recorder and the uploader share nothing but the outbox, so
the uploader should load no driver, DSP, recorder or sound-file module. This runs the real
daemon (`uploader.daemon.main`) in a child interpreter against a broker that is not
there (it keeps retrying), waits ``--seconds``, and prints from inside that process
what ``sys.modules`` holds, grouped by top-level package, and its peak RSS; then stops
it with SIGTERM. Also times `linetap --help` (whole process, best of ``--repeats``).

    .venv/bin/python bench/uploader_footprint.py [--seconds 3] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey  # noqa: E402

from sealedrec.age import format_recipient  # noqa: E402 - after the path
from tests.helpers import config_text  # noqa: E402

PROBE = r"""
import json, os, resource, signal, sys, threading
from pathlib import Path

def report():
    mods = sorted(sys.modules)
    by_top = {}
    for m in mods:
        by_top.setdefault(m.split(".")[0], []).append(m)
    ours = {k: v for k, v in by_top.items() if k in OURS}
    out = {
        "modules": len(mods),
        "ours": {k: len(v) for k, v in sorted(ours.items())},
        "ours_names": [m for k in sorted(ours) for m in ours[k]],
        "heavy": sorted(k for k in by_top if k in ("numpy", "soundfile", "alsaaudio", "gpiod", "serial", "pydantic")),
        "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }
    Path(REPORT).write_text(json.dumps(out))
    os.kill(os.getpid(), signal.SIGTERM)

REPORT = sys.argv[1]
OURS = set(sys.argv[3].split(","))
threading.Timer(float(sys.argv[2]), report).start()
sys.argv = ["linetap-upload", "--config", sys.argv[4]]
from uploader.daemon import main
sys.exit(main(sys.argv[1:]))
"""

PACKAGES = ("firmware", "drivers", "buffers", "uploader", "headoffice", "sealedrec")


def uploader_footprint(seconds: float) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        conf = root / "linetap.toml"
        recipient = format_recipient(X25519PrivateKey.generate().public_key())
        text = config_text(
            root / "wav",
            lines=1,
            storage_format="sealed",
            data_dir=root / "data",
            recipients=(recipient,),
        )
        head, lines = text.split("[[lines]]", 1)
        conf.write_text(
            head + '[upload]\nhost = "127.0.0.1"\nport = 9\ntls = false\n\n[[lines]]' + lines
        )
        (root / "data" / "keys").mkdir(parents=True)
        done = subprocess.run(
            [str(REPO / ".venv/bin/linetap"), "keys", "init", "--config", str(conf)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode:
            raise SystemExit(f"linetap keys init failed: {done.stderr.strip()}")
        out = root / "report.json"
        done = subprocess.run(
            [sys.executable, "-c", PROBE, str(out), str(seconds), ",".join(PACKAGES), str(conf)],
            cwd=REPO,
            capture_output=True,
            timeout=seconds + 30,
            check=False,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            text=True,
        )
        if not out.exists():
            raise SystemExit(f"the uploader exited {done.returncode}: {done.stderr[-2000:]}")
        result: dict[str, object] = json.loads(out.read_text())
        return result


def help_time(repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([str(REPO / ".venv/bin/linetap"), "--help"], capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return sorted(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--list", action="store_true", help="list our modules it loaded")
    args = parser.parse_args()
    report = uploader_footprint(args.seconds)
    print(f"linetap upload after {args.seconds:g} s (whole process, not connected):")
    print(f"  modules loaded: {report['modules']}, ours by package: {report['ours']}")
    print(f"  heavy third-party packages loaded: {report['heavy'] or 'none'}")
    print(f"  peak RSS: {int(report['maxrss_kib']) / 1024:.1f} MiB")  # type: ignore[call-overload]
    if args.list:
        for name in report["ours_names"]:  # type: ignore[attr-defined]
            print(f"    {name}")
    times = help_time(args.repeats)
    print(
        f"linetap --help (whole process, {args.repeats} runs): min {times[0] * 1000:.0f} ms, "
        f"median {times[len(times) // 2] * 1000:.0f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
