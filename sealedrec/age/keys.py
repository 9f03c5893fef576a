"""X25519 age keys: parse and format recipients (``age1…``) and identities
(``AGE-SECRET-KEY-1…``), read them from files, and generate new identities.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from sealedrec.age._format import INTRO
from sealedrec.age.armor import ARMOR_BEGIN
from sealedrec.age.bech32 import bech32_decode, bech32_encode
from sealedrec.age.errors import AgeKeyError

RECIPIENT_HRP: Final = "age"
IDENTITY_HRP: Final = "AGE-SECRET-KEY-"


def _show_recipient(text: str) -> str:
    return text if len(text) <= 16 else text[:12] + "…"


def _show_identity(text: str) -> str:
    """Never echo a secret key: only its prefix up to the bech32 '1' separator, and length."""
    pos = text.rfind("1")  # the bech32 data part cannot contain '1'
    prefix = text[: pos + 1] if 0 < pos <= 24 else ""
    return f"'{prefix}…' ({len(text)} characters)"


def parse_recipient(text: str) -> X25519PublicKey:
    """Parse an ``age1…`` X25519 recipient (public key)."""
    shown = _show_recipient(text)
    if text.upper().startswith("AGE-SECRET-KEY-"):
        raise AgeKeyError("expected a recipient (age1…), got a secret identity (AGE-SECRET-KEY-…)")
    try:
        hrp, data = bech32_decode(text)
    except ValueError as exc:
        raise AgeKeyError(f"recipient {shown!r}: {exc}") from None
    if hrp != RECIPIENT_HRP:
        if hrp.lower() == RECIPIENT_HRP:
            raise AgeKeyError(f"recipient {shown!r}: must be lower-case")
        if hrp.startswith("age1"):
            raise AgeKeyError(
                f"recipient {shown!r}: {hrp!r} recipients (post-quantum/plugin) are not supported;"
                " only X25519 age1… recipients are"
            )
        raise AgeKeyError(f"recipient {shown!r}: prefix {hrp!r} is not 'age'")
    if len(data) != 32:
        raise AgeKeyError(f"recipient {shown!r}: key is {len(data)} bytes, expected 32")
    return X25519PublicKey.from_public_bytes(data)


def format_recipient(pub: X25519PublicKey) -> str:
    """The ``age1…`` string of an X25519 public key."""
    return bech32_encode(RECIPIENT_HRP, pub.public_bytes_raw())


def parse_identity(text: str) -> X25519PrivateKey:
    """Parse an ``AGE-SECRET-KEY-1…`` X25519 identity. Errors never echo the key."""
    shown = _show_identity(text)
    if text.lower().startswith("age1"):
        raise AgeKeyError("expected a secret identity (AGE-SECRET-KEY-1…), got a recipient (age1…)")
    try:
        hrp, data = bech32_decode(text)
    except ValueError as exc:
        raise AgeKeyError(f"identity {shown}: {exc}") from None
    if hrp != IDENTITY_HRP:
        if hrp.upper() == IDENTITY_HRP:
            raise AgeKeyError(f"identity {shown}: must be upper-case")
        if hrp.upper().startswith(IDENTITY_HRP):
            raise AgeKeyError(
                f"identity {shown}: {hrp!r} identities (post-quantum/plugin) are not supported;"
                " only X25519 AGE-SECRET-KEY-1… identities are"
            )
        raise AgeKeyError(f"identity {shown}: prefix is not {IDENTITY_HRP!r}")
    if len(data) != 32:
        raise AgeKeyError(f"identity {shown}: key is {len(data)} bytes, expected 32")
    return X25519PrivateKey.from_private_bytes(data)


def format_identity(priv: X25519PrivateKey) -> str:
    """The ``AGE-SECRET-KEY-1…`` string of an X25519 private key."""
    return bech32_encode(IDENTITY_HRP, priv.private_bytes_raw())


def generate_identity() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def _key_lines(lines: Iterable[str]) -> Iterator[tuple[int, str]]:
    """(line number, stripped text) of the lines that are neither blank nor # comments."""
    for lineno, raw in enumerate(lines, 1):
        line = raw.strip()
        if line and not line.startswith("#"):
            yield lineno, line


def load_identities(path: str | os.PathLike[str]) -> list[X25519PrivateKey]:
    """Read an age identity file (``age-keygen`` output): one key a line, # comments.

    Raises :class:`OSError` if the file cannot be read and :class:`AgeKeyError`
    (``file:line: what is wrong``) if a line is not an X25519 identity.
    """
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    if text.startswith(INTRO.decode()) or text.lstrip().startswith(ARMOR_BEGIN.decode()):
        raise AgeKeyError(f"{path}: is an age-encrypted identity file; decrypt it first")
    keys = []
    for lineno, line in _key_lines(text.splitlines()):
        if line.startswith(("-----BEGIN", "ssh-")):
            raise AgeKeyError(
                f"{path}:{lineno}: SSH/PEM keys are not supported; use an X25519 identity"
                " (AGE-SECRET-KEY-1…, made by age-keygen)"
            )
        try:
            keys.append(parse_identity(line))
        except AgeKeyError as exc:
            raise AgeKeyError(f"{path}:{lineno}: {exc}") from None
    if not keys:
        raise AgeKeyError(f"{path}: no identities (AGE-SECRET-KEY-1… lines) found")
    return keys


def load_recipients(lines: Iterable[str], source: str = "recipients") -> list[X25519PublicKey]:
    """Parse age recipients, one a line (blank lines and # comments skipped).

    ``source`` names where the lines came from in error messages (``source:line: …``).
    """
    keys = []
    for lineno, line in _key_lines(lines):
        try:
            keys.append(parse_recipient(line))
        except AgeKeyError as exc:
            raise AgeKeyError(f"{source}:{lineno}: {exc}") from None
    return keys
