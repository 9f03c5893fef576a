"""The uploader's status document, published (retained) on ``linetap/{device}/status``."""

from __future__ import annotations

import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import paho.mqtt

import firmware
from buffers.outbox import Outbox, OutboxError
from firmware.clock import read_clock_sync


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
) -> dict[str, Any]:
    """The status document: outbox, upload counters, disk, clock, recorder, versions.

    ``stats_source`` is the uploader's stats, ``status_source`` the recorder's status
    (None: unknown).
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
        "versions": {
            "linetap": firmware.__version__,
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


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")
