"""``linetap``: the appliance's command line (daemon, replay, config check)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path

from firmware import __version__
from firmware.config import DEFAULT_CONFIG_PATH, LinetapConfig, load_config
from firmware.errors import ConfigError, LinetapError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2

log = logging.getLogger("linetap")


def _setup_logging(level: str) -> None:
    # journald adds timestamps and the unit name; one event per line on stderr.
    logging.basicConfig(
        stream=sys.stderr,
        level=level.upper(),
        format="%(levelname)s %(name)s: %(message)s",
        force=True,
    )


def _load(args: argparse.Namespace) -> LinetapConfig:
    return load_config(args.config)


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
    _setup_logging(cfg.log_level)
    from firmware.app import run_daemon

    return run_daemon(cfg)


def cmd_replay(args: argparse.Namespace) -> int:
    cfg = _load(args)
    _setup_logging(cfg.log_level if args.verbose else "warning")
    from firmware.app import run_replay

    start = datetime.fromisoformat(args.start_utc) if args.start_utc else datetime.now(UTC)
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    out: Path = args.out
    before = set(out.glob("*.json")) if out.is_dir() else set()
    result = run_replay(cfg, args.audio, args.events, out, start)
    written = sorted(set(out.glob("*.json")) - before) if out.is_dir() else []
    metas = [json.loads(p.read_text()) for p in written]
    metas.sort(key=lambda m: (m["start_frame"], m["line"]))
    if args.json:
        print(json.dumps({"recordings": metas, "frames": result.frames}, indent=2))
    else:
        rate = cfg.audio.sample_rate
        print(f"replayed {result.frames / rate:.2f} s of audio: {len(metas)} recording(s) in {out}")
        for m in metas:
            audio = m["audio_file"] or "(discarded: metadata only)"
            print(
                f"  {m['line']:<8} {m['trigger']:<8} start {m['start_frame'] / rate:8.2f} s"
                f"  duration {m['duration_s']:7.2f} s  end {m['reason']:<12} {audio}"
            )
    if result.unplayed_events:
        print(
            "warning: some events lie after the end of the audio and were not played",
            file=sys.stderr,
        )
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="linetap", description="linetap call recorder")
    parser.add_argument("--version", action="version", version=f"linetap {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def config_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--config",
            "-c",
            type=Path,
            default=None,
            help=f"config file (default: $LINETAP_CONFIG or {DEFAULT_CONFIG_PATH})",
        )

    p = sub.add_parser("record", help="run the recorder daemon")
    config_arg(p)
    p.add_argument("--validate-config", action="store_true", help="check the config and exit")
    p.set_defaults(func=cmd_record)

    p = sub.add_parser("validate-config", help="check a config file; one line per problem")
    config_arg(p)
    p.set_defaults(func=cmd_validate_config)

    p = sub.add_parser(
        "replay",
        help="run the recorder over a line capture and an events script, as fast as possible",
    )
    config_arg(p)
    p.add_argument("--audio", type=Path, required=True, help="line capture (WAV, FLAC or raw)")
    p.add_argument("--events", type=Path, required=True, help="events script (see README)")
    p.add_argument("--out", type=Path, required=True, help="directory to write recordings to")
    p.add_argument("--format", choices=["wav"], default="wav", help="recording format")
    p.add_argument("--start-utc", help="wall-clock time of the audio's first frame (ISO 8601)")
    p.add_argument("--json", action="store_true", help="print the recordings' metadata as JSON")
    p.add_argument("--verbose", "-v", action="store_true", help="log each recording")
    p.set_defaults(func=cmd_replay)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_CONFIG
    except LinetapError as exc:
        print(f"linetap {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE
    return code


if __name__ == "__main__":
    sys.exit(main())
