"""``linetap upload``: the uploader daemon (outbox → head office over MQTT, telemetry).

Run by ``linetap-uploader.service`` (Type=notify): READY once the first connection
attempt has finished (connected or not: the uploader keeps retrying, and being offline
is a normal state for it), WATCHDOG pings from the upload loop, STOPPING on SIGTERM.
Every LOCAL_STATUS_INTERVAL_S it also writes ``runtime_dir/uploader.json`` (the status
document plus the broker link's state) for ``linetap status``; a last one on exit says
``stopped``.
Also runnable as ``python -m uploader.daemon --config C``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from firmware.config import LinetapConfig, UploadConfig, load_config
from firmware.errors import ConfigError, LinetapError
from runtime.process import setup_logging, stop_on_signals

log = logging.getLogger(__name__)

# The recorder rewrites its status file every second; older than this, it is not running.
STATUS_MAX_AGE_S = 10.0
STATUS_MAX_BYTES = 64 * 1024
# How often the daemon rewrites runtime_dir/uploader.json (for `linetap status`).
LOCAL_STATUS_INTERVAL_S = 2.0


def tls_file_problems(settings: UploadConfig) -> list[str]:
    """One line per missing TLS file when upload.tls is on (empty when all is well)."""
    if not settings.tls:
        return []
    problems: list[str] = []
    files = (
        (
            "ca_file",
            settings.ca_file,
            "a copy of the head office's CA certificate (ca.crt from 'linetap-office init')",
        ),
        (
            "cert_file",
            settings.cert_file,
            "this device's certificate from 'linetap-office enroll-device'",
        ),
        (
            "key_file",
            settings.key_file,
            "the TLS key 'linetap keys csr' made on this device",
        ),
    )
    for key, path, what in files:
        fix = f"set it to {what} (or upload.tls = false for a plain test broker)"
        if path is None:
            problems.append(f"upload.{key}: required when upload.tls = true; {fix}")
        elif not path.is_file():
            state = "is not a file" if path.exists() else "does not exist"
            problems.append(f"upload.{key}: {path} {state}; {fix}")
        elif not os.access(path, os.R_OK):
            problems.append(
                f"upload.{key}: {path} is not readable by this user; "
                "fix its owner/mode (the key 0600, owned by the linetap user)"
            )
    return problems


def read_recorder_status(path: Path, *, max_age_s: float = STATUS_MAX_AGE_S) -> dict[str, Any]:
    """The recorder's status file for telemetry: ``{"state": "unknown"}`` if missing or
    unreadable, ``{"state": "stale", ...}`` if not rewritten for ``max_age_s``."""
    try:
        with path.open("rb") as fh:
            age = time.time() - os.fstat(fh.fileno()).st_mtime
            raw = fh.read(STATUS_MAX_BYTES + 1)
    except FileNotFoundError:
        return {"state": "unknown", "reason": f"{path} missing (recorder not running?)"}
    except OSError as exc:
        return {"state": "unknown", "reason": f"{path}: {exc.strerror or exc}"}
    if age > max_age_s:
        return {"state": "stale", "age_s": round(age, 1)}
    if len(raw) > STATUS_MAX_BYTES:
        return {"state": "unknown", "reason": f"{path} is over {STATUS_MAX_BYTES} bytes"}
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return {"state": "unknown", "reason": f"{path}: not JSON ({exc})"}
    if not isinstance(data, dict):
        return {"state": "unknown", "reason": f"{path}: not a JSON object"}
    return data


def run_upload(cfg: LinetapConfig) -> int:
    """``linetap upload``: upload until SIGTERM/SIGINT, then disconnect cleanly; exit 0."""
    problems = tls_file_problems(cfg.upload)
    if problems:
        raise ConfigError(problems)
    stop = threading.Event()
    with stop_on_signals(stop, log=log, doing="stopping the upload"):
        return _upload_until_stopped(cfg, stop)


def _upload_until_stopped(cfg: LinetapConfig, stop: threading.Event) -> int:
    # paho is imported here, not at module import, so `linetap --help` stays fast.
    from buffers.outbox import Outbox
    from firmware.app import device_id
    from firmware.sdnotify import Notifier
    from uploader.client import Uploader
    from uploader.telemetry import LocalStatus, ProblemLog, uploader_status_path

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
    uploader = Uploader(
        Outbox(cfg.storage.outbox_dir),
        device_id(cfg),
        cfg.upload,
        status_source=lambda: read_recorder_status(status_file),
        stop=stop,
        on_tick=tick,
    )
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


def cmd_upload(args: argparse.Namespace) -> int:
    """Entry point for ``linetap upload --config C`` (firmware/cli.py)."""
    cfg = load_config(args.config)
    setup_logging(cfg.log_level)
    return run_upload(cfg)


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
