"""``linetap status``: what the recorder and the uploader are doing, from what they publish.

Sources, all local (nothing is asked of a daemon, nothing is written):

* ``storage.runtime_dir/recorder.json``: the recorder rewrites it every second (lines,
  their state and LED pattern, faults, capture counters);
* ``storage.runtime_dir/uploader.json``: the uploader rewrites it every 2 s (its status
  document, the broker link: connected/disconnected since when, the last problem);
* the outbox on the data partition, read directly (depth, oldest unacknowledged
  recording, last ack), so it is right even when the uploader is not running;
* free space on the data partition and the kernel's clock-sync state.

A status file not rewritten for a while (or whose process is gone, or that says
``stopped``) means that daemon is not running. Exit status: 0 when both daemons run,
the uploader is connected to the broker and nothing reports a fault; 1 otherwise (each
reason is printed as a ``problem:`` line); 2 for a bad config file. ``warning:`` lines
(clock not synchronised, little free space, lost capture frames) do not change it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from buffers.outbox import Outbox, OutboxError, OutboxState
from firmware.cli_options import config_arg
from firmware.clock import read_clock_sync
from firmware.config import LinetapConfig, config_path, load_config
from firmware.runstate import (
    RECORDER_MAX_AGE_S,
    UPLOADER_MAX_AGE_S,
    ago,
    read_daemon_status,
    uploader_status_path,
)
from runtime.process import EXIT_FAILURE, EXIT_OK

LED_MEANING = {
    "off": "off",
    "solid": "solid (recording)",
    "slow_blink": "blinking 1 Hz (paused / opted out)",
    "fast_blink": "blinking 5 Hz (fault)",
    "heartbeat": "short flash every 3 s (running, all lines idle)",
}
IN_CALL_STATES = ("recording", "paused")


# -- reading ---------------------------------------------------------------------------


def read_outbox(root: Path, now: float) -> dict[str, Any]:
    """Depth, oldest unacked and last ack, read from the outbox itself."""
    if not root.is_dir():
        return {"source": "disk", "error": None, "missing": True, "unacked_count": 0}
    # Outbox() creates missing state directories; a status tool run as root must not
    # make root-owned ones the daemons cannot write, so only open a complete outbox.
    needed = [root / ".lock", *(root / s.value for s in OutboxState)]
    if not all(p.exists() for p in needed):
        return {"source": "disk", "error": None, "missing": True, "unacked_count": 0}
    try:
        st = Outbox(root).stats(now)
    except OutboxError as exc:
        return {"source": "disk", "error": str(exc)}
    return {
        "source": "disk",
        "error": None,
        "missing": False,
        "unacked_count": st.unacked_count,
        "unacked_bytes": st.unacked_bytes,
        "counts": {state.value: n for state, n in st.counts.items()},
        "oldest_unacked_age_s": (
            round(st.oldest_unacked_age_s, 1) if st.oldest_unacked_age_s is not None else None
        ),
        "last_ack_utc": _iso(st.last_ack_at) if st.last_ack_at is not None else None,
    }


def _outbox_from_uploader(doc: dict[str, Any]) -> dict[str, Any] | None:
    box = doc.get("outbox")
    if not isinstance(box, dict) or "unacked_count" not in box:
        return None
    return {
        "source": "uploader",
        "error": None,
        "missing": False,
        "unacked_count": box.get("unacked_count"),
        "unacked_bytes": box.get("unacked_bytes"),
        "counts": box.get("counts"),
        "oldest_unacked_age_s": box.get("oldest_unacked_age_s"),
        "last_ack_utc": box.get("last_ack_at"),
    }


def _disk(path: Path, min_free_mb: int) -> dict[str, Any]:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free: int | None = shutil.disk_usage(probe).free
    except OSError:
        free = None
    return {
        "path": str(path),
        "free_bytes": free,
        "min_free_mb": min_free_mb,
        "min_free_bytes": min_free_mb * 1024 * 1024,
    }


def _recorder_part(rec: dict[str, Any], problems: list[str], warnings: list[str]) -> dict[str, Any]:
    recorder: dict[str, Any] = {k: rec[k] for k in ("running", "reason", "status_file", "age_s")}
    recorder["pid"] = rec.get("pid")
    data = rec["data"] or {}
    lines = []
    for line in data.get("lines") or []:
        if isinstance(line, dict):
            state = str(line.get("state"))
            lines.append(
                {
                    "name": line.get("name"),
                    "state": state,
                    "led": line.get("led"),
                    "in_call": state in IN_CALL_STATES,
                }
            )
    raw_faults = data.get("faults")
    faults: dict[str, Any] = raw_faults if isinstance(raw_faults, dict) else {}
    recorder.update(
        lines=lines,
        calls_in_progress=sum(1 for line in lines if line["in_call"]),
        status_led=data.get("status_led"),
        faults=faults,
        capture=data.get("capture"),
    )
    if not rec["running"]:
        problems.append(f"recorder: not running ({rec['reason']})")
        return recorder
    for what, fault in sorted(faults.items()):
        if fault:
            problems.append(f"recorder fault: {what}: {fault}")
    capture = data.get("capture")
    if isinstance(capture, dict) and capture.get("lost_frames"):
        warnings.append(
            f"capture lost {capture['lost_frames']} frame(s) in {capture.get('xruns', 0)}"
            " overrun(s) since the recorder started"
        )
    return recorder


def _uploader_part(
    upl: dict[str, Any], default_broker: str, problems: list[str], warnings: list[str]
) -> dict[str, Any]:
    udoc = upl["data"] or {}
    uploader: dict[str, Any] = {k: upl[k] for k in ("running", "reason", "status_file", "age_s")}
    uploader["pid"] = upl.get("pid")
    link = udoc.get("link") if isinstance(udoc.get("link"), dict) else None
    upload = udoc.get("upload") if isinstance(udoc.get("upload"), dict) else None
    uploader.update(link=link, upload=upload)
    if not upl["running"]:
        problems.append(f"uploader: not running ({upl['reason']})")
        return uploader
    if link is None or link.get("state") != "connected":
        state = link.get("state", "unknown") if link else "unknown"
        broker = link.get("broker", default_broker) if link else default_broker
        detail = f"; last error: {link['last_error']}" if link and link.get("last_error") else ""
        problems.append(f"uploader: not connected to the broker {broker} ({state}){detail}")
    if upload and upload.get("rejected"):
        warnings.append(
            f"the head office rejected {upload['rejected']} recording(s) since the uploader"
            " started (kept on the device; see the uploader's log)"
        )
    return uploader


def collect(cfg: LinetapConfig, config_file: Path, now: float | None = None) -> dict[str, Any]:
    """The whole report (``--json`` prints it as is)."""
    now = time.time() if now is None else now
    problems: list[str] = []
    warnings: list[str] = []
    rec = read_daemon_status(cfg.storage.status_file, RECORDER_MAX_AGE_S, now)
    recorder = _recorder_part(rec, problems, warnings)
    upl = read_daemon_status(uploader_status_path(cfg.storage.runtime_dir), UPLOADER_MAX_AGE_S, now)
    uploader = _uploader_part(upl, f"{cfg.upload.host}:{cfg.upload.port}", problems, warnings)

    outbox = read_outbox(cfg.storage.outbox_dir, now)
    if outbox.get("error") and upl["running"]:
        outbox = _outbox_from_uploader(upl["data"] or {}) or outbox
    if outbox.get("error"):
        problems.append(f"outbox: {outbox['error']}")
    disk = _disk(cfg.storage.data_dir, cfg.storage.min_free_mb)
    if disk["free_bytes"] is not None and disk["free_bytes"] < disk["min_free_bytes"]:
        warnings.append(
            f"only {_bytes(disk['free_bytes'])} free on {disk['path']} (storage.min_free_mb ="
            f" {cfg.storage.min_free_mb}): acknowledged recordings are deleted early"
        )
    clock = read_clock_sync().as_dict()
    if not clock["synchronized"]:
        warnings.append(
            "the clock is not synchronised (no NTP yet?): recordings are marked so; check"
            " network time (timedatectl)"
        )
    return {
        "device_id": cfg.device_id,
        "config": str(config_file),
        "time_utc": _iso(now),
        "ok": not problems,
        "problems": problems,
        "warnings": warnings,
        "recorder": recorder,
        "uploader": uploader,
        "outbox": outbox,
        "disk": disk,
        "clock": clock,
    }


# -- printing --------------------------------------------------------------------------


def _bytes(n: int | float) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"  # pragma: no cover - the loop returns


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _when(iso: str | None, now: float) -> str:
    """``2026-11-25 10:00:00 UTC (3 min ago)`` from an ISO time."""
    if not iso:
        return "never"
    try:
        at = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    text = at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{text} ({ago(max(0.0, now - at.timestamp()))} ago)"


def _daemon_head(name: str, part: dict[str, Any]) -> str:
    if part["running"]:
        return f"{name}: running (pid {part['pid']}, status {ago(part['age_s'])} old)"
    return f"{name}: not running ({part['reason']})"


def _render_recorder(rec: dict[str, Any]) -> list[str]:
    head = _daemon_head("recorder", rec)
    if rec["running"]:
        calls = rec["calls_in_progress"]
        head += f"; {calls} call{'s' if calls != 1 else ''} in progress"
    out = [head]
    if not rec["running"]:
        return out  # what the file says is history, not the lines' state
    width = max((len(str(line["name"])) for line in rec["lines"]), default=0)
    for line in rec["lines"]:
        led = LED_MEANING.get(str(line["led"]), str(line["led"]))
        note = "  call in progress" if line["in_call"] else ""
        out.append(f"  {line['name']!s:<{width}}  {line['state']:<9}  LED {led}{note}")
    if rec["lines"]:
        led = LED_MEANING.get(str(rec["status_led"]), str(rec["status_led"]))
        faults = [f"{k}: {v}" for k, v in sorted((rec["faults"] or {}).items()) if v]
        out.append(f"  status LED {led}; faults: {'; '.join(faults) if faults else 'none'}")
    return out


def _render_uploader(upl: dict[str, Any], now: float) -> list[str]:
    out = [_daemon_head("uploader", upl)]
    link = upl["link"]
    if link:
        verb = {"connected": "connected to", "disconnected": "disconnected from"}.get(
            str(link.get("state")), f"{link.get('state')}:"
        )
        since = _when(link.get("since_utc"), now)
        out.append(f"  broker: {verb} {link.get('broker')} since {since}")
        if link.get("last_error"):
            at = _when(link.get("last_error_utc"), now)
            out.append(f"  last error at {at}: {link['last_error']}")
    upload = upl["upload"]
    if upl["running"] and upload:
        doing = f"uploading {upload['current']}" if upload.get("current") else "idle"
        out.append(
            f"  upload: {doing}; since start {upload.get('acked', 0)} acked,"
            f" {upload.get('rejected', 0)} rejected, {_bytes(upload.get('sent_bytes') or 0)} sent"
        )
    return out


def _render_outbox(box: dict[str, Any], now: float) -> str:
    if box.get("error"):
        return f"outbox: cannot read ({box['error']})"
    if box.get("missing"):
        return "outbox: none yet (nothing recorded)"
    text = f"outbox: {box['unacked_count']} waiting"
    if box["unacked_count"]:
        text += f" ({_bytes(box.get('unacked_bytes') or 0)})"
        if box.get("oldest_unacked_age_s") is not None:
            text += f", oldest {ago(box['oldest_unacked_age_s'])}"
    counts = box.get("counts") or {}
    text += f"; {counts.get('acked', 0)} acked; last ack {_when(box.get('last_ack_utc'), now)}"
    if box.get("source") == "uploader":
        text += " (from the uploader)"
    return text


def render(report: dict[str, Any], now: float) -> list[str]:
    """The human-readable block."""
    out = [f"device {report['device_id']} (config {report['config']})"]
    out += _render_recorder(report["recorder"])
    out += _render_uploader(report["uploader"], now)
    out.append(_render_outbox(report["outbox"], now))
    disk = report["disk"]
    free = "unknown" if disk["free_bytes"] is None else _bytes(disk["free_bytes"])
    out.append(f"disk: {free} free on {disk['path']} (storage.min_free_mb = {disk['min_free_mb']})")
    clock = report["clock"]
    out.append(f"clock: {'synchronised' if clock['synchronized'] else 'NOT synchronised'}")
    problems = report["problems"]
    if problems:
        out.append(f"{len(problems)} problem{'s' if len(problems) != 1 else ''}:")
        out += [f"  problem: {p}" for p in problems]
    else:
        out.append("OK: recording and uploading")
    out += [f"  warning: {w}" for w in report["warnings"]]
    return out


def cmd_status(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    now = time.time()
    report = collect(cfg, config_path(args.config), now)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print("\n".join(render(report, now)))
    return EXIT_OK if report["ok"] else EXIT_FAILURE


def register(p: argparse.ArgumentParser) -> None:
    """``linetap status``'s options (its name and help are in :data:`firmware.cli.COMMANDS`)."""
    p.description = (
        "Shows what the recorder and the uploader publish locally (runtime_dir/"
        "recorder.json, uploader.json) and the outbox on disk."
    )
    p.epilog = (
        "exit status: 0 both daemons running, connected, no fault; 1 otherwise"
        " (see the 'problem:' lines); 2 bad config"
    )
    config_arg(p)
    p.add_argument("--json", action="store_true", help="one JSON object for scripts")
    p.set_defaults(func=cmd_status)
