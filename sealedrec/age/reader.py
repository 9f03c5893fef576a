"""Decryption with X25519 identities: :class:`AgeReader` (strict header parsing, chunk by
chunk payload) and :func:`decrypt_bytes` (whole files in memory, binary or armored).
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import BinaryIO

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from sealedrec.age._format import (
    _COLUMNS,
    _FILE_KEY_SIZE,
    _MAC_MARK,
    _MAX_HEADER,
    _NONCE_SIZE,
    _STANZA_PREFIX,
    _TAG_SIZE,
    _VERSION_PREFIX,
    _ZERO_NONCE,
    ENC_CHUNK_SIZE,
    INTRO,
    _b64decode,
    _chunk_nonce,
    _header_mac,
    _hkdf,
    _x25519_wrap_key,
)
from sealedrec.age.armor import _looks_armored, dearmor
from sealedrec.age.errors import (
    AgeError,
    AgeHeaderError,
    AgeMacError,
    AgePayloadError,
    NoIdentityMatch,
)


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
