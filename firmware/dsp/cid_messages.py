"""Caller-ID messages: SDMF/MDMF bytes (Bellcore GR-30, ETSI EN 300 659-3) and DTMF CLIP.

FSK messages (the bytes after the channel seizure and mark signal)::

    type | length | body (length bytes) | checksum

The checksum is the two's complement of the sum of all the bytes before it, modulo 256, so
the sum of a whole good message is 0 mod 256.

* SDMF (type 0x04): body = 8 ASCII digits MMDDHHMM, then the number's digits, or the single
  letter 'O' (out of area / unavailable) or 'P' (private) instead of a number.
* MDMF (type 0x80, "call set-up" in ETSI): body = parameters, each ``type | length | value``:
  0x01 date and time (8 digits MMDDHHMM), 0x02 calling number, 0x04 reason for absence of
  the number ('O'/'P'), 0x07 name, 0x08 reason for absence of the name ('O'/'P'). Other
  parameters (0x03 called number, 0x11 call type, ...) are skipped.

Message-waiting messages (0x06, 0x82) and other ETSI types are checked but carry no caller
ID; :func:`parse_message` returns None for them.

An 8-bit sum lets about 1 in 256 corrupted messages through (two bit errors that cancel),
so the fields are checked too and a message that fails is "malformed", not a caller ID:
the date/time must be 8 digits with month, day, hour and minute in range, a number only
digits (and + * #), a reason for absence one capital letter, a name no control
characters.

DTMF CLIP (ETSI EN 300 659-1 annex B and national variants, used e.g. in Denmark, the
Netherlands, Sweden, Finland, Brazil, India, Taiwan), sent before the first ring:

* ``A<digits>C`` (or ``D<digits>C``; some exchanges end with ``#``): the calling number;
* ``B00C``: number unavailable ('O'), ``B10C``: number private ('P');
* ``D1#`` / ``D1C``: private ('P'), ``D2#``/``D3#``: unavailable ('O') (Danish codes).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

# "serial": a caller-ID unit on a serial port (drivers/serial), its text format "text".
Standard = Literal["bell202", "v23", "dtmf", "serial"]
Format = Literal["sdmf", "mdmf", "dtmf", "text"]
ErrorReason = Literal["checksum", "malformed", "truncated", "framing"]

SDMF_CALLER_ID = 0x04
SDMF_MESSAGE_WAITING = 0x06
MDMF_CALLER_ID = 0x80  # ETSI "call set-up"
MDMF_MESSAGE_WAITING = 0x82
ETSI_ADVICE_OF_CHARGE = 0x86
ETSI_SHORT_MESSAGE = 0x89
MESSAGE_TYPES = frozenset(
    {
        SDMF_CALLER_ID,
        SDMF_MESSAGE_WAITING,
        MDMF_CALLER_ID,
        MDMF_MESSAGE_WAITING,
        ETSI_ADVICE_OF_CHARGE,
        ETSI_SHORT_MESSAGE,
    }
)

PARAM_DATE_TIME = 0x01
PARAM_NUMBER = 0x02
PARAM_CALLED_NUMBER = 0x03
PARAM_ABSENCE_NUMBER = 0x04
PARAM_NAME = 0x07
PARAM_ABSENCE_NAME = 0x08

ABSENCE_CODES = ("O", "P")  # out of area / unavailable, private


@dataclass(frozen=True)
class CallerIdMessage:
    """A caller ID whose checksum (FSK) or framing (DTMF) was verified."""

    standard: Standard
    format: Format
    number: str | None
    name: str | None
    time: str | None  # MMDDHHMM
    absence_number: str | None  # 'O' or 'P' (or another code the exchange sent)
    absence_name: str | None
    start_frame: int  # first frame of the message (FSK: the type byte's start bit)
    raw: bytes  # FSK: the whole message with its checksum; DTMF: the digits as ASCII
    seizure: bool = False  # FSK: a channel seizure signal preceded the mark


@dataclass(frozen=True)
class CallerIdError:
    """Something that looked like caller ID but must not be used as one."""

    standard: Standard
    reason: ErrorReason
    start_frame: int
    raw: bytes
    detail: str


class MessageError(ValueError):
    """Raised by :func:`parse_message` for a message that is not acceptable."""

    def __init__(self, reason: ErrorReason, detail: str) -> None:
        super().__init__(detail)
        self.reason: ErrorReason = reason
        self.detail = detail


def checksum(data: bytes) -> int:
    """Two's complement of the byte sum modulo 256."""
    return -sum(data) & 0xFF


def _with_checksum(data: bytes) -> bytes:
    if len(data) - 2 > 255:
        raise ValueError("message body longer than 255 bytes")
    return data + bytes([checksum(data)])


def _time_field(time: str) -> bytes:
    if len(time) != 8 or not time.isdigit():
        raise ValueError(f"time must be 8 digits MMDDHHMM, got {time!r}")
    return time.encode("ascii")


def build_sdmf(time: str, number: str | None = None, *, absence: str | None = None) -> bytes:
    """An SDMF caller-ID message (type 0x04) with its checksum."""
    if (number is None) == (absence is None):
        raise ValueError("give exactly one of number and absence")
    tail = number if number is not None else absence
    assert tail is not None
    body = _time_field(time) + tail.encode("ascii")
    return _with_checksum(bytes([SDMF_CALLER_ID, len(body)]) + body)


def build_mdmf(
    *,
    time: str | None = None,
    number: str | None = None,
    absence_number: str | None = None,
    name: str | None = None,
    absence_name: str | None = None,
    extra: Sequence[tuple[int, bytes]] = (),
    message_type: int = MDMF_CALLER_ID,
) -> bytes:
    """An MDMF message (type 0x80 by default) with its parameters in order, and its checksum."""
    params: list[tuple[int, bytes]] = []
    if time is not None:
        params.append((PARAM_DATE_TIME, _time_field(time)))
    if number is not None:
        params.append((PARAM_NUMBER, number.encode("ascii")))
    if absence_number is not None:
        params.append((PARAM_ABSENCE_NUMBER, absence_number.encode("ascii")))
    if name is not None:
        params.append((PARAM_NAME, name.encode("latin-1")))
    if absence_name is not None:
        params.append((PARAM_ABSENCE_NAME, absence_name.encode("ascii")))
    params.extend(extra)
    body = b"".join(bytes([kind, len(value)]) + value for kind, value in params)
    return _with_checksum(bytes([message_type, len(body)]) + body)


NUMBER_CHARS = frozenset(b"0123456789+*#")


def _number(value: bytes) -> str | None:
    if any(b not in NUMBER_CHARS for b in value):
        raise MessageError("malformed", f"number {value!r}")
    return value.decode("ascii") or None


def _name(value: bytes) -> str | None:
    # ASCII, and the Latin-1 letters some ETSI exchanges send; no control characters.
    if any(b < 0x20 or 0x7F <= b < 0xA0 for b in value):
        raise MessageError("malformed", f"name {value!r}")
    return value.decode("latin-1").rstrip() or None


def _absence(value: bytes) -> str:
    if len(value) != 1 or not 0x41 <= value[0] <= 0x5A:
        raise MessageError("malformed", f"reason for absence {value!r}")
    return value.decode("ascii")


def _time(value: bytes) -> str:
    """MMDDHHMM with the fields in range."""
    text = value.decode("latin-1")
    if len(text) == 8 and text.isascii() and text.isdigit():
        month, day, hour, minute = (int(text[i : i + 2]) for i in range(0, 8, 2))
        if 1 <= month <= 12 and 1 <= day <= 31 and hour <= 23 and minute <= 59:
            return text
    raise MessageError("malformed", f"date/time {value!r}")


def parse_message(
    raw: bytes, *, standard: Standard = "bell202", start_frame: int = 0, seizure: bool = False
) -> CallerIdMessage | None:
    """Check and parse one FSK message (type, length, body, checksum).

    Returns None for a good message that carries no caller ID (message waiting, ...).
    Raises :class:`MessageError` ("checksum", "truncated" or "malformed") otherwise.
    """
    if len(raw) < 3:
        raise MessageError("truncated", f"{len(raw)} bytes")
    kind, length = raw[0], raw[1]
    if len(raw) < length + 3:
        raise MessageError("truncated", f"length {length} but {len(raw) - 3} body bytes")
    raw = raw[: length + 3]
    if sum(raw) & 0xFF:
        raise MessageError(
            "checksum", f"checksum 0x{raw[-1]:02x}, expected 0x{checksum(raw[:-1]):02x}"
        )
    body = raw[2:-1]
    number = name = time = absence_number = absence_name = None
    if kind == SDMF_CALLER_ID:
        fmt: Format = "sdmf"
        if len(body) < 8:
            raise MessageError("malformed", f"SDMF body of {len(body)} bytes")
        time = _time(body[:8])
        rest = body[8:]
        if rest in (b"O", b"P"):
            absence_number = rest.decode("ascii")
        else:
            number = _number(rest)
    elif kind == MDMF_CALLER_ID:
        fmt = "mdmf"
        pos = 0
        while pos < len(body):
            if pos + 2 > len(body) or pos + 2 + body[pos + 1] > len(body):
                raise MessageError("malformed", f"parameter at {pos} overruns the message")
            param, size = body[pos], body[pos + 1]
            value = body[pos + 2 : pos + 2 + size]
            pos += 2 + size
            if param == PARAM_DATE_TIME:
                time = _time(value)
            elif param == PARAM_NUMBER:
                number = _number(value)
            elif param == PARAM_ABSENCE_NUMBER:
                absence_number = _absence(value)
            elif param == PARAM_NAME:
                name = _name(value)
            elif param == PARAM_ABSENCE_NAME:
                absence_name = _absence(value)
    else:
        return None
    return CallerIdMessage(
        standard=standard,
        format=fmt,
        number=number,
        name=name,
        time=time,
        absence_number=absence_number,
        absence_name=absence_name,
        start_frame=start_frame,
        raw=bytes(raw),
        seizure=seizure,
    )


# ---- DTMF CLIP ------------------------------------------------------------------------------

DTMF_START = frozenset("ABD")
DTMF_END = frozenset("C#")
DTMF_ABSENCE_B = {"00": "O", "10": "P"}
DTMF_ABSENCE_D = {"1": "P", "2": "O", "3": "O"}


def _dtmf_message(text: str, start_s: float, rate: int) -> CallerIdMessage:
    """``text`` is a whole framed CLIP, start code to end code. Raises MessageError."""
    code, digits = text[0], text[1:-1]
    if not digits.isdigit():
        raise MessageError("malformed", f"DTMF CLIP {text!r}")
    number = absence = None
    if code == "B":
        absence = DTMF_ABSENCE_B.get(digits)
        if absence is None:
            raise MessageError("malformed", f"unknown DTMF CLIP code {text!r}")
    elif code == "D" and len(digits) == 1:
        absence = DTMF_ABSENCE_D.get(digits)
        if absence is None:
            raise MessageError("malformed", f"unknown DTMF CLIP code {text!r}")
    else:
        number = digits
    return CallerIdMessage(
        standard="dtmf",
        format="dtmf",
        number=number,
        name=None,
        time=None,
        absence_number=absence,
        absence_name=None,
        start_frame=round(start_s * rate),
        raw=text.encode("ascii"),
    )


def parse_dtmf_clip(
    events: Iterable[tuple[str, float]],
    *,
    rate: int = 8000,
    max_gap_s: float = 0.5,
    errors: list[CallerIdError] | None = None,
) -> list[CallerIdMessage]:
    """Caller IDs in a list of detected DTMF digits ``(digit, start_s)``, in time order.

    A CLIP is a start code (A, B or D), digits and an end code (C or #), each digit starting
    at most ``max_gap_s`` after the one before. Sequences that start but do not finish (gap,
    new start code, end of the list) or carry unknown codes are appended to ``errors`` (if
    given), never returned as caller IDs. Digits outside any CLIP are ignored.
    """
    found: list[CallerIdMessage] = []
    current: list[str] = []
    start_s = last_s = 0.0

    def fail(reason: ErrorReason, detail: str) -> None:
        if errors is not None:
            errors.append(
                CallerIdError(
                    "dtmf", reason, round(start_s * rate), "".join(current).encode(), detail
                )
            )

    for key, at in events:
        digit = key.upper()
        if current and at - last_s > max_gap_s:
            fail("truncated", f"{at - last_s:.2f} s gap after {''.join(current)!r}")
            current = []
        if not current:
            if digit in DTMF_START:
                current, start_s, last_s = [digit], at, at
            continue
        last_s = at
        if digit in DTMF_START:
            fail("truncated", f"new start code {digit!r} after {''.join(current)!r}")
            current, start_s = [digit], at
            continue
        current.append(digit)
        if digit in DTMF_END:
            try:
                found.append(_dtmf_message("".join(current), start_s, rate))
            except MessageError as exc:
                fail(exc.reason, exc.detail)
            current = []
    if current:
        fail("truncated", f"unfinished {''.join(current)!r}")
    return found
