"""The manifest of a sealed recording, built in one place from its journal directory.

The body is what the device signs (canonical JSON, :mod:`sealedrec.manifest`); the
signed manifest is then checked against the office's typed model
(:func:`sealedrec.model.validate_manifest`), which never rewrites it: a recording the
office would refuse is still sealed and kept (nothing is lost), and the log says why.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from firmware.clock import ClockSync, boot_id
from firmware.sealwriter import DISCARDED_FILE, END_FILE, EVENTS_FILE, START_FILE
from firmware.sinks import PROGRESS_EVENTS
from sealedrec.age import format_recipient
from sealedrec.keys import key_id
from sealedrec.manifest import MANIFEST_VERSION, ManifestError, sign_manifest
from sealedrec.model import validate_manifest

log = logging.getLogger(__name__)

CONSENT_EVENTS = frozenset({"pause", "resume", "discard"})


@dataclass(frozen=True, slots=True)
class Blob:
    """Which file of a journal directory is the recording, and what is known of its audio."""

    path: Path | None
    container: str | None
    codec: str | None
    frames: int
    pcm_sha256: str | None
    recovered: bool


def read_json(path: Path) -> dict[str, Any]:
    """A JSON record of a journal directory (start, end, manifest)."""
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def build_manifest(
    directory: Path,
    blob: Blob,
    *,
    blob_sha: str | None,
    blob_bytes: int,
    head: tuple[int, str],
    key: Ed25519PrivateKey,
    clock_sync: Callable[[], ClockSync],
    recipients: Sequence[X25519PublicKey],
) -> dict[str, Any]:
    """The signed manifest of the recording in ``directory``, next in the chain after
    ``head`` (seq, manifest hash)."""
    start = read_json(directory / START_FILE)
    end_path = directory / END_FILE
    end = read_json(end_path) if end_path.exists() else None
    discarded = (directory / DISCARDED_FILE).exists()
    rate = int(start["sample_rate"])
    events = end["events"] if end else _read_events(directory / EVENTS_FILE)
    seq, prev = head
    duration_ms = round(end["duration_s"] * 1000) if end else round(blob.frames * 1000 / rate)
    body: dict[str, Any] = {
        "version": MANIFEST_VERSION,
        "recording_id": start["recording_id"],
        "device_id": start["device_id"],
        "device_key_id": key_id(key.public_key()),
        "line": start["line"],
        "channel": start["channel"],
        "seq": seq + 1,
        "prev_manifest_sha256": prev,
        "started_utc": start["started_utc"],
        "ended_utc": end["ended_utc"] if end else None,
        "duration_ms": duration_ms,
        "start_monotonic_ns": int(start.get("started_mono_ns", 0)),
        "end_monotonic_ns": int(end["ended_mono_ns"]) if end else None,
        "boot_id": boot_id(),
        "clock_sync": clock_sync().as_dict(),
        "trigger": start["trigger"],
        "end_reason": end["reason"] if end else "recovered",
        "continues": start.get("continues"),
        # Known at the end of a call; a recovered recording (crash) has no end record
        # and rebuilds them from what was journalled as the call went.
        **(_call_facts(end) if end else _recovered_call_facts(start, events)),
        "consent_events": [e for e in events if e["type"] in CONSENT_EVENTS],
        "events": [e for e in events if e["type"] not in CONSENT_EVENTS | PROGRESS_EVENTS],
        "preroll_ms": round(float(start["preroll_s"]) * 1000),
        "codec": blob.codec,
        "container": blob.container,
        "sample_rate": rate,
        "channels": 1,
        "audio_frames": blob.frames,
        "audio_pcm_sha256": blob.pcm_sha256,
        "blob_sha256": blob_sha,
        "blob_bytes": blob_bytes,
        "recipients": sorted(format_recipient(r) for r in recipients),
        "recovered": blob.recovered and not discarded,
        "discarded": discarded,
        "dropped_frames": int(end.get("dropped_frames", 0)) if end else 0,
        # Measured as the call was stored (sealedrec.levels); a recovered call has no
        # end record and its audio cannot be read back here, a discarded one none.
        "levels": end.get("levels") if end and not discarded else None,
    }
    signed = sign_manifest(body, key)
    _check_model(signed)
    return signed


def _check_model(signed: dict[str, Any]) -> None:
    """Log (never raise) when the office's model would refuse this manifest."""
    try:
        validate_manifest(signed)
    except ManifestError as exc:
        log.error(
            "recording %s: the head office will refuse its manifest (%s); it is sealed and "
            "kept in the outbox: fix the config value named there, and report it",
            signed.get("recording_id"),
            exc,
        )


def _call_facts(end: dict[str, Any]) -> dict[str, Any]:
    return {
        "direction": end.get("direction", "unknown"),
        "caller_id": end.get("caller_id"),
        "dialled_digits": end.get("dialled_digits", ""),
        "masked_spans": end.get("masked_spans", []),
    }


def _recovered_call_facts(start: dict[str, Any], events: list[dict[str, Any]]) -> dict[str, Any]:
    """The call facts of a recording without an end record: caller ID and direction from
    its start record, digits and masked spans from its journalled progress events."""
    digits = [e for e in events if e["type"] == "digit"]
    direction = start.get("direction", "unknown")
    if direction == "unknown" and any(e.get("direction") == "outbound" for e in digits):
        direction = "outbound"
    return {
        "direction": direction,
        "caller_id": start.get("caller_id"),
        "dialled_digits": "".join(str(e["digit"]) for e in digits),
        "masked_spans": [
            {"start_ms": int(e["start_ms"]), "end_ms": int(e["end_ms"])}
            for e in events
            if e["type"] == "mask"
        ],
    }


def _read_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line torn by the crash; everything before it is intact
    return events
