"""The device's keys and certificate request, and the office's certificate: checks and install.

``linetap provision init`` and first boot make the Ed25519 signing key and the TLS key
once (later runs reuse them, never replace them) and a certificate request that fits
both the key and the device id. A certificate from the head office is installed only if
it fits: this device's TLS key and id, signed by the CA, not expired, a client
certificate; nothing is written unless every check passes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from firmware.config import LinetapConfig
from firmware.errors import LinetapError
from firmware.tools._provision_files import (
    DevicePaths,
    commit,
    discard,
    make_dirs,
    read_or_none,
    staged,
    take_owner_of_dir,
    write_atomic,
)
from sealedrec.keys import create_device_key, key_id, load_device_key, public_key_b64
from sealedrec.tlskeys import load_or_create_tls_key, make_device_csr

CLOCK_SKEW = dt.timedelta(minutes=5)


class CertificateError(LinetapError, ValueError):
    """The certificate (or CA) given cannot be installed on this device."""


# -- keys and the request --------------------------------------------------------------


K = TypeVar("K")  # a private key type


def _ensure_key(path: Path, load: Callable[[Path], K], make: Callable[[Path], K]) -> tuple[K, bool]:
    """The key at ``path``, made (staged, then renamed) if missing; (key, created)."""
    if path.exists() or path.is_symlink():
        return load(path), False
    make_dirs(path.parent, 0o700)
    tmp = staged(path)
    tmp.unlink(missing_ok=True)
    key = make(tmp)
    try:
        take_owner_of_dir(tmp)
    except BaseException:
        discard(tmp)
        raise
    commit(tmp, path)  # the existence check above runs under the provisioning lock
    return key, True


def ensure_signing_key(path: Path) -> tuple[Ed25519PrivateKey, bool]:
    """The device's Ed25519 signing key, made if missing; (key, created)."""
    return _ensure_key(path, load_device_key, create_device_key)


def ensure_tls_key(path: Path) -> tuple[EllipticCurvePrivateKey, bool]:
    """The device's TLS key (EC P-256), made if missing; (key, created)."""
    return _ensure_key(path, load_or_create_tls_key, load_or_create_tls_key)


def _same_public_key(a: Any, b: Any) -> bool:
    enc, fmt = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    try:
        return bool(a.public_bytes(enc, fmt) == b.public_bytes(enc, fmt))
    except (AttributeError, TypeError, ValueError):
        return False


def _common_name(name: x509.Name) -> str | None:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attrs:
        return None
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode(errors="replace")


def ensure_csr(paths: DevicePaths, tls_key: EllipticCurvePrivateKey) -> bytes:
    """The certificate request at ``paths.csr``: kept if it still fits key and id."""
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
    make_dirs(paths.csr.parent, 0o700)
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


def office_steps(paths: DevicePaths, keys: Keys, csr_name: str) -> list[str]:
    return [
        "at the head office:",
        f"  linetap-office enroll-device --root OFFICE_ROOT --csr {csr_name}"
        f" --signing-key {keys.signing_b64}",
    ]


# -- the certificate -------------------------------------------------------------------


def _load_certs(data: bytes, what: Path) -> list[x509.Certificate]:
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
    installed_ca = read_or_none(paths.ca) if keep_installed_ca else None
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
        if read_or_none(dest) != data:
            make_dirs(dest.parent, 0o700)
            write_atomic(dest, data, 0o644)
            changed = True
    return cert, warnings, changed


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CertificateError(f"{path}: cannot read the {what} ({exc.strerror})") from None


def unset_tls_keys(cfg: LinetapConfig, paths: DevicePaths) -> list[str]:
    """``[upload]`` settings the uploader needs but the config leaves out."""
    if not cfg.upload.tls:
        return []
    wanted = (
        ("ca_file", cfg.upload.ca_file, paths.ca),
        ("cert_file", cfg.upload.cert_file, paths.cert),
        ("key_file", cfg.upload.key_file, paths.tls_key),
    )
    return [f'{key} = "{default}"' for key, value, default in wanted if value is None]


def existing_tls_key(paths: DevicePaths) -> EllipticCurvePrivateKey:
    """The TLS key a certificate must match; never made here (it would match nothing)."""
    if not paths.tls_key.exists():
        raise CertificateError(
            f"no TLS key at {paths.tls_key}: run 'linetap provision init' and enrol its"
            " request first"
        )
    return load_or_create_tls_key(paths.tls_key)
