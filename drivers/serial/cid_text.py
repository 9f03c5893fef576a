"""Caller-ID records from the text a modem or caller-ID box prints (pure, incremental).

Rockwell / Conexant ``AT#CID=1`` (and ``AT+VCID=1``) formatted output, one ``KEY = value``
line per field::

    DATE = 0612          month, day
    TIME = 1423          hour, minute
    NMBR = 5551234       or O (out of area / unavailable), P (private)
    NAME = JOHN DOE      or O, P
    MESG = 060101        parameters the unit did not decode, in hex (kept in raw, ignored)

Some units print ``DDN_NMBR`` (dialable directory number) for the number; it is used when
there is no ``NMBR``. Lines end in CR LF, LF, CR or any run of them; blanks around keys and
values, NUL and other bytes before a key, ``RING``, ``OK`` and command echo between the
lines are tolerated. Unknown keys are kept in the record's ``raw`` and otherwise ignored.

A record ends at

* its ``NAME`` line;
* a ``DATE`` line, or a repeat of a field it already has (the next call's block starts);
* ``RING`` after its fields;
* an idle gap: no byte for ``idle_gap_s`` (units that send no name);
* the end of the stream (port closed or lost): a line cut off there is dropped.

Values are checked as the FSK decoder checks them (:mod:`firmware.dsp.cid_messages`): a
number only digits and ``+*#``, date and time in range, a name no control characters. A
malformed value is left out (the line stays in ``raw``); a block with no usable number,
name or reason for absence (a bare ``RING``, a lone ``DATE``/``TIME``, only ``MESG``) makes
no record. A unit that prints ``NAME`` before ``NMBR`` gets two records, name then number.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

NS_PER_S = 1_000_000_000
MAX_LINE_BYTES = 256  # longer lines are noise (real ones are < 80); bounded memory on junk

_LINE_ENDS = re.compile(rb"[\r\n]+")
_KEY_LINE = re.compile(r"([A-Za-z][A-Za-z0-9_]*)[ \t]*=[ \t]*(.*?)[ \t]*")
_FIRST_LETTER = re.compile(r"[A-Za-z]")
_NUMBER_CHARS = frozenset("0123456789+*#")
_NAME_ABSENCE = ("O", "P")  # out of area / unavailable, private

DATE, TIME, NUMBER, DDN_NUMBER, NAME = "DATE", "TIME", "NMBR", "DDN_NMBR", "NAME"
FIELD_KEYS = frozenset({DATE, TIME, NUMBER, DDN_NUMBER, NAME})


@dataclass(frozen=True, slots=True)
class SerialCallerId:
    """One caller ID from a serial unit."""

    number: str | None
    name: str | None
    time: str | None  # MMDDHHMM, as in FSK caller ID; None unless both DATE and TIME are valid
    absence_number: str | None  # 'O' / 'P' (or another capital letter the unit printed)
    absence_name: str | None  # 'O' / 'P'
    received_ns: int  # when its last line was complete (monotonic ns / the replay's clock)
    port: str  # the device it came from
    raw: bytes  # its lines as received, without line ends, joined by LF


@dataclass
class _Block:
    """The lines of the record being received."""

    lines: list[bytes] = field(default_factory=list)
    values: dict[str, str] = field(default_factory=dict)  # key -> good value
    keys: set[str] = field(default_factory=set)  # field keys seen, good value or not
    last_ns: int = 0


def _number(value: str) -> tuple[str | None, str | None]:
    """(number, absence) from a NMBR value."""
    if len(value) == 1 and "A" <= value <= "Z":
        return None, value
    if value and all(c in _NUMBER_CHARS for c in value):
        return value, None
    return None, None


def _name(value: str) -> tuple[str | None, str | None]:
    """(name, absence) from a NAME value."""
    if value in _NAME_ABSENCE:
        return None, value
    if value and not any(c < " " or "\x7f" <= c < "\xa0" for c in value):
        return value, None
    return None, None


def _pairs(value: str, limits: tuple[int, int, int, int]) -> bool:
    """Four digits as two two-digit numbers within (low, high, low, high)."""
    if len(value) != 4 or not value.isascii() or not value.isdigit():
        return False
    first, second = int(value[:2]), int(value[2:])
    return limits[0] <= first <= limits[1] and limits[2] <= second <= limits[3]


def _valid(key: str, value: str) -> bool:
    if key == DATE:
        return _pairs(value, (1, 12, 1, 31))
    if key == TIME:
        return _pairs(value, (0, 23, 0, 59))
    if key in (NUMBER, DDN_NUMBER):
        return _number(value) != (None, None)
    return _name(value) != (None, None)


class CidTextParser:
    """Feed it bytes as they arrive; it returns each record once it is complete.

    ``port`` is stamped on the records. Times are whatever clock the caller uses (monotonic
    ns live, the audio clock in a replay); they only have to be non-decreasing.
    """

    def __init__(self, port: str, *, idle_gap_s: float = 0.5) -> None:
        if not idle_gap_s > 0:
            raise ValueError(f"idle_gap_s must be > 0, got {idle_gap_s}")
        self.port = port
        self.idle_gap_ns = round(idle_gap_s * NS_PER_S)
        self._partial = bytearray()  # the line being received, without its end
        self._partial_too_long = False
        self._last_ns: int | None = None  # when the last byte came, while anything is open
        self._block: _Block | None = None

    @property
    def pending(self) -> bool:
        """True while part of a line or of a record is waiting for more bytes."""
        return bool(self._partial) or self._partial_too_long or self._block is not None

    def feed(self, data: bytes, t_ns: int) -> list[SerialCallerId]:
        """Bytes that arrived at ``t_ns``; returns the records they completed, oldest first."""
        records = self.idle(t_ns)  # a gap before these bytes ends what came before
        if not data:
            return records
        start = 0
        for end in _LINE_ENDS.finditer(data):
            self._append_partial(data[start : end.start()])
            records += self._take_line(t_ns)
            start = end.end()
        self._append_partial(data[start:])
        self._last_ns = t_ns if self.pending else None
        return records

    def idle(self, now_ns: int) -> list[SerialCallerId]:
        """Call regularly: ends the record (and an unterminated line) once no byte came for
        ``idle_gap_s``. Returns the records that ends."""
        if self._last_ns is None or now_ns - self._last_ns < self.idle_gap_ns:
            return []
        last_ns, self._last_ns = self._last_ns, None
        records = self._take_line(last_ns)
        return records + self._finish()

    def end_of_stream(self) -> list[SerialCallerId]:
        """The port closed or failed: drop a line cut off mid-way, finish the record."""
        self._partial.clear()
        self._partial_too_long = False
        self._last_ns = None
        return self._finish()

    # -- lines ----------------------------------------------------------------------------
    def _append_partial(self, data: bytes) -> None:
        if self._partial_too_long:
            return
        self._partial += data
        if len(self._partial) > MAX_LINE_BYTES:
            self._partial.clear()
            self._partial_too_long = True

    def _take_line(self, end_ns: int) -> list[SerialCallerId]:
        line, too_long = bytes(self._partial), self._partial_too_long
        self._partial.clear()
        self._partial_too_long = False
        if too_long or not line:
            return []
        return self._line(line, end_ns)

    def _line(self, line: bytes, end_ns: int) -> list[SerialCallerId]:
        # Latin-1 maps every byte to a character: garbage never stops the parser, and names
        # with the Latin-1 letters some exchanges send come through.
        text = line.decode("latin-1")
        letter = _FIRST_LETTER.search(text)
        if letter is None:
            return []  # noise
        text = text[letter.start() :].rstrip(" \t\x00")
        match = _KEY_LINE.fullmatch(text)
        if match is None:
            if text.upper() == "RING":
                return self._finish()
            return []  # OK, command echo, noise
        key, value = match[1].upper(), match[2]
        records: list[SerialCallerId] = []
        block = self._block
        starts_next = key == DATE or key in (block.keys if block is not None else ())
        if key in FIELD_KEYS and block is not None and block.keys and starts_next:
            records += self._finish()
            block = None
        if block is None:
            block = self._block = _Block()
        block.lines.append(line)
        block.last_ns = end_ns
        if key in FIELD_KEYS:
            block.keys.add(key)
            if _valid(key, value):
                block.values[key] = value
        if key == NAME:
            records += self._finish()
        return records

    def _finish(self) -> list[SerialCallerId]:
        block, self._block = self._block, None
        if block is None:
            return []
        values = block.values
        number, absence_number = _number(values.get(NUMBER) or values.get(DDN_NUMBER, ""))
        name, absence_name = _name(values.get(NAME, ""))
        if (number, name, absence_number, absence_name) == (None, None, None, None):
            return []  # no caller ID in it (a lone DATE / TIME, only MESG)
        date, time = values.get(DATE), values.get(TIME)
        return [
            SerialCallerId(
                number=number,
                name=name,
                time=date + time if date is not None and time is not None else None,
                absence_number=absence_number,
                absence_name=absence_name,
                received_ns=block.last_ns,
                port=self.port,
                raw=b"\n".join(block.lines),
            )
        ]
