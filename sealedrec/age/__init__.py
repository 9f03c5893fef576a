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

The package, by layer (each module imports only those above it):

- ``errors``: :class:`AgeError` and its leaves;
- ``bech32``: BIP-173 bech32, the encoding of key strings;
- ``_format``: format constants and the primitives the writer and reader share
  (strict base64, HKDF, header MAC, chunk nonces, X25519 wrap key);
- ``armor``: strict PEM armor (:func:`dearmor`);
- ``keys``: parse/format recipients and identities, load them from files, generate them;
- ``writer``: :class:`AgeWriter`, :class:`SegmentSealer` (many small files under one
  header: the journal's segments of a call) and :func:`encrypt_bytes`;
- ``reader``: :class:`AgeReader` and :func:`decrypt_bytes`.

Import the public names from ``sealedrec.age`` itself; the modules are its internals.
"""

from __future__ import annotations

from sealedrec.age._format import CHUNK_SIZE, ENC_CHUNK_SIZE, INTRO
from sealedrec.age.armor import ARMOR_BEGIN, ARMOR_END, dearmor
from sealedrec.age.bech32 import bech32_decode, bech32_encode
from sealedrec.age.errors import (
    AgeArmorError,
    AgeError,
    AgeHeaderError,
    AgeKeyError,
    AgeMacError,
    AgePayloadError,
    NoIdentityMatch,
)
from sealedrec.age.keys import (
    IDENTITY_HRP,
    RECIPIENT_HRP,
    format_identity,
    format_recipient,
    generate_identity,
    load_identities,
    load_recipients,
    parse_identity,
    parse_recipient,
)
from sealedrec.age.reader import AgeReader, decrypt_bytes
from sealedrec.age.writer import AgeWriter, SegmentSealer, encrypt_bytes

__all__ = [
    "ARMOR_BEGIN",
    "ARMOR_END",
    "CHUNK_SIZE",
    "ENC_CHUNK_SIZE",
    "IDENTITY_HRP",
    "INTRO",
    "RECIPIENT_HRP",
    "AgeArmorError",
    "AgeError",
    "AgeHeaderError",
    "AgeKeyError",
    "AgeMacError",
    "AgePayloadError",
    "AgeReader",
    "AgeWriter",
    "NoIdentityMatch",
    "SegmentSealer",
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
