"""Which settings the boot partition may change, and the head office's signature on them.

The FAT boot partition can be edited by anyone holding the SD card. So after the first
provisioning (trust on first use: the installer's card is trusted) the settings that
could redirect or decrypt recordings change from the boot partition only through a
``linetap.toml`` the head office signed for this device. The signature file, the
settings key file and the signed message are the format both ends share
(:mod:`sealedrec.settings`); this module holds the device's side: which settings are
security settings, and what an unsigned file may still change.

An unsigned ``linetap.toml`` with ``linetap-reconfigure`` still applies every other
setting; each security setting it would change is kept as installed, one line each.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from firmware.config import parse_config
from firmware.errors import ConfigError
from sealedrec.settings import (
    PINNED_PUB,
    SETTINGS_PUB,
    SIGNATURE_SUFFIX,
    SettingsRefused,
    key_id,
    parse_public_key,
    signature_document,
    verify_signed,
)

if TYPE_CHECKING:
    from firmware.config import LinetapConfig

# The shared format, named here for the device's callers (provision, tests).
__all__ = [
    "PINNED_PUB",
    "SECURITY_KEYS",
    "SETTINGS_PUB",
    "SIGNATURE_SUFFIX",
    "SIGN_HINT",
    "SettingsRefused",
    "changed_security_keys",
    "key_id",
    "key_name",
    "parse_public_key",
    "pinned_path",
    "signature_document",
    "toml_dumps",
    "unsigned_settings",
    "verify_signed",
]

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


def key_name(path: tuple[str, ...]) -> str:
    return ".".join(path)


def pinned_path(cfg: LinetapConfig) -> Path:
    return cfg.storage.data_dir / "keys" / PINNED_PUB


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
