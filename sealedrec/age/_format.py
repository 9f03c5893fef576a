"""Constants of the age v1 format and the primitives shared by the writer and the reader:
strict unpadded base64, HKDF-SHA-256, the header MAC, STREAM chunk nonces and the X25519
wrap key.
"""

from __future__ import annotations

import base64
import binascii
from typing import Final

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

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
