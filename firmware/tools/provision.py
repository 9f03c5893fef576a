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
import contextlib
import datetime as dt
import errno
import fcntl
import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from firmware.cli_options import config_arg
from firmware.config import config_path, load_config, parse_config
from firmware.errors import ConfigError, LinetapError
from firmware.tools import _boot_settings as bs
from runtime.process import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK
from sealedrec.durable import fsync_dir, replace_file_via

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from firmware.config import LinetapConfig

DEFAULT_BOOT_DIR = Path("/boot/firmware")
BOOT_CONFIG = "linetap.toml"
APPLIED_SUFFIX = ".applied"
REQUEST_DIR = "linetap-request"
CERT_DIR = "linetap-cert"
RECONFIGURE_FILE = "linetap-reconfigure"  # on the boot partition: apply new settings
MARKER = "provisioned.json"
LOCK = ".provision.lock"
STAGE_PREFIX = ".provision-"  # temp files beside their destination: <dir>/.provision-<name>.tmp
CLOCK_SKEW = dt.timedelta(minutes=5)


class ProvisionError(LinetapError, OSError):
    """A provisioning step cannot be done (unwritable directory, missing file)."""


class CertificateError(LinetapError, ValueError):
    """The certificate (or CA) given cannot be installed on this device."""


# -- where things go -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DevicePaths:
    device_id: str
    signing_key: Path
    tls_key: Path
    csr: Path
    cert: Path
    ca: Path

    @classmethod
    def of(cls, cfg: LinetapConfig) -> DevicePaths:
        from firmware.app import device_key_path

        keys = cfg.storage.data_dir / "keys"
        did = cfg.device_id
        return cls(
            device_id=did,
            signing_key=device_key_path(cfg),
            tls_key=cfg.upload.key_file or keys / "device-tls.key",
            csr=keys / f"{did}.csr",
            cert=cfg.upload.cert_file or keys / "device.crt",
            ca=cfg.upload.ca_file or keys / "ca.crt",
        )


# -- durable files ---------------------------------------------------------------------


def _staged(dest: Path) -> Path:
    return dest.with_name(f"{STAGE_PREFIX}{dest.name}.tmp")


def _take_owner_of_dir(path: Path) -> None:
    """As root: give ``path`` the owner of its directory (the daemons' user)."""
    if os.geteuid() != 0:
        return
    st = path.parent.stat()
    os.chown(path, st.st_uid, st.st_gid, follow_symlinks=False)


def _make_dirs(path: Path, mode: int, *, inherit_owner: bool = True) -> None:
    """``mkdir -p``; as root each new directory takes its parent's owner (not on the FAT
    boot partition: ``inherit_owner=False``)."""
    missing: list[Path] = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir(mode=mode)
        if inherit_owner:
            _take_owner_of_dir(d)
        fsync_dir(d.parent)


def _stage(dest: Path, data: bytes, mode: int | None) -> Path:
    """Write ``data`` to a temp file beside ``dest`` (fsynced); removed again on failure.

    ``mode`` None: leave the mode to the filesystem (the FAT boot partition refuses a
    chmod that its mount options cannot represent).
    """
    tmp = _staged(dest)
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode or 0o644)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)  # the umask may have narrowed it
    except BaseException:
        _discard(tmp)
        raise
    return tmp


def _commit(tmp: Path, dest: Path) -> None:
    """Rename a staged file into place (atomic) and make the rename durable."""
    try:
        os.replace(tmp, dest)
    except BaseException:
        _discard(tmp)
        raise
    fsync_dir(dest.parent)


def _discard(tmp: Path) -> None:
    with contextlib.suppress(OSError):
        tmp.unlink()


def write_atomic(dest: Path, data: bytes, mode: int | None) -> None:
    """Replace ``dest`` with ``data``: temp file beside it, fsync, rename, fsync the dir
    (``mode`` None: the filesystem's, for the FAT boot partition; see :func:`_stage`)."""
    replace_file_via(dest, data, tmp=_staged(dest), mode=mode)


def _remove_leftovers(directory: Path) -> None:
    """Temp files a killed run left (never committed, so never in use)."""
    if not directory.is_dir():
        return
    for p in directory.glob(f"{STAGE_PREFIX}*.tmp"):
        p.unlink(missing_ok=True)


# -- keys and the request --------------------------------------------------------------


K = TypeVar("K")  # a private key type


def _ensure_key(path: Path, load: Callable[[Path], K], make: Callable[[Path], K]) -> tuple[K, bool]:
    """The key at ``path``, made (staged, then renamed) if missing; (key, created)."""
    if path.exists() or path.is_symlink():
        return load(path), False
    _make_dirs(path.parent, 0o700)
    tmp = _staged(path)
    tmp.unlink(missing_ok=True)
    key = make(tmp)
    try:
        _take_owner_of_dir(tmp)
    except BaseException:
        _discard(tmp)
        raise
    _commit(tmp, path)  # the existence check above runs under the provisioning lock
    return key, True


def ensure_signing_key(path: Path) -> tuple[Ed25519PrivateKey, bool]:
    """The device's Ed25519 signing key, made if missing; (key, created)."""
    from sealedrec.keys import create_device_key, load_device_key

    return _ensure_key(path, load_device_key, create_device_key)


def ensure_tls_key(path: Path) -> tuple[EllipticCurvePrivateKey, bool]:
    """The device's TLS key (EC P-256), made if missing; (key, created)."""
    from sealedrec.tlskeys import load_or_create_tls_key

    return _ensure_key(path, load_or_create_tls_key, load_or_create_tls_key)


def _same_public_key(a: Any, b: Any) -> bool:
    from cryptography.hazmat.primitives import serialization

    enc, fmt = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    try:
        return bool(a.public_bytes(enc, fmt) == b.public_bytes(enc, fmt))
    except (AttributeError, TypeError, ValueError):
        return False


def _common_name(name: x509.Name) -> str | None:
    from cryptography.x509.oid import NameOID

    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attrs:
        return None
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode(errors="replace")


def ensure_csr(paths: DevicePaths, tls_key: EllipticCurvePrivateKey) -> bytes:
    """The certificate request at ``paths.csr``: kept if it still fits key and id."""
    from cryptography import x509

    from sealedrec.tlskeys import make_device_csr

    with contextlib.suppress(OSError, ValueError):
        old = paths.csr.read_bytes()
        csr = x509.load_pem_x509_csr(old)
        if (
            csr.is_signature_valid
            and _same_public_key(csr.public_key(), tls_key.public_key())
            and _common_name(csr.subject) == paths.device_id
        ):
            return old
    pem = make_device_csr(paths.tls_key, paths.device_id)
    _make_dirs(paths.csr.parent, 0o700)
    write_atomic(paths.csr, pem, 0o644)
    return pem


@dataclass(frozen=True, slots=True)
class Keys:
    signing_created: bool
    tls_created: bool
    signing_b64: str
    signing_id: str
    csr_pem: bytes
    tls_key: EllipticCurvePrivateKey


def ensure_keys(paths: DevicePaths) -> Keys:
    from sealedrec.keys import key_id, public_key_b64

    signing, signing_created = ensure_signing_key(paths.signing_key)
    tls_key, tls_created = ensure_tls_key(paths.tls_key)
    csr = ensure_csr(paths, tls_key)
    public = signing.public_key()
    return Keys(
        signing_created=signing_created,
        tls_created=tls_created,
        signing_b64=public_key_b64(public),
        signing_id=key_id(public),
        csr_pem=csr,
        tls_key=tls_key,
    )


# -- the certificate -------------------------------------------------------------------


def _load_certs(data: bytes, what: Path) -> list[x509.Certificate]:
    from cryptography import x509

    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise CertificateError(f"{what}: not a PEM certificate (-----BEGIN CERTIFICATE-----)")
    return certs


def check_certificate(
    cert_pem: bytes,
    ca_pem: bytes,
    *,
    cert_name: Path,
    ca_name: Path,
    tls_key: EllipticCurvePrivateKey,
    paths: DevicePaths,
    now: dt.datetime,
) -> tuple[x509.Certificate, list[str]]:
    """Check that the office's certificate fits this device; (certificate, warnings).

    Raises :class:`CertificateError` naming the file and the fix.
    """
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.x509.oid import ExtendedKeyUsageOID

    cert = _load_certs(cert_pem, cert_name)[0]
    ca = _load_certs(ca_pem, ca_name)[0]
    warnings: list[str] = []
    try:
        is_ca = ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise CertificateError(
            f"{ca_name}: not a CA certificate; give the head office's CA (broker/ca.crt"
            " from 'linetap-office init')"
        )
    if not _same_public_key(cert.public_key(), tls_key.public_key()):
        raise CertificateError(
            f"{cert_name}: issued for another key, not this device's TLS key ({paths.tls_key});"
            f" enrol this device's request ({paths.csr}) and install the certificate made from it"
        )
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise CertificateError(
            f"{cert_name}: not signed by the CA in {ca_name} (issued by"
            f" {cert.issuer.rfc4514_string()}); give the CA of the office that enrolled"
            " the device"
        ) from None
    if ca.not_valid_after_utc <= now:
        raise CertificateError(
            f"{ca_name}: the CA certificate expired on {ca.not_valid_after_utc:%Y-%m-%d}"
        )
    if cert.not_valid_after_utc <= now:
        raise CertificateError(
            f"{cert_name}: expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; enrol the"
            " device again ('linetap-office enroll-device') for a new certificate"
        )
    if cert.not_valid_before_utc > now + CLOCK_SKEW:
        warnings.append(
            f"{cert_name}: valid only from {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC;"
            " this device's clock is behind (no network time yet?)"
        )
    names = {_common_name(cert.subject)}
    with contextlib.suppress(x509.ExtensionNotFound):
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names.update(san.get_values_for_type(x509.DNSName))
    if paths.device_id not in names:
        raise CertificateError(
            f"{cert_name}: issued to {_common_name(cert.subject)!r}, but this device is"
            f" {paths.device_id!r} (device_id in the config); install the certificate enrolled"
            " for this device, or fix device_id"
        )
    with contextlib.suppress(x509.ExtensionNotFound):
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
            raise CertificateError(
                f"{cert_name}: not a TLS client certificate (no clientAuth usage); give the"
                " device certificate 'linetap-office enroll-device' made"
            )
    return cert, warnings


def _same_certificate(a: bytes, b: bytes) -> bool:
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificate(a) == x509.load_pem_x509_certificate(b)
    except ValueError:
        return False


def install_certificate(
    paths: DevicePaths,
    tls_key: EllipticCurvePrivateKey,
    cert_file: Path,
    ca_file: Path | None,
    *,
    keep_installed_ca: bool = False,
) -> tuple[x509.Certificate, list[str], bool]:
    """Check, then install the certificate (and CA); (cert, warnings, anything changed).

    Nothing is written unless every check passes. ``ca_file`` None: the CA installed
    already verifies it. ``keep_installed_ca`` (the boot partition): an installed CA is
    never replaced; ``ca_file`` must be that same certificate, and the device certificate
    must chain to it.
    """
    cert_pem = _read(cert_file, "certificate")
    installed_ca = _read_or_none(paths.ca) if keep_installed_ca else None
    if installed_ca is not None and ca_file is not None:
        if not _same_certificate(_read(ca_file, "CA certificate"), installed_ca):
            raise CertificateError(
                f"{ca_file}: not the CA installed at {paths.ca}, and an installed CA is never"
                f" replaced from the boot partition; remove {ca_file.name} from the card (the"
                " installed CA is used), or replace the CA from a console ('linetap provision"
                " install-cert CERT --ca CA')"
            )
        ca_file = None  # the installed bytes stay as they are
    ca_source = ca_file if ca_file is not None else paths.ca
    if ca_file is None and not paths.ca.exists():
        raise CertificateError(
            f"no CA certificate at {paths.ca} and none given: give --ca with the head"
            " office's ca.crt (at first boot: ca.crt beside device.crt in linetap-cert/)"
        )
    ca_pem = _read(ca_source, "CA certificate")
    cert, warnings = check_certificate(
        cert_pem,
        ca_pem,
        cert_name=cert_file,
        ca_name=ca_source,
        tls_key=tls_key,
        paths=paths,
        now=dt.datetime.now(dt.UTC),
    )
    changed = False
    for dest, data in ((paths.ca, ca_pem), (paths.cert, cert_pem)):
        if _read_or_none(dest) != data:
            _make_dirs(dest.parent, 0o700)
            write_atomic(dest, data, 0o644)
            changed = True
    return cert, warnings, changed


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CertificateError(f"{path}: cannot read the {what} ({exc.strerror})") from None


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _unset_tls_keys(cfg: LinetapConfig, paths: DevicePaths) -> list[str]:
    """``[upload]`` settings the uploader needs but the config leaves out."""
    if not cfg.upload.tls:
        return []
    wanted = (
        ("ca_file", cfg.upload.ca_file, paths.ca),
        ("cert_file", cfg.upload.cert_file, paths.cert),
        ("key_file", cfg.upload.key_file, paths.tls_key),
    )
    return [f'{key} = "{default}"' for key, value, default in wanted if value is None]


# -- commands --------------------------------------------------------------------------


def _say(text: str) -> None:
    print(text, flush=True)


def _office_steps(paths: DevicePaths, keys: Keys, csr_name: str) -> list[str]:
    return [
        "at the head office:",
        f"  linetap-office enroll-device --root OFFICE_ROOT --csr {csr_name}"
        f" --signing-key {keys.signing_b64}",
    ]


def cmd_init(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    paths = DevicePaths.of(cfg)
    keys = ensure_keys(paths)
    _say(
        f"signing key {paths.signing_key} ({'created' if keys.signing_created else 'exists'}),"
        f" key id {keys.signing_id}"
    )
    _say(f"TLS key {paths.tls_key} ({'created' if keys.tls_created else 'exists'})")
    _say(f"certificate request {paths.csr}")
    _say(f"signing public key {keys.signing_b64}")
    _say("give the head office the request and the signing public key;")
    for line in _office_steps(paths, keys, str(paths.csr)):
        _say(line)
    _say(f"then: linetap provision install-cert {paths.device_id}.crt --ca ca.crt")
    return EXIT_OK


def _existing_tls_key(paths: DevicePaths) -> EllipticCurvePrivateKey:
    """The TLS key a certificate must match; never made here (it would match nothing)."""
    from sealedrec.tlskeys import load_or_create_tls_key

    if not paths.tls_key.exists():
        raise CertificateError(
            f"no TLS key at {paths.tls_key}: run 'linetap provision init' and enrol its"
            " request first"
        )
    return load_or_create_tls_key(paths.tls_key)


def cmd_install_cert(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    paths = DevicePaths.of(cfg)
    tls_key = _existing_tls_key(paths)
    cert, warnings, changed = install_certificate(paths, tls_key, args.cert, args.ca)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    state = "installed" if changed else "already installed"
    _say(
        f"{state}: certificate for {paths.device_id} (serial {cert.serial_number:x}, valid"
        f" until {cert.not_valid_after_utc:%Y-%m-%d}) at {paths.cert}; CA at {paths.ca}"
    )
    for line in _unset_tls_keys(cfg, paths):
        _say(f"note: the uploader reads only configured paths: add under [upload]: {line}")
    if changed:
        # Without a certificate the uploader exits (status 2) and systemd leaves it stopped.
        _say("then: systemctl restart linetap-uploader.service (it connects with the new one)")
    return EXIT_OK


# -- first boot ------------------------------------------------------------------------


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
    os.rename(fb.boot_file, applied)
    fsync_dir(fb.boot_dir)
    return applied


def _boot_certificate(fb: FirstBoot, paths: DevicePaths, tls_key: EllipticCurvePrivateKey) -> bool:
    """Install ``linetap-cert/device.crt`` (+ ``ca.crt``) if present; False if it is wrong."""
    cert_file = fb.cert_dir / "device.crt"
    if not cert_file.exists():
        _say(
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
    _say(
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
    cfg = parse_config(text, str(fb.boot_file))
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
            data_dir = parse_config(boot_data.decode("utf-8")).storage.data_dir
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
    from sealedrec.keys import load_device_key
    from sealedrec.tlskeys import load_or_create_tls_key

    if paths.signing_key.exists() or paths.signing_key.is_symlink():
        load_device_key(paths.signing_key)
    if paths.tls_key.exists() or paths.tls_key.is_symlink():
        load_or_create_tls_key(paths.tls_key)


def _provision(fb: FirstBoot, boot_data: bytes, settings: Settings) -> int:
    """Install ``settings``: stage and check everything, then commit, the marker last.

    Until the config is committed nothing the unit runs on has changed (new keys are only
    made where none exist); the old marker is replaced, never removed first."""
    from firmware import __version__

    for d in (fb.config_file.parent, fb.request_dir):
        _remove_leftovers(d)
    # Stage the config where it will live, and read it back as the daemons will (its
    # relative paths resolve against the config's own folder).
    staged_config = _stage(fb.config_file, settings.config, 0o644)
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
            _remove_leftovers(d)
        _load_existing_keys(paths)
        keys = ensure_keys(paths)
        _make_dirs(fb.request_dir, 0o755, inherit_owner=False)
        csr_copy = fb.request_dir / f"{paths.device_id}.csr"
        key_copy = fb.request_dir / f"{paths.device_id}.signing-key"
        steps = _office_steps(paths, keys, csr_copy.name)
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
        staged_pin = None
        if settings.pin is not None and _read_or_none(pin_dest) != settings.pin:
            _make_dirs(pin_dest.parent, 0o700)
            staged_pin = _stage(pin_dest, settings.pin, 0o644)
    except BaseException:
        _discard(staged_config)
        raise
    _commit(staged_config, fb.config_file)
    if staged_pin is not None:
        _commit(staged_pin, pin_dest)
    via = f" (via {fb.config_link})" if fb.config_link != fb.config_file else ""
    _say(f"config: {fb.config_file}{via} from {fb.boot_file}")
    _say(
        f"signing key: {paths.signing_key} ({'created' if keys.signing_created else 'kept'}),"
        f" key id {keys.signing_id}"
    )
    _say(f"TLS key: {paths.tls_key} ({'created' if keys.tls_created else 'kept'})")
    _say(f"request: {csr_copy} and {key_copy.name}: take them to the head office")
    if settings.pin is not None:
        pinned = bs.parse_public_key(settings.pin, pin_dest)
        state = "pinned" if staged_pin is not None else "kept"
        _say(f"office settings key: {pin_dest} ({state}), key id {bs.key_id(pinned)}")
    cert_ok = _boot_certificate(fb, paths, keys.tls_key)

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
    applied = _retire_boot_file(fb)
    _say(f"provisioned {paths.device_id}; {fb.boot_file.name} renamed to {applied.name}")
    for line in _unset_tls_keys(cfg, paths):
        _say(f"note: the uploader reads only configured paths: add under [upload]: {line}")
    return EXIT_OK if cert_ok else EXIT_FAILURE


def _boot_settings_key(fb: FirstBoot) -> bytes | None:
    """``linetap-office-settings.pub`` from the card, checked; None if there is none."""
    data = _read_or_none(fb.settings_pub)
    if data is not None:
        bs.parse_public_key(data, fb.settings_pub)
    return data


def _note_boot_settings_key(fb: FirstBoot, pinned: Path) -> None:
    """A settings key on the card of a provisioned unit is never taken: say so."""
    data = _read_or_none(fb.settings_pub)
    if data is not None and data != _read_or_none(pinned):
        _say(
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
    pin = _read_or_none(pin_at)
    _note_boot_settings_key(fb, pin_at)
    last = _settings_counter(marker)
    sig_data = _read_or_none(fb.signature_file)
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
        _say(f"{fb.signature_file.name}: signed by the office for this unit (counter {counter})")
        return Settings(boot_data, pin, counter, (where,))
    config, ignored = bs.unsigned_settings(installed_text, boot_data, source=fb.boot_file)
    for path in ignored:
        _say(
            f"{fb.boot_file}: {bs.key_name(path)}: not applied, kept as installed (a security"
            f" setting: {bs.SECURITY_KEYS[path]}); {bs.SIGN_HINT}"
        )
    return Settings(config, pin, last, (where,))


def _already_provisioned(
    fb: FirstBoot, where: Path, marker: dict[str, Any], boot_data: bytes | None
) -> int:
    """Leave the device alone; finish a rename a crash interrupted; take a new cert."""
    _say(
        f"already provisioned: {marker.get('device_id')} at {marker.get('provisioned_utc')}"
        f" ({where}); settings and keys left alone"
    )
    if boot_data is not None:
        if _sha256(boot_data) in (marker.get("boot_file_sha256"), marker.get("config_sha256")):
            applied = _retire_boot_file(fb)
            _say(f"{fb.boot_file.name} was applied already: renamed to {applied.name}")
        else:
            _say(
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
        tls_key = _existing_tls_key(paths)
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
        _make_dirs(fb.config_file.parent, 0o755)
        with _locked(fb.config_file.parent):
            boot_data = _read_or_none(fb.boot_file)
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
                    _say(f"{fb.boot_file.name} was applied already: renamed to {applied.name}")
                    return EXIT_OK
                settings = _reconfigured(fb, where, doc, boot_data)
            else:
                # First provisioning (or --force from a console): the card is trusted.
                pin = _boot_settings_key(fb)
                if pin is None:
                    for m, _doc in found:
                        pin = pin or _read_or_none(m.parent / "keys" / bs.PINNED_PUB)
                counter = max((_settings_counter(d) for _m, d in found), default=0)
                settings = Settings(boot_data, pin, counter, tuple(m for m, _doc in found))
            code = _provision(fb, boot_data, settings)
            _finish_reconfigure(fb)
            if reconfigure and found:
                _say(f"{RECONFIGURE_FILE}: settings re-applied, keys kept")
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
