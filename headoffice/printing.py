"""How ``linetap-office`` prints: tables and lines safe for a terminal, JSON for scripts,
and one-line errors.

Everything a device wrote (caller names, ids) is hostile text: every human-readable line
goes through :func:`terminal_safe`, and JSON escapes every non-ASCII character.
"""

from __future__ import annotations

import json
import sys
import unicodedata
from collections.abc import Sequence
from typing import TextIO

from sealedrec.errors import LinetapError

# Unicode categories never printed as they are: control characters (C0, DEL, C1), format
# characters (bidi embeddings/overrides/isolates U+202A-202E and U+2066-2069, LRM/RLM,
# zero-width characters, tag characters), lone surrogates (not encodable), line and
# paragraph separators.
_UNPRINTED = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def _escape_char(c: str) -> str:
    if unicodedata.category(c) not in _UNPRINTED:
        return c
    code = ord(c)
    return (
        f"\\x{code:02x}"
        if code < 0x100
        else f"\\u{code:04x}"
        if code < 0x10000
        else f"\\U{code:08x}"
    )


def terminal_safe(text: object) -> str:
    """``text`` for a terminal: every control, format (bidi) and separator character as
    an escape (ESC as ``\\x1b``, U+202E as ``\\u202e``). Manifests are written by the
    devices: a caller name must not move the cursor, clear the screen or reverse a line.
    Every human-readable line of ls/search, show and verify goes through this."""
    s = str(text)
    if s.isprintable():  # the usual case; isprintable() is False for all of _UNPRINTED
        return s
    return "".join(_escape_char(c) for c in s)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns padded to their widest cell; numbers right-aligned; every cell escaped
    with :func:`terminal_safe`."""
    cells = [[("" if v is None else terminal_safe(v)) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    numeric = [
        bool(rows) and all(isinstance(r[i], int) and not isinstance(r[i], bool) for r in rows)
        for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(widths[i]) if numeric[i] else v.ljust(widths[i]) for i, v in enumerate(values)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), *(line(r) for r in cells)])


def format_duration(ms: int) -> str:
    seconds = round(ms / 1000)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def write_json(out: TextIO, payload: object) -> None:
    # ensure_ascii: every non-ASCII character as \\uXXXX, so no raw control, bidi or lone
    # surrogate character from a manifest reaches a terminal or breaks the encoding; any
    # JSON parser reads back the exact strings.
    out.write(json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=True) + "\n")


def fail(err: TextIO, exc: BaseException | str) -> int:
    if isinstance(exc, OSError) and not isinstance(exc, LinetapError) and exc.filename:
        text = f"{exc.filename}: {exc.strerror or exc}"
    else:
        text = " ".join(str(exc).split()) or type(exc).__name__
    err.write(f"linetap-office: error: {terminal_safe(text)}\n")
    return 1


def streams(out: TextIO | None, err: TextIO | None) -> tuple[TextIO, TextIO]:
    return out or sys.stdout, err or sys.stderr
