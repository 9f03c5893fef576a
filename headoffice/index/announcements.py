"""The recording announcements a call's manifest reports, as rows the search can filter on.

A device that announces recording (``announce`` in its line config) lists every
announcement it played, or failed to play, as an ``announce`` event of the manifest
(events are flat, integers only, as :mod:`firmware.sealwriter` journals them):
``{"type": "announce", "at_ms", "audio_ms", "kind": "tone"|"prompt", "n", "played",
"hz"?, "ms"?, "file"?, "sha256"?, "error"?}``. That is consent evidence both
ways: a compliance officer answering "was I told this call was recorded?" needs the
announcements that played and the ones that did not.

The manifest arrives from a device and is hostile until checked: an event that does not
fit :class:`Announcement` is left out of the table (the signed manifest itself is kept
whole and still shows it), so a malformed event can never cost the recording.
Manifests indexed by an office before this table existed carry no such events: no
firmware before it made them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)

from headoffice.index.records import Query

log = logging.getLogger(__name__)

EVENT_TYPE = "announce"
#: At most this many announcements of one recording are indexed (a 24 h call with a tone
#: every 15 s has 5,760); the manifest keeps every one.
MAX_ROWS = 10_000
MAX_ERROR = 256

_Short = Annotated[str, StringConstraints(max_length=256)]


class Announcement(BaseModel):
    """One announcement as the device reported it."""

    model_config = ConfigDict(frozen=True, extra="ignore", strict=True)

    kind: Literal["tone", "prompt"]
    n: Annotated[int, Field(ge=1, le=10**6)]
    at_ms: Annotated[int, Field(ge=0, le=10**10)]
    played: bool
    hz: Annotated[int, Field(ge=1, le=100_000)] | None = None
    ms: Annotated[int, Field(ge=0, le=10**8)] | None = None
    file: _Short | None = None
    # A device's fault text can be long (alsa-lib's reason and the fix): kept whole in the
    # manifest, cut here, so a long reason never costs the row.
    error: str | None = None

    @field_validator("error")
    @classmethod
    def _cut(cls, value: str | None) -> str | None:
        return value if value is None else value[:MAX_ERROR]


def table(pg: bool) -> list[str]:
    """The DDL (both backends): one row per announcement, looked up by recording."""
    boolean = "BOOLEAN" if pg else "INTEGER"
    return [
        f"""CREATE TABLE IF NOT EXISTS announcements (
            recording_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            n BIGINT NOT NULL,
            at_ms BIGINT NOT NULL,
            played {boolean} NOT NULL,
            error TEXT,
            PRIMARY KEY (recording_id, kind, n))""",
    ]


def announcements_of(manifest: Mapping[str, Any]) -> list[Announcement]:
    """The well-formed announcements of ``manifest``'s events, in manifest order."""
    events = manifest.get("events")
    if not isinstance(events, Sequence) or isinstance(events, str):
        return []
    found: list[Announcement] = []
    skipped = 0
    for event in events:
        if not isinstance(event, Mapping) or event.get("type") != EVENT_TYPE:
            continue
        try:
            found.append(Announcement.model_validate(event))
        except ValidationError:
            skipped += 1
    if skipped:
        log.warning(
            "recording %s: %d malformed announce event(s) not indexed (kept in the manifest)",
            manifest.get("recording_id"),
            skipped,
        )
    return found[:MAX_ROWS]


def insert(q: Query, recording_id: str, manifest: Mapping[str, Any]) -> None:
    """Index ``manifest``'s announcements inside the caller's transaction (a repeated
    ``(kind, n)`` keeps the first: the primary key makes the insert idempotent)."""
    for a in announcements_of(manifest):
        q(
            "INSERT INTO announcements (recording_id, kind, n, at_ms, played, error) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (recording_id, a.kind, a.n, a.at_ms, a.played, a.error),
        )


def summary(items: Sequence[Announcement]) -> str:
    """One line for ``show``: what the caller was told, and what failed."""
    if not items:
        return "none"
    parts: list[str] = []
    tones = [a for a in items if a.kind == "tone" and a.played]
    prompts = [a for a in items if a.kind == "prompt" and a.played]
    for p in prompts:
        parts.append(f"prompt {p.file or '?'} at {p.at_ms / 1000:.1f} s")
    if tones:
        hz = f"{tones[0].hz} Hz " if tones[0].hz else ""
        parts.append(f"{len(tones)} {hz}tone(s), first at {tones[0].at_ms / 1000:.1f} s")
    failed = [a for a in items if not a.played]
    if failed:
        first = failed[0]
        parts.append(
            f"{len(failed)} NOT played (first: {first.kind} at {first.at_ms / 1000:.1f} s: "
            f"{first.error or 'no reason given'})"
        )
    return "; ".join(parts)
