"""``linetap provision --first-boot``: apply the boot partition's settings, once.

The flow the module docstring of :mod:`firmware.tools.provision` describes: under a lock
beside the device config, a first run (or ``--force``) stages the boot partition's
``linetap.toml``, makes the keys, copies the request to the card, installs a certificate
from the card, and writes the marker last; a provisioned unit is left alone, or
reconfigured from the card when ``linetap-reconfigure`` asks for it (security settings
only when the head office signed them: :mod:`firmware.tools._boot_settings`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import hashlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey

from firmware import __version__
from firmware.config import LinetapConfig, config_path, load_config, parse_config
from firmware.errors import ConfigError, LinetapError
from firmware.tools import _boot_settings as bs
from firmware.tools._provision_files import (
    DevicePaths,
    ProvisionError,
    commit,
    discard,
    install_prompts,
    make_dirs,
    read_or_none,
    remove_leftovers,
    say,
    stage,
    write_atomic,
)
from firmware.tools._provision_keys import (
    CertificateError,
    Keys,
    ensure_keys,
    existing_tls_key,
    install_certificate,
    office_steps,
    unset_tls_keys,
)
from runtime.process import EXIT_FAILURE, EXIT_OK
from sealedrec.durable import fsync_dir, rename_durably
from sealedrec.keys import load_device_key
from sealedrec.tlskeys import load_or_create_tls_key

BOOT_CONFIG = "linetap.toml"
APPLIED_SUFFIX = ".applied"
REQUEST_DIR = "linetap-request"
CERT_DIR = "linetap-cert"
RECONFIGURE_FILE = "linetap-reconfigure"  # on the boot partition: apply new settings
MARKER = "provisioned.json"
LOCK = ".provision.lock"


@dataclass(frozen=True, slots=True)
class FirstBoot:
    boot_dir: Path
    config_link: Path  # the path config resolution gives (may be a symlink)
    config_file: Path  # where the config really lives (the symlink's target)

    @classmethod
    def of(cls, boot_dir: Path, config: Path | None) -> FirstBoot:
        link = config_path(config)
        return cls(boot_dir, link, Path(os.path.realpath(link)))

    @property
    def boot_file(self) -> Path:
        return self.boot_dir / BOOT_CONFIG

    @property
    def request_dir(self) -> Path:
        return self.boot_dir / REQUEST_DIR

    @property
    def cert_dir(self) -> Path:
        return self.boot_dir / CERT_DIR

    @property
    def reconfigure_file(self) -> Path:
        return self.boot_dir / RECONFIGURE_FILE

    @property
    def signature_file(self) -> Path:
        return self.boot_dir / (BOOT_CONFIG + bs.SIGNATURE_SUFFIX)

    @property
    def settings_pub(self) -> Path:
        return self.boot_dir / bs.SETTINGS_PUB


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ProvisionError(
                f"{directory / LOCK}: another 'linetap provision' is running"
            ) from None
        yield
    finally:
        os.close(fd)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_marker(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _applied_name(boot_file: Path) -> Path:
    """``linetap.toml.applied``, or ``.applied.2``, ``.3``… so no earlier one is lost."""
    candidate = boot_file.with_name(boot_file.name + APPLIED_SUFFIX)
    n = 2
    while candidate.exists():
        candidate = boot_file.with_name(f"{boot_file.name}{APPLIED_SUFFIX}.{n}")
        n += 1
    return candidate


def _retire_boot_file(fb: FirstBoot) -> Path:
    applied = _applied_name(fb.boot_file)
    rename_durably(fb.boot_file, applied)  # on FAT: see rename_durably
    return applied


def _boot_certificate(fb: FirstBoot, paths: DevicePaths, tls_key: EllipticCurvePrivateKey) -> bool:
    """Install ``linetap-cert/device.crt`` (+ ``ca.crt``) if present; False if it is wrong."""
    cert_file = fb.cert_dir / "device.crt"
    if not cert_file.exists():
        say(
            f"certificate: none yet; put the office's device.crt and ca.crt in {fb.cert_dir}/"
            " and boot again, or run 'linetap provision install-cert'"
        )
        return True
    ca_file = fb.cert_dir / "ca.crt"
    try:
        cert, warnings, changed = install_certificate(
            paths,
            tls_key,
            cert_file,
            ca_file if ca_file.exists() else None,
            keep_installed_ca=True,
        )
    except CertificateError as exc:
        print(f"linetap provision: {exc}; certificate not installed", file=sys.stderr)
        return False
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    state = "installed" if changed else "already installed"
    say(
        f"certificate: {state} from {cert_file} (valid until"
        f" {cert.not_valid_after_utc:%Y-%m-%d}) at {paths.cert}"
    )
    return True


def _validated_boot_config(fb: FirstBoot, data: bytes | None) -> bytes:
    if data is None:
        raise ConfigError(
            [
                f"{fb.boot_file}: no such file; copy the device's settings there (a linetap"
                " config file: device_id, upload, sealing.recipients, lines) and boot again"
            ]
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{fb.boot_file}: not UTF-8 text ({exc}); save it as UTF-8"]) from None
    # A prompt named by its file name alone sits beside the boot file until
    # install_prompts copies it to the config's folder.
    cfg = parse_config(text, str(fb.boot_file), fb.boot_dir)
    if "device_id" not in cfg.model_fields_set:  # unset: it would default to the hostname
        raise ConfigError(
            [
                f'{fb.boot_file}: device_id: missing; set device_id = "…" (the id the head'
                " office enrols; every fresh image has the same hostname)"
            ]
        )
    return data


def _marker_path(cfg: LinetapConfig) -> Path:
    return cfg.storage.data_dir / MARKER


def _data_dirs(fb: FirstBoot, boot_data: bytes | None) -> list[Path]:
    """Where a marker may be: the data_dir of the device config in place, and the one
    the boot file asks for (resolved against the config's folder, as load_config does)."""
    out: list[Path] = []
    with contextlib.suppress(ConfigError):
        out.append(load_config(fb.config_link).storage.data_dir)
    if boot_data is not None:
        with contextlib.suppress(ConfigError, UnicodeDecodeError):
            data_dir = parse_config(boot_data.decode("utf-8"), base=fb.boot_dir).storage.data_dir
            out.append(data_dir if data_dir.is_absolute() else fb.config_file.parent / data_dir)
    return list(dict.fromkeys(out))


@dataclass(frozen=True, slots=True)
class Settings:
    """What a first-boot run installs: the config bytes, the pinned office settings key
    (None: none), the last signed-settings counter, and the markers it supersedes."""

    config: bytes
    pin: bytes | None
    counter: int
    old_markers: tuple[Path, ...] = ()


def _load_existing_keys(paths: DevicePaths) -> None:
    """Load every key that exists before anything is made or committed, so a broken key
    fails the run while the unit is still exactly as it was."""
    if paths.signing_key.exists() or paths.signing_key.is_symlink():
        load_device_key(paths.signing_key)
    if paths.tls_key.exists() or paths.tls_key.is_symlink():
        load_or_create_tls_key(paths.tls_key)


def _write_request(fb: FirstBoot, paths: DevicePaths, keys: Keys) -> tuple[Path, Path]:
    """Copy the request, the signing public key and what to do with them to the card;
    (request copy, key copy)."""
    make_dirs(fb.request_dir, 0o755, inherit_owner=False)
    csr_copy = fb.request_dir / f"{paths.device_id}.csr"
    key_copy = fb.request_dir / f"{paths.device_id}.signing-key"
    steps = office_steps(paths, keys, csr_copy.name)
    steps.append(
        f"then put the certificate it makes (devices/{paths.device_id}.crt) and the office"
        f" CA (broker/ca.crt) on this card as {CERT_DIR}/device.crt and {CERT_DIR}/ca.crt"
        " and boot the device again"
    )
    write_atomic(csr_copy, keys.csr_pem, None)  # on the FAT boot partition: no chmod
    write_atomic(key_copy, (keys.signing_b64 + "\n").encode(), None)
    write_atomic(
        fb.request_dir / "ENROL.txt",
        (
            f"device {paths.device_id}, signing key id {keys.signing_id}\n"
            + "\n".join(steps)
            + "\n"
        ).encode(),
        None,
    )
    return csr_copy, key_copy


def _write_marker(
    fb: FirstBoot,
    cfg: LinetapConfig,
    paths: DevicePaths,
    keys: Keys,
    *,
    boot_data: bytes,
    settings: Settings,
) -> None:
    """The marker, written last; it replaces the markers ``settings`` supersedes."""
    marker = {
        "device_id": paths.device_id,
        "provisioned_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "config": str(fb.config_file),
        "config_sha256": _sha256(settings.config),
        "boot_file": str(fb.boot_file),
        "boot_file_sha256": _sha256(boot_data),
        "settings_counter": settings.counter,
        "signing_key": keys.signing_b64,
        "signing_key_id": keys.signing_id,
        "tls_key": str(paths.tls_key),
        "csr": str(paths.csr),
        "linetap": __version__,
    }
    marker_text = json.dumps(marker, indent=2, sort_keys=True) + "\n"
    write_atomic(_marker_path(cfg), marker_text.encode(), 0o644)
    for old in settings.old_markers:
        if old != _marker_path(cfg):  # data_dir moved: the old one no longer counts
            old.unlink(missing_ok=True)
            fsync_dir(old.parent)


def _provision(fb: FirstBoot, boot_data: bytes, settings: Settings) -> int:
    """Install ``settings``: stage and check everything, then commit, the marker last.

    Until the config is committed nothing the unit runs on has changed (new keys are only
    made where none exist); the old marker is replaced, never removed first."""
    for d in (fb.config_file.parent, fb.request_dir):
        remove_leftovers(d)
    # Stage the config where it will live, and read it back as the daemons will (its
    # relative paths resolve against the config's own folder).
    for prompt in install_prompts(fb.boot_dir, fb.config_file.parent, settings.config):
        say(f"announcement prompt: {prompt} from {fb.boot_dir / prompt.name}")
    staged_config = stage(fb.config_file, settings.config, 0o644)
    try:
        cfg = load_config(staged_config)
        paths = DevicePaths.of(cfg)
        pin_dest = bs.pinned_path(cfg)
        for d in {
            paths.signing_key.parent,
            paths.tls_key.parent,
            paths.csr.parent,
            pin_dest.parent,
            cfg.storage.data_dir,
        }:
            remove_leftovers(d)
        _load_existing_keys(paths)
        keys = ensure_keys(paths)
        csr_copy, key_copy = _write_request(fb, paths, keys)
        staged_pin = None
        if settings.pin is not None and read_or_none(pin_dest) != settings.pin:
            make_dirs(pin_dest.parent, 0o700)
            staged_pin = stage(pin_dest, settings.pin, 0o644)
    except BaseException:
        discard(staged_config)
        raise
    commit(staged_config, fb.config_file)
    if staged_pin is not None:
        commit(staged_pin, pin_dest)
    via = f" (via {fb.config_link})" if fb.config_link != fb.config_file else ""
    say(f"config: {fb.config_file}{via} from {fb.boot_file}")
    say(
        f"signing key: {paths.signing_key} ({'created' if keys.signing_created else 'kept'}),"
        f" key id {keys.signing_id}"
    )
    say(f"TLS key: {paths.tls_key} ({'created' if keys.tls_created else 'kept'})")
    say(f"request: {csr_copy} and {key_copy.name}: take them to the head office")
    if settings.pin is not None:
        pinned = bs.parse_public_key(settings.pin, pin_dest)
        state = "pinned" if staged_pin is not None else "kept"
        say(f"office settings key: {pin_dest} ({state}), key id {bs.key_id(pinned)}")
    cert_ok = _boot_certificate(fb, paths, keys.tls_key)
    _write_marker(fb, cfg, paths, keys, boot_data=boot_data, settings=settings)
    applied = _retire_boot_file(fb)
    say(f"provisioned {paths.device_id}; {fb.boot_file.name} renamed to {applied.name}")
    for line in unset_tls_keys(cfg, paths):
        say(f"note: the uploader reads only configured paths: add under [upload]: {line}")
    return EXIT_OK if cert_ok else EXIT_FAILURE


def _boot_settings_key(fb: FirstBoot) -> bytes | None:
    """``linetap-office-settings.pub`` from the card, checked; None if there is none."""
    data = read_or_none(fb.settings_pub)
    if data is not None:
        bs.parse_public_key(data, fb.settings_pub)
    return data


def _note_boot_settings_key(fb: FirstBoot, pinned: Path) -> None:
    """A settings key on the card of a provisioned unit is never taken: say so."""
    data = read_or_none(fb.settings_pub)
    if data is not None and data != read_or_none(pinned):
        say(
            f"{fb.settings_pub}: ignored: the office settings key is taken at first"
            f" provisioning only (pinned: {pinned if pinned.exists() else 'none'}); to change"
            " it re-provision from a console ('linetap provision --first-boot --force')"
        )


def _settings_counter(marker: dict[str, Any]) -> int:
    """The last signed-settings counter the unit applied (0: none yet)."""
    value = marker.get("settings_counter", 0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _reconfigured(fb: FirstBoot, where: Path, marker: dict[str, Any], boot_data: bytes) -> Settings:
    """An unattended reconfigure from the card (``linetap-reconfigure``): signed by the
    office, everything; unsigned, the harmless settings only. Raises SettingsRefused."""
    try:
        installed_text = fb.config_file.read_text(encoding="utf-8")
        installed = load_config(fb.config_file)
    except (OSError, UnicodeDecodeError, ConfigError) as exc:
        raise bs.SettingsRefused(
            f"{fb.config_file}: the installed config cannot be read ({exc}); settings from the"
            " card are compared with it: repair it from a console ('linetap provision"
            " --first-boot --force')"
        ) from None
    pin_at = bs.pinned_path(installed)
    pin = read_or_none(pin_at)
    _note_boot_settings_key(fb, pin_at)
    last = _settings_counter(marker)
    sig_data = read_or_none(fb.signature_file)
    if sig_data is not None:
        counter = bs.verify_signed(
            boot_data,
            sig_data,
            sig_name=fb.signature_file,
            pinned=None if pin is None else bs.parse_public_key(pin, pin_at),
            pinned_at=pin_at,
            device_id=installed.device_id,
            last_counter=last,
        )
        say(f"{fb.signature_file.name}: signed by the office for this unit (counter {counter})")
        return Settings(boot_data, pin, counter, (where,))
    config, ignored = bs.unsigned_settings(installed_text, boot_data, source=fb.boot_file)
    for path in ignored:
        say(
            f"{fb.boot_file}: {bs.key_name(path)}: not applied, kept as installed (a security"
            f" setting: {bs.SECURITY_KEYS[path]}); {bs.SIGN_HINT}"
        )
    return Settings(config, pin, last, (where,))


def _already_provisioned(
    fb: FirstBoot, where: Path, marker: dict[str, Any], boot_data: bytes | None
) -> int:
    """Leave the device alone; finish a rename a crash interrupted; take a new cert."""
    say(
        f"already provisioned: {marker.get('device_id')} at {marker.get('provisioned_utc')}"
        f" ({where}); settings and keys left alone"
    )
    if boot_data is not None:
        if _sha256(boot_data) in (marker.get("boot_file_sha256"), marker.get("config_sha256")):
            applied = _retire_boot_file(fb)
            say(f"{fb.boot_file.name} was applied already: renamed to {applied.name}")
        else:
            say(
                f"{fb.boot_file} holds other settings: not applied; to apply them put an"
                f" empty file {RECONFIGURE_FILE} beside it and reboot (security settings"
                f" need {fb.signature_file.name} from the head office), or run"
                " 'linetap provision --first-boot --force' (keys are kept)"
            )
    with contextlib.suppress(ConfigError):  # a broken config is for the daemons to report
        _note_boot_settings_key(fb, bs.pinned_path(load_config(fb.config_link)))
    if not (fb.cert_dir / "device.crt").exists():
        return EXIT_OK
    paths = DevicePaths.of(load_config(fb.config_link))
    try:
        tls_key = existing_tls_key(paths)
    except CertificateError as exc:
        print(f"linetap provision: {exc}; certificate not installed", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK if _boot_certificate(fb, paths, tls_key) else EXIT_FAILURE


def _finish_reconfigure(fb: FirstBoot) -> None:
    """Spent: the next boot must not re-apply anything (FAT: no fsync of dirs)."""
    if fb.reconfigure_file.exists():
        fb.reconfigure_file.replace(fb.boot_dir / f"{RECONFIGURE_FILE}.applied")
    if fb.signature_file.exists():
        fb.signature_file.replace(_applied_name(fb.signature_file))


def first_boot(fb: FirstBoot, *, force: bool) -> int:
    """``--first-boot``: see the module docstring."""
    try:
        make_dirs(fb.config_file.parent, 0o755)
        with _locked(fb.config_file.parent):
            boot_data = read_or_none(fb.boot_file)
            markers = [d / MARKER for d in _data_dirs(fb, boot_data)]
            found = [(m, doc) for m in markers if (doc := _read_marker(m)) is not None]
            # A field tech without a login asks for new settings to be applied by putting
            # an (empty) linetap-reconfigure file beside the new linetap.toml.
            reconfigure = boot_data is not None and fb.reconfigure_file.exists()
            if found and not (force or reconfigure):
                return _already_provisioned(fb, *found[0], boot_data)
            boot_data = _validated_boot_config(fb, boot_data)
            if found and not force:
                where, doc = found[0]
                if _sha256(boot_data) == doc.get("boot_file_sha256"):
                    # Applied already; a crash came before the files were retired.
                    applied = _retire_boot_file(fb)
                    _finish_reconfigure(fb)
                    say(f"{fb.boot_file.name} was applied already: renamed to {applied.name}")
                    return EXIT_OK
                settings = _reconfigured(fb, where, doc, boot_data)
            else:
                # First provisioning (or --force from a console): the card is trusted.
                pin = _boot_settings_key(fb)
                if pin is None:
                    for m, _doc in found:
                        pin = pin or read_or_none(m.parent / "keys" / bs.PINNED_PUB)
                counter = max((_settings_counter(d) for _m, d in found), default=0)
                settings = Settings(boot_data, pin, counter, tuple(m for m, _doc in found))
            code = _provision(fb, boot_data, settings)
            _finish_reconfigure(fb)
            if reconfigure and found:
                say(f"{RECONFIGURE_FILE}: settings re-applied, keys kept")
            return code
    except LinetapError:
        raise
    except OSError as exc:
        where = exc.filename or fb.config_file
        hint = ""
        if exc.errno == errno.EROFS:
            hint = (
                f"; on the image {fb.config_link} must be a symlink into the data partition"
                " (/var/lib/linetap/config/linetap.toml)"
            )
        raise ProvisionError(f"{where}: {exc.strerror or exc}{hint}") from None
