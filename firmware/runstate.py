"""What the two daemons publish about themselves in ``storage.runtime_dir`` (tmpfs).

* ``recorder.json`` (``storage.status_file``): the recorder rewrites it every second
  (lines, their state, LED patterns and levels, faults, capture counters);
* ``uploader.json`` (:func:`uploader_status_path`): the uploader rewrites it every 2 s
  (its status document and the broker link's state).

This module is the one place that knows these files: the daemons write them with
:func:`write_status_file`, and the uploader's telemetry, ``linetap status``, ``check``,
``hooktest`` and ``levels`` read them with :func:`read_recorder_status` or
:func:`read_daemon_status`. It imports nothing but the standard library, so the uploader
reads the recorder's file without loading any recorder code, and the tools read both
without importing either daemon. Nothing else passes between the daemons but the outbox.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

UPLOADER_STATUS_NAME = "uploader.json"  # in storage.runtime_dir, beside recorder.json

# The recorder rewrites its file every second; older than this, it is not running.
RECORDER_MAX_AGE_S = 10.0
# The uploader rewrites its file every 2 s, but its loop may block for up to two
# connection timeouts (TCP connect, then CONNACK: 10 s each) while the broker is away.
UPLOADER_MAX_AGE_S = 30.0
# What a reader takes of a status file at most (a bigger one is not a status document).
STATUS_MAX_BYTES = 256 * 1024
# The recorder's status as the uploader carries it in its telemetry (an MQTT message).
TELEMETRY_MAX_BYTES = 64 * 1024


def uploader_status_path(runtime_dir: Path) -> Path:
    """Where the uploader leaves its status for ``linetap status`` and ``check``."""
    return runtime_dir / UPLOADER_STATUS_NAME


def write_status_file(path: Path, payload: dict[str, Any]) -> None:
    """Replace ``path`` with ``payload`` as JSON, atomically (a reader sees the old or
    the new document, never half of one). Not fsynced: the file lives in tmpfs and means
    nothing after a reboot, and the recorder writes it from its capture loop.
    Raises :class:`OSError`; the daemons log it and go on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def _read_raw(path: Path, max_bytes: int) -> tuple[float, bytes]:
    """The file's mtime and up to ``max_bytes + 1`` bytes of it (raises OSError)."""
    with path.open("rb") as fh:
        mtime = os.fstat(fh.fileno()).st_mtime
        return mtime, fh.read(max_bytes + 1)


def read_recorder_status(path: Path, *, max_age_s: float = RECORDER_MAX_AGE_S) -> dict[str, Any]:
    """The recorder's status file as the uploader's telemetry carries it:
    ``{"state": "unknown", "reason": ...}`` if missing or unreadable,
    ``{"state": "stale", "age_s": ...}`` if not rewritten for ``max_age_s``, else the
    document itself (which has no ``state`` key)."""
    try:
        mtime, raw = _read_raw(path, TELEMETRY_MAX_BYTES)
    except FileNotFoundError:
        return {"state": "unknown", "reason": f"{path} missing (recorder not running?)"}
    except OSError as exc:
        return {"state": "unknown", "reason": f"{path}: {exc.strerror or exc}"}
    age = time.time() - mtime
    if age > max_age_s:
        return {"state": "stale", "age_s": round(age, 1)}
    if len(raw) > TELEMETRY_MAX_BYTES:
        return {"state": "unknown", "reason": f"{path} is over {TELEMETRY_MAX_BYTES} bytes"}
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return {"state": "unknown", "reason": f"{path}: not JSON ({exc})"}
    if not isinstance(data, dict):
        return {"state": "unknown", "reason": f"{path}: not a JSON object"}
    return data


def pid_alive(pid: object) -> bool | None:
    """True/False if ``pid`` is a live process; None when the file gives none."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's (the linetap service user)
    return True


def read_daemon_status(path: Path, max_age_s: float, now: float) -> dict[str, Any]:
    """A daemon's status file, judged: ``running``, ``reason`` when not, ``age_s``,
    ``pid`` and ``data`` (the document), for ``linetap status`` and ``check``."""
    out: dict[str, Any] = {"status_file": str(path), "running": False, "age_s": None, "data": None}
    try:
        mtime, raw = _read_raw(path, STATUS_MAX_BYTES)
    except FileNotFoundError:
        out["reason"] = f"no status file {path}"
        return out
    except OSError as exc:
        out["reason"] = f"cannot read {path} ({exc.strerror or exc})"
        return out
    age = max(0.0, now - mtime)
    out["age_s"] = round(age, 1)
    try:
        data = json.loads(raw) if len(raw) <= STATUS_MAX_BYTES else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        data = None
    if not isinstance(data, dict):
        out["reason"] = f"{path} is not a status document"
        return out
    out["data"] = data
    out["pid"] = data.get("pid")
    if data.get("state") == "stopped":
        out["reason"] = f"stopped {ago(age)} ago"
    elif pid_alive(data.get("pid")) is False:
        out["reason"] = f"process {data['pid']} is gone; status {ago(age)} old"
    elif age > max_age_s:
        out["reason"] = f"status {ago(age)} old"
    else:
        out["running"] = True
        out["reason"] = None
    return out


def ago(seconds: float) -> str:
    """A duration as people say it: ``4.2 s``, ``35 s``, ``12 min``, ``5 h``, ``3 d``."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} d"
