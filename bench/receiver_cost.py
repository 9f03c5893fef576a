"""The receiver's own cost per stored recording: CPU and wall, without a broker.

``upload_receiver_capacity.py`` measures a whole office (TLS broker, paho, a load
process) on this machine's cores; its run-to-run spread is ±10 % and more. This bench
takes the receiver alone: :func:`headoffice.service.handle_isolated`, the function the
MQTT callback calls, fed in process with the messages of ``--devices`` devices' uploads
(init, chunks, fin; made once from synthetic sealed recordings, as ``linetap upload``
sends them, interleaved across the devices), against a real office (file store on this
disk, SQLite index, every fsync). The acks it returns are not published.

Both sides (``--before``: a code tree, default HEAD's; this tree) run the same messages
in worker processes, alternately, ``--repeats`` times each, on a fresh copy of the same
office. Process start-up, imports and the office's opening are outside the clock on
both sides; the clock covers every message. Printed: CPU (user + system of the worker)
and wall per stored recording, min and median, and the ratios.

Run: .venv/bin/python bench/receiver_cost.py [--devices 4] [--recordings 300] [--kb 20]
     [--repeats 6] [--before DIR]
(``LINETAP_BENCH_BASE=<commit>`` instead of ``--before``: that commit's tree.)
"""

from __future__ import annotations

import argparse
import json
import logging
import pickle
import shutil
import sys
import tempfile
import time
from pathlib import Path

from head_compare import REPO, head_tree, min_median, run_worker, use_tree

SCRIPT = Path(__file__).resolve()
CHUNK_KIB = 256
Message = tuple[str, bytes, list[tuple[str, str]] | None]


def make_messages(work: Path, devices: int, recordings: int, size: int) -> int:
    """The pristine office and ``messages.pickle`` under ``work``; returns the number
    of recordings."""
    # Imported here, not at the top: these helpers import the project (from this tree),
    # and a worker must import it only from the tree it measures.
    sys.path.insert(0, str(REPO))
    from replay_load import uploads_of
    from upload_common import add_synthetic, enroll_device, make_office

    office = make_office(work / "office", ["office-receiver-1"])
    per_device = []
    for i in range(1, devices + 1):
        device = enroll_device(office, f"dev-{i:02d}", work / "devices" / f"dev-{i:02d}")
        add_synthetic(device, [size] * recordings, prefix=device.device_id)
        per_device.append(
            list(uploads_of(device.data / "outbox", device.device_id, CHUNK_KIB * 1024))
        )
    messages: list[Message] = []
    for k in range(recordings):  # each step of every device's k-th upload, in turn
        messages += [(*uploads[k].init, None) for uploads in per_device]
        for uploads in per_device:
            messages += [(t, data, _user_properties(p)) for t, data, p in uploads[k].chunks]
        messages += [(*uploads[k].fin, None) for uploads in per_device]
    (work / "messages.pickle").write_bytes(pickle.dumps(messages))
    (work / "office.toml").write_text(
        'root = "ROOT"\n[broker]\nhost = "127.0.0.1"\nport = 1883\nclient_id = "bench"\n'
    )
    shutil.rmtree(work / "devices")
    return devices * recordings


def _user_properties(props: object) -> list[tuple[str, str]]:
    """A message's MQTT 5 user properties as the service hands them to the receiver."""
    return list(getattr(props, "UserProperty", []))


def worker(work: Path, run_dir: Path) -> None:
    """One measured run of the tree ``use_tree`` names; prints one JSON line."""
    use_tree()
    from headoffice import service  # from the tree being measured
    from headoffice.config import load_office_config
    from headoffice.index import open_index

    logging.disable(logging.WARNING)  # a line per recording would be measured too
    shutil.copytree(work / "office", run_dir / "office")
    toml = run_dir / "office.toml"
    toml.write_text((work / "office.toml").read_text().replace("ROOT", str(run_dir / "office")))
    cfg = load_office_config(toml)
    index = open_index(cfg.index_url)
    receiver = service.build_receiver(cfg, index)
    service.prepare_store(receiver)
    messages: list[Message] = pickle.loads((work / "messages.pickle").read_bytes())
    cpu, wall = time.process_time(), time.perf_counter()
    for topic, payload, props in messages:
        service.handle_isolated(receiver, topic, payload, props)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    stored = receiver.counts.stored
    index.close()
    print(json.dumps({"stored": stored, "cpu_s": cpu, "wall_s": wall}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=4, help="devices interleaved (4)")
    parser.add_argument("--recordings", type=int, default=300, help="per device (300)")
    parser.add_argument("--kb", type=float, default=20, help="recording size, KB (20)")
    parser.add_argument("--repeats", type=int, default=6, help="runs per side (6)")
    parser.add_argument("--before", type=Path, default=None, help="code tree (HEAD's)")
    parser.add_argument("--worker", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(*args.worker)
        return 0
    before = args.before or head_tree()
    trees = {"before": before.resolve(), "after": REPO}
    with tempfile.TemporaryDirectory(prefix="linetap-receiver-cost-") as tmp:
        work = Path(tmp)
        total = make_messages(work, args.devices, args.recordings, int(args.kb * 1000))
        results: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
        for repeat in range(args.repeats):
            for side in ("before", "after") if repeat % 2 == 0 else ("after", "before"):
                run_dir = work / f"{side}-{repeat}"
                run_dir.mkdir()
                result = run_worker(SCRIPT, trees[side], ["--worker", str(work), str(run_dir)])
                if result["stored"] != total:
                    raise SystemExit(f"{side}: stored {result['stored']} of {total} recordings")
                results[side].append(result)
        report(args, trees, total, results)
    return 0


def report(
    args: argparse.Namespace,
    trees: dict[str, Path],
    total: int,
    results: dict[str, list[dict[str, float]]],
) -> None:
    print(f"before = {trees['before']}, after = {trees['after']}")
    print(
        f"receiver alone, in process: {args.devices} devices x {args.recordings} recordings "
        f"of {args.kb:g} KB ({total} stored per run, one chunk each up to {CHUNK_KIB} KiB); "
        f"{args.repeats} interleaved runs per side; start-up and imports outside the clock"
    )
    print(f"{'side':7}{'CPU ms/rec min':>16}{'median':>9}{'wall ms/rec min':>17}{'median':>9}")
    medians = {}
    for side in ("before", "after"):
        cpu = min_median([r["cpu_s"] / total * 1e3 for r in results[side]])
        wall = min_median([r["wall_s"] / total * 1e3 for r in results[side]])
        medians[side] = (cpu[1], wall[1])
        print(f"{side:7}{cpu[0]:16.2f}{cpu[1]:9.2f}{wall[0]:17.2f}{wall[1]:9.2f}")
    (cpu_b, wall_b), (cpu_a, wall_a) = medians["before"], medians["after"]
    print(
        f"after/before, medians: {cpu_b / cpu_a:.2f}x less CPU, {wall_b / wall_a:.2f}x the "
        "recordings/s (wall: fsyncs included)"
    )


if __name__ == "__main__":
    sys.exit(main())
