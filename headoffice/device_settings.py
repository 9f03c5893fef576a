"""Signed device settings: what lets a unit's security settings change from its SD card.

A provisioned unit applies a ``linetap.toml`` from its boot partition only in part unless
the head office signed it (firmware/tools/_boot_settings.py has the format and the list
of security settings). Under the office ``root``::

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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from firmware.tools import _boot_settings as bs
from runtime.process import EXIT_OK
from sealedrec.durable import replace_file, write_new_file
from sealedrec.errors import LinetapError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

KEY = Path("keys") / "settings-signing.key"
PUB = Path("keys") / "settings-signing.pub"
COUNTERS = Path("device-settings")


class SettingsSigningError(LinetapError, ValueError):
    """The settings cannot be signed (bad config, wrong device, unusable key)."""


def ensure_settings_key(root: Path) -> tuple[Ed25519PrivateKey, bool]:
    """The office's settings-signing key, made (0600, with its .pub) if missing."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from sealedrec.keyfiles import private_key_pem, read_private_key

    key_path, pub_path = root / KEY, root / PUB
    if not key_path.exists():
        key_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = Ed25519PrivateKey.generate()
        write_new_file(key_path, private_key_pem(key), 0o600)
        replace_file(pub_path, bs.public_key_line(key.public_key()).encode(), 0o644)
        return key, True
    loaded = read_private_key(key_path, setting="settings key", error=SettingsSigningError)
    if not isinstance(loaded, Ed25519PrivateKey):
        raise SettingsSigningError(f"{key_path}: not an Ed25519 key; move it away and run again")
    line = bs.public_key_line(loaded.public_key()).encode()
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


def sign_settings(root: Path, device_id: str, config: bytes, *, source: Path) -> dict[str, Any]:
    """Check ``config`` and sign it for ``device_id``; the ``linetap.toml.sig`` document."""
    from firmware.config import parse_config

    try:
        cfg = parse_config(config.decode("utf-8"), str(source))
    except UnicodeDecodeError as exc:
        raise SettingsSigningError(f"{source}: not UTF-8 text ({exc}); save it as UTF-8") from None
    if cfg.device_id != device_id:
        raise SettingsSigningError(
            f"{source}: device_id is {cfg.device_id!r}, but the settings are for {device_id!r};"
            " set device_id in the file or give the right --device"
        )
    key, _created = ensure_settings_key(root)
    record = root / COUNTERS / f"{device_id}.json"
    counter = _next_counter(record)
    doc = bs.signature_document(key=key, device_id=device_id, counter=counter, config=config)
    record.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    replace_file(
        record,
        (
            json.dumps(
                {
                    "counter": counter,
                    "config_sha256": doc["config_sha256"],
                    "signed_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                },
                indent=2,
            )
            + "\n"
        ).encode(),
        0o600,
    )
    return doc


def cmd_settings_key(args: argparse.Namespace) -> int:
    key, created = ensure_settings_key(args.root)
    pub = args.root / PUB
    print(
        f"settings key {args.root / KEY} ({'created' if created else 'exists'}), key id"
        f" {bs.key_id(key.public_key())}"
    )
    print(f"public key {pub}: put it on each new unit's card as {bs.SETTINGS_PUB}")
    return EXIT_OK


def cmd_sign_settings(args: argparse.Namespace) -> int:
    try:
        config = args.config.read_bytes()
    except OSError as exc:
        raise SettingsSigningError(f"{args.config}: cannot read ({exc.strerror})") from None
    doc = sign_settings(args.root, args.device, config, source=args.config)
    out: Path = args.output or args.config.with_name(args.config.name + bs.SIGNATURE_SUFFIX)
    replace_file(out, (json.dumps(doc, indent=2) + "\n").encode(), 0o644)
    print(
        f"signed {args.config} for {args.device} (counter {doc['counter']}, key id"
        f" {doc['key_id']}): {out}"
    )
    print(
        "on the unit's boot partition: linetap.toml (this file, unchanged), linetap.toml.sig"
        " and an empty linetap-reconfigure; then reboot it"
    )
    print(
        f"the unit must have been provisioned with {args.root / PUB} on its card as"
        f" {bs.SETTINGS_PUB}"
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
        help="sign a device's linetap.toml so it may change security settings from the card",
    )
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--device", required=True, help="the device id the settings are for")
    p.add_argument("--config", type=Path, required=True, help="the new linetap.toml")
    p.add_argument("-o", "--output", type=Path, help="the signature file (default: CONFIG.sig)")
    p.set_defaults(func=cmd_sign_settings)
