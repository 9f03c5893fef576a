"""The head office's small certificate authority: broker, devices and office receivers.

Layout under the office ``root`` (made by :func:`init_ca`)::

    ca/ca.key  ca/ca.crt          EC P-256 CA, 10 years, CA:TRUE pathlen 0 (ca.key 0600)
    broker/server.key|crt         the broker's TLS server certificate (SAN: DNS + IP)
    broker/ca.crt                 a copy of ca/ca.crt: broker/ is all the broker host needs
    broker/mosquitto.conf, acl    written by write_broker_config()
    keys/office.key  office.pub   the age identity recordings are sealed to (key 0600)
    devices/{id}.crt  {id}.json   one per enrolled appliance (see enroll_device)
    devices/replaced/             records superseded by enroll_device(replace=True)
    office/{name}.key|crt         client certificates of head-office receivers

The broker takes a client certificate's CN as the MQTT username
(``use_identity_as_username``) and its ACL confines a device to ``linetap/{CN}/…``. So
device ids and office-client names share one namespace: neither may take the other's.

A device record (``devices/{id}.json``) also holds the device's Ed25519 manifest-signing
public key; the receiver reads it with :func:`device_signing_key`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import ipaddress
import json
import re
import secrets
import string
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

from sealedrec import age
from sealedrec.durable import replace_file, write_new_file
from sealedrec.errors import LinetapError
from sealedrec.keyfiles import private_key_pem
from sealedrec.keys import DeviceKeyError, key_id, public_key_b64, public_key_from_b64
from uploader.protocol import MAX_CHUNK_SIZE, up_filter
from uploader.tlskeys import DEVICE_ID_PATTERN, make_device_csr

__all__ = [
    "DEFAULT_OFFICE_CLIENT",
    "CaExists",
    "CaLayout",
    "CaMissing",
    "DeviceUnknown",
    "EnrollError",
    "OfficeSetup",
    "SigningKeyConflict",
    "device_signing_key",
    "enroll_device",
    "init_ca",
    "issue_broker_cert",
    "issue_office_client",
    "make_device_csr",
    "office_clients",
    "office_share_filter",
    "office_share_group",
    "render_acl",
    "render_mosquitto_conf",
    "write_broker_config",
]

DEFAULT_OFFICE_CLIENT = "office-receiver"
CA_YEARS = 10
CERT_YEARS = 3
# A 4 MiB chunk plus the fixed header, topic, user properties and MQTT 5 properties.
MAX_PACKET_SIZE = MAX_CHUNK_SIZE + 64 * 1024

_ID = re.compile(DEVICE_ID_PATTERN)
_DNS = re.compile(r"(?=.{1,253}$)(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)+")
_SHARE_GROUP = re.compile(r"office-[0-9a-f]{32}")
_CLOCK_SKEW = dt.timedelta(minutes=5)
_BROKER_FILES = Path(__file__).resolve().parent / "broker"


class EnrollError(LinetapError, ValueError):
    """Enrolment failed: a bad request, a conflicting record or an unusable CA layout."""


class CaExists(EnrollError):
    """init_ca was asked to make a CA where one (or part of one) already exists."""


class CaMissing(EnrollError):
    """No CA under the office root: run init_ca first."""


class SigningKeyConflict(EnrollError):
    """A re-enrolment would change a device's manifest-signing key."""


class DeviceUnknown(EnrollError, LookupError):
    """No enrolment record for a device id."""


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True, slots=True)
class CaLayout:
    root: Path

    @property
    def ca_key(self) -> Path:
        return self.root / "ca" / "ca.key"

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca" / "ca.crt"

    @property
    def broker_ca(self) -> Path:
        """A copy of ca.crt next to the broker's files (ca/ stays private to the CA)."""
        return self.root / "broker" / "ca.crt"

    @property
    def server_key(self) -> Path:
        return self.root / "broker" / "server.key"

    @property
    def server_cert(self) -> Path:
        return self.root / "broker" / "server.crt"

    @property
    def broker_conf(self) -> Path:
        return self.root / "broker" / "mosquitto.conf"

    @property
    def broker_acl(self) -> Path:
        return self.root / "broker" / "acl"

    @property
    def office_key(self) -> Path:
        return self.root / "keys" / "office.key"

    @property
    def office_pub(self) -> Path:
        return self.root / "keys" / "office.pub"

    @property
    def devices(self) -> Path:
        return self.root / "devices"

    @property
    def office(self) -> Path:
        return self.root / "office"

    def device_cert(self, device_id: str) -> Path:
        return self.devices / f"{device_id}.crt"

    def device_record(self, device_id: str) -> Path:
        return self.devices / f"{device_id}.json"

    def office_client_cert(self, name: str) -> Path:
        return self.office / f"{name}.crt"

    def office_client_key(self, name: str) -> Path:
        return self.office / f"{name}.key"


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


def _check_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not _ID.fullmatch(name):
        raise EnrollError(
            f"{what} {str(name)[:80]!r} is not valid: use 1-64 characters, letters, digits,"
            " '_', '.' or '-', starting with a letter or digit"
        )
    return name


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
        if not isinstance(name, str) or not _DNS.fullmatch(name):
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
            " one, the device id; make it with uploader.tlskeys.make_device_csr"
        )
    value = cns[0].value
    cn = value if isinstance(value, str) else value.decode("utf-8", "replace")
    if not _ID.fullmatch(cn):
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


def _read_record(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise EnrollError(
            f"{path}: unreadable device record ({exc}); restore it from the office backup"
            " or re-enrol the device"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("signing_key"), str):
        raise EnrollError(
            f"{path}: not a device record (no signing_key); restore it from the office backup"
            " or re-enrol the device"
        )
    return data


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
    old: dict[str, Any] | None = None
    if record_path.exists():
        old = _read_record(record_path)
        if old["signing_key"] != signing_b64 and not replace:
            raise SigningKeyConflict(
                f"device {device_id}: already enrolled ({record_path}) with signing key"
                f" {_kid(old['signing_key'])}, this request brings {key_id(signing_key)}; a new"
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
    if old is not None and old["signing_key"] != signing_b64:
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


def device_signing_key(root: Path, device_id: str) -> ed25519.Ed25519PublicKey:
    """The Ed25519 manifest-signing key registered for ``device_id``.

    Raises :class:`DeviceUnknown` if the device is not enrolled (or the id is not a
    valid device id) and :class:`EnrollError` if its record is damaged.
    """
    layout = CaLayout(Path(root))
    if not isinstance(device_id, str) or not _ID.fullmatch(device_id):
        raise DeviceUnknown(f"device {str(device_id)[:80]!r}: not a valid device id")
    path = layout.device_record(device_id)
    if not path.exists():
        raise DeviceUnknown(
            f"device {device_id}: not enrolled ({path} missing); enrol it with enroll_device"
        )
    record = _read_record(path)
    if record.get("device_id") != device_id:
        raise EnrollError(
            f"{path}: record is for device {record.get('device_id')!r}, not {device_id!r};"
            " restore it from the office backup or re-enrol the device"
        )
    try:
        return public_key_from_b64(record["signing_key"])
    except DeviceKeyError:
        raise EnrollError(
            f"{path}: signing_key is not a base64 Ed25519 key; restore it from the office"
            " backup or re-enrol the device"
        ) from None


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
    _check_name(name, "office client name")
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


def office_clients(root: Path) -> list[str]:
    """Names of the issued office receiver certificates, sorted."""
    office = CaLayout(Path(root)).office
    if not office.is_dir():
        return []
    return sorted(p.stem for p in office.glob("*.crt") if _ID.fullmatch(p.stem))


def office_share_group(root: Path) -> str:
    """The MQTT 5 shared-subscription group of the office receivers (made once, random).

    Mosquitto 2.0's ACL file does not apply to SUBSCRIBE: any client may join any share
    group, and the broker then hands that member its round-robin share of the uploads,
    which the ACL read check silently drops. A group name the devices cannot guess keeps
    them out. Stored in ``office/share-group`` (mode 0600).
    """
    layout = CaLayout(Path(root))
    path = layout.office / "share-group"
    if not path.exists():
        layout.office.mkdir(parents=True, mode=0o700, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # made concurrently: use that one
            write_new_file(path, f"office-{secrets.token_hex(16)}\n".encode(), 0o600)
    group = path.read_text(encoding="utf-8", errors="replace").strip()
    if not _SHARE_GROUP.fullmatch(group):
        raise EnrollError(
            f"{path}: not a share-group name (office-<32 hex digits>); delete it to make a new"
            " one, then restart every receiver"
        )
    return group


def office_share_filter(root: Path) -> str:
    """``$share/{group}/linetap/+/up/#``: what every office receiver subscribes to."""
    return f"$share/{office_share_group(root)}/{up_filter()}"


# --------------------------------------------------------------------------- broker config


def _template(name: str) -> str:
    path = _BROKER_FILES / name
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise EnrollError(
            f"{path}: broker template missing ({exc.strerror}); reinstall linetap (the"
            " headoffice/broker files must ship with the package)"
        ) from None


def _conf_path(path: Path, what: str) -> str:
    text = str(Path(path).resolve())
    if any(c.isspace() for c in text) or not text.isprintable():
        raise EnrollError(
            f"{what} {text!r}: mosquitto.conf cannot hold a path with spaces or control"
            " characters; move the office root to a plain path"
        )
    return text


def render_acl(
    office_names: Sequence[str] = (DEFAULT_OFFICE_CLIENT,),
    blocked_devices: Sequence[str] = (),
) -> str:
    """The broker ACL (``headoffice/broker/acl``) with one block per office receiver.

    ``blocked_devices`` get a ``topic deny #`` block: they can still complete
    TLS (there is no certificate revocation list yet) but can publish and receive
    nothing. Use it for a stolen or retired appliance, then reload the broker (SIGHUP).
    """
    text = _template("acl")
    marker = f"\nuser {DEFAULT_OFFICE_CLIENT}\n"
    head, found, block = text.partition(marker)
    if not found:
        raise EnrollError(
            f"{_BROKER_FILES / 'acl'}: no 'user {DEFAULT_OFFICE_CLIENT}' block to copy for"
            " each office receiver; restore the file from the linetap sources"
        )
    if not office_names:
        raise EnrollError("broker ACL: no office receiver names; issue_office_client first")
    out = [head, "\n"]
    for name in office_names:
        _check_name(name, "office client name")
        out.append(f"user {name}\n{block}")
        if not block.endswith("\n"):
            out.append("\n")
    if blocked_devices:
        out.append("\n# Blocked devices: certificate still valid, every topic denied.\n")
        for device in blocked_devices:
            _check_name(device, "blocked device id")
            if device in office_names:
                raise EnrollError(f"broker ACL: {device} is both an office receiver and blocked")
            out.append(f"user {device}\ntopic deny #\n")
    return "".join(out)


def render_mosquitto_conf(
    root: Path,
    port: int = 8883,
    *,
    persistence_location: Path,
    acl_file: Path | None = None,
    bind_address: str | None = None,
    max_packet_size: int = MAX_PACKET_SIZE,
    max_queued_messages: int = 1000,
    autosave_interval_s: int = 300,
    persistent_client_expiration: str = "14d",
    log_dest: str = "stderr",
    run_as_user: str | None = None,
) -> str:
    """mosquitto.conf for the office broker from ``headoffice/broker/mosquitto.conf.template``.

    One TLS listener on ``port`` (all addresses unless ``bind_address``), client
    certificates required and their CN used as username and client id, the ACL at
    ``acl_file`` (default ``root/broker/acl``, see :func:`write_broker_config`).
    ``run_as_user``: the user mosquitto drops to when started as root (mosquitto's
    default is ``mosquitto``); it must be able to read the key files and write
    ``persistence_location``.
    """
    layout = CaLayout(Path(root))
    if not 1 <= port <= 65535:
        raise EnrollError(f"broker port {port}: must be 1-65535")
    if max_packet_size < MAX_CHUNK_SIZE + 1024:
        raise EnrollError(
            f"max_packet_size {max_packet_size}: too small for a {MAX_CHUNK_SIZE}-byte chunk;"
            f" use at least {MAX_PACKET_SIZE}"
        )
    for path in (layout.broker_ca, layout.server_cert, layout.server_key):
        if not path.exists():
            raise CaMissing(f"{path}: missing; run init_ca({str(layout.root)!r}, ...) first")
    listener = str(port)
    if bind_address:
        try:
            ipaddress.ip_address(bind_address)
        except ValueError:
            if not _DNS.fullmatch(bind_address):
                raise EnrollError(
                    f"bind address {bind_address!r}: not an IP address or host"
                ) from None
        listener += f" {bind_address}"
    if run_as_user is not None and not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}\$?", run_as_user):
        raise EnrollError(f"run_as_user {run_as_user!r}: not a user name")
    if not re.fullmatch(r"[0-9]+[hdwmy]?", persistent_client_expiration):
        raise EnrollError(
            f"persistent_client_expiration {persistent_client_expiration!r}: use e.g. '14d'"
        )
    if not re.fullmatch(r"(stderr|stdout|syslog|topic|dlt|none|file /\S+)", log_dest):
        raise EnrollError(
            f"log_dest {log_dest!r}: use stderr, stdout, syslog, none or 'file /path'"
        )
    values = {
        "listener": listener,
        "cafile": _conf_path(layout.broker_ca, "cafile"),
        "certfile": _conf_path(layout.server_cert, "certfile"),
        "keyfile": _conf_path(layout.server_key, "keyfile"),
        "acl_file": _conf_path(acl_file or layout.broker_acl, "acl_file"),
        "persistence_location": _conf_path(persistence_location, "persistence_location") + "/",
        "autosave_interval": str(int(autosave_interval_s)),
        "persistent_client_expiration": persistent_client_expiration,
        "max_packet_size": str(int(max_packet_size)),
        "max_queued_messages": str(int(max_queued_messages)),
        "log_dest": log_dest,
        "user_line": f"user {run_as_user}" if run_as_user else "# user mosquitto  (default)",
    }
    try:
        return string.Template(_template("mosquitto.conf.template")).substitute(values)
    except (KeyError, ValueError) as exc:
        raise EnrollError(
            f"{_BROKER_FILES / 'mosquitto.conf.template'}: bad placeholder {exc}; restore the"
            " file from the linetap sources"
        ) from None


def write_broker_config(
    root: Path,
    port: int = 8883,
    *,
    persistence_location: Path | None = None,
    office_names: Sequence[str] | None = None,
    blocked_devices: Sequence[str] = (),
    **options: Any,
) -> Path:
    """Write ``root/broker/acl`` and ``root/broker/mosquitto.conf``; returns the conf path.

    ``office_names`` defaults to every issued office client (:func:`office_clients`), or
    ``office-receiver`` if none is issued yet. ``persistence_location`` defaults to
    ``root/broker/data``. Other options go to :func:`render_mosquitto_conf`. Re-run it
    after issuing another office client or changing ``blocked_devices``, then send the
    broker SIGHUP (mosquitto re-reads the ACL file) or restart it.
    """
    layout = CaLayout(Path(root))
    names = list(office_names) if office_names is not None else office_clients(layout.root)
    acl = render_acl(names or [DEFAULT_OFFICE_CLIENT], blocked_devices)
    data_dir = persistence_location or layout.root / "broker" / "data"
    conf = render_mosquitto_conf(
        layout.root,
        port,
        persistence_location=data_dir,
        acl_file=layout.broker_acl,
        **options,
    )
    Path(data_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    replace_file(layout.broker_acl, acl.encode())
    replace_file(layout.broker_conf, conf.encode())
    return layout.broker_conf
