"""The device signing key (Ed25519): made once at provisioning, mode 0600, never leaves.

It signs every manifest, so the head office can tell a recording really came from this
appliance. It decrypts nothing: recordings are sealed to the office's keys.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from sealedrec.errors import LinetapError
from sealedrec.keyfiles import read_private_key, write_private_key


class DeviceKeyError(LinetapError, OSError):
    """The device key is missing, unreadable or too widely readable."""


def public_key_b64(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def public_key_from_b64(text: str) -> Ed25519PublicKey:
    try:
        raw = base64.b64decode(text, validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise DeviceKeyError(f"device public key {text[:12]!r}…: not a base64 Ed25519 key") from exc


def key_id(key: Ed25519PublicKey) -> str:
    """Short, stable name of a public key (first 16 hex digits of its SHA-256)."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def create_device_key(path: Path) -> Ed25519PrivateKey:
    """Make a new key at ``path`` (0600); refuses to replace an existing one."""
    key = Ed25519PrivateKey.generate()
    try:
        write_private_key(path, key)
    except FileExistsError:
        raise DeviceKeyError(
            f"{path}: a device key already exists; a new one would break the signature chain"
        ) from None
    return key


def load_device_key(path: Path) -> Ed25519PrivateKey:
    key = read_private_key(
        path,
        setting="sealing.device_key",
        error=DeviceKeyError,
        if_missing="create it once with 'linetap keys init'",
    )
    if not isinstance(key, Ed25519PrivateKey):
        raise DeviceKeyError(f"sealing.device_key {path}: not an Ed25519 key")
    return key
