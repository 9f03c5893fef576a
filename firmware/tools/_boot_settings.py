"""Which settings the boot partition may change, and the head office's signature on them.

The FAT boot partition can be edited by anyone holding the SD card. So after the first
provisioning (trust on first use: the installer's card is trusted) the settings that
could redirect or decrypt recordings change from the boot partition only through a
``linetap.toml`` the head office signed for this device:

- ``linetap-office-settings.pub`` (boot partition, read at first provisioning only): the
  office's Ed25519 settings-signing public key, one line of base64 (the raw 32 bytes), as
  ``linetap-office settings-key`` prints it. It is pinned as
  ``storage.data_dir/keys/office-settings.pub`` (0644) and never taken from the card again.
- ``linetap.toml.sig`` (boot partition, beside ``linetap.toml``), JSON::

      {"format": "linetap-settings-signature-v1", "key_id": "<16 hex>",
       "device_id": "shop-12", "counter": 1767225600, "config_sha256": "<hex>",
       "signature": "<base64 Ed25519 signature, 64 bytes>"}

  The signature is over ``settings_message()``::

      b"linetap device settings v1\\n" + device_id + b"\\n" + decimal counter + b"\\n"
      + the exact bytes of linetap.toml

  (a device id has no newline and the counter is digits: the message is unambiguous).
  ``device_id`` binds it to one unit; ``counter`` must be greater than the last one the
  unit applied (kept in ``provisioned.json`` as ``settings_counter``), so an older signed
  file cannot be replayed to roll settings back. ``key_id`` is the first 16 hex digits of
  the SHA-256 of the raw public key.

An unsigned ``linetap.toml`` with ``linetap-reconfigure`` still applies every other
setting; each security setting it would change is kept as installed, one line each.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from firmware.config import parse_config
from firmware.errors import ConfigError, LinetapError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from firmware.config import LinetapConfig

SETTINGS_PUB = "linetap-office-settings.pub"  # boot partition, first provisioning only
PINNED_PUB = "office-settings.pub"  # storage.data_dir/keys/
SIGNATURE_SUFFIX = ".sig"  # linetap.toml.sig
SIGNATURE_FORMAT = "linetap-settings-signature-v1"
DOMAIN = b"linetap device settings v1\n"
SIGN_HINT = (
    "have the head office sign the file for this device ('linetap-office sign-settings')"
    " and put it beside linetap.toml as linetap.toml.sig"
)

# Settings an unsigned linetap.toml on the boot partition may not change once the unit is
# provisioned: each could redirect recordings, decrypt them, put plain audio on the card,
# or unbind the signature checks. Everything else (line names and pins, timings, levels,
# codec, upload tuning, …) is harmless and applied without a signature.
SECURITY_KEYS: dict[tuple[str, ...], str] = {
    ("device_id",): "the identity signed settings are bound to (and the certificate's name)",
    ("sealing", "recipients"): "an extra age key decrypts every recording sealed to it",
    ("sealing", "device_key"): "a planted signing key would sign manifests as this unit",
    ("upload", "host"): "recordings would go to another broker",
    ("upload", "port"): "recordings would go to another broker (service)",
    ("upload", "tls"): "off: recordings and the client identity go over plain TCP",
    ("upload", "ca_file"): "a planted CA would accept a rogue broker",
    ("upload", "cert_file"): "the client identity the broker sees",
    ("upload", "key_file"): "a planted TLS key would be this unit's identity",
    ("storage", "format"): '"wav" puts plain audio on the card (promise 3)',
    ("storage", "data_dir"): "where keys, the pinned settings key, the chain and outbox live",
    ("storage", "out_dir"): 'where plain files go when format = "wav"',
    ("storage", "runtime_dir"): "must stay on tmpfs: it holds plain state",
    ("development", "allow_plain_audio"): 'lets storage.format = "wav" pass validation',
    ("telephony", "mask_dtmf"): "off: card numbers keyed in reach the recordings (PCI DSS)",
    ("telephony", "mask_after_n"): "unmasks the first N keyed digits (PCI DSS)",
}


class SettingsRefused(LinetapError, ValueError):
    """A settings file or key from the boot partition is not accepted (one line: why, fix)."""


def key_name(path: tuple[str, ...]) -> str:
    return ".".join(path)


# -- the office's settings-signing key ---------------------------------------------------


def key_id(key: Ed25519PublicKey) -> str:
    from sealedrec.keys import key_id as _key_id

    return _key_id(key)


def public_key_line(key: Ed25519PublicKey) -> str:
    from sealedrec.keys import public_key_b64

    return public_key_b64(key) + "\n"


def parse_public_key(data: bytes, where: Path) -> Ed25519PublicKey:
    """A settings public key file: one line, base64 of the raw 32-byte Ed25519 key."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        raw = base64.b64decode(data.decode("ascii").strip(), validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (UnicodeDecodeError, binascii.Error, ValueError):
        raise SettingsRefused(
            f"{where}: not an Ed25519 public key (one line of base64); copy the file"
            " 'linetap-office settings-key' names (keys/settings-signing.pub) unchanged"
        ) from None


def pinned_path(cfg: LinetapConfig) -> Path:
    return cfg.storage.data_dir / "keys" / PINNED_PUB


# -- the signature -------------------------------------------------------------------------


def settings_message(device_id: str, counter: int, config: bytes) -> bytes:
    """The bytes the office signs: domain, device id, counter, the exact config file."""
    if "\n" in device_id or counter < 0:
        raise ValueError("device id with a newline or negative counter")
    return DOMAIN + device_id.encode() + b"\n" + str(counter).encode() + b"\n" + config


def signature_document(*, key: Any, device_id: str, counter: int, config: bytes) -> dict[str, Any]:
    """The ``linetap.toml.sig`` document (``key``: the office's Ed25519 private key)."""
    public = key.public_key()
    signature = key.sign(settings_message(device_id, counter, config))
    return {
        "format": SIGNATURE_FORMAT,
        "key_id": key_id(public),
        "device_id": device_id,
        "counter": counter,
        "config_sha256": hashlib.sha256(config).hexdigest(),
        "signature": base64.b64encode(signature).decode(),
    }


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
    from cryptography.exceptions import InvalidSignature

    if pinned is None:
        raise SettingsRefused(
            f"{sig_name}: no office settings key is pinned on this unit ({pinned_at}), so no"
            " signed settings can be checked; remove the .sig to apply the harmless settings"
            f" only, or re-provision from a console with {SETTINGS_PUB} on the card"
            " ('linetap provision --first-boot --force')"
        )
    try:
        doc = json.loads(sig_data)
    except (UnicodeDecodeError, ValueError):
        doc = None
    fields = {"format", "key_id", "device_id", "counter", "config_sha256", "signature"}
    if (
        not isinstance(doc, dict)
        or set(doc) != fields
        or doc["format"] != SIGNATURE_FORMAT
        or not isinstance(doc["counter"], int)
        or isinstance(doc["counter"], bool)
        or not all(isinstance(doc[k], str) for k in fields - {"counter"})
    ):
        raise SettingsRefused(
            f"{sig_name}: not a {SIGNATURE_FORMAT} file; copy the .sig"
            " 'linetap-office sign-settings' wrote, unchanged"
        )
    if doc["key_id"] != key_id(pinned):
        raise SettingsRefused(
            f"{sig_name}: signed with key {doc['key_id']}, but this unit trusts"
            f" {key_id(pinned)} ({pinned_at}); sign with the office settings key this unit"
            " was provisioned with"
        )
    if doc["device_id"] != device_id:
        raise SettingsRefused(
            f"{sig_name}: signed for device {doc['device_id']!r}, this unit is {device_id!r};"
            f" sign the settings for {device_id} ('linetap-office sign-settings --device"
            f" {device_id}')"
        )
    try:
        signature = base64.b64decode(doc["signature"], validate=True)
        pinned.verify(signature, settings_message(device_id, doc["counter"], config))
    except (binascii.Error, ValueError, InvalidSignature):
        raise SettingsRefused(
            f"{sig_name}: the signature does not match linetap.toml (changed after signing?);"
            " put the linetap.toml and .sig the office signed together on the card, unchanged"
        ) from None
    if doc["counter"] <= last_counter:
        raise SettingsRefused(
            f"{sig_name}: counter {doc['counter']} is not newer than the settings this unit"
            f" applied last (counter {last_counter}): an older signed file is not applied"
            " again; have the office sign the settings anew"
        )
    return int(doc["counter"])


# -- unsigned settings: the harmless part ---------------------------------------------------


def _value(cfg: LinetapConfig, path: tuple[str, ...]) -> Any:
    obj: Any = cfg
    for part in path:
        obj = getattr(obj, part)
    return obj


def changed_security_keys(installed: LinetapConfig, new: LinetapConfig) -> list[tuple[str, ...]]:
    """The security settings whose effective value ``new`` changes."""
    return [p for p in SECURITY_KEYS if _value(installed, p) != _value(new, p)]


def unsigned_settings(
    installed_text: str, new_data: bytes, *, source: Path
) -> tuple[bytes, list[tuple[str, ...]]]:
    """The config an unsigned ``new_data`` may install: its harmless settings with every
    security setting as installed; (config bytes, the security keys it asked to change).

    ``new_data`` is kept byte for byte when it changes no security setting; otherwise the
    merged settings are written out as TOML (comments do not survive)."""
    new_text = new_data.decode("utf-8")
    installed = parse_config(installed_text, "installed config")
    new = parse_config(new_text, str(source))
    ignored = changed_security_keys(installed, new)
    if not ignored:
        return new_data, []
    old_doc = tomllib.loads(installed_text)
    doc = tomllib.loads(new_text)
    for path in ignored:
        _put(doc, path, _get(old_doc, path))
    names = ", ".join(key_name(p) for p in ignored)
    text = (
        f"# Written by 'linetap provision' from {source} (unsigned): these security\n"
        f"# settings were kept as installed: {names}\n\n" + toml_dumps(doc)
    )
    if tomllib.loads(text) != doc:  # a value the small writer cannot express
        raise SettingsRefused(
            f"{source}: cannot merge the unsigned settings (unusual string characters); {SIGN_HINT}"
        )
    try:
        merged = parse_config(text, str(source))
    except ConfigError as exc:
        raise SettingsRefused(
            f"{source}: without its security settings the file is not valid"
            f" ({exc.problems[0]}); {SIGN_HINT}"
        ) from None
    if changed_security_keys(installed, merged):  # belt and braces
        raise SettingsRefused(f"{source}: security settings would change; {SIGN_HINT}")
    if merged == installed:  # nothing harmless changed either: keep the file as it is
        return installed_text.encode(), ignored
    return text.encode(), ignored


_MISSING = object()


def _get(doc: dict[str, Any], path: tuple[str, ...]) -> Any:
    obj: Any = doc
    for part in path:
        if not isinstance(obj, dict) or part not in obj:
            return _MISSING
        obj = obj[part]
    return obj


def _put(doc: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    obj = doc
    for part in path[:-1]:
        nxt = obj.setdefault(part, {})
        if not isinstance(nxt, dict):  # validation guarantees tables here
            raise SettingsRefused(f"{key_name(path)}: not a table; {SIGN_HINT}")
        obj = nxt
    if value is _MISSING:
        obj.pop(path[-1], None)  # installed: the default
    else:
        obj[path[-1]] = value


# -- a small TOML writer (the config's shapes only: no dates, no inline tables) -------------

_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(k: str) -> str:
    return k if _BARE.match(k) else json.dumps(k)


def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list) and not any(isinstance(x, dict) for x in v):
        return "[" + ", ".join(_scalar(x) for x in v) + "]"
    raise SettingsRefused(f"cannot write {type(v).__name__} values; {SIGN_HINT}")


def _is_table_array(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def toml_dumps(doc: dict[str, Any]) -> str:
    out: list[str] = []

    def emit(table: dict[str, Any], path: tuple[str, ...], header: str | None) -> None:
        if header is not None:
            if out:
                out.append("")
            out.append(header)
        for k, v in table.items():
            if not isinstance(v, dict) and not _is_table_array(v):
                out.append(f"{_key(k)} = {_scalar(v)}")
        for k, v in table.items():
            if isinstance(v, dict):
                sub = (*path, k)
                emit(v, sub, "[" + ".".join(_key(p) for p in sub) + "]")
        for k, v in table.items():
            if _is_table_array(v):
                sub = (*path, k)
                for item in v:
                    emit(item, sub, "[[" + ".".join(_key(p) for p in sub) + "]]")

    emit(doc, (), None)
    return "\n".join(out).strip("\n") + "\n"
