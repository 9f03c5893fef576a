"""``linetap provision``: the device's keys, its certificate, and first-boot setup.

::

    linetap provision init [-c CONFIG]
    linetap provision install-cert CERT [--ca CA] [-c CONFIG]
    linetap provision --first-boot [--boot-dir /boot/firmware] [--force] [-c CONFIG]
    linetap provision first-boot ...            (the same as --first-boot)

``init`` makes the Ed25519 signing key and the TLS key (once; later runs reuse them) and
a certificate request, and prints what the head office needs. ``install-cert`` checks the
certificate the office returns (this device's TLS key, its device id, signed by the CA,
not expired) before it replaces anything. ``--first-boot`` (``linetap-firstboot.service``)
applies ``BOOT_DIR/linetap.toml`` — a normal config file the installer edits — as the
device config, makes the keys and the request, copies the request to
``BOOT_DIR/linetap-request/`` for the installer to take to the head office, installs
``BOOT_DIR/linetap-cert/device.crt`` (+ ``ca.crt``) when present, and renames the boot
file to ``linetap.toml.applied``.

Crash safety of ``--first-boot``: every file is written as a temp file in its final
directory (same filesystem), fsynced and renamed into place; keys that already exist are
reused, never replaced. ``storage.data_dir/provisioned.json`` is written last (the
recorder and uploader units start only once it exists): without it the device is not
provisioned and the next run completes the job (a crash at any step leaves only whole
files, each either old or new); with it the device is left alone (a newer certificate
in ``linetap-cert/`` is still installed) unless ``--force``.

Once provisioned, a new ``BOOT_DIR/linetap.toml`` is applied only with an empty
``BOOT_DIR/linetap-reconfigure`` beside it, and then (the card is in anyone's hands) only
its harmless settings unless ``linetap.toml.sig`` shows the head office signed it for
this unit: see ``firmware/tools/_boot_settings.py`` (the security settings, the signature
format, the office settings key pinned at first provisioning from
``BOOT_DIR/linetap-office-settings.pub``). An installed CA is never replaced from the
card. A reconfigure stages, validates and loads everything before it commits anything;
the old marker is replaced, never removed first, so a failure leaves the unit as it was.

Files land where the config says (``sealing.device_key``, ``upload.key_file``,
``upload.cert_file``, ``upload.ca_file``), else under ``storage.data_dir/keys/``. Run as
root, new key files and directories take the owner of the directory they are made in, so
the daemons' user (owner of the data partition) can read them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from firmware.cli_options import config_arg
from firmware.config import load_config
from firmware.errors import LinetapError
from firmware.tools._firstboot import BOOT_CONFIG, CERT_DIR, MARKER, FirstBoot, first_boot
from firmware.tools._provision_files import DevicePaths, ProvisionError, say
from firmware.tools._provision_keys import (
    ensure_keys,
    existing_tls_key,
    install_certificate,
    office_steps,
    unset_tls_keys,
)
from runtime.process import EXIT_CONFIG, EXIT_OK

# The command, and the boot partition and marker names the systemd units are written
# against (linetap-firstboot.service's conditions, the daemons' ConditionPathExists).
__all__ = [
    "BOOT_CONFIG",
    "CERT_DIR",
    "DEFAULT_BOOT_DIR",
    "MARKER",
    "cmd_init",
    "cmd_install_cert",
    "cmd_provision",
    "register",
]

DEFAULT_BOOT_DIR = Path("/boot/firmware")


def cmd_init(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    paths = DevicePaths.of(cfg)
    keys = ensure_keys(paths)
    say(
        f"signing key {paths.signing_key} ({'created' if keys.signing_created else 'exists'}),"
        f" key id {keys.signing_id}"
    )
    say(f"TLS key {paths.tls_key} ({'created' if keys.tls_created else 'exists'})")
    say(f"certificate request {paths.csr}")
    say(f"signing public key {keys.signing_b64}")
    say("give the head office the request and the signing public key;")
    for line in office_steps(paths, keys, str(paths.csr)):
        say(line)
    say(f"then: linetap provision install-cert {paths.device_id}.crt --ca ca.crt")
    return EXIT_OK


def cmd_install_cert(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    paths = DevicePaths.of(cfg)
    tls_key = existing_tls_key(paths)
    cert, warnings, changed = install_certificate(paths, tls_key, args.cert, args.ca)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    state = "installed" if changed else "already installed"
    say(
        f"{state}: certificate for {paths.device_id} (serial {cert.serial_number:x}, valid"
        f" until {cert.not_valid_after_utc:%Y-%m-%d}) at {paths.cert}; CA at {paths.ca}"
    )
    for line in unset_tls_keys(cfg, paths):
        say(f"note: the uploader reads only configured paths: add under [upload]: {line}")
    if changed:
        # Without a certificate the uploader exits (status 2) and systemd leaves it stopped.
        say("then: systemctl restart linetap-uploader.service (it connects with the new one)")
    return EXIT_OK


def cmd_provision(args: argparse.Namespace) -> int:
    action = "first-boot" if args.first_boot else args.action
    if args.first_boot and args.action not in (None, "first-boot"):
        return _usage(f"--first-boot and {args.action!r} do not go together")
    if action is None:
        return _usage("say what to do: init, install-cert CERT, or --first-boot")
    if action == "install-cert" and args.cert is None:
        return _usage("install-cert needs the certificate file: install-cert CERT [--ca CA]")
    if action != "install-cert" and (args.cert is not None or args.ca is not None):
        return _usage("a certificate file and --ca go with install-cert only")
    if action != "first-boot" and (args.force or args.boot_dir is not None):
        return _usage("--force and --boot-dir go with --first-boot only")
    try:
        if action == "init":
            return cmd_init(args)
        if action == "install-cert":
            return cmd_install_cert(args)
        return first_boot(
            FirstBoot.of(args.boot_dir or DEFAULT_BOOT_DIR, args.config), force=args.force
        )
    except LinetapError:
        raise
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        raise ProvisionError(f"{where}{exc.strerror or exc}") from None


def _usage(message: str) -> int:
    print(f"linetap provision: {message}", file=sys.stderr)
    return EXIT_CONFIG


_DESCRIPTION = """\
  init                      make the signing key, the TLS key (once) and the certificate
                            request; prints what the head office needs
  install-cert CERT --ca CA check the office's certificate (this device's key and id,
                            signed by CA, not expired), then install it
  --first-boot (first-boot) apply BOOT_DIR/linetap.toml as the device config, make the
                            keys, copy the request to BOOT_DIR/linetap-request/, install
                            BOOT_DIR/linetap-cert/device.crt (+ ca.crt) if there, rename
                            the file to linetap.toml.applied; a provisioned device is left
                            alone unless --force (a new certificate is still installed)
                            or BOOT_DIR/linetap-reconfigure: then its harmless settings are
                            applied, security settings only with linetap.toml.sig signed by
                            the office ('linetap-office sign-settings'); an installed CA is
                            never replaced from BOOT_DIR
"""


def register(p: argparse.ArgumentParser) -> None:
    """``linetap provision``'s options (its name and help are in :data:`firmware.cli.COMMANDS`)."""
    p.description = _DESCRIPTION
    p.epilog = (
        "exit status: 0 done; 1 failed (e.g. a certificate that does not fit this"
        " device; nothing was replaced); 2 config or usage error"
    )
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    config_arg(p)
    p.add_argument("action", nargs="?", choices=["init", "install-cert", "first-boot"])
    p.add_argument("cert", nargs="?", type=Path, help="install-cert: the device certificate")
    p.add_argument("--ca", type=Path, help="install-cert: the head office's CA certificate")
    p.add_argument(
        "--first-boot", action="store_true", help="apply BOOT_DIR/linetap.toml (the firstboot unit)"
    )
    p.add_argument(
        "--boot-dir",
        type=Path,
        help=f"boot partition for --first-boot (default {DEFAULT_BOOT_DIR})",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="--first-boot: apply the boot file even if provisioned (keys are kept)",
    )
    p.set_defaults(func=cmd_provision)
