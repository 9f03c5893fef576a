"""The device signing key (Ed25519): made once at provisioning, mode 0600, never leaves.

It signs every manifest, so the head office can tell a recording really came from this
appliance. It decrypts nothing: recordings are sealed to the office's keys.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from firmware.errors import LinetapError


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
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise DeviceKeyError(
            f"{path}: a device key already exists; a new one would break the signature chain"
        ) from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
        fh.flush()
        os.fsync(fh.fileno())
    return key


def load_device_key(path: Path) -> Ed25519PrivateKey:
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except FileNotFoundError:
        raise DeviceKeyError(
            f"sealing.device_key {path}: not found; create it once with 'linetap keys init'"
        ) from None
    except OSError as exc:
        raise DeviceKeyError(f"sealing.device_key {path}: cannot read ({exc.strerror})") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise DeviceKeyError(
            f"sealing.device_key {path}: readable by others (mode {stat.S_IMODE(mode):o}); "
            f"run 'chmod 600 {path}'"
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except ValueError as exc:
        raise DeviceKeyError(f"sealing.device_key {path}: not a PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise DeviceKeyError(f"sealing.device_key {path}: not an Ed25519 key")
    return key
