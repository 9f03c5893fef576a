"""Bech32 (BIP-173), the encoding of age recipient and identity strings."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

_CHARSET: Final = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_GENERATOR: Final = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


def _polymod(values: Iterable[int]) -> int:
    chk = 1
    for v in values:
        top = chk >> 25
        chk = ((chk & 0x1FFFFFF) << 5) ^ v
        for i, g in enumerate(_GENERATOR):
            if (top >> i) & 1:
                chk ^= g
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    codes = [ord(c) for c in hrp.lower()]
    return [c >> 5 for c in codes] + [0] + [c & 31 for c in codes]


def _convert_bits(data: Iterable[int], frombits: int, tobits: int, pad: bool) -> bytes:
    acc = bits = 0
    maxv = (1 << tobits) - 1
    out = bytearray()
    for value in data:
        acc = (acc << frombits) | value
        bits += frombits
        while bits >= tobits:
            bits -= tobits
            out.append((acc >> bits) & maxv)
    if pad:
        if bits:
            out.append((acc << (tobits - bits)) & maxv)
    elif bits >= frombits:
        raise ValueError("bad bech32 padding (too many bits)")
    elif (acc << (tobits - bits)) & maxv:
        raise ValueError("bad bech32 padding (non-zero bits)")
    return bytes(out)


def bech32_encode(hrp: str, data: bytes) -> str:
    """BIP-173 bech32 (not bech32m) of ``data``; upper-case output if ``hrp`` is upper-case.

    Unlike BIP-173 there is no 90-character limit (age does not use one for its keys).
    """
    if not hrp or any(not 33 <= ord(c) <= 126 for c in hrp):
        raise ValueError(f"invalid bech32 human-readable part {hrp!r}")
    if hrp not in (hrp.lower(), hrp.upper()):
        raise ValueError(f"mixed-case bech32 human-readable part {hrp!r}")
    values = list(_convert_bits(data, 8, 5, pad=True))
    lower = hrp.lower()
    mod = _polymod([*_hrp_expand(lower), *values, 0, 0, 0, 0, 0, 0]) ^ 1
    checksum = [(mod >> (5 * (5 - i))) & 31 for i in range(6)]
    text = lower + "1" + "".join(_CHARSET[v] for v in values + checksum)
    return text if hrp == lower else text.upper()


def bech32_decode(text: str) -> tuple[str, bytes]:
    """Decode BIP-173 bech32; returns (hrp as written, data). Raises ValueError naming why."""
    if text not in (text.lower(), text.upper()):
        raise ValueError("mixed upper and lower case")
    pos = text.rfind("1")
    if pos < 1 or pos + 7 > len(text):
        raise ValueError("no '1' separator before a 6-character checksum")
    hrp = text[:pos]
    if any(not 33 <= ord(c) <= 126 for c in hrp):
        raise ValueError("invalid character in the prefix")
    values = []
    for c in text[pos + 1 :].lower():
        v = _CHARSET.find(c)
        if v < 0:
            raise ValueError(f"invalid bech32 character {c!r}")
        values.append(v)
    if _polymod(_hrp_expand(hrp) + values) != 1:
        raise ValueError("bad bech32 checksum")
    return hrp, _convert_bits(values[:-6], 5, 8, pad=False)
