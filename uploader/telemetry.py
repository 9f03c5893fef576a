"""The uploader's status document, published (retained) on ``linetap/{device}/status``
and, with the broker link's state, written to ``runtime_dir/uploader.json`` for
``linetap status`` (:class:`LocalStatus`, through :mod:`firmware.runstate`, which owns
that file and the recorder's).

Its ``head`` is the device head the recorder signed (:mod:`sealedrec.head`), published
as read from ``data_dir/state/head.json`` (:func:`read_device_head`): the uploader holds
no signing key, and the office verifies the signature, not the uploader's word."""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import paho.mqtt

from buffers.outbox import Outbox, OutboxError
from firmware.clock import read_clock_sync
from firmware.runstate import write_status_file
from runtime import __version__

log = logging.getLogger(__name__)

# A signed head is ~400 bytes; anything much larger is not one (and must not bloat the
# retained status).
MAX_HEAD_BYTES = 4096


@dataclass(frozen=True, slots=True)
class UploadStats:
    """A snapshot of the uploader's counters (safe to read from any thread)."""

    connected: bool
    current: str | None
    backlog: int
    sent_bytes: int
    acked: int
    rejected: int
    max_in_flight: int
    receive_maximum: int | None


def status_document(
    outbox: Outbox,
    device_id: str,
    stats_source: Callable[[], UploadStats],
    status_source: Callable[[], dict[str, Any]] | None,
    head_source: Callable[[], dict[str, Any] | None] | None = None,
) -> dict[str, Any]:
    """The status document: outbox, upload counters, disk, clock, recorder, the signed
    device head, versions.

    ``stats_source`` is the uploader's stats, ``status_source`` the recorder's status
    (None: unknown), ``head_source`` the signed head (:func:`read_device_head`; None, or
    a source returning None: no head yet).
    """
    now = time.time()
    outbox_doc: dict[str, Any]
    stats = stats_source()
    backlog = stats.backlog
    try:
        st = outbox.stats(now)
        outbox_doc = {
            "counts": {state.value: n for state, n in st.counts.items()},
            "bytes": {state.value: n for state, n in st.bytes.items()},
            "unacked_count": st.unacked_count,
            "unacked_bytes": st.unacked_bytes,
            "oldest_unacked_age_s": (
                round(st.oldest_unacked_age_s, 1) if st.oldest_unacked_age_s is not None else None
            ),
            "last_ack_at": _iso(st.last_ack_at) if st.last_ack_at is not None else None,
        }
        backlog = st.unacked_count
    except OutboxError as exc:
        outbox_doc = {"error": str(exc)}
    try:
        free: int | None = shutil.disk_usage(outbox.root).free
    except OSError:
        free = None
    return {
        "state": "online",
        "device_id": device_id,
        "time_utc": _iso(now),
        "outbox": outbox_doc,
        "upload": {
            "connected": stats.connected,
            "current": stats.current,
            "backlog": backlog,
            "sent_bytes": stats.sent_bytes,
            "acked": stats.acked,
            "rejected": stats.rejected,
        },
        "disk_free_bytes": free,
        "clock_sync": read_clock_sync().as_dict(),
        "recorder": _recorder_status(status_source),
        "head": head_source() if head_source is not None else None,
        "versions": {
            "linetap": __version__,
            "python": platform.python_version(),
            "paho": paho.mqtt.__version__,
        },
    }


def _recorder_status(status_source: Callable[[], dict[str, Any]] | None) -> dict[str, Any]:
    if status_source is None:
        return {"state": "unknown"}
    try:
        return status_source()
    except (OSError, ValueError, TypeError, KeyError) as exc:
        return {"state": "unknown", "error": str(exc)[:200]}


def read_device_head(path: Path) -> dict[str, Any] | None:
    """The recorder's signed head as it is in ``path`` (None: not written yet). A file
    that cannot be read or is no JSON object comes out as ``{"error": ...}``, which the
    office refuses as malformed and shows, rather than as a head that silently vanished."""
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_HEAD_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return {"error": f"{path}: {exc.strerror or exc}"}
    if len(raw) > MAX_HEAD_BYTES:
        return {"error": f"{path}: over {MAX_HEAD_BYTES} bytes"}
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return {"error": f"{path}: not JSON ({str(exc)[:120]})"}
    if not isinstance(doc, dict):
        return {"error": f"{path}: not a JSON object"}
    return doc


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


class ProblemLog(logging.Handler):
    """Remembers the uploader's last logged problem (WARNING or worse).

    Attached to the ``uploader`` logger: connection refused, TLS errors, lost
    connections and rejections are logged there as one line each, without secrets, so
    the last of them is the "last error" ``linetap status`` shows.
    """

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.last: tuple[float, str] | None = None  # (wall clock, message)

    def emit(self, record: logging.LogRecord) -> None:
        self.last = (record.created, record.getMessage()[:500])  # one assignment: thread-safe


class LocalStatus:
    """``uploader.json``: the status document plus the broker link's state.

    ``link`` is ``connecting`` until the first attempt has finished, then ``connected``
    or ``disconnected`` with the time it became so, and the last problem logged. The file
    is replaced atomically; ``state`` is ``running`` or, once the daemon has stopped,
    ``stopped``. A file not rewritten for a while means the uploader is not running.
    """

    def __init__(
        self,
        path: Path,
        broker: str,
        problems: ProblemLog,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self._broker = broker
        self._problems = problems
        self._clock = clock
        self._link = "connecting"
        self._since = clock()
        self._write_error: str | None = None

    def write(
        self,
        document: dict[str, Any],
        *,
        phase: Literal["starting", "running", "stopped"] = "running",
    ) -> None:
        """Write ``document`` with the link state; ``phase``: ``starting`` (before the
        first connection attempt is over), ``running`` or ``stopped``."""
        now = self._clock()
        upload = document.get("upload")
        connected = isinstance(upload, dict) and upload.get("connected") is True
        if phase == "starting":
            link = "connecting"
        elif phase == "running" and connected:
            link = "connected"
        else:
            link = "disconnected"
        if link != self._link:
            self._link, self._since = link, now
        payload = {
            **document,
            "state": "stopped" if phase == "stopped" else "running",
            "pid": os.getpid(),
            "updated_utc": _iso(now),
            "link": self.link_state(),
        }
        try:
            write_status_file(self.path, payload)
        except OSError as exc:
            message = (
                f"{self.path} not written ({exc.strerror or exc}); "
                "'linetap status' cannot see the uploader"
            )
            if message != self._write_error:
                log.warning("%s", message)
            self._write_error = message
        else:
            self._write_error = None

    def link_state(self) -> dict[str, Any]:
        last = self._problems.last
        return {
            "state": self._link,
            "since_utc": _iso(self._since),
            "broker": self._broker,
            "last_error": last[1] if last else None,
            "last_error_utc": _iso(last[0]) if last else None,
        }
