"""``linetap upload``: the uploader daemon (outbox → head office over MQTT, telemetry).

Run by ``linetap-uploader.service`` (Type=notify): READY once the first connection
attempt has finished (connected or not: the uploader keeps retrying, and being offline
is a normal state for it), WATCHDOG pings from the upload loop, STOPPING on SIGTERM.
Every LOCAL_STATUS_INTERVAL_S it also writes ``runtime_dir/uploader.json`` (the status
document plus the broker link's state) for ``linetap status``; a last one on exit says
``stopped``.

New recordings wake it through an inotify watch on ``outbox/sealed``
(:class:`buffers.outbox_watch.SealedWatch`); where inotify cannot be had (the per-user
watch limit) it says so and lists the outbox every second instead.
Also runnable as ``python -m uploader.daemon --config C``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path

from buffers.outbox import Outbox, OutboxState
from buffers.outbox_watch import SealedWatch, WatchError
from firmware.cli_options import config_arg
from firmware.config import LinetapConfig, load_config
from firmware.runstate import read_recorder_status, uploader_status_path
from firmware.sdnotify import Notifier
from firmware.tlsfiles import tls_file_problems
from runtime.errors import ConfigError
from runtime.process import setup_logging, stop_on_signals
from sealedrec.errors import LinetapError
from uploader.client import IDLE_RESCAN_S, SAFETY_RESCAN_S, Uploader
from uploader.telemetry import LocalStatus, ProblemLog, read_device_head

log = logging.getLogger(__name__)

# How often the daemon rewrites runtime_dir/uploader.json (for `linetap status`).
LOCAL_STATUS_INTERVAL_S = 2.0


def run_upload(cfg: LinetapConfig) -> int:
    """``linetap upload``: upload until SIGTERM/SIGINT, then disconnect cleanly; exit 0."""
    problems = tls_file_problems(cfg.upload)
    if problems:
        raise ConfigError(problems)
    stop = threading.Event()
    with stop_on_signals(stop, log=log, doing="stopping the upload"):
        return _upload_until_stopped(cfg, stop)


def _upload_until_stopped(cfg: LinetapConfig, stop: threading.Event) -> int:
    notifier = Notifier()
    ready = False
    problem_log = ProblemLog()
    local = LocalStatus(
        uploader_status_path(cfg.storage.runtime_dir),
        f"{cfg.upload.host}:{cfg.upload.port}",
        problem_log,
    )
    next_local = 0.0

    def tick() -> None:
        nonlocal ready, next_local
        if not ready:
            ready = True
            notifier.ready(f"uploading to {cfg.upload.host}:{cfg.upload.port}")
        notifier.watchdog()
        now = time.monotonic()
        if now >= next_local:
            next_local = now + LOCAL_STATUS_INTERVAL_S
            local.write(uploader.telemetry())

    status_file = cfg.storage.status_file
    head_file = cfg.storage.head_file
    outbox = Outbox(cfg.storage.outbox_dir)
    with ExitStack() as stack:
        watch = _watch_sealed(outbox)
        if watch is not None:
            stack.callback(watch.close)
        uploader = Uploader(
            outbox,
            cfg.device_id,
            cfg.upload,
            status_source=lambda: read_recorder_status(status_file),
            stop=stop,
            on_tick=tick,
            head_source=lambda: read_device_head(head_file),
            rescan_s=IDLE_RESCAN_S if watch is None else SAFETY_RESCAN_S,
        )
        if watch is not None:
            watch.start(uploader.wake)
        uploader_log = logging.getLogger("uploader")
        uploader_log.addHandler(problem_log)
        try:
            local.write(uploader.telemetry(), phase="starting")
            uploader.run()
        finally:
            notifier.stopping()
            notifier.close()
            local.write(uploader.telemetry(), phase="stopped")
            uploader_log.removeHandler(problem_log)
    return 0


def _watch_sealed(outbox: Outbox) -> SealedWatch | None:
    """The inotify watch on ``outbox/sealed`` (not started), or None where there is none."""
    sealed = outbox.state_dir(OutboxState.SEALED)
    try:
        return SealedWatch(sealed)
    except WatchError as exc:
        log.warning("no outbox watch (%s); listing the outbox every %g s", exc, IDLE_RESCAN_S)
        return None


def cmd_upload(args: argparse.Namespace) -> int:
    """``linetap upload --config C``."""
    cfg = load_config(args.config)
    setup_logging(cfg.log_level)
    return run_upload(cfg)


def register(p: argparse.ArgumentParser) -> None:
    """``linetap upload``'s options (its name and help are in :data:`firmware.cli.COMMANDS`)."""
    config_arg(p)
    p.set_defaults(func=cmd_upload)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="linetap upload", description="upload sealed recordings to the head office"
    )
    parser.add_argument("--config", "-c", type=Path, default=None, help="config file")
    args = parser.parse_args(argv)
    try:
        return cmd_upload(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    except LinetapError as exc:
        print(f"linetap upload: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
