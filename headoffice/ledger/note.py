"""C2SP signed notes with Ed25519 keys, and the tlog-checkpoint text they carry.

Formats (https://c2sp.org/signed-note, https://c2sp.org/tlog-checkpoint):

- a signed note is ``text`` (UTF-8, ending in a newline, no control characters but
  newline), a blank line, then one or more lines ``— <key name> base64(key id || sig)``;
- a key name is non-empty, without Unicode spaces or ``+``;
- the key id is ``SHA-256(name || 0x0A || 0x01 || 32-byte public key)[:4]`` (big endian);
- the verifier key text is ``name+hex8(key id)+base64(0x01 || public key)`` and the
  private key text, as golang.org/x/mod/sumdb/note writes it,
  ``PRIVATE+KEY+name+hex8(key id)+base64(0x01 || 32-byte Ed25519 seed)``;
- a checkpoint's text is the origin line, the decimal tree size (no leading zeroes), the
  base64 root hash, then optional non-empty extension lines.

Verification follows the spec: signatures by other keys (another name, or the same name
with another key id) are ignored; a signature by the verifier's key that does not verify
rejects the note; so does a note without one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from sealedrec.errors import LinetapError

__all__ = [
    "ED25519",
    "MAX_SIGNATURES",
    "BadSignatureError",
    "Checkpoint",
    "CheckpointError",
    "MalformedNoteError",
    "NoSignatureError",
    "NoteError",
    "NoteKeyError",
    "Verifier",
    "check_key_name",
    "checkpoint_text",
    "generate_signer_key",
    "key_id",
    "parse_checkpoint",
    "parse_signer_key",
    "parse_verifier_key",
    "sign_note",
    "signer_key",
    "verifier_key",
    "verify_note",
]

ED25519 = 0x01
"""Signature type byte of Ed25519 in the signed-note spec."""
MAX_SIGNATURES = 100
"""Signature lines accepted in one note (the spec asks for at least 16)."""
_PRIVATE_PREFIX = "PRIVATE+KEY+"
_DASH = "\u2014 "
_SIZE_RE = re.compile(r"0|[1-9][0-9]{0,19}")
_MAX_TREE_SIZE = 2**64 - 1


class NoteError(LinetapError, ValueError):
    """A signed note, key or checkpoint could not be used; the message says why."""


class MalformedNoteError(NoteError):
    """The note's bytes break the signed-note format."""


class NoSignatureError(NoteError):
    """The note carries no signature by the verifier's key (name and key id)."""


class BadSignatureError(NoteError):
    """A signature by the verifier's key does not verify: the note was altered."""


class NoteKeyError(NoteError):
    """A key name or key text is malformed."""


class CheckpointError(NoteError):
    """A checkpoint's text breaks the tlog-checkpoint format."""


@dataclass(frozen=True, slots=True)
class Verifier:
    """An Ed25519 note verifier: key name, key id and raw 32-byte public key."""

    name: str
    key_id: int
    public_key: bytes

    @property
    def vkey(self) -> str:
        """The verifier key text, ``name+hex8+base64(0x01 || public key)``."""
        return verifier_key(self.name, self.public_key)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A tlog-checkpoint body: who (origin), how many leaves (size), which root."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()


def check_key_name(name: str) -> str:
    """Return ``name`` if it is a valid key name (non-empty, no spaces, no ``+``), else raise."""
    if not name:
        raise NoteKeyError("key name is empty")
    for c in name:
        if c == "+" or c.isspace() or ord(c) < 0x20 or c == "\x7f":
            raise NoteKeyError(f"key name {name!r} contains {c!r} (no spaces, '+' or controls)")
    return name


def key_id(name: str, public_key: bytes) -> int:
    """``SHA-256(name || 0x0A || 0x01 || public key)[:4]`` as a big-endian integer."""
    check_key_name(name)
    _check_raw(public_key, "Ed25519 public key")
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([ED25519]) + public_key).digest()
    return int.from_bytes(digest[:4], "big")


def verifier_key(name: str, public_key: bytes) -> str:
    """The verifier key text ``name+hex8(key id)+base64(0x01 || public key)``."""
    kid = key_id(name, public_key)
    return f"{name}+{kid:08x}+{_b64(bytes([ED25519]) + public_key)}"


def signer_key(name: str, private_key: Ed25519PrivateKey) -> str:
    """The private key text ``PRIVATE+KEY+name+hex8(key id)+base64(0x01 || seed)``."""
    seed = private_key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    kid = key_id(name, _raw_public(private_key))
    return f"{_PRIVATE_PREFIX}{name}+{kid:08x}+{_b64(bytes([ED25519]) + seed)}"


def generate_signer_key(name: str) -> tuple[str, str]:
    """A fresh Ed25519 key for ``name``: ``(private key text, verifier key text)``."""
    key = Ed25519PrivateKey.generate()
    return signer_key(name, key), verifier_key(name, _raw_public(key))


def parse_verifier_key(vkey: str) -> Verifier:
    """Parse ``name+hex8+base64(0x01 || public key)``; the key id must match the key."""
    parts = vkey.strip().split("+", 2)
    if len(parts) != 3:
        raise NoteKeyError(f"verifier key {vkey!r:.80} is not name+keyid+key")
    name, hex_id, b64 = parts
    raw = _key_material(b64, "verifier key")
    _check_key_id(name, hex_id, raw, "verifier key")
    return Verifier(name, int(hex_id, 16), raw)


def parse_signer_key(skey: str) -> tuple[str, Ed25519PrivateKey]:
    """Parse ``PRIVATE+KEY+name+hex8+base64(0x01 || seed)`` into ``(name, private key)``."""
    text = skey.strip()
    if not text.startswith(_PRIVATE_PREFIX):
        raise NoteKeyError(f"private key text does not start with {_PRIVATE_PREFIX!r}")
    parts = text[len(_PRIVATE_PREFIX) :].split("+", 2)
    if len(parts) != 3:
        raise NoteKeyError("private key text is not PRIVATE+KEY+name+keyid+key")
    name, hex_id, b64 = parts
    key = Ed25519PrivateKey.from_private_bytes(_key_material(b64, "private key"))
    _check_key_id(name, hex_id, _raw_public(key), "private key")
    return name, key


def sign_note(text: str, name: str, private_key: Ed25519PrivateKey) -> str:
    """The signed note: ``text``, a blank line, and one Ed25519 signature line by ``name``."""
    _check_text(text)
    kid = key_id(name, _raw_public(private_key))
    sig = private_key.sign(text.encode())
    return f"{text}\n{_DASH}{name} {_b64(kid.to_bytes(4, 'big') + sig)}\n"


def verify_note(note: str | bytes, verifier: Verifier) -> str:
    """Return the note's text if it carries a valid signature by ``verifier``; else raise.

    Raises :class:`MalformedNoteError`, :class:`NoSignatureError` (nothing signed by this
    name and key id) or :class:`BadSignatureError` (such a signature fails to verify).
    """
    text, signatures = _split_note(note)
    mine = [sig for name, kid, sig in signatures if (name, kid) == (verifier.name, verifier.key_id)]
    label = f"{verifier.name}+{verifier.key_id:08x}"
    if not mine:
        others = ", ".join(f"{n}+{k:08x}" for n, k, _ in signatures)
        raise NoSignatureError(f"the note has no signature by key {label} (only by {others})")
    public = Ed25519PublicKey.from_public_bytes(verifier.public_key)
    for sig in mine:
        try:
            public.verify(sig, text.encode())
        except InvalidSignature:
            raise BadSignatureError(
                f"the signature by key {label} does not verify (the note text was altered "
                "or signed by another key)"
            ) from None
    return text


def checkpoint_text(origin: str, size: int, root: bytes, extensions: Sequence[str] = ()) -> str:
    """The tlog-checkpoint note text: origin, decimal size, base64 root, extension lines."""
    _check_origin(origin)
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= _MAX_TREE_SIZE:
        raise CheckpointError(f"tree size {size!r} is not an integer in 0..2^64-1")
    if len(root) != 32:
        raise CheckpointError(f"root hash is {len(root)} bytes, not 32 (SHA-256)")
    for line in extensions:
        if not line or "\n" in line:
            raise CheckpointError(f"extension line {line!r:.80} is empty or spans lines")
    text = "".join(f"{line}\n" for line in (origin, str(size), _b64(root), *extensions))
    _check_text(text)
    return text


def parse_checkpoint(text: str) -> Checkpoint:
    """Parse a checkpoint note text (as :func:`verify_note` returns it), strictly."""
    if not text.endswith("\n"):
        raise CheckpointError("checkpoint text does not end in a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise CheckpointError(f"checkpoint has {len(lines)} lines, needs origin, size and root")
    origin, size_line, root_line, *extensions = lines
    _check_origin(origin)
    if not _SIZE_RE.fullmatch(size_line) or int(size_line) > _MAX_TREE_SIZE:
        raise CheckpointError(f"tree size line {size_line!r:.80} is not a decimal size")
    try:
        root = base64.b64decode(root_line, validate=True)
    except binascii.Error:
        raise CheckpointError(f"root hash line {root_line!r:.80} is not base64") from None
    if len(root) != 32 or _b64(root) != root_line:
        raise CheckpointError(f"root hash line {root_line!r:.80} is not a base64 SHA-256")
    for i, line in enumerate(extensions, start=4):
        if not line:
            raise CheckpointError(f"checkpoint line {i} (an extension line) is empty")
    return Checkpoint(origin, int(size_line), root, tuple(extensions))


def _split_note(note: str | bytes) -> tuple[str, list[tuple[str, int, bytes]]]:
    if isinstance(note, bytes):
        try:
            note = note.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedNoteError("the note is not valid UTF-8") from None
    _check_chars(note, MalformedNoteError, "note")
    if not note.endswith("\n"):
        raise MalformedNoteError("the note does not end in a newline")
    cut = note.rfind("\n\n")
    if cut < 0:
        raise MalformedNoteError("the note has no blank line before its signatures")
    text, block = note[: cut + 1], note[cut + 2 :]
    lines = block[:-1].split("\n") if block else []
    if not lines:
        raise MalformedNoteError("the note has no signature lines")
    if len(lines) > MAX_SIGNATURES:
        raise MalformedNoteError(f"the note has {len(lines)} signatures (at most {MAX_SIGNATURES})")
    return text, [_parse_signature_line(line) for line in lines]


def _parse_signature_line(line: str) -> tuple[str, int, bytes]:
    if not line.startswith(_DASH):
        raise MalformedNoteError(f"signature line {line!r:.80} does not start with an em dash")
    fields = line[len(_DASH) :].split(" ")
    if len(fields) != 2:
        raise MalformedNoteError(f"signature line {line!r:.80} is not '— name signature'")
    name, b64 = fields
    try:
        check_key_name(name)
    except NoteKeyError as e:
        raise MalformedNoteError(f"signature line {line!r:.80}: {e}") from None
    try:
        blob = base64.b64decode(b64, validate=True)
    except binascii.Error:
        raise MalformedNoteError(f"signature by {name!r} is not base64") from None
    if len(blob) < 5:
        raise MalformedNoteError(f"signature line {line!r:.80} is too short for key id + sig")
    return name, int.from_bytes(blob[:4], "big"), blob[4:]


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        raise MalformedNoteError("note text must end in a newline")
    _check_chars(text, MalformedNoteError, "note text")


def _check_chars(s: str, error: type[NoteError], what: str) -> None:
    for i, c in enumerate(s):
        if ord(c) < 0x20 and c != "\n":
            raise error(f"{what} contains control character {c!r} at offset {i}")
        if 0xD800 <= ord(c) <= 0xDFFF:
            raise error(f"{what} contains a lone surrogate at offset {i} (not UTF-8)")


def _check_origin(origin: str) -> None:
    if not origin:
        raise CheckpointError("checkpoint origin is empty")
    _check_chars(origin, CheckpointError, "checkpoint origin")
    if "\n" in origin:
        raise CheckpointError(f"checkpoint origin {origin!r:.80} spans lines")


def _check_key_id(name: str, hex_id: str, raw: bytes, what: str) -> None:
    check_key_name(name)
    if not re.fullmatch(r"[0-9a-f]{8}", hex_id):
        raise NoteKeyError(f"{what} id {hex_id!r} is not 8 lowercase hex digits")
    want = key_id(name, raw)
    if int(hex_id, 16) != want:
        raise NoteKeyError(f"{what} id {hex_id} does not match its key (expected {want:08x})")


def _key_material(b64: str, what: str) -> bytes:
    try:
        blob = base64.b64decode(b64, validate=True)
    except binascii.Error:
        raise NoteKeyError(f"{what} material is not base64") from None
    if len(blob) != 33 or blob[0] != ED25519:
        raise NoteKeyError(f"{what} is not an Ed25519 key (type byte 0x01 and 32 bytes)")
    return blob[1:]


def _check_raw(public_key: bytes, what: str) -> None:
    if not isinstance(public_key, bytes) or len(public_key) != 32:
        raise NoteKeyError(f"{what} must be 32 raw bytes")


def _raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
