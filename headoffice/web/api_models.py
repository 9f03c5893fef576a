"""What the JSON API (:mod:`headoffice.web.api`) takes and answers: pydantic models, so the
OpenAPI document describes exactly what is sent and every answer is checked against it.

Times are the index's ISO 8601 UTC strings (``2026-11-25T10:00:00.000+00:00``), positions
and durations whole milliseconds.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator

from headoffice.apitokens import TokenInfo
from headoffice.authz import Principal
from headoffice.index.records import StoredRecord
from headoffice.web.notes import MAX_NOTE_CHARS, Note, mmss
from headoffice.web.search import (
    MAX_PAGE,
    MAX_TEXT,
    Direction,
    RowMarks,
    SearchFilters,
    SearchRow,
    SortKey,
    SortOrder,
)

__all__ = [
    "ErrorBody",
    "FieldError",
    "Me",
    "NoteIn",
    "NoteList",
    "NoteOut",
    "PerPage",
    "RecordingDetail",
    "RecordingItem",
    "RecordingList",
    "RecordingQuery",
    "RecordingSummary",
    "ReviewMarks",
    "Rights",
    "ScopeOut",
    "TokenOut",
    "Verification",
]

#: The longest position a note may name (the call's own length is checked as well).
MAX_AT_MS = 10**10


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class FieldError(_Out):
    """One problem of a request's parameters or body."""

    loc: list[str | int] = Field(description="where: e.g. ['query', 'per_page']")
    msg: str
    type: str


class ErrorBody(_Out):
    """Every error's answer (400, 401, 403, 404, 409, 422, 503)."""

    error: str = Field(description="what went wrong, for a person to read")
    detail: str | list[FieldError] | None = Field(
        None, description="more: the parameter at fault, or each field's problem (422)"
    )


class PerPage(IntEnum):
    """The page sizes of a search (the search page's)."""

    SMALL = 25
    MEDIUM = 50
    LARGE = 100


_Text = Annotated[str | None, Field(max_length=MAX_TEXT)]


class RecordingQuery(BaseModel):
    """A search's query parameters: the search page's filters (:class:`SearchFilters`,
    whose checks apply as well), with ``per_page`` for its ``page_size``. An unknown
    parameter is refused (422), so a misspelt filter never widens a search silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    since: Annotated[str | None, Field(max_length=40)] = Field(
        None, description="calls started at or after: ISO 8601 date or time (UTC unless offset)"
    )
    until: Annotated[str | None, Field(max_length=40)] = Field(
        None, description="calls started before (exclusive): ISO 8601 date or time"
    )
    site: _Text = Field(None, description="a site of office.toml's [sites]")
    device: _Text = None
    line: _Text = None
    direction: Direction | None = None
    caller: _Text = Field(None, description="part of the caller's number or name (any case)")
    digits: _Text = Field(None, description="part of the dialled digits")
    min_duration: Annotated[int | None, Field(ge=0, le=10**7)] = Field(
        None, description="seconds, inclusive"
    )
    max_duration: Annotated[int | None, Field(ge=0, le=10**7)] = Field(
        None, description="seconds, inclusive"
    )
    recovered: bool | None = Field(None, description="recovered after a power cut or crash")
    has_notes: bool | None = Field(None, description="with (true) or without a note or bookmark")
    reviewed: bool | None = Field(None, description="with (true) or without a reviewed mark")
    on_hold: bool | None = Field(None, description="with (true) or without a legal hold in force")
    announced: bool | None = Field(
        None,
        description="the device played a recording announcement (true) or none played (false)",
    )
    min_score: Annotated[int | None, Field(ge=0, le=100)] = Field(
        None, description="a QA evaluation's total of at least this many percent"
    )
    max_score: Annotated[int | None, Field(ge=0, le=100)] = Field(
        None, description="a QA evaluation's total of at most this many percent"
    )
    sort: SortKey = "started"
    order: SortOrder = "desc"
    page: Annotated[int, Field(ge=1, le=MAX_PAGE)] = 1
    per_page: PerPage = PerPage.MEDIUM

    def search_query(self) -> dict[str, str]:
        """These parameters as the search page's URL query, for
        :meth:`SearchFilters.from_query` (so both parse and check a search alike)."""
        out: dict[str, str] = {}
        for name, value in self.model_dump(mode="json", exclude_none=True).items():
            key = "page_size" if name == "per_page" else name
            out[key] = ("true" if value else "false") if isinstance(value, bool) else str(value)
        return out

    def filters(self) -> SearchFilters:
        """The search (raises :class:`~headoffice.web.search.SearchParameterError`)."""
        return SearchFilters.from_query(self.search_query())


class RecordingSummary(_Out):
    """A recording as a search lists it (no manifest)."""

    recording_id: str
    device_id: str
    line: str
    seq: int
    started_utc: str
    ended_utc: str | None
    duration_ms: int
    caller_number: str | None
    caller_name: str | None
    dialled_digits: str
    direction: str | None
    recovered: bool
    discarded: bool
    codec: str | None
    blob_bytes: int

    @classmethod
    def of(cls, row: SearchRow | StoredRecord) -> RecordingSummary:
        return cls.model_validate({name: getattr(row, name) for name in cls.model_fields})


class ReviewMarks(_Out):
    """What the review has said about a recording."""

    notes: int = Field(description="notes and bookmarks")
    reviewed: bool = Field(description="someone marked it reviewed")
    on_hold: bool = Field(description="a legal hold is in force")
    score_bp: int | None = Field(
        description="the latest QA evaluation's total, 0 to 10000 (hundredths of a percent)"
    )
    failed: bool = Field(description="the latest evaluation failed a critical question")

    @classmethod
    def of(cls, marks: RowMarks | None) -> ReviewMarks:
        m = marks or RowMarks()
        return cls(
            notes=m.notes,
            reviewed=m.reviewed,
            on_hold=m.on_hold,
            score_bp=m.score_bp,
            failed=m.failed,
        )


class RecordingItem(RecordingSummary):
    """A recording as a search lists it, with its review marks."""

    marks: ReviewMarks


class RecordingList(_Out):
    items: list[RecordingItem]
    total: int = Field(description="matching recordings in the caller's scope, all pages")
    page: int = Field(description="1-based; past the last page, items is empty")
    pages: int = Field(description="at least 1")
    per_page: int


class MaskedSpan(_Out):
    start_ms: int
    end_ms: int


class Verification(_Out):
    """What the office can tell about the recording's integrity from here."""

    signature: Literal["valid", "invalid", "unknown_device"] = Field(
        description="the manifest's Ed25519 signature against the enrolled device's key"
    )
    index_matches_manifest: bool = Field(
        description="the indexed fields (times, caller, line, hashes) are the signed ones"
    )
    blob: Literal["not_checked", "ok", "mismatch"] = Field(
        description="the sealed blob's size and SHA-256 against the manifest "
        "(checked with ?check_blob=true)"
    )
    problems: list[str]


class Rights(_Out):
    """What the caller may do with this recording."""

    listen: bool
    export: bool
    note: bool


class RecordingDetail(RecordingSummary):
    """One recording: its indexed fields, the signed manifest and its verification."""

    container: str | None
    blob_sha256: str | None
    stored_at: str
    masked_spans: list[MaskedSpan] = Field(description="masked key presses (ms into the call)")
    manifest: dict[str, JsonValue] = Field(description="the signed manifest, as stored")
    marks: ReviewMarks
    verification: Verification
    may: Rights


class NoteIn(BaseModel):
    """A note (or bookmark) at a position in the call."""

    model_config = ConfigDict(extra="forbid")

    at_ms: Annotated[int, Field(ge=0, le=MAX_AT_MS)] = Field(
        description="position in the call, ms from its start (at most its duration)"
    )
    text: Annotated[str, Field(max_length=MAX_NOTE_CHARS + 200)] = Field(
        "", description=f"the note (at most {MAX_NOTE_CHARS} characters once trimmed)"
    )
    kind: Literal["note", "bookmark"] = "note"

    @field_validator("text")
    @classmethod
    def _no_controls(cls, value: str) -> str:
        # Tabs and line breaks are text; NUL cannot be stored (PostgreSQL), nor the rest
        # of C0 be shown safely; a lone surrogate (JSON allows "\ud800") is no UTF-8.
        for c in value:
            if (ord(c) < 32 and c not in "\t\r\n") or ord(c) == 127:
                raise ValueError("must not contain control characters (tab and newline are fine)")
            if 0xD800 <= ord(c) <= 0xDFFF:
                raise ValueError("must be valid Unicode text (a lone surrogate is not)")
        return value


class NoteOut(_Out):
    id: int
    recording_id: str
    author: str
    at_ms: int
    at: str = Field(description="the position as mm:ss")
    kind: Literal["note", "bookmark"]
    text: str
    created_at: str

    @classmethod
    def of(cls, note: Note) -> NoteOut:
        return cls(
            id=note.id,
            recording_id=note.recording_id,
            author=note.author,
            at_ms=note.at_ms,
            at=mmss(note.at_ms),
            kind=note.kind,
            text=note.text,
            created_at=note.created_at,
        )


class NoteList(_Out):
    items: list[NoteOut]


class ScopeOut(_Out):
    everything: bool
    sites: list[str]
    devices: list[str]
    lines: list[str] = Field(description="DEVICE/LINE pairs")


class TokenOut(_Out):
    id: str = Field(description="the token's id (as `linetap-office user token list` shows)")
    label: str
    created_at: str
    expires_at: str


class Me(_Out):
    """Who the request acts as."""

    name: str
    roles: list[str]
    scope: ScopeOut
    auth: Literal["token", "session"]
    token: TokenOut | None = None

    @classmethod
    def of(cls, principal: Principal, token: TokenInfo | None) -> Me:
        scope = principal.scope
        return cls(
            name=principal.name,
            roles=sorted(str(r) for r in principal.roles),
            scope=ScopeOut(
                everything=scope.everything,
                sites=sorted(scope.sites),
                devices=sorted(scope.devices),
                lines=sorted(str(dl) for dl in scope.lines),
            ),
            auth="session" if token is None else "token",
            token=None
            if token is None
            else TokenOut(
                id=token.id,
                label=token.label,
                created_at=token.created_at,
                expires_at=token.expires_at,
            ),
        )
