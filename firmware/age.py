"""age v1 file encryption (https://age-encryption.org/v1), X25519 recipients only.

Recordings are sealed on the device as age files addressed to the head office's X25519
public keys; the head office opens them with the matching identities (or the real
``age -d``). Only primitives from ``cryptography`` are used: X25519, HKDF-SHA-256,
ChaCha20-Poly1305 and HMAC-SHA-256.

Format in brief::

    age-encryption.org/v1
    -> X25519 <ephemeral share, base64>       one stanza per recipient, wrapping the
    <body: wrapped file key, base64>          16-byte file key
    --- <HMAC-SHA-256 of the header, base64>
    <16-byte payload nonce><STREAM chunks: 64 KiB plaintext + 16-byte tag each;
                            the last one flagged final, possibly short>

:class:`AgeWriter` encrypts a stream with constant memory and lets the caller rewrite
bytes of the *first* 64 KiB chunk until :meth:`AgeWriter.close` (a FLAC encoder seeks
back to rewrite STREAMINFO at the end of the stream). :class:`AgeReader` parses the
header strictly (the C2SP/CCTV test vectors pin every edge case), unwraps the file key
and decrypts chunk by chunk. :func:`decrypt_bytes` also reads ASCII-armored files.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Final

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from firmware.errors import LinetapError

__all__ = [
    "AgeArmorError",
    "AgeError",
    "AgeHeaderError",
    "AgeKeyError",
    "AgeMacError",
    "AgePayloadError",
    "AgeReader",
    "AgeWriter",
    "NoIdentityMatch",
    "bech32_decode",
    "bech32_encode",
    "dearmor",
    "decrypt_bytes",
    "encrypt_bytes",
    "format_identity",
    "format_recipient",
    "generate_identity",
    "load_identities",
    "load_recipients",
    "parse_identity",
    "parse_recipient",
]

# --------------------------------------------------------------------------- errors


class AgeError(LinetapError, ValueError):
    """Base of every age error: a key, header, payload or armor problem."""


class AgeKeyError(AgeError):
    """A recipient (``age1…``) or identity (``AGE-SECRET-KEY-1…``) string is malformed."""


class AgeHeaderError(AgeError):
    """The age header is malformed (or, for :class:`AgeMacError`, fails its MAC)."""


class AgeMacError(AgeHeaderError):
    """The header parsed and a file key was unwrapped, but the header MAC does not verify."""


class NoIdentityMatch(AgeError):
    """The header is well-formed but none of our identities can unwrap any stanza."""


class AgePayloadError(AgeError):
    """The encrypted payload is truncated, altered, or has data after its final chunk."""


class AgeArmorError(AgeError):
    """An ASCII-armored (PEM) age file is not strictly encoded."""


# --------------------------------------------------------------------------- constants

INTRO: Final = b"age-encryption.org/v1"
_VERSION_PREFIX: Final = b"age-encryption.org/"
_STANZA_PREFIX: Final = b"-> "
_MAC_MARK: Final = b"---"
_X25519_INFO: Final = b"age-encryption.org/v1/X25519"
_COLUMNS: Final = 64  # base64 columns per stanza body line (48 bytes)
_FILE_KEY_SIZE: Final = 16
_NONCE_SIZE: Final = 16
_TAG_SIZE: Final = 16
CHUNK_SIZE: Final = 64 * 1024  # plaintext bytes per STREAM chunk
ENC_CHUNK_SIZE: Final = CHUNK_SIZE + _TAG_SIZE
_MAX_HEADER: Final = 1 << 20  # we refuse headers above 1 MiB (ours are ~100 B per recipient)
_ZERO_NONCE: Final = bytes(12)

RECIPIENT_HRP: Final = "age"
IDENTITY_HRP: Final = "AGE-SECRET-KEY-"

ARMOR_BEGIN: Final = b"-----BEGIN AGE ENCRYPTED FILE-----"
ARMOR_END: Final = b"-----END AGE ENCRYPTED FILE-----"
_ARMOR_MAX_WHITESPACE: Final = 1024

# --------------------------------------------------------------------------- bech32 (BIP-173)

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


# --------------------------------------------------------------------------- keys


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


# --------------------------------------------------------------------------- primitives


def _b64encode(data: bytes) -> bytes:
    """Canonical base64 without padding, as used in age headers."""
    return base64.b64encode(data).rstrip(b"=")


def _b64decode(text: bytes) -> bytes:
    """Strict unpadded base64: rejects padding, stray characters and non-canonical bits."""
    if b"=" in text or len(text) % 4 == 1:
        raise ValueError("not unpadded base64")
    try:
        data = base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
    except binascii.Error:
        raise ValueError("invalid base64") from None
    if _b64encode(data) != text:
        raise ValueError("non-canonical base64")
    return data


def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def _header_mac(file_key: bytes, header: bytes) -> hmac.HMAC:
    h = hmac.HMAC(_hkdf(file_key, b"", b"header"), hashes.SHA256())
    h.update(header)
    return h


def _chunk_nonce(counter: int, final: bool) -> bytes:
    return counter.to_bytes(11, "big") + (b"\x01" if final else b"\x00")


def _x25519_wrap_key(shared: bytes, share: bytes, recipient: bytes) -> bytes:
    return _hkdf(shared, share + recipient, _X25519_INFO)


def _stanza_bytes(args: Sequence[bytes], body: bytes) -> bytes:
    encoded = _b64encode(body)
    lines = [encoded[i : i + _COLUMNS] for i in range(0, len(encoded), _COLUMNS)]
    if not lines or len(lines[-1]) == _COLUMNS:
        lines.append(b"")  # a stanza always ends with a line shorter than 64 columns
    return _STANZA_PREFIX + b" ".join(args) + b"\n" + b"".join(line + b"\n" for line in lines)


def _build_header(
    file_key: bytes, recipients: Sequence[X25519PublicKey], rng: Callable[[int], bytes]
) -> bytes:
    out = bytearray(INTRO + b"\n")
    for recipient in recipients:
        ephemeral = X25519PrivateKey.from_private_bytes(rng(32))
        share = ephemeral.public_key().public_bytes_raw()
        try:
            shared = ephemeral.exchange(recipient)
        except ValueError:  # all-zero shared secret
            raise AgeKeyError(
                f"recipient {format_recipient(recipient)!r} is a low-order point and cannot be"
                " encrypted to"
            ) from None
        wrap_key = _x25519_wrap_key(shared, share, recipient.public_bytes_raw())
        body = ChaCha20Poly1305(wrap_key).encrypt(_ZERO_NONCE, file_key, None)
        out += _stanza_bytes([b"X25519", _b64encode(share)], body)
    out += _MAC_MARK
    mac = _header_mac(file_key, bytes(out)).finalize()
    out += b" " + _b64encode(mac) + b"\n"
    return bytes(out)


# --------------------------------------------------------------------------- writer


class AgeWriter:
    """Stream-encrypt to ``recipients`` into the seekable binary file ``out``.

    Memory is constant: the first 64 KiB of plaintext (kept so :meth:`patch` can change
    it until :meth:`close`) plus the chunk being filled. The header and payload nonce are
    written at construction; the space of chunk 0 is reserved once more data follows it
    and filled in at :meth:`close`, which also writes the final chunk and truncates
    ``out`` to the exact file length (``out`` itself is left open).

    Used as a context manager, a clean exit closes the writer; an exception leaves the
    file unfinished (no final chunk, chunk 0 unwritten), so it can never pass for a
    complete recording.
    """

    def __init__(
        self,
        out: BinaryIO,
        recipients: Sequence[X25519PublicKey],
        *,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if not recipients:
            raise AgeError("age: at least one recipient is needed to encrypt")
        if not out.seekable():
            raise AgeError("age: AgeWriter needs a seekable output (it rewrites chunk 0 at close)")
        self._out = out
        file_key = rng(_FILE_KEY_SIZE)
        header = _build_header(file_key, recipients, rng)
        nonce = rng(_NONCE_SIZE)
        self._aead = ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))
        self._start = out.tell()
        out.write(header + nonce)
        self._base = self._start + len(header) + _NONCE_SIZE  # where chunk 0 goes
        self._first = bytearray()  # plaintext of chunk 0, patchable until close
        self._cur = bytearray()  # plaintext of chunk `self._index` (>= 1)
        self._index = 0  # the chunk being filled
        self._plain = 0
        self._written = len(header) + _NONCE_SIZE
        self._closed = False

    @property
    def bytes_written(self) -> int:
        """Length of the age file so far (header, nonce, reserved chunk 0, chunks)."""
        return self._written

    @property
    def plaintext_length(self) -> int:
        """Plaintext bytes accepted so far."""
        return self._plain

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise AgeError("age: write to a closed AgeWriter")

    def _seal(self, index: int, plaintext: bytes | bytearray | memoryview, final: bool) -> bytes:
        return self._aead.encrypt(_chunk_nonce(index, final), plaintext, None)

    def _advance(self) -> None:
        """The filled chunk `self._index` is known not to be the last one: emit it."""
        if self._index == 0:
            self._out.write(bytes(ENC_CHUNK_SIZE))  # hole for chunk 0, filled at close
        else:
            self._out.write(self._seal(self._index, self._cur, final=False))
            self._cur.clear()
        self._written += ENC_CHUNK_SIZE
        self._index += 1

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Encrypt ``data``; returns its length. Full chunks are emitted once more data follows."""
        self._check_open()
        view = memoryview(data).cast("B")
        total = len(view)
        while view:
            buf = self._first if self._index == 0 else self._cur
            if len(buf) == CHUNK_SIZE:
                self._advance()  # more data follows, so the full chunk is not the last
                continue
            if self._index > 0 and not buf and len(view) > CHUNK_SIZE:
                # A whole chunk that is surely not the last: seal it straight from the input.
                self._out.write(self._seal(self._index, view[:CHUNK_SIZE], final=False))
                self._written += ENC_CHUNK_SIZE
                self._index += 1
                self._plain += CHUNK_SIZE
                view = view[CHUNK_SIZE:]
                continue
            take = min(CHUNK_SIZE - len(buf), len(view))
            buf += view[:take]
            self._plain += take
            view = view[take:]
        return total

    def patch(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Overwrite already-written plaintext at ``offset`` inside the first 64 KiB chunk."""
        self._check_open()
        end = offset + len(data)
        if offset < 0 or end > CHUNK_SIZE:
            raise AgeError(
                f"age: patch of {len(data)} bytes at offset {offset} reaches outside the first"
                f" chunk (0..{CHUNK_SIZE}); only the first 64 KiB can be changed until close"
            )
        if end > len(self._first):
            raise AgeError(
                f"age: patch of {len(data)} bytes at offset {offset} reaches past the"
                f" {len(self._first)} bytes written so far"
            )
        self._first[offset:end] = data

    def close(self) -> None:
        """Write the final chunk and chunk 0, truncate ``out`` to the file's end. Idempotent."""
        if self._closed:
            return
        self._closed = True
        out = self._out
        if self._index == 0:
            out.seek(self._base)
            out.write(self._seal(0, self._first, final=True))
            self._written += len(self._first) + _TAG_SIZE
        else:
            out.seek(self._base + self._index * ENC_CHUNK_SIZE)
            out.write(self._seal(self._index, self._cur, final=True))
            self._written += len(self._cur) + _TAG_SIZE
            out.seek(self._base)
            out.write(self._seal(0, self._first, final=False))
        end = self._start + self._written
        out.seek(end)
        out.truncate(end)
        self._first[:] = bytes(len(self._first))  # don't leave plaintext lying around
        self._cur[:] = bytes(len(self._cur))
        out.flush()

    def abort(self) -> None:
        """Stop without finishing the file (it will fail to decrypt)."""
        self._closed = True

    def __enter__(self) -> AgeWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def encrypt_bytes(
    data: bytes,
    recipients: Sequence[X25519PublicKey],
    *,
    rng: Callable[[int], bytes] = os.urandom,
) -> bytes:
    """Encrypt ``data`` to ``recipients`` as a binary age file."""
    buf = io.BytesIO()
    with AgeWriter(buf, recipients, rng=rng) as w:
        w.write(data)
    return buf.getvalue()


# --------------------------------------------------------------------------- reader


class _Stanza:
    __slots__ = ("args", "body", "number")

    def __init__(self, number: int, args: list[bytes], body: bytes) -> None:
        self.number = number
        self.args = args
        self.body = body


def _read_exact(inp: BinaryIO, n: int) -> bytes:
    data = inp.read(n)
    if len(data) == n or not data:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more = inp.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


class AgeReader:
    """Decrypt an age file from ``inp`` with ``identities``, chunk by chunk.

    The constructor reads and verifies the header (raising :class:`AgeHeaderError`,
    :class:`AgeMacError` or :class:`NoIdentityMatch`); :meth:`read` and iteration then
    release plaintext one authenticated 64 KiB chunk at a time and raise
    :class:`AgePayloadError` on truncation, tampering or trailing data. Plaintext
    released before an error is authentic; the error itself means the file is not whole.
    """

    def __init__(self, inp: BinaryIO, identities: Sequence[X25519PrivateKey]) -> None:
        if not identities:
            raise AgeError("age: at least one identity is needed to decrypt")
        self._inp = inp
        self._header_len = 0
        raw, stanzas, mac = self._parse_header()
        self._file_key = self._unwrap(stanzas, identities)
        try:
            _header_mac(self._file_key, raw).verify(mac)
        except InvalidSignature:
            raise AgeMacError(
                "age header MAC mismatch: the header was altered or the file key is wrong"
            ) from None
        nonce = _read_exact(inp, _NONCE_SIZE)
        if len(nonce) != _NONCE_SIZE:
            raise AgeHeaderError(
                f"age file truncated: the payload nonce after the header is {len(nonce)} of"
                f" {_NONCE_SIZE} bytes"
            )
        self._aead = ChaCha20Poly1305(_hkdf(self._file_key, nonce, b"payload"))
        self._index = 0
        self._carry = b""  # one byte read ahead to learn whether a chunk is the last
        self._done = False
        self._error: AgePayloadError | None = None  # raised by every later read
        self._chunk = b""
        self._pos = 0

    @property
    def file_key(self) -> bytes:
        """The unwrapped 16-byte file key (for tests and diagnostics)."""
        return self._file_key

    # ---- header

    def _line(self, what: str) -> bytes:
        line = self._inp.readline(_MAX_HEADER - self._header_len + 1)
        self._header_len += len(line)
        if self._header_len > _MAX_HEADER:
            raise AgeHeaderError(f"age header larger than {_MAX_HEADER} bytes; refusing it")
        if not line.endswith(b"\n"):
            raise AgeHeaderError(f"age header truncated: the {what} does not end with a newline")
        return line[:-1]

    def _parse_header(self) -> tuple[bytes, list[_Stanza], bytes]:
        raw = bytearray()
        start = self._inp.readline(len(INTRO) + 2)
        if not start.startswith(_VERSION_PREFIX):
            what = (
                "the input is empty"
                if not start
                else "it does not start with 'age-encryption.org/'"
            )
            raise AgeHeaderError(f"not an age file: {what}")
        self._header_len = len(start)
        intro = start[:-1] if start.endswith(b"\n") else start + self._line("version line")
        raw += intro + b"\n"
        if intro == INTRO + b"\r":
            raise AgeHeaderError(
                "malformed age header: lines end with CRLF; the file was probably mangled by a"
                " text-mode transfer"
            )
        if intro != INTRO:
            raise AgeHeaderError(
                f"unsupported age format version {intro[len(_VERSION_PREFIX) :][:40]!r}"
                " (only v1 is supported)"
            )
        stanzas: list[_Stanza] = []
        while True:
            line = self._line("header line")
            if line.startswith(_MAC_MARK):
                raw += _MAC_MARK
                mac = self._parse_mac_line(line)
                break
            raw += line + b"\n"
            if not line.startswith(_STANZA_PREFIX):
                raise AgeHeaderError(
                    f"malformed age header: line {line[:20]!r} is neither a stanza ('-> …')"
                    " nor the MAC line ('--- …')"
                )
            number = len(stanzas) + 1
            args = line[len(_STANZA_PREFIX) :].split(b" ")
            for arg in args:
                if not arg or any(c < 0x21 or c > 0x7E for c in arg):
                    raise AgeHeaderError(
                        f"malformed age header: stanza {number} has an empty argument or one with"
                        " characters outside printable ASCII"
                    )
            body = bytearray()
            while True:
                body_line = self._line(f"body of stanza {number}")
                raw += body_line + b"\n"
                if len(body_line) > _COLUMNS:
                    raise AgeHeaderError(
                        f"malformed age header: a body line of stanza {number} is longer than"
                        f" {_COLUMNS} columns"
                    )
                try:
                    body += _b64decode(body_line)
                except ValueError as exc:
                    raise AgeHeaderError(
                        f"malformed age header: body of stanza {number}: {exc}"
                        " (a stanza must end with a line shorter than 64 columns)"
                    ) from None
                if len(body_line) < _COLUMNS:
                    break
            stanzas.append(_Stanza(number, args, bytes(body)))
        self._check_stanzas(stanzas)
        return bytes(raw), stanzas, mac

    @staticmethod
    def _parse_mac_line(line: bytes) -> bytes:
        parts = line.split(b" ")
        if len(parts) != 2 or parts[0] != _MAC_MARK:
            raise AgeHeaderError("malformed age header: the MAC line must be '--- <base64 MAC>'")
        try:
            mac = _b64decode(parts[1])
        except ValueError as exc:
            raise AgeHeaderError(f"malformed age header: header MAC: {exc}") from None
        if len(mac) != 32:
            raise AgeHeaderError(f"malformed age header: header MAC is {len(mac)} bytes, not 32")
        return mac

    @staticmethod
    def _check_stanzas(stanzas: list[_Stanza]) -> None:
        if not stanzas:
            raise AgeHeaderError("malformed age header: no recipient stanzas")
        for s in stanzas:
            kind = s.args[0]
            if kind == b"scrypt" and len(stanzas) != 1:
                raise AgeHeaderError(
                    "malformed age header: a passphrase (scrypt) stanza must be the only stanza"
                )
            if kind != b"X25519":
                continue  # other recipient types are ignored, as the spec requires
            if len(s.args) != 2:
                raise AgeHeaderError(
                    f"malformed X25519 stanza {s.number}: {len(s.args) - 1} arguments, expected 1"
                )
            try:
                share = _b64decode(s.args[1])
            except ValueError as exc:
                raise AgeHeaderError(
                    f"malformed X25519 stanza {s.number}: ephemeral share: {exc}"
                ) from None
            if len(share) != 32:
                raise AgeHeaderError(
                    f"malformed X25519 stanza {s.number}: ephemeral share is {len(share)} bytes,"
                    " expected 32"
                )
            if len(s.body) != _FILE_KEY_SIZE + _TAG_SIZE:
                raise AgeHeaderError(
                    f"malformed X25519 stanza {s.number}: body is {len(s.body)} bytes,"
                    f" expected {_FILE_KEY_SIZE + _TAG_SIZE}"
                )

    @staticmethod
    def _unwrap(stanzas: list[_Stanza], identities: Sequence[X25519PrivateKey]) -> bytes:
        ours = [(priv, priv.public_key().public_bytes_raw()) for priv in identities]
        x25519 = [s for s in stanzas if s.args[0] == b"X25519"]
        for s in x25519:
            share = _b64decode(s.args[1])
            peer = X25519PublicKey.from_public_bytes(share)
            for priv, pub in ours:
                try:
                    shared = priv.exchange(peer)
                except ValueError:
                    raise AgeHeaderError(
                        f"malformed X25519 stanza {s.number}: the ephemeral share is a low-order"
                        " point (all-zero shared secret)"
                    ) from None
                aead = ChaCha20Poly1305(_x25519_wrap_key(shared, share, pub))
                try:
                    return aead.decrypt(_ZERO_NONCE, s.body, None)
                except InvalidTag:
                    continue  # addressed to someone else
        others = sorted({s.args[0].decode("ascii") for s in stanzas if s.args[0] != b"X25519"})
        if others == ["scrypt"]:
            raise NoIdentityMatch(
                "age: this file is passphrase-encrypted (scrypt), which is not supported here;"
                " it has no X25519 stanza for our identities"
            )
        also = f" (other stanza types, not supported here: {', '.join(others)})" if others else ""
        ours_n = f"{len(identities)} identit{'y' if len(identities) == 1 else 'ies'}"
        raise NoIdentityMatch(
            f"age: none of our {ours_n} can open this file: it has"
            f" {len(x25519)} X25519 stanza(s), none addressed to us{also}"
        )

    # ---- payload

    def _open(self, ct: bytes, finals: tuple[bool, ...]) -> tuple[bytes, bool]:
        """Decrypt chunk ``self._index`` trying the final flag values in order."""
        for final in finals:
            try:
                return self._aead.decrypt(_chunk_nonce(self._index, final), ct, None), final
            except InvalidTag:
                pass
        raise AgePayloadError(
            f"age payload chunk {self._index} failed authentication: the file was altered,"
            " truncated, corrupted or has data appended"
        )

    def _next_chunk(self) -> bytes | None:
        """The next authenticated plaintext chunk, or None after the final one.

        Errors are sticky: once the payload failed, every later call raises again.
        """
        if self._error is not None:
            raise type(self._error)(*self._error.args)
        if self._done:
            return None
        try:
            plain = self._decrypt_next()
        except AgePayloadError as exc:
            self._error = exc
            raise
        return plain

    def _decrypt_next(self) -> bytes:
        ct = self._carry + _read_exact(self._inp, ENC_CHUNK_SIZE - len(self._carry))
        more = False
        if len(ct) == ENC_CHUNK_SIZE:
            self._carry = _read_exact(self._inp, 1)
            more = bool(self._carry)
        n, index = len(ct), self._index
        if n == 0:
            if index == 0:
                raise AgePayloadError("age payload is missing: there is no chunk after the nonce")
            raise AgePayloadError(
                "age file truncated: it ends without a final chunk (incomplete recording?)"
            )
        if n < _TAG_SIZE:
            raise AgePayloadError(f"age payload chunk {index} is truncated ({n} bytes)")
        if n == _TAG_SIZE and index > 0:
            raise AgePayloadError(
                f"age payload chunk {index} is an empty final chunk; only an empty payload"
                " may end with one"
            )
        # A full-size chunk is final only if nothing follows it, but both flags are tried
        # so that truncation after a full chunk and data after a final chunk are told apart
        # from tampering (and the authentic chunk is still released, as age does).
        if n < ENC_CHUNK_SIZE:
            plain, final = self._open(ct, (True,))
        elif more:
            plain, final = self._open(ct, (False, True))
        else:
            plain, final = self._open(ct, (True, False))
        self._index += 1
        if final and more:
            self._error = AgePayloadError("age file has trailing data after its final chunk")
        elif final:
            self._done = True
        elif not more:
            self._error = AgePayloadError(
                "age file truncated: it ends without a final chunk (incomplete recording?)"
            )
        return plain

    def __iter__(self) -> Iterator[bytes]:
        """Yield the plaintext chunk by chunk (each at most 64 KiB)."""
        if self._pos < len(self._chunk):
            rest, self._chunk, self._pos = self._chunk[self._pos :], b"", 0
            yield rest
        while (chunk := self._next_chunk()) is not None:
            if chunk:
                yield chunk

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` plaintext bytes (all of the rest if ``n`` < 0); b"" at the end.

        If the payload fails after some bytes were gathered, they are returned (they are
        authentic) and the next call raises the error.
        """
        if n < 0:
            return b"".join(self)
        parts: list[bytes] = []
        want = n
        while want > 0:
            if self._pos >= len(self._chunk):
                try:
                    chunk = self._next_chunk()
                except AgePayloadError:
                    if not parts:
                        raise
                    break  # the error is sticky: the next call raises it
                if chunk is None:
                    break
                self._chunk, self._pos = chunk, 0
                continue
            piece = self._chunk[self._pos : self._pos + want]
            self._pos += len(piece)
            want -= len(piece)
            parts.append(piece)
        return b"".join(parts)

    def __enter__(self) -> AgeReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


# --------------------------------------------------------------------------- armor


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


def decrypt_bytes(
    data: bytes, identities: Sequence[X25519PrivateKey], *, armored: bool | None = None
) -> bytes:
    """Decrypt a whole age file held in memory.

    ``armored``: None detects PEM armor (``-----BEGIN…`` after optional whitespace),
    True requires it, False treats ``data`` as binary.
    """
    if armored or (armored is None and _looks_armored(data)):
        data = dearmor(data)
    return AgeReader(io.BytesIO(data), identities).read()
