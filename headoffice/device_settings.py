"""Signed device settings: what lets a unit's security settings change from its SD card.

A provisioned unit applies a ``linetap.toml`` from its boot partition only in part unless
the head office signed it (:mod:`sealedrec.settings` has the format; the device keeps the
list of security settings). The office checks only that the file is TOML naming the
device it is signed for: the unit validates it in full when it applies it, and refuses it
(keeping its installed settings) if it is not valid. Under the office ``root``::

    keys/settings-signing.key   Ed25519 settings-signing key (0600), made once
    keys/settings-signing.pub   its public key, one line of base64: goes on a new unit's
                                card as linetap-office-settings.pub (pinned at first boot)
    device-settings/{id}.json   the last counter signed for each device

::

    linetap-office settings-key  --root R
    linetap-office sign-settings --root R --device ID --config linetap.toml [-o OUT]

The counter is ``max(last + 1, seconds since 1970)``: it only grows, even if this record
is lost (a restored backup), and a unit refuses any counter not above the last it applied.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
import tomllib
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from runtime.errors import ConfigError
from runtime.process import EXIT_OK
from sealedrec.durable import replace_file, write_new_file
from sealedrec.errors import LinetapError
from sealedrec.keyfiles import private_key_pem, read_private_key
from sealedrec.settings import (
    SETTINGS_PUB,
    SIGNATURE_SUFFIX,
    SettingsSignature,
    key_id,
    public_key_line,
    sign_settings_file,
)

KEY = Path("keys") / "settings-signing.key"
PUB = Path("keys") / "settings-signing.pub"
COUNTERS = Path("device-settings")


class SettingsSigningError(LinetapError, ValueError):
    """The settings cannot be signed (bad config, wrong device, unusable key)."""


def ensure_settings_key(root: Path) -> tuple[Ed25519PrivateKey, bool]:
    """The office's settings-signing key, made (0600, with its .pub) if missing."""
    key_path, pub_path = root / KEY, root / PUB
    if not key_path.exists():
        key_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = Ed25519PrivateKey.generate()
        write_new_file(key_path, private_key_pem(key), 0o600)
        replace_file(pub_path, public_key_line(key.public_key()).encode(), 0o644)
        return key, True
    loaded = read_private_key(key_path, setting="settings key", error=SettingsSigningError)
    if not isinstance(loaded, Ed25519PrivateKey):
        raise SettingsSigningError(f"{key_path}: not an Ed25519 key; move it away and run again")
    line = public_key_line(loaded.public_key()).encode()
    if not pub_path.exists() or pub_path.read_bytes() != line:
        replace_file(pub_path, line, 0o644)
    return loaded, False


def _next_counter(record: Path) -> int:
    last = 0
    try:
        doc = json.loads(record.read_text())
        if isinstance(doc, dict) and isinstance(doc.get("counter"), int):
            last = doc["counter"]
    except (OSError, ValueError):
        pass
    return max(last + 1, int(time.time()))


def _device_id_of(config: bytes, source: Path) -> object:
    """The ``device_id`` of a config file, checked only as far as the office needs: UTF-8
    TOML. The unit validates everything else when it applies the file."""
    try:
        doc = tomllib.loads(config.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise SettingsSigningError(f"{source}: not UTF-8 text ({exc}); save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            [f"{source}: not valid TOML ({exc}); fix it ('linetap validate-config' shows where)"]
        ) from None
    return doc.get("device_id")


def sign_settings(root: Path, device_id: str, config: bytes, *, source: Path) -> SettingsSignature:
    """Sign ``config`` for ``device_id`` (its ``device_id`` must say so); the
    ``linetap.toml.sig`` it makes. The unit validates the settings when applying them."""
    named = _device_id_of(config, source)
    if named != device_id:
        raise SettingsSigningError(
            f"{source}: device_id is {named!r}, but the settings are for {device_id!r};"
            " set device_id in the file or give the right --device"
        )
    key, _created = ensure_settings_key(root)
    record = root / COUNTERS / f"{device_id}.json"
    counter = _next_counter(record)
    sig = sign_settings_file(key=key, device_id=device_id, counter=counter, config=config)
    record.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    replace_file(
        record,
        (
            json.dumps(
                {
                    "counter": counter,
                    "config_sha256": sig.config_sha256,
                    "signed_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                },
                indent=2,
            )
            + "\n"
        ).encode(),
        0o600,
    )
    return sig


def cmd_settings_key(args: argparse.Namespace) -> int:
    key, created = ensure_settings_key(args.root)
    pub = args.root / PUB
    print(
        f"settings key {args.root / KEY} ({'created' if created else 'exists'}), key id"
        f" {key_id(key.public_key())}"
    )
    print(f"public key {pub}: put it on each new unit's card as {SETTINGS_PUB}")
    return EXIT_OK


def cmd_sign_settings(args: argparse.Namespace) -> int:
    try:
        config = args.config.read_bytes()
    except OSError as exc:
        raise SettingsSigningError(f"{args.config}: cannot read ({exc.strerror})") from None
    sig = sign_settings(args.root, args.device, config, source=args.config)
    out: Path = args.output or args.config.with_name(args.config.name + SIGNATURE_SUFFIX)
    replace_file(out, sig.to_json(), 0o644)
    print(
        f"signed {args.config} for {args.device} (counter {sig.counter}, key id"
        f" {sig.key_id}): {out}"
    )
    print(
        "on the unit's boot partition: linetap.toml (this file, unchanged), linetap.toml.sig"
        " and an empty linetap-reconfigure; then reboot it"
    )
    print(
        f"the unit must have been provisioned with {args.root / PUB} on its card as {SETTINGS_PUB}"
    )
    return EXIT_OK


def add_settings_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``settings-key`` and ``sign-settings`` (one call in headoffice/cli.py)."""
    p = sub.add_parser(
        "settings-key",
        help="make (once) the key that signs device settings; prints its public key file",
    )
    p.add_argument("--root", type=Path, required=True)
    p.set_defaults(func=cmd_settings_key)

    p = sub.add_parser(
        "sign-settings",
        help="sign a device's linetap.toml so it may change security settings from the card"
        " (checked here only for its device_id; the unit validates it when applying it and"
        " keeps its settings if it is not valid: run 'linetap validate-config' on it first)",
    )
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--device", required=True, help="the device id the settings are for")
    p.add_argument("--config", type=Path, required=True, help="the new linetap.toml")
    p.add_argument("-o", "--output", type=Path, help="the signature file (default: CONFIG.sig)")
    p.set_defaults(func=cmd_sign_settings)
