"""Signed device settings: the format the head office signs and a unit checks.

The FAT boot partition can be edited by anyone holding the SD card, so after the first
provisioning a unit changes its security settings from the card only through a
``linetap.toml`` the head office signed for it. Both ends share this module: the office
signs (``linetap-office sign-settings``), the unit verifies (``linetap provision``; which
settings count as security settings is the device's business, in
``firmware/tools/_boot_settings.py``).

- ``linetap-office-settings.pub`` (boot partition, read at first provisioning only): the
  office's Ed25519 settings-signing public key, one line of base64 (the raw 32 bytes), as
  ``linetap-office settings-key`` prints it. It is pinned as
  ``storage.data_dir/keys/office-settings.pub`` (0644) and never taken from the card again.
- ``linetap.toml.sig`` (boot partition, beside ``linetap.toml``), JSON::

      {"format": "linetap-settings-signature-v1", "key_id": "<16 hex>",
       "device_id": "shop-12", "counter": 1767225600, "config_sha256": "<hex>",
       "signature": "<base64 Ed25519 signature, 64 bytes>"}

  The signature is over :func:`settings_message`::

      b"linetap device settings v1\\n" + device_id + b"\\n" + decimal counter + b"\\n"
      + the exact bytes of linetap.toml

  (a device id has no newline and the counter is digits: the message is unambiguous).
  ``device_id`` binds it to one unit; ``counter`` must be greater than the last one the
  unit applied, so an older signed file cannot be replayed to roll settings back.
  ``key_id`` is the first 16 hex digits of the SHA-256 of the raw public key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from sealedrec.errors import LinetapError
from sealedrec.keys import key_id, public_key_b64

__all__ = [
    "DOMAIN",
    "PINNED_PUB",
    "SETTINGS_PUB",
    "SIGNATURE_FORMAT",
    "SIGNATURE_SUFFIX",
    "SettingsRefused",
    "SettingsSignature",
    "key_id",
    "parse_public_key",
    "public_key_line",
    "settings_message",
    "sign_settings_file",
    "signature_document",
    "verify_signed",
]

SETTINGS_PUB = "linetap-office-settings.pub"  # boot partition, first provisioning only
PINNED_PUB = "office-settings.pub"  # storage.data_dir/keys/
SIGNATURE_SUFFIX = ".sig"  # linetap.toml.sig
SIGNATURE_FORMAT = "linetap-settings-signature-v1"
DOMAIN = b"linetap device settings v1\n"
_FIELDS = frozenset({"format", "key_id", "device_id", "counter", "config_sha256", "signature"})


class SettingsRefused(LinetapError, ValueError):
    """A settings file or key from the boot partition is not accepted (one line: why, fix)."""


# -- the office's settings-signing key ---------------------------------------------------


def public_key_line(key: Ed25519PublicKey) -> str:
    """The settings public key file's content: base64 of the raw key, one line."""
    return public_key_b64(key) + "\n"


def parse_public_key(data: bytes, where: Path) -> Ed25519PublicKey:
    """A settings public key file: one line, base64 of the raw 32-byte Ed25519 key."""
    try:
        raw = base64.b64decode(data.decode("ascii").strip(), validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (UnicodeDecodeError, binascii.Error, ValueError):
        raise SettingsRefused(
            f"{where}: not an Ed25519 public key (one line of base64); copy the file"
            " 'linetap-office settings-key' names (keys/settings-signing.pub) unchanged"
        ) from None


# -- the signature -------------------------------------------------------------------------


def settings_message(device_id: str, counter: int, config: bytes) -> bytes:
    """The bytes the office signs: domain, device id, counter, the exact config file."""
    if "\n" in device_id or counter < 0:
        raise ValueError("device id with a newline or negative counter")
    return DOMAIN + device_id.encode() + b"\n" + str(counter).encode() + b"\n" + config


@dataclass(frozen=True, slots=True)
class SettingsSignature:
    """One ``linetap.toml.sig`` file (``signature``: base64 of the 64 signature bytes)."""

    key_id: str
    device_id: str
    counter: int
    config_sha256: str
    signature: str

    def as_dict(self) -> dict[str, str | int]:
        """The file's JSON object, keys in the order the file has always had."""
        return {
            "format": SIGNATURE_FORMAT,
            "key_id": self.key_id,
            "device_id": self.device_id,
            "counter": self.counter,
            "config_sha256": self.config_sha256,
            "signature": self.signature,
        }

    def to_json(self) -> bytes:
        return (json.dumps(self.as_dict(), indent=2) + "\n").encode()

    @classmethod
    def parse(cls, data: bytes, where: Path) -> SettingsSignature:
        """A signature file as the office wrote it, or :class:`SettingsRefused`."""
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, ValueError):
            doc = None
        if (
            not isinstance(doc, dict)
            or set(doc) != _FIELDS
            or doc["format"] != SIGNATURE_FORMAT
            or not isinstance(doc["counter"], int)
            or isinstance(doc["counter"], bool)
            or not all(isinstance(doc[k], str) for k in _FIELDS - {"counter"})
        ):
            raise SettingsRefused(
                f"{where}: not a {SIGNATURE_FORMAT} file; copy the .sig"
                " 'linetap-office sign-settings' wrote, unchanged"
            )
        return cls(
            doc["key_id"], doc["device_id"], doc["counter"], doc["config_sha256"], doc["signature"]
        )


def sign_settings_file(
    *, key: Ed25519PrivateKey, device_id: str, counter: int, config: bytes
) -> SettingsSignature:
    """The office's signature on ``config`` for ``device_id`` at ``counter``."""
    signature = key.sign(settings_message(device_id, counter, config))
    return SettingsSignature(
        key_id=key_id(key.public_key()),
        device_id=device_id,
        counter=counter,
        config_sha256=hashlib.sha256(config).hexdigest(),
        signature=base64.b64encode(signature).decode(),
    )


def signature_document(
    *, key: Ed25519PrivateKey, device_id: str, counter: int, config: bytes
) -> dict[str, str | int]:
    """The ``linetap.toml.sig`` document as a JSON object (see :class:`SettingsSignature`)."""
    return sign_settings_file(
        key=key, device_id=device_id, counter=counter, config=config
    ).as_dict()


def verify_signed(
    config: bytes,
    sig_data: bytes,
    *,
    sig_name: Path,
    pinned: Ed25519PublicKey | None,
    pinned_at: Path,
    device_id: str,
    last_counter: int,
) -> int:
    """Check ``linetap.toml.sig`` for ``config``; returns its counter or raises
    :class:`SettingsRefused` with one line naming the fix."""
    if pinned is None:
        raise SettingsRefused(
            f"{sig_name}: no office settings key is pinned on this unit ({pinned_at}), so no"
            " signed settings can be checked; remove the .sig to apply the harmless settings"
            f" only, or re-provision from a console with {SETTINGS_PUB} on the card"
            " ('linetap provision --first-boot --force')"
        )
    sig = SettingsSignature.parse(sig_data, sig_name)
    if sig.key_id != key_id(pinned):
        raise SettingsRefused(
            f"{sig_name}: signed with key {sig.key_id}, but this unit trusts"
            f" {key_id(pinned)} ({pinned_at}); sign with the office settings key this unit"
            " was provisioned with"
        )
    if sig.device_id != device_id:
        raise SettingsRefused(
            f"{sig_name}: signed for device {sig.device_id!r}, this unit is {device_id!r};"
            f" sign the settings for {device_id} ('linetap-office sign-settings --device"
            f" {device_id}')"
        )
    try:
        signature = base64.b64decode(sig.signature, validate=True)
        pinned.verify(signature, settings_message(device_id, sig.counter, config))
    except (binascii.Error, ValueError, InvalidSignature):
        raise SettingsRefused(
            f"{sig_name}: the signature does not match linetap.toml (changed after signing?);"
            " put the linetap.toml and .sig the office signed together on the card, unchanged"
        ) from None
    if sig.counter <= last_counter:
        raise SettingsRefused(
            f"{sig_name}: counter {sig.counter} is not newer than the settings this unit"
            f" applied last (counter {last_counter}): an older signed file is not applied"
            " again; have the office sign the settings anew"
        )
    return sig.counter
