"""The device's own ``linetap`` subcommands: ``record`` (the recorder daemon),
``replay``, ``analyze``, ``validate-config`` and ``keys``. Each ``register_*`` function
adds one command's options (:data:`firmware.cli.COMMANDS` names them); the installer
tools are in :mod:`firmware.tools`, ``upload`` in :mod:`uploader.daemon`.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from firmware.analyze import analyze_file
from firmware.app import device_key_path, run_daemon, run_replay
from firmware.cli_options import config_arg
from firmware.config import DEFAULT_CONFIG_PATH, LinetapConfig, load_config
from runtime.process import EXIT_OK, setup_logging
from sealedrec.keys import create_device_key, key_id, load_device_key, public_key_b64
from sealedrec.tlskeys import make_device_csr


def _load(args: argparse.Namespace) -> LinetapConfig:
    return load_config(args.config)


def cmd_analyze(args: argparse.Namespace) -> int:
    report = analyze_file(args.file)
    if args.json:
        print(json.dumps(report, indent=2))
        return EXIT_OK
    print(f"{report['file']}: {report['seconds']:.2f} s at {report['sample_rate']} Hz")
    for m in report["caller_id"]:
        who = m["number"] or f"(number withheld: {m['absence_number']})"
        print(
            f"  caller ID  {m['start_s']:8.3f} s  ch{m['channel']}  {who}  {m['name'] or ''}"
            f"  [{m['standard']} {m['format']}]  {m['time'] or ''}"
        )
    if report["dtmf"]:
        print(
            "  DTMF       " + " ".join(f"{d['digit']}@{d['start_s']:.2f}s" for d in report["dtmf"])
        )
    for e in report["errors"]:
        print(
            f"  rejected   {e['start_s']:8.3f} s  ch{e['channel']}  {e['standard']}: {e['reason']}"
        )
    for c, lv in enumerate(report["levels"]):
        hum = ", ".join(f"{k} {v}" for k, v in lv["hum"].items())
        print(
            f"  levels ch{c}  RMS {lv['rms_dbfs']} dBFS  peak {lv['peak_dbfs']} dBFS  clipped {lv['clipped_samples']}"
            f"  silence {lv['silence_fraction']:.0%}  hum {hum}"
        )
    return EXIT_OK


def cmd_validate_config(args: argparse.Namespace) -> int:
    cfg = _load(args)
    names = ", ".join(
        f"{line.name} (channel {line.channel}, hook GPIO{line.hook_pin})" for line in cfg.lines
    )
    print(f"{args.config or DEFAULT_CONFIG_PATH}: OK: {len(cfg.lines)} line(s): {names}")
    return EXIT_OK


def cmd_record(args: argparse.Namespace) -> int:
    cfg = _load(args)
    if args.validate_config:
        return cmd_validate_config(args)
    setup_logging(cfg.log_level)
    return run_daemon(cfg)


def _replay_outputs(out: Path, fmt: str) -> list[Path]:
    if fmt == "wav":
        return sorted(out.glob("*.json")) if out.is_dir() else []
    return sorted((out / "outbox").glob("*/*/manifest.json"))


def cmd_replay(args: argparse.Namespace) -> int:
    cfg = _load(args)
    setup_logging(cfg.log_level if args.verbose else "warning")
    start = datetime.fromisoformat(args.start_utc) if args.start_utc else datetime.now(UTC)
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    out: Path = args.out
    before = set(_replay_outputs(out, args.format))
    result = run_replay(
        cfg, audio=args.audio, events=args.events, out=out, start_utc=start, fmt=args.format
    )
    written = [p for p in _replay_outputs(out, args.format) if p not in before]
    metas = [json.loads(p.read_text()) for p in written]
    rate = cfg.audio.sample_rate
    if args.format == "wav":
        metas.sort(key=lambda m: (m["start_frame"], m["line"]))
    else:
        metas.sort(key=lambda m: m["seq"])
    if args.json:
        print(json.dumps({"recordings": metas, "frames": result.frames}, indent=2))
    else:
        print(f"replayed {result.frames / rate:.2f} s of audio: {len(metas)} recording(s) in {out}")
        for m, path in zip(metas, written, strict=True):
            if args.format == "wav":
                audio = m["audio_file"] or "(discarded: metadata only)"
                print(
                    f"  {m['line']:<8} {m['trigger']:<8} start {m['start_frame'] / rate:8.2f} s"
                    f"  duration {m['duration_s']:7.2f} s  end {m['reason']:<12} {audio}"
                )
            else:
                what = (
                    "discarded: metadata only"
                    if m["discarded"]
                    else f"{m['codec']} in {m['container']}"
                )
                print(
                    f"  seq {m['seq']:<4} {m['line']:<8} {m['trigger']:<8} {m['started_utc']}"
                    f"  {m['duration_ms'] / 1000:7.2f} s  end {m['end_reason']:<12} {what}"
                    f"  {path.parent}"
                )
    if result.unplayed_events:
        print(
            "warning: some events lie after the end of the audio and were not played",
            file=sys.stderr,
        )
    return EXIT_OK


def cmd_keys(args: argparse.Namespace) -> int:
    cfg = _load(args)
    if args.action == "csr":
        tls_key = cfg.upload.key_file or cfg.storage.data_dir / "keys" / "device-tls.key"
        csr = make_device_csr(tls_key, cfg.device_id)
        out = args.out or Path(f"{cfg.device_id}.csr")
        out.write_bytes(csr)
        print(f"TLS key {tls_key}; certificate request {out} (give it to the head office)")
        return EXIT_OK
    path = device_key_path(cfg)
    if args.action == "init" and not path.exists():
        key = create_device_key(path)
        print(f"created device key {path}")
    else:
        key = load_device_key(path)
    public = key.public_key()
    print(f"device key id {key_id(public)}")
    print(f"public key (give this to the head office) {public_key_b64(public)}")
    return EXIT_OK


def register_record(p: argparse.ArgumentParser) -> None:
    config_arg(p)
    p.add_argument("--validate-config", action="store_true", help="check the config and exit")
    p.set_defaults(func=cmd_record)


def register_analyze(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", type=Path)
    p.add_argument("--json", action="store_true", help="one JSON object for scripts")
    p.set_defaults(func=cmd_analyze)


def register_validate_config(p: argparse.ArgumentParser) -> None:
    config_arg(p)
    p.set_defaults(func=cmd_validate_config)


def register_replay(p: argparse.ArgumentParser) -> None:
    config_arg(p)
    p.add_argument("--audio", type=Path, required=True, help="line capture (WAV, FLAC or raw)")
    p.add_argument("--events", type=Path, required=True, help="events script (see README)")
    p.add_argument("--out", type=Path, required=True, help="directory to write recordings to")
    p.add_argument(
        "--format",
        choices=["sealed", "wav"],
        default="sealed",
        help="sealed: the device's journal/outbox layout under --out (default); wav: plain files",
    )
    p.add_argument("--start-utc", help="wall-clock time of the audio's first frame (ISO 8601)")
    p.add_argument("--json", action="store_true", help="print the recordings' metadata as JSON")
    p.add_argument("--verbose", "-v", action="store_true", help="log each recording")
    p.set_defaults(func=cmd_replay)


def register_keys(p: argparse.ArgumentParser) -> None:
    config_arg(p)
    p.add_argument(
        "action",
        choices=["init", "show", "csr"],
        help="init: create the signing key if missing; show: print it; csr: TLS key + request",
    )
    p.add_argument("--out", type=Path, help="csr: where to write the request (default DEVICE.csr)")
    p.set_defaults(func=cmd_keys)
