"""The anonymised export for training: a ZIP of a search's calls (WAV) with a CSV that
tells no one who called, where, or when.

What each export does (``linetap-office anonymise``):

- **Metadata stripped**: no caller number or name, no dialled digits, no recording id;
  the device and the line become pseudonyms (``device-01``, ``line-03``) numbered in
  an order drawn from a random salt made for this export alone, so the same line has
  one pseudonym within an export and unrelated ones in two exports (they cannot be
  joined). No refusal text either (it names devices): a recording not exported is
  left out of the CSV, and only the officer hears of it.
- **Times shifted**: every start moves by one random offset of the export (whole
  minutes, 1 to 10 years back), then is rounded down to the minute: the calls keep
  their order, their spacing (to the minute) and their exact durations.
- **Audio silenced** (samples set to 0) where it could tell who called:
  the pre-roll (the line's on-hook audio before the call began: caller-ID signals,
  ringing, an outgoing call's dialling), the masked key presses of the manifest's
  ``masked_spans`` (the recorder already replaced them, with comfort noise where so
  configured; they are silenced again here, and a span found louder than
  :data:`MASK_QUIET_DBFS` is reported), and every span a reviewer marked sensitive
  (:meth:`headoffice.web.notes.NoteStore.sensitive_spans`).

Speech itself is kept as it is: a name said aloud stays unless someone marked it.
Access: the search is one ``search`` leaf (with its filters), each recording handed out
an ``export`` leaf (``anonymised export``) appended before it is read: anonymised or
not, its voices leave the office, so it needs the ``export`` right (supervisor,
compliance; :mod:`headoffice.authz`).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from headoffice.access import Gate
from headoffice.authz import Action
from headoffice.blobstore import BlobStore
from headoffice.exportzip import AudioSource, Checked, RecordingsZip, Samples, encode_samples
from headoffice.index import Index, StoredRecord
from headoffice.web.notes import NoteStore
from headoffice.web.search import SearchFilters, where_clause
from sealedrec.errors import LinetapError

__all__ = [
    "ANON_FIELDS",
    "AnonItem",
    "AnonymiseError",
    "Anonymiser",
    "find_for_training",
    "silence",
]

ANON_FIELDS = (
    "file",
    "started",
    "duration_ms",
    "direction",
    "device",
    "line",
    "recovered",
    "masked_spans",
    "sensitive_spans",
    "silenced_ms",
)
SHIFT_MINUTES = (365 * 24 * 60, 3650 * 24 * 60)  # the offset's range, whole minutes back
MASK_QUIET_DBFS = -40.0  # a masked span's peak above this was not masked in the store
DEFAULT_LIMIT = 10_000


class AnonymiseError(LinetapError, ValueError):
    """An anonymised export that cannot be made as asked (the message says why)."""


Span = tuple[int, int]  # ms from the recording's start: [start, end)


def silence(samples: Samples, rate: int, spans: Iterable[Span]) -> tuple[Samples, int]:
    """A copy of ``samples`` with every span (ms, widened outward to whole frames) set
    to 0, and how many ms that silenced (overlaps counted once)."""
    out = samples.copy()
    n = int(out.shape[0])
    hit = np.zeros(n, dtype=bool)
    for start_ms, end_ms in spans:
        first = max(0, (int(start_ms) * rate) // 1000)
        last = min(n, -(-int(end_ms) * rate // 1000))
        if last > first:
            hit[first:last] = True
    out[hit] = 0
    return out, (int(hit.sum()) * 1000) // rate if rate else 0


def _peak_dbfs(samples: Samples) -> float:
    peak = int(np.abs(samples.astype(np.int32)).max()) if samples.size else 0
    return 20 * math.log10(peak / 32768) if peak else -math.inf


@dataclass(frozen=True, slots=True)
class AnonItem:
    """What became of one recording (for the officer: the CSV never names it)."""

    recording_id: str
    file: str  # "" when left out
    status: str  # exported | refused | error
    detail: str
    warnings: tuple[str, ...] = ()


def find_for_training(
    index: Index, gate: Gate, filters: SearchFilters, limit: int = DEFAULT_LIMIT
) -> list[StoredRecord]:
    """The recordings of the search ``filters`` in the actor's scope, oldest first; the
    search is one ``search`` leaf, logged first. More than ``limit``: an error."""
    gate.allow(Action.SEARCH, detail=f"anonymised export; {filters.to_query()}".rstrip("; "))
    where, params = where_clause(filters, gate.actor.principal, gate.sites)
    with index.transaction(False) as q:
        rows = q(
            f"SELECT recording_id FROM recordings{where} "
            "ORDER BY started_utc, recording_id LIMIT ?",
            (*params, limit + 1),
        )
    if len(rows) > limit:
        raise AnonymiseError(
            f"the search matches more than {limit:,} recordings: narrow it (dates, line) "
            "or raise --limit"
        )
    records = [r for (rid,) in rows if (r := index.get(str(rid))) is not None]
    return [r for r in records if gate.may(Action.VIEW_METADATA, r)]


@dataclass
class Anonymiser:
    """One export's secrets (a salt for the pseudonyms, a time offset) and the
    pseudonyms handed out so far. :meth:`fresh` draws new ones: never reuse one."""

    salt: bytes
    offset: timedelta
    devices: dict[str, str] = field(default_factory=dict)
    lines: dict[tuple[str, str], str] = field(default_factory=dict)

    @classmethod
    def fresh(cls) -> Anonymiser:
        low, high = SHIFT_MINUTES
        minutes = low + secrets.randbelow(high - low + 1)
        return cls(secrets.token_bytes(32), -timedelta(minutes=minutes))

    def _rank(self, *parts: str) -> bytes:
        return hmac.new(self.salt, "\0".join(parts).encode(), hashlib.sha256).digest()

    def assign(self, records: Sequence[StoredRecord]) -> None:
        """Number the devices and lines of ``records`` in the salt's order."""
        devices = sorted({r.device_id for r in records}, key=lambda d: self._rank("device", d))
        lines = sorted(
            {(r.device_id, r.line) for r in records},
            key=lambda dl: self._rank("line", *dl),
        )
        width = max(2, len(str(max(len(devices), len(lines)))))
        self.devices = {d: f"device-{i:0{width}d}" for i, d in enumerate(devices, 1)}
        self.lines = {dl: f"line-{i:0{width}d}" for i, dl in enumerate(lines, 1)}

    def started(self, record: StoredRecord) -> str:
        """The call's start, shifted by the offset and rounded down to the minute."""
        at = datetime.fromisoformat(record.started_utc).astimezone(UTC) + self.offset
        return at.replace(second=0, microsecond=0).strftime("%Y-%m-%dT%H:%MZ")

    def order(self, records: Iterable[StoredRecord]) -> list[StoredRecord]:
        """Oldest call first; calls of one instant in the salt's order (not by id)."""
        return sorted(records, key=lambda r: (r.started_utc, self._rank("order", r.recording_id)))

    def zip(
        self,
        out: RecordingsZip,
        records: Sequence[StoredRecord],
        *,
        store: BlobStore,
        gate: Gate,
        source: AudioSource,
        notes: NoteStore,
    ) -> Iterator[AnonItem]:
        """Write the export into ``out``: ``clip-0001.wav``... (each recording's
        ``export`` leaf first), then ``clips.csv`` and ``clips.json`` with the exported
        ones only. Yields each recording's item once its member is written."""
        ordered = self.order(records)
        self.assign(ordered)
        clip = {r.recording_id: f"clip-{i:04d}.wav" for i, r in enumerate(ordered, 1)}
        facts: dict[str, dict[str, Any]] = {}
        warnings: dict[str, tuple[str, ...]] = {}

        def audio(record: StoredRecord) -> tuple[bytes, Checked]:
            samples, rate, checked = source.samples(store, record)
            cleaned, row, notes_ = self.clean(samples, rate, record, notes)
            facts[record.recording_id] = row
            warnings[record.recording_id] = notes_
            return encode_samples(cleaned, rate, "WAV"), checked

        rows = []
        for row in out.add_recordings(
            ordered,
            allow=lambda r: gate.allow(Action.EXPORT, r, detail="anonymised export"),
            audio=audio,
            name=lambda r: clip[r.recording_id],
            row=lambda r: {"recording_id": r.recording_id},
        ):
            rid = row["recording_id"]
            if row["status"] == "exported":
                rows.append({**facts[rid], "file": row["file"]})
            yield AnonItem(rid, row["file"], row["status"], row["detail"], warnings.get(rid, ()))
        doc = {"count": len(rows), "clips": rows}
        out.add_metadata("clips", ANON_FIELDS, rows, doc)

    def clean(
        self, samples: Samples, rate: int, record: StoredRecord, notes: NoteStore
    ) -> tuple[Samples, dict[str, Any], tuple[str, ...]]:
        """The silenced samples (module docstring), the CSV row and warnings."""
        manifest = record.manifest
        masked: list[Span] = [
            (int(s["start_ms"]), int(s["end_ms"])) for s in manifest.get("masked_spans") or []
        ]
        marked: list[Span] = [
            (s.start_ms, s.end_ms) for s in notes.sensitive_spans(record.recording_id)
        ]
        preroll = max(0, int(manifest.get("preroll_ms") or 0))
        found: list[str] = []
        for start, end in masked:
            frames = samples[(start * rate) // 1000 : -(-end * rate // 1000)]
            level = _peak_dbfs(frames)
            if level > MASK_QUIET_DBFS:
                found.append(
                    f"masked span {start}-{end} ms was not quiet in the store "
                    f"(peak {level:.0f} dBFS); silenced here"
                )
        cleaned, silenced_ms = silence(samples, rate, [(0, preroll), *masked, *marked])
        row = {
            "started": self.started(record),
            "duration_ms": record.duration_ms,
            "direction": record.direction or "unknown",
            "device": self.devices[record.device_id],
            "line": self.lines[(record.device_id, record.line)],
            "recovered": record.recovered,
            "masked_spans": len(masked),
            "sensitive_spans": len(marked),
            "silenced_ms": silenced_ms,
        }
        return cleaned, row, tuple(found)
