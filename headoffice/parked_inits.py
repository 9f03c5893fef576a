"""The receiver's memory of the inits it parked: what it decoded and checked, so that the
chunks and the fin of an upload do not decode and check its parked init again.

The parked init (``init.json`` in the store) stays the truth: every lookup reads it and
hands out a remembered :class:`ParkedInit` only for exactly the bytes it was made from
(their SHA-256). An init changed on disk, by another worker's park or by anyone else, is
decoded and checked again, as if never seen; so is one parked by another worker or before
a restart. A worker's memory is its own: nothing here is shared or needed by another.

Bounded in entries and in the init bytes they stand for (a manifest can be large), least
recently used out first; a hostile device can only make its own inits be decoded again.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace

from sealedrec.model import CheckedManifest
from sealedrec.protocol import Init

# About as many uploads as one worker has open at once, many times over; each entry
# holds a decoded init of typically 1-3 KB.
MAX_ENTRIES = 1024
# The init bytes all entries stand for (their decoded objects take a few times more).
MAX_BYTES = 4 * 1024 * 1024
# An init this large is decoded every time: one such upload must not empty the memory.
MAX_ENTRY_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class ParkedInit:
    """An upload's parked init as decoded from the bytes whose SHA-256 is ``digest``, and
    its manifest's checks (None: not checked by this worker yet; the fin checks it)."""

    init: Init
    digest: bytes
    size: int
    checked: CheckedManifest | None = None


class ParkedInits:
    """Bounded LRU: (device, recording) -> :class:`ParkedInit`. Thread-safe (the message
    thread and the service's housekeeper both finish uploads)."""

    def __init__(self, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, str], ParkedInit] = OrderedDict()
        self._bytes = 0
        self._mutex = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def held_bytes(self) -> int:
        return self._bytes

    def lookup(self, device: str, rec: str, data: bytes) -> ParkedInit | None:
        """The entry made from exactly ``data`` (the parked init as read now), or None."""
        digest = hashlib.sha256(data).digest()
        key = (device, rec)
        with self._mutex:
            entry = self._entries.get(key)
            if entry is None or entry.digest != digest:
                return None
            self._entries.move_to_end(key)
            return entry

    def remember(
        self, device: str, rec: str, data: bytes, init: Init, checked: CheckedManifest | None
    ) -> ParkedInit:
        """Note that ``data`` (the parked bytes) decode to ``init``, whose manifest passed
        ``checked`` when given; returns the entry (also when too large to keep)."""
        entry = ParkedInit(init, hashlib.sha256(data).digest(), len(data), checked)
        if len(data) <= MAX_ENTRY_BYTES:
            with self._mutex:
                self._put((device, rec), entry)
        return entry

    def with_checked(
        self, device: str, rec: str, entry: ParkedInit, checked: CheckedManifest
    ) -> None:
        """Remember that ``entry``'s manifest passed ``checked`` (unless the parked init
        has been replaced or forgotten meanwhile: then that stays)."""
        key = (device, rec)
        with self._mutex:
            current = self._entries.get(key)
            if current is not None and current.digest == entry.digest:
                self._put(key, replace(entry, checked=checked))

    def forget(self, device: str, rec: str) -> None:
        with self._mutex:
            old = self._entries.pop((device, rec), None)
            if old is not None:
                self._bytes -= old.size

    def _put(self, key: tuple[str, str], entry: ParkedInit) -> None:
        """Under ``_mutex``: keep ``entry``, dropping the least recently used past a bound."""
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old.size
        self._entries[key] = entry
        self._bytes += entry.size
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            _, dropped = self._entries.popitem(last=False)
            self._bytes -= dropped.size
