"""The head office's small certificate authority: broker, devices and office receivers.

It makes the CA, the broker's server certificate and the office age identity once
(:func:`init_ca`), signs each device's TLS certificate request and records its
manifest-signing key (:func:`enroll_device`), and issues the receivers' client
certificates (:func:`issue_office_client`). Where the files go, and reading a device's
record back, is :mod:`headoffice.officeroot`; the broker's own configuration (mosquitto
config, ACL, share group) is :mod:`headoffice.brokerconf`.

The broker takes a client certificate's CN as the MQTT username
(``use_identity_as_username``) and its ACL confines a device to ``linetap/{CN}/…``. So
device ids and office-client names share one namespace: neither may take the other's.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from headoffice.officeroot import (
    DEFAULT_OFFICE_CLIENT,
    DEVICE_ID,
    DNS_NAME,
    CaExists,
    CaLayout,
    CaMissing,
    DeviceRecord,
    EnrollError,
    SigningKeyConflict,
    check_name,
    read_device_record,
)
from sealedrec import age
from sealedrec.durable import replace_file, write_new_file
from sealedrec.keyfiles import private_key_pem
from sealedrec.keys import DeviceKeyError, key_id, public_key_b64, public_key_from_b64
from sealedrec.tlskeys import make_device_csr

__all__ = [
    "DEFAULT_OFFICE_CLIENT",
    "CaExists",
    "CaLayout",
    "CaMissing",
    "EnrollError",
    "OfficeSetup",
    "SigningKeyConflict",
    "enroll_device",
    "init_ca",
    "issue_broker_cert",
    "issue_office_client",
    "make_device_csr",
]

CA_YEARS = 10
CERT_YEARS = 3

_CLOCK_SKEW = dt.timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class OfficeSetup:
    """What init_ca made, and what every device's configuration needs from it."""

    root: Path
    recipient: str  # age1…: goes into each device's sealing.recipients
    ca_cert: Path  # copy to each device as upload.ca_file
    server_cert: Path
    office_key: Path  # the age identity that decrypts recordings: keep it safe

    def device_config(self, host: str, port: int = 8883) -> str:
        """The part of ``/etc/linetap/linetap.toml`` that comes from the head office."""
        return (
            "[sealing]\n"
            f'recipients = ["{self.recipient}"]\n'
            "\n"
            "[upload]\n"
            f"host = {json.dumps(host)}\n"
            f"port = {port}\n"
            "tls = true\n"
            f'ca_file = "/var/lib/linetap/keys/ca.crt"        # a copy of {self.ca_cert}\n'
            'cert_file = "/var/lib/linetap/keys/device.crt"   # from enroll_device\n'
            'key_file = "/var/lib/linetap/keys/device-tls.key"  # made on the device\n'
        )


# --------------------------------------------------------------------------- files


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _years(n: int) -> dt.timedelta:
    return dt.timedelta(days=365 * n + n // 4 + 1)


# --------------------------------------------------------------------------- CA


@dataclass(frozen=True, slots=True)
class _Ca:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def _load_ca(layout: CaLayout) -> _Ca:
    if not layout.ca_key.exists() or not layout.ca_cert.exists():
        raise CaMissing(
            f"{layout.ca_key}: no head-office CA here; run init_ca({str(layout.root)!r}, ...)"
            " first, or point at the right office root"
        )
    try:
        key = serialization.load_pem_private_key(layout.ca_key.read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate(layout.ca_cert.read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        raise EnrollError(
            f"{layout.ca_key.parent}: CA key or certificate unreadable ({exc}); restore them"
            " from the office backup"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise EnrollError(
            f"{layout.ca_key}: does not belong to {layout.ca_cert}; restore the pair from the"
            " office backup"
        )
    return _Ca(key, cert)


def _issue(
    ca: _Ca,
    subject: x509.Name,
    public_key: Any,
    *,
    eku: x509.ObjectIdentifier,
    years: int,
    san: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = _now()
    not_after = min(now + _years(years), ca.cert.not_valid_after_utc)
    key_encipherment = isinstance(public_key, rsa.RSAPublicKey)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=key_encipherment,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(ca.key, hashes.SHA256())


def _org(ca: _Ca) -> str:
    attrs = ca.cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    value = attrs[0].value if attrs else "linetap"
    return value if isinstance(value, str) else value.decode()


def _san(dns_names: Sequence[str], ip_addresses: Sequence[str]) -> list[x509.GeneralName]:
    san: list[x509.GeneralName] = []
    for name in dns_names:
        if not isinstance(name, str) or not DNS_NAME.fullmatch(name):
            raise EnrollError(f"broker DNS name {str(name)[:80]!r} is not a valid host name")
        san.append(x509.DNSName(name))
    for text in ip_addresses:
        try:
            san.append(x509.IPAddress(ipaddress.ip_address(text)))
        except ValueError:
            raise EnrollError(f"broker IP address {str(text)[:80]!r} is not valid") from None
    if not san:
        raise EnrollError(
            "broker certificate: give at least one DNS name or IP address the devices connect to"
        )
    return san


def init_ca(
    root: Path,
    office_name: str,
    *,
    dns_names: Sequence[str] = ("localhost",),
    ip_addresses: Sequence[str] = ("127.0.0.1",),
) -> OfficeSetup:
    """Make the office CA, the broker's server certificate and the office age identity.

    Done once: refuses (:class:`CaExists`) if any of those files already exists, since
    every enrolled device trusts this CA and seals to this identity. ``dns_names`` and
    ``ip_addresses`` are the names devices use to reach the broker (certificate SAN).
    """
    if not isinstance(office_name, str) or not 1 <= len(office_name) <= 64:
        raise EnrollError(f"office name {str(office_name)[:80]!r}: give 1-64 characters")
    if not office_name.isprintable():
        raise EnrollError(f"office name {office_name!r}: must not contain control characters")
    layout = CaLayout(Path(root))
    san = _san(dns_names, ip_addresses)
    for path in (
        layout.ca_key,
        layout.ca_cert,
        layout.server_key,
        layout.server_cert,
        layout.office_key,
        layout.office_pub,
    ):
        if path.exists():
            raise CaExists(
                f"{path} already exists: the office CA and keys are made once (enrolled"
                f" devices trust them); to start over with no devices, move {layout.root} away"
            )
    layout.root.mkdir(parents=True, exist_ok=True)
    for sub, mode in (("ca", 0o700), ("keys", 0o700), ("broker", 0o755), ("devices", 0o755)):
        (layout.root / sub).mkdir(mode=mode, exist_ok=True)

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, office_name),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{office_name} linetap CA"),
        ]
    )
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + _years(CA_YEARS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_new_file(layout.ca_key, private_key_pem(key), 0o600)
    write_new_file(layout.ca_cert, _cert_pem(cert), 0o644)
    _issue_broker(_Ca(key, cert), layout, san)

    identity = age.generate_identity()
    recipient = age.format_recipient(identity.public_key())
    write_new_file(
        layout.office_key,
        (
            f"# created: {now.isoformat()}\n"
            f"# public key: {recipient}\n"
            f"{age.format_identity(identity)}\n"
        ).encode(),
        0o600,
    )
    write_new_file(layout.office_pub, f"{recipient}\n".encode(), 0o644)
    return OfficeSetup(
        layout.root, recipient, layout.ca_cert, layout.server_cert, layout.office_key
    )


def _issue_broker(ca: _Ca, layout: CaLayout, san: list[x509.GeneralName]) -> None:
    first = san[0].value
    cn = first if isinstance(first, str) else str(first)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _org(ca)),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )
    cert = _issue(
        ca,
        subject,
        key.public_key(),
        eku=ExtendedKeyUsageOID.SERVER_AUTH,
        years=CERT_YEARS,
        san=san,
    )
    # The key first: a crash in between leaves a key without a certificate, never the
    # other way round (a certificate whose key was lost).
    layout.server_key.unlink(missing_ok=True)
    write_new_file(layout.server_key, private_key_pem(key), 0o600)
    replace_file(layout.server_cert, _cert_pem(cert))
    replace_file(layout.broker_ca, _cert_pem(ca.cert))


def issue_broker_cert(
    root: Path,
    *,
    dns_names: Sequence[str] = ("localhost",),
    ip_addresses: Sequence[str] = ("127.0.0.1",),
) -> Path:
    """Renew (or re-address) the broker's server key and certificate; returns the cert path.

    Devices keep working: they trust the CA, not this certificate. Restart the broker.
    """
    layout = CaLayout(Path(root))
    ca = _load_ca(layout)
    _issue_broker(ca, layout, _san(dns_names, ip_addresses))
    return layout.server_cert


# --------------------------------------------------------------------------- devices


def _csr_device_id(csr: x509.CertificateSigningRequest) -> str:
    with warnings.catch_warnings():  # an over-long CN warns here; it is refused below
        warnings.simplefilter("ignore", UserWarning)
        cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1:
        raise EnrollError(
            f"certificate request: subject has {len(cns)} common names (CN), expected exactly"
            " one, the device id; make it with sealedrec.tlskeys.make_device_csr"
        )
    value = cns[0].value
    cn = value if isinstance(value, str) else value.decode("utf-8", "replace")
    if not DEVICE_ID.fullmatch(cn):
        raise EnrollError(
            f"certificate request: CN {cn[:80]!r} is not a valid device id (1-64 characters,"
            " letters, digits, '_', '.' or '-', starting with a letter or digit); fix"
            " device_id on the appliance and make a new request"
        )
    return cn


def _check_tls_key(device_id: str, key: Any) -> str:
    if isinstance(key, ec.EllipticCurvePublicKey):
        if isinstance(key.curve, ec.SECP256R1):
            return "ec-p256"
        name = key.curve.name
    elif isinstance(key, ed25519.Ed25519PublicKey):
        return "ed25519"
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size >= 2048:
            return f"rsa-{key.key_size}"
        name = f"RSA-{key.key_size}"
    else:
        name = type(key).__name__
    raise EnrollError(
        f"device {device_id}: certificate request key is {name}; use EC P-256 (what"
        " make_device_csr makes), Ed25519 or RSA of 2048 bits or more"
    )


def enroll_device(
    root: Path, csr_pem: bytes, signing_key_b64: str, *, replace: bool = False
) -> Path:
    """Sign a device's TLS certificate request and register its manifest-signing key.

    The device id is the request's CN. Writes ``devices/{id}.crt`` (3-year client
    certificate, clientAuth) and ``devices/{id}.json`` and returns the certificate's path.
    Enrolling an enrolled id again renews its certificate; with a *different* signing key
    it is refused (:class:`SigningKeyConflict`) unless ``replace=True``, because the new
    key cannot continue the device's manifest chain. The replaced record is kept under
    ``devices/replaced/``.
    """
    layout = CaLayout(Path(root))
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except (ValueError, TypeError) as exc:
        raise EnrollError(
            f"certificate request: not a PEM CSR ({exc}); pass the file make_device_csr wrote"
        ) from None
    try:
        signature_ok = csr.is_signature_valid
    except (ValueError, TypeError, InvalidSignature):
        signature_ok = False
    if not signature_ok:
        raise EnrollError(
            "certificate request: its signature does not verify (corrupted or tampered);"
            " make a new request on the device"
        )
    device_id = _csr_device_id(csr)
    public_key = csr.public_key()
    key_type = _check_tls_key(device_id, public_key)
    try:
        signing_key = public_key_from_b64(signing_key_b64.strip())
    except (DeviceKeyError, AttributeError):
        raise EnrollError(
            f"device {device_id}: signing key {str(signing_key_b64)[:16]!r}… is not a base64"
            " Ed25519 public key; copy it from 'linetap keys show' on the device"
        ) from None
    signing_b64 = public_key_b64(signing_key)
    if layout.office_client_cert(device_id).exists():
        raise EnrollError(
            f"device {device_id}: that name belongs to an office receiver"
            f" ({layout.office_client_cert(device_id)}); a device with it would get the"
            " receiver's broker rights. Give the device another id"
        )
    ca = _load_ca(layout)
    layout.devices.mkdir(parents=True, exist_ok=True)
    record_path = layout.device_record(device_id)
    old: DeviceRecord | None = None
    if record_path.exists():
        old = read_device_record(record_path)
        if old.signing_key != signing_b64 and not replace:
            raise SigningKeyConflict(
                f"device {device_id}: already enrolled ({record_path}) with signing key"
                f" {_kid(old.signing_key)}, this request brings {key_id(signing_key)}; a new"
                " key breaks the device's manifest chain (the office cannot link its next"
                " recording to the previous ones). If the appliance was really re-provisioned,"
                " enrol it again with replace=True"
            )

    cert = _issue(
        ca,
        x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, _org(ca)),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "linetap devices"),
                x509.NameAttribute(NameOID.COMMON_NAME, device_id),
            ]
        ),
        public_key,
        eku=ExtendedKeyUsageOID.CLIENT_AUTH,
        years=CERT_YEARS,
    )
    der = cert.public_bytes(serialization.Encoding.DER)
    record = {
        "device_id": device_id,
        "signing_key": signing_b64,
        "cert_sha256": hashlib.sha256(der).hexdigest(),
        "enrolled_utc": _now().isoformat().replace("+00:00", "Z"),
        "cert_serial": format(cert.serial_number, "x"),
        "cert_not_after_utc": cert.not_valid_after_utc.isoformat().replace("+00:00", "Z"),
        "tls_key": key_type,
    }
    if old is not None and old.signing_key != signing_b64:
        replaced = layout.devices / "replaced"
        replaced.mkdir(exist_ok=True)
        stamp = _now().strftime("%Y%m%dT%H%M%SZ")
        replace_file(replaced / f"{device_id}-{stamp}.json", record_path.read_bytes())
    cert_path = layout.device_cert(device_id)
    replace_file(cert_path, _cert_pem(cert))
    replace_file(record_path, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
    return cert_path


def _kid(b64: str) -> str:
    try:
        return key_id(public_key_from_b64(b64))
    except DeviceKeyError:
        return "(unreadable)"


# --------------------------------------------------------------------------- office clients


def issue_office_client(
    root: Path, name: str = DEFAULT_OFFICE_CLIENT, *, replace: bool = False
) -> tuple[Path, Path]:
    """A client certificate for a head-office receiver; returns ``(cert, key)`` paths.

    ``name`` becomes the certificate CN, i.e. the broker username that the ACL grants
    the office rights (see :func:`render_acl`). Give each receiver process its own name
    (``office-receiver-1``, ``-2``…): the broker uses the username as the client id, so
    two processes with one name would keep disconnecting each other. The key is made
    once (mode 0600) and reused when the certificate is renewed with ``replace=True``.
    """
    layout = CaLayout(Path(root))
    check_name(name, "office client name")
    if layout.device_record(name).exists() or layout.device_cert(name).exists():
        raise EnrollError(
            f"office client {name}: a device is enrolled under that name"
            f" ({layout.device_record(name)}); choose another receiver name"
        )
    cert_path, key_path = layout.office_client_cert(name), layout.office_client_key(name)
    if cert_path.exists() and not replace:
        raise EnrollError(
            f"office client {name}: {cert_path} already exists; use it, or pass replace=True"
            " to renew the certificate"
        )
    ca = _load_ca(layout)
    layout.office.mkdir(mode=0o700, exist_ok=True)
    if key_path.exists():
        loaded = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise EnrollError(f"{key_path}: not an EC key; move it away and issue again")
        key = loaded
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        write_new_file(key_path, private_key_pem(key), 0o600)
    cert = _issue(
        ca,
        x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, _org(ca)),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "linetap office"),
                x509.NameAttribute(NameOID.COMMON_NAME, name),
            ]
        ),
        key.public_key(),
        eku=ExtendedKeyUsageOID.CLIENT_AUTH,
        years=CERT_YEARS,
    )
    replace_file(cert_path, _cert_pem(cert))
    return cert_path, key_path
