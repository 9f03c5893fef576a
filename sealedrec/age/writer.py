"""Stream encryption to X25519 recipients: :class:`AgeWriter` and :func:`encrypt_bytes`."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import BinaryIO

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from sealedrec.age._format import (
    _COLUMNS,
    _FILE_KEY_SIZE,
    _MAC_MARK,
    _NONCE_SIZE,
    _STANZA_PREFIX,
    _TAG_SIZE,
    _ZERO_NONCE,
    CHUNK_SIZE,
    ENC_CHUNK_SIZE,
    INTRO,
    _b64encode,
    _chunk_nonce,
    _header_mac,
    _hkdf,
    _x25519_wrap_key,
)
from sealedrec.age.errors import AgeError, AgeKeyError
from sealedrec.age.keys import format_recipient


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


class SegmentSealer:
    """Many complete age files under one file key and one header: the journal's segments
    of one call, sealed with a single X25519 exchange per recipient instead of one per
    segment.

    Why this is sound (age v1, c2sp.org/age): a file's payload key is
    ``HKDF-SHA-256(ikm=file key, salt=nonce, info="payload")`` with a fresh random
    16-byte ``nonce`` written after the header. Every segment gets its own nonce, so
    each has its own payload key, pseudo-random and independent of the others (HKDF
    keyed by the same secret file key, with distinct salts); the STREAM chunk nonces
    (counter, final flag) then never repeat under one ChaCha20-Poly1305 key. Two
    segments share a payload key only if two 128-bit random nonces collide (about
    2**-64 after 2**32 segments). The header, identical in every segment, carries only
    the file key wrapped to the recipients and a MAC keyed by it: it reveals nothing
    more than one header does, and links the segments of one call, which sit in the
    same journal file anyway. Each segment stays a standard age file (``age -d`` opens
    it on its own); a stolen file key opens one call, as the call's ``stream.age``
    (which holds the whole call under one file key) already does.

    The file key lives in this object only (RAM, never written); :meth:`forget` drops
    it at the end of the call, after which :meth:`seal` refuses.
    """

    def __init__(
        self,
        recipients: Sequence[X25519PublicKey],
        *,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if not recipients:
            raise AgeError("age: at least one recipient is needed to encrypt")
        self._rng = rng
        self._file_key: bytes | None = rng(_FILE_KEY_SIZE)
        self.header = _build_header(self._file_key, recipients, rng)

    def seal(self, data: bytes | bytearray | memoryview) -> bytes:
        """``data`` as one complete age file: the shared header, a fresh payload nonce
        (hence a fresh payload key) and the STREAM chunks."""
        if self._file_key is None:
            raise AgeError("age: SegmentSealer used after forget() (the call has ended)")
        nonce = self._rng(_NONCE_SIZE)
        aead = ChaCha20Poly1305(_hkdf(self._file_key, nonce, b"payload"))
        view = memoryview(data).cast("B")
        last = max(0, (len(view) - 1) // CHUNK_SIZE)  # an empty file is one empty final chunk
        parts = [self.header, nonce]
        for index in range(last + 1):
            chunk = view[index * CHUNK_SIZE : (index + 1) * CHUNK_SIZE]
            parts.append(aead.encrypt(_chunk_nonce(index, index == last), chunk, None))
        return b"".join(parts)

    def forget(self) -> None:
        """Drop the file key (the end of the call). Idempotent."""
        self._file_key = None


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
