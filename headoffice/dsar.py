"""Data-subject requests: find the recordings about a caller, hand them out (access), or
delete them (erasure). No command line or web here: :mod:`headoffice.cli_dsar` and
:mod:`headoffice.web.routes_compliance` call these.

**Who the subject is** (:class:`Subject`), one of:

- a caller **number**. Both sides are reduced to their ASCII digits (after NFKC, so
  full-width digits count): ``+41 44 555 01 01``, ``(044) 555-0101`` and ``0445550101``
  are ``41445550101``, ``0445550101``, ``0445550101``. A stored number matches when
  its digits equal the query's, or, unless ``exact``, when one side's *national
  significant number* (its digits without leading zeros: the ``0`` trunk prefix and the
  ``00`` international prefix go) has at least :data:`MIN_SUFFIX_DIGITS` digits and is
  how the other side's digits end. So ``+41 44 555 01 01`` finds ``0445550101``
  (``445550101`` ends ``41445550101``), ``5551234567`` finds ``+1 555 123 4567``; a
  7-digit local number finds every longer number ending in it, whatever its area or
  country code: the officer reviews the list, and ``exact`` keeps equal digits only.
- a caller **name**: at least :data:`MIN_NAME_CHARS` characters, found as a substring
  of the stored name, both NFKC-normalised, case-folded (``ß`` = ``ss``, ``Ǆ`` = ``ǆ``)
  and with runs of white space as one space.

Matching is done here, in Python, not in SQL: neither SQLite's ``LOWER`` (ASCII only)
nor a ``LIKE`` on formatted numbers can do it, and a missed recording is a request not
answered. :func:`find_subject` reads the caller fields of every recording in the
actor's scope once, in pages of :data:`SCAN_PAGE` by recording id (bounded memory).

**Ledger**: the request is one ``search`` leaf (``dsar access REQ-17: by number``: the
reference and how, never the number or name itself, since the ledger is kept for good
and the request may be an erasure); each recording handed out is an ``export`` leaf
(``dsar access REQ-17``) appended before its audio is read; each erasure a ``delete``
leaf, then the ``tombstone`` leaf of :func:`headoffice.erasure.delete_recording`
(cause ``erasure REQ-17: data-subject request``).

**Erasure** deletes unless the recording is on legal hold (the case references are
named), under its policy's mandatory retention (``min_days``: until when is named), or
the store refuses (S3 Object Lock, the hold registry); each kept one is reported with
why. A dry run judges the same and deletes nothing.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from headoffice.access import AccessDenied, Gate
from headoffice.authz import Action
from headoffice.blobstore import BlobStore, StoreError
from headoffice.erasure import active_holds, delete_recording
from headoffice.exportzip import CSV_FIELDS, AudioSource, RecordingsZip
from headoffice.index import Index, StoredRecord
from headoffice.purge import retention_facts
from headoffice.retention import Decision, RetentionConfig, erasure_verdict
from headoffice.web.search import NOTHING, scope_clause
from sealedrec.errors import LinetapError

__all__ = [
    "MIN_NAME_CHARS",
    "MIN_SUFFIX_DIGITS",
    "AccessItem",
    "DsarError",
    "DsarRequest",
    "ErasureItem",
    "ErasureReport",
    "Fate",
    "Subject",
    "access_zip",
    "check_ref",
    "digits_of",
    "erase",
    "find_subject",
    "fold",
    "number_matches",
]

MIN_SUFFIX_DIGITS = 7
MIN_NAME_CHARS = 3
MAX_QUERY = 200
MAX_REF = 100
SCAN_PAGE = 5000

Progress = Callable[[int, int, str, str], None]  # done, total, recording id, what became of it


class DsarError(LinetapError, ValueError):
    """A request that cannot be run as given (the message says why, for the officer)."""


def digits_of(text: str | None) -> str:
    """The ASCII digits of ``text`` after NFKC (full-width digits count), in order."""
    return "".join(c for c in unicodedata.normalize("NFKC", text or "") if "0" <= c <= "9")


def number_matches(query: str, stored: str | None, *, exact: bool = False) -> bool:
    """Whether the stored caller number ``stored`` is the number whose digits are
    ``query`` (the module docstring's rule)."""
    digits = digits_of(stored)
    if not query or not digits:
        return False
    if digits == query:
        return True
    if exact:
        return False
    mine, theirs = query.lstrip("0"), digits.lstrip("0")
    if len(mine) <= len(theirs):
        return len(mine) >= MIN_SUFFIX_DIGITS and digits.endswith(mine)
    return len(theirs) >= MIN_SUFFIX_DIGITS and query.endswith(theirs)


def fold(text: str) -> str:
    """``text`` as names are compared: NFKC, case-folded, white space runs as one space."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _clean(text: str, what: str, limit: int) -> str:
    value = " ".join(text.split())
    if len(value) > limit:
        raise DsarError(f"{what} is too long: at most {limit} characters")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs") for c in value):
        raise DsarError(f"{what} must not contain control or format characters")
    return value


def check_ref(text: str) -> str:
    """The request's reference (e.g. ``REQ-17``), as written into the ledger."""
    ref = _clean(text, "the request reference", MAX_REF)
    if not ref:
        raise DsarError("the request reference is required (e.g. REQ-2026-17)")
    return ref


@dataclass(frozen=True, slots=True)
class Subject:
    """Whom a request is about: by caller number (``number``: its digits) or by caller
    name (``name``: folded); ``shown`` as the officer wrote it."""

    shown: str
    number: str | None = None
    name: str | None = None
    exact: bool = False

    @classmethod
    def parse(cls, number: str | None, name: str | None, *, exact: bool = False) -> Subject:
        number = (number or "").strip() or None
        name = (name or "").strip() or None
        if (number is None) == (name is None):
            raise DsarError("give the caller's number or the caller's name (one of them)")
        if number is not None:
            shown = _clean(number, "the number", MAX_QUERY)
            digits = digits_of(shown)
            if len(digits) < 3:
                raise DsarError(f"the number {shown!r} has fewer than 3 digits")
            return cls(shown, number=digits, exact=exact)
        shown = _clean(name or "", "the name", MAX_QUERY)
        if len(fold(shown).replace(" ", "")) < MIN_NAME_CHARS:
            raise DsarError(f"the name must have at least {MIN_NAME_CHARS} letters")
        return cls(shown, name=fold(shown))

    @property
    def by(self) -> str:
        return "number" if self.number is not None else "name"

    def describe(self) -> str:
        if self.number is not None:
            how = "the same digits" if self.exact else "the same digits, or the same ending"
            return f"caller number {self.shown} ({how})"
        return f"caller name containing {self.shown!r} (any case)"

    def matches(self, caller_number: str | None, caller_name: str | None) -> bool:
        if self.number is not None:
            return number_matches(self.number, caller_number, exact=self.exact)
        return self.name is not None and caller_name is not None and self.name in fold(caller_name)


@dataclass(frozen=True, slots=True)
class DsarRequest:
    """One request: its reference, its subject, who runs it, when, for which office."""

    ref: str
    subject: Subject
    by: str
    at: datetime
    office: str = "the head office"


def find_subject(
    index: Index, gate: Gate, request: DsarRequest, purpose: str
) -> list[StoredRecord]:
    """The recordings about ``request.subject`` that the gate's actor may see, oldest
    call first. ``purpose`` (``access``, ``erasure``, ``erasure dry run``) goes into the
    one ``search`` leaf, logged first (:class:`AccessDenied` when refused)."""
    subject = request.subject
    gate.allow(Action.SEARCH, detail=f"dsar {purpose} {request.ref}: by {subject.by}")
    scope = scope_clause(gate.actor.principal, gate.sites)
    if scope == NOTHING:
        return []
    column = "caller_number" if subject.number is not None else "caller_name"
    where = f"recording_id > ? AND {column} IS NOT NULL"
    params: tuple[Any, ...] = ()
    if scope is not None:
        where += f" AND {scope[0]}"
        params = scope[1]
    found: list[str] = []
    last = ""
    while True:
        with index.transaction(False) as q:
            rows = q(
                "SELECT recording_id, caller_number, caller_name FROM recordings "
                f"WHERE {where} ORDER BY recording_id LIMIT ?",
                (last, *params, SCAN_PAGE),
            )
        found += [str(r[0]) for r in rows if subject.matches(r[1], r[2])]
        if len(rows) < SCAN_PAGE:
            break
        last = str(rows[-1][0])
    records = [r for rid in found if (r := index.get(rid)) is not None]
    visible = [r for r in records if gate.may(Action.VIEW_METADATA, r)]
    return sorted(visible, key=lambda r: (r.started_utc, r.recording_id))


# --------------------------------------------------------------------------- access


@dataclass(frozen=True, slots=True)
class AccessItem:
    """What became of one recording in an access ZIP."""

    recording_id: str
    file: str  # its member in the ZIP; "" when left out
    status: str  # exported | refused | error
    detail: str


def _readme(request: DsarRequest, client: str, rows: list[dict[str, Any]]) -> bytes:
    exported = [r for r in rows if r["status"] == "exported"]
    left_out = len(rows) - len(exported)
    lines = [
        f"Data-subject access request {request.ref}",
        "",
        f"What was asked: every call recording {request.office} holds about the "
        f"{request.subject.describe()}.",
        f"Made: {request.at:%Y-%m-%d %H:%M:%S} UTC by {request.by} ({client}).",
        "",
        f"Found: {len(rows)} recording{'s' if len(rows) != 1 else ''}; "
        f"{len(exported)} in this archive"
        + (f", {left_out} left out (see the status and detail columns)." if left_out else "."),
        "",
        "Contents:",
        "- one WAV file per recording (16-bit PCM, decrypted from the sealed recording;",
        "  where the caller keyed in digits, e.g. a card number, the recorder replaced",
        "  those key presses before anything was stored, and they stay so here);",
        "- recordings.csv and recordings.json: per recording its file, start and end (UTC),",
        "  duration, device and line, direction, the caller number and name the line",
        "  signalled, the dialled digits (as masked), and the verification result:",
        "  signature_ok (the recorder's signature on its metadata) and blob_sha256_ok",
        "  (the sealed audio is what the recorder sealed).",
        "",
        "Each recording handed out is recorded in the office's audit ledger.",
    ]
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def access_zip(
    out: RecordingsZip,
    request: DsarRequest,
    records: Iterable[StoredRecord],
    *,
    store: BlobStore,
    gate: Gate,
    source: AudioSource,
) -> Iterator[AccessItem]:
    """Write the access archive into ``out``: each recording's WAV (its ``export`` leaf
    first; one refused or unreadable is a row saying so), then ``README.txt``,
    ``recordings.csv`` and ``recordings.json``. Yields each recording's item as its
    member is written (a web response drains its sink in between)."""
    rows: list[dict[str, Any]] = []
    detail = f"dsar access {request.ref}"
    for row in out.add_recordings(
        records,
        allow=lambda r: gate.allow(Action.EXPORT, r, detail=detail),
        audio=lambda r: source.encode(store, r, "wav"),
        name=out.export_name,
    ):
        rows.append(row)
        yield AccessItem(row["recording_id"], row["file"], row["status"], row["detail"])
    out.add("README.txt", _readme(request, gate.actor.client, rows))
    doc = {
        "request": request.ref,
        "subject": request.subject.describe(),
        "made_at": request.at.isoformat(),
        "made_by": request.by,
        "count": len(rows),
        "recordings": rows,
    }
    out.add_metadata("recordings", CSV_FIELDS, rows, doc)


# --------------------------------------------------------------------------- erasure


class Fate(StrEnum):
    DELETED = "deleted"
    WOULD_DELETE = "would delete"  # a dry run's verdict
    KEPT = "kept"
    FAILED = "failed"  # an error; the next run tries again


@dataclass(frozen=True, slots=True)
class ErasureItem:
    recording_id: str
    started_utc: str
    device_id: str
    line: str
    fate: Fate
    reason: str
    until: str | None = None  # kept under mandatory retention: until this day


@dataclass(frozen=True, slots=True)
class ErasureReport:
    request: DsarRequest
    dry_run: bool
    items: tuple[ErasureItem, ...] = field(default=())

    def count(self, fate: Fate) -> int:
        return sum(item.fate is fate for item in self.items)

    def as_json(self) -> dict[str, Any]:
        return {
            "request": self.request.ref,
            "subject": self.request.subject.describe(),
            "by": self.request.by,
            "at": self.request.at.isoformat(),
            "dry_run": self.dry_run,
            **{fate.value.replace(" ", "_"): self.count(fate) for fate in Fate},
            "recordings": [
                {"recording_id": i.recording_id, "started_utc": i.started_utc,
                 "device_id": i.device_id, "line": i.line, "fate": i.fate.value,
                 "reason": i.reason, "until": i.until}
                for i in self.items
            ],
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Eraser:
    index: Index
    store: BlobStore
    gate: Gate
    request: DsarRequest
    judge: Callable[[StoredRecord], tuple[bool, str, str | None]]

    def __call__(self, record: StoredRecord, dry_run: bool) -> tuple[Fate, str, str | None]:
        """What becomes of one recording: (fate, reason, kept until)."""
        may_delete, reason, until = self.judge(record)
        if not may_delete:
            return Fate.KEPT, reason, until
        if dry_run:
            if not self.gate.may(Action.DELETE, record):
                return Fate.KEPT, "your role or scope does not include deleting it", None
            return Fate.WOULD_DELETE, reason, None
        ref, by = self.request.ref, self.request.by
        try:
            self.gate.allow(Action.DELETE, record, detail=f"dsar erasure {ref}")
        except AccessDenied as exc:
            return Fate.KEPT, f"not allowed: {exc}", None
        cause = f"erasure {ref}: data-subject request"
        try:
            outcome = delete_recording(self.index, self.store, record, by=by, cause=cause)
        except (StoreError, LinetapError, OSError) as exc:
            return Fate.FAILED, f"not deleted: {exc}", None
        if outcome.deleted:
            return Fate.DELETED, "erased", None
        return Fate.KEPT, outcome.reason, None


def erase(
    request: DsarRequest,
    records: Iterable[StoredRecord],
    *,
    index: Index,
    store: BlobStore,
    gate: Gate,
    retention: RetentionConfig,
    sites: Mapping[str, Iterable[str]],
    dry_run: bool = False,
    progress: Progress | None = None,
) -> ErasureReport:
    """Erase ``records`` (found by :func:`find_subject`) as the module docstring says,
    judged at ``request.at``; ``dry_run`` judges and deletes nothing."""

    def judge(record: StoredRecord) -> tuple[bool, str, str | None]:
        facts = retention_facts(index, [record.recording_id])
        if not facts:
            return False, "already gone (deleted since it was found)", None
        verdict = erasure_verdict(retention, facts[0], sites, request.at)
        if verdict.decision is Decision.DELETE:
            return True, "erasure requested", None
        if facts[0].on_hold:
            cases = ", ".join(active_holds(index, record.recording_id))
            return False, f"on legal hold (case {cases})", None
        until = f"{verdict.expires:%Y-%m-%d}" if verdict.expires else None
        return False, verdict.reason, until

    eraser = _Eraser(index, store, gate, request, judge)
    items: list[ErasureItem] = []
    todo = list(records)
    for done, record in enumerate(todo, 1):
        fate, reason, until = eraser(record, dry_run)
        items.append(
            ErasureItem(record.recording_id, record.started_utc, record.device_id,
                        record.line, fate, reason, until)
        )  # fmt: skip
        if progress is not None:
            progress(done, len(todo), record.recording_id, fate.value)
    return ErasureReport(request, dry_run, tuple(items))
