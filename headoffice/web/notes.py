"""Notes, bookmarks, sensitive spans and "reviewed" marks of recordings: :class:`NoteStore`.

Kept in the index database (tables ``notes`` and ``reviews``,
:func:`headoffice.index.schema._review`). The store only validates and stores; who may
write or read them is the web routes' business (:mod:`headoffice.web.routes_notes`,
through the gate and its ledger leaves).

A *sensitive span* (kind ``sensitive``: ``at_ms`` its start, ``end_ms`` its end) is a
stretch of the call a reviewer marked as personal (a name, an address said aloud): the
anonymised training export (:mod:`headoffice.anonymise`) silences it. It lives in the
``notes`` table but is not a note: :meth:`NoteStore.notes_for` lists notes and
bookmarks only, :meth:`NoteStore.sensitive_spans` the spans.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from headoffice.index import Index
from headoffice.index.records import StoredRecord, now_iso
from headoffice.ledger.store import Ledger

__all__ = [
    "MAX_NOTE_CHARS",
    "Note",
    "NoteError",
    "NoteKind",
    "NoteStore",
    "Review",
    "SensitiveSpan",
    "ledger_history",
    "mmss",
    "parse_position",
]

MAX_NOTE_CHARS = 2000
NoteKind = Literal["note", "bookmark"]
KINDS: tuple[NoteKind, ...] = ("note", "bookmark")
SENSITIVE = "sensitive"  # the notes table's kind of a sensitive span
_POSITION = re.compile(r"(?:(?:(\d{1,3}):)?(\d{1,3}):)?(\d{1,7})(?:[.,](\d{1,3}))?")


class NoteError(ValueError):
    """A note that cannot be stored (its message says why, for the person who wrote it)."""


def parse_position(text: str) -> int:
    """A position in a call as people write it, in ms: ``75``, ``75.5``, ``1:15``,
    ``01:15.5`` or ``1:01:15``; :class:`NoteError` for anything else."""
    match = _POSITION.fullmatch(text.strip())
    if match is None:
        raise NoteError(f"{text.strip()[:20]!r} is not a position: write mm:ss, e.g. 01:15.5")
    hours, minutes, seconds, fraction = match.groups()
    if (minutes is not None and int(seconds) >= 60) or (hours is not None and int(minutes) >= 60):
        raise NoteError(f"{text.strip()[:20]!r}: minutes and seconds run from 00 to 59")
    ms = (int(hours or 0) * 3600 + int(minutes or 0) * 60 + int(seconds)) * 1000
    return ms + int((fraction or "0").ljust(3, "0"))


def mmss(ms: int) -> str:
    """``ms`` as ``mm:ss`` (``h:mm:ss`` from an hour on), rounded down to the second."""
    seconds = max(0, int(ms)) // 1000
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


@dataclass(frozen=True, slots=True)
class Note:
    id: int
    recording_id: str
    author: str
    at_ms: int
    kind: NoteKind
    text: str
    created_at: str

    @property
    def at(self) -> str:
        return mmss(self.at_ms)


@dataclass(frozen=True, slots=True)
class SensitiveSpan:
    """A stretch of a call a reviewer marked as sensitive (start inclusive, end exclusive)."""

    id: int
    recording_id: str
    author: str
    start_ms: int
    end_ms: int
    text: str
    created_at: str

    @property
    def span(self) -> str:
        return f"{mmss(self.start_ms)}–{mmss(self.end_ms)}"


@dataclass(frozen=True, slots=True)
class Review:
    recording_id: str
    reviewer: str
    reviewed_at: str


class NoteStore:
    """The notes and reviewed marks in one office index (both backends)."""

    def __init__(self, index: Index) -> None:
        self.index = index

    @staticmethod
    def check(record: StoredRecord, at_ms: int, text: str, kind: str) -> tuple[NoteKind, str]:
        """The kind and stripped text of a valid note, else :class:`NoteError`: an
        unknown kind, a position outside the call, an empty note or one longer than
        :data:`MAX_NOTE_CHARS`."""
        if kind not in KINDS:
            raise NoteError(f"unknown kind {kind[:20]!r}: a note or a bookmark")
        text = text.strip()
        if kind == "note" and not text:
            raise NoteError("the note is empty: write something, or add a bookmark")
        if len(text) > MAX_NOTE_CHARS:
            raise NoteError(
                f"the note is too long: {len(text):,} characters, at most {MAX_NOTE_CHARS:,}"
            )
        duration = max(0, int(record.duration_ms))
        if not 0 <= at_ms <= duration:
            raise NoteError(
                f"the position {at_ms} ms is outside the call (0 to {duration} ms, "
                f"00:00 to {mmss(duration)})"
            )
        return kind, text

    def add_note(
        self, record: StoredRecord, author: str, at_ms: int, text: str, kind: str = "note"
    ) -> Note:
        """Store a note (or bookmark) at ``at_ms`` into ``record``'s call; raises
        :class:`NoteError` as :meth:`check` does."""
        kind, text = self.check(record, at_ms, text, kind)
        created = now_iso()
        with self.index.transaction(True) as q:
            q(
                "INSERT INTO notes (recording_id, author, at_ms, kind, text, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (record.recording_id, author, int(at_ms), kind, text, created),
            )
            rows = q(
                "SELECT MAX(id) FROM notes WHERE recording_id = ? AND author = ? "
                "AND created_at = ?",
                (record.recording_id, author, created),
            )
        return Note(
            int(rows[0][0]),
            record.recording_id,
            author,
            int(at_ms),
            kind,
            text,
            created,
        )

    def notes_for(self, recording_id: str) -> list[Note]:
        """The recording's notes and bookmarks, in call order (then as written)."""
        with self.index.transaction(False) as q:
            rows = q(
                "SELECT id, recording_id, author, at_ms, kind, text, created_at FROM notes "
                "WHERE recording_id = ? AND kind IN (?, ?) ORDER BY at_ms, id",
                (recording_id, *KINDS),
            )
        return [
            Note(int(r[0]), str(r[1]), str(r[2]), int(r[3]), r[4], str(r[5]), str(r[6]))
            for r in rows
        ]

    @staticmethod
    def check_span(record: StoredRecord, start_ms: int, end_ms: int, text: str) -> str:
        """The stripped reason of a valid sensitive span, else :class:`NoteError`: an
        empty span, one outside the call, a reason longer than :data:`MAX_NOTE_CHARS`."""
        text = text.strip()
        if len(text) > MAX_NOTE_CHARS:
            raise NoteError(f"the reason is too long: at most {MAX_NOTE_CHARS:,} characters")
        duration = max(0, int(record.duration_ms))
        if not 0 <= start_ms < end_ms:
            raise NoteError(
                f"the span must end after it starts ({mmss(start_ms)} to {mmss(end_ms)})"
            )
        if end_ms > duration:
            raise NoteError(
                f"the span ends at {end_ms} ms, after the call ({duration} ms, {mmss(duration)})"
            )
        return text

    def add_sensitive(
        self, record: StoredRecord, author: str, start_ms: int, end_ms: int, text: str = ""
    ) -> SensitiveSpan:
        """Mark ``start_ms`` to ``end_ms`` of ``record``'s call as sensitive; raises
        :class:`NoteError` as :meth:`check_span` does."""
        text = self.check_span(record, start_ms, end_ms, text)
        created = now_iso()
        with self.index.transaction(True) as q:
            q(
                "INSERT INTO notes (recording_id, author, at_ms, end_ms, kind, text, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (record.recording_id, author, start_ms, end_ms, SENSITIVE, text, created),
            )
            rows = q(
                "SELECT MAX(id) FROM notes WHERE recording_id = ? AND author = ? "
                "AND created_at = ? AND kind = ?",
                (record.recording_id, author, created, SENSITIVE),
            )
        rid = record.recording_id
        return SensitiveSpan(int(rows[0][0]), rid, author, start_ms, end_ms, text, created)

    def sensitive_spans(self, recording_id: str) -> list[SensitiveSpan]:
        """The recording's sensitive spans, in call order (then as marked)."""
        with self.index.transaction(False) as q:
            rows = q(
                "SELECT id, recording_id, author, at_ms, end_ms, text, created_at FROM notes "
                "WHERE recording_id = ? AND kind = ? ORDER BY at_ms, id",
                (recording_id, SENSITIVE),
            )
        return [
            SensitiveSpan(
                int(r[0]), str(r[1]), str(r[2]), int(r[3]), int(r[4]), str(r[5]), str(r[6])
            )
            for r in rows
        ]

    def mark_reviewed(self, recording_id: str, reviewer: str, reviewed: bool = True) -> None:
        """Mark (or with ``reviewed=False`` unmark) ``recording_id`` as reviewed by
        ``reviewer``; marking again keeps the first time."""
        with self.index.transaction(True) as q:
            if reviewed:
                done = q(
                    "SELECT 1 FROM reviews WHERE recording_id = ? AND reviewer = ?",
                    (recording_id, reviewer),
                )
                if not done:
                    q(
                        "INSERT INTO reviews (recording_id, reviewer, reviewed_at) "
                        "VALUES (?, ?, ?)",
                        (recording_id, reviewer, now_iso()),
                    )
            else:
                q(
                    "DELETE FROM reviews WHERE recording_id = ? AND reviewer = ?",
                    (recording_id, reviewer),
                )

    def reviewed_by(self, recording_id: str) -> list[Review]:
        """Who marked ``recording_id`` reviewed, and when (earliest first)."""
        with self.index.transaction(False) as q:
            rows = q(
                "SELECT recording_id, reviewer, reviewed_at FROM reviews "
                "WHERE recording_id = ? ORDER BY reviewed_at, reviewer",
                (recording_id,),
            )
        return [Review(str(r[0]), str(r[1]), str(r[2])) for r in rows]


def ledger_history(index: Index, recording_id: str, limit: int = 500) -> list[dict[str, Any]]:
    """The audit ledger's leaves about ``recording_id`` (its ingest, the accesses to it),
    oldest first, at most the ``limit`` newest; each a leaf's fields plus ``idx`` and
    ``appended_at``. Leaves are canonical JSON, so the SQL pre-filter on the body's exact
    ``"recording_id":...`` text is confirmed on the parsed leaf."""
    out: list[dict[str, Any]] = []
    for row in Ledger(index).rows_about(recording_id, limit=limit):
        out.append({**json.loads(row.body), "idx": row.idx, "appended_at": row.appended_at})
    return out
