"""ASCII armor (strict PEM, RFC 7468) of age files, as ``age -a`` writes it."""

from __future__ import annotations

import base64
import binascii
from typing import Final

from sealedrec.age._format import _COLUMNS
from sealedrec.age.errors import AgeArmorError

ARMOR_BEGIN: Final = b"-----BEGIN AGE ENCRYPTED FILE-----"
ARMOR_END: Final = b"-----END AGE ENCRYPTED FILE-----"
_ARMOR_MAX_WHITESPACE: Final = 1024


def dearmor(data: bytes) -> bytes:
    """Strict PEM (RFC 7468 §3) decoding as age does it; raises AgeArmorError."""
    lines = data.split(b"\n")
    i = 0
    skipped = 0
    while i < len(lines) and not lines[i].strip():
        skipped += len(lines[i]) + 1
        i += 1
    if skipped > _ARMOR_MAX_WHITESPACE:
        raise AgeArmorError("armored age file: too much leading whitespace")

    def line_at(k: int) -> bytes:
        if k >= len(lines) or (k == len(lines) - 1 and not lines[k]):
            raise AgeArmorError(f"armored age file: missing {ARMOR_END.decode()!r} line")
        return lines[k].removesuffix(b"\r")

    if i >= len(lines) or line_at(i) != ARMOR_BEGIN:
        raise AgeArmorError(
            f"armored age file: the first line is not {ARMOR_BEGIN.decode()!r} (or there is"
            " something before it)"
        )
    i += 1
    out = bytearray()
    while True:
        line = line_at(i)
        i += 1
        if line == ARMOR_END:
            break
        if not line:
            raise AgeArmorError("armored age file: empty line inside the base64 data")
        if len(line) > _COLUMNS:
            raise AgeArmorError("armored age file: a line is longer than 64 columns")
        try:
            chunk = base64.b64decode(line, validate=True)
        except binascii.Error:
            raise AgeArmorError(
                "armored age file: invalid base64 (or headers/whitespace)"
            ) from None
        if base64.b64encode(chunk) != line:
            raise AgeArmorError("armored age file: non-canonical base64")
        out += chunk
        if len(chunk) < _COLUMNS * 3 // 4:
            if line_at(i) != ARMOR_END:
                raise AgeArmorError(
                    "armored age file: a short base64 line must be the last one before the END line"
                )
            i += 1
            break
    rest = b"\n".join(lines[i:])
    if rest.strip():
        raise AgeArmorError("armored age file: data after the END line")
    if len(rest) >= _ARMOR_MAX_WHITESPACE:
        raise AgeArmorError("armored age file: too much trailing whitespace")
    return bytes(out)


def _looks_armored(data: bytes) -> bool:
    return data[: _ARMOR_MAX_WHITESPACE + 16].lstrip()[:10] == b"-----BEGIN"
