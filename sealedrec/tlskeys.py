"""The device's TLS client key and its certificate request (device side of enrolment).

The appliance makes its own TLS key (EC P-256, mode 0600) once; it never leaves the
device. The certificate request carries the device id as its only subject attribute
(CN); the head office signs it with ``headoffice.enroll.enroll_device`` and the broker
uses that CN as the MQTT username, which its ACL confines to ``linetap/{id}/…``.

This key only authenticates the TLS connection. The Ed25519 key that signs manifests
(``sealedrec.keys``) is a separate key and is registered next to the certificate.
"""

from __future__ import annotations

import re
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sealedrec.errors import LinetapError
from sealedrec.keyfiles import read_private_key, write_private_key

# The same id grammar as the topic segment ``{device}`` in sealedrec.protocol.
DEVICE_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
_DEVICE_ID = re.compile(DEVICE_ID_PATTERN)


class TlsKeyError(LinetapError, OSError):
    """The device TLS key is unreadable, of the wrong kind or too widely readable."""


class DeviceIdError(LinetapError, ValueError):
    """A device id that cannot be a certificate CN, an MQTT username and a topic level."""


def check_device_id(device_id: str) -> str:
    """Return ``device_id`` if it is valid, else raise :class:`DeviceIdError`."""
    if not isinstance(device_id, str) or not _DEVICE_ID.fullmatch(device_id):
        raise DeviceIdError(
            f"device id {str(device_id)[:80]!r} is not valid: use 1-64 characters, letters,"
            " digits, '_', '.' or '-', starting with a letter or digit"
        )
    return device_id


def load_or_create_tls_key(key_path: Path) -> ec.EllipticCurvePrivateKey:
    """The device TLS key at ``key_path``; made (EC P-256, mode 0600) when missing.

    An existing key must be a P-256 PEM key readable by its owner only.
    """
    if not key_path.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        try:
            write_private_key(key_path, key)
        except FileExistsError:
            pass  # made concurrently: use that one, below
        except OSError as exc:
            raise TlsKeyError(
                f"upload.key_file {key_path}: cannot create ({exc.strerror}); check that"
                f" {key_path.parent} exists and is writable"
            ) from None
        else:
            return key
    loaded = read_private_key(
        key_path,
        setting="upload.key_file",
        error=TlsKeyError,
        remedy="move it away and run enrolment again to make a new one",
    )
    if not isinstance(loaded, ec.EllipticCurvePrivateKey) or not isinstance(
        loaded.curve, ec.SECP256R1
    ):
        raise TlsKeyError(
            f"upload.key_file {key_path}: not an EC P-256 key; move it away and run"
            " enrolment again to make a new one"
        )
    return loaded


def make_device_csr(key_path: Path, device_id: str) -> bytes:
    """A PEM certificate request with ``CN=device_id`` signed by the device TLS key.

    The key is created at ``key_path`` (mode 0600) if it does not exist yet; running
    this again reuses it, so a lost request can simply be made again.
    """
    check_device_id(device_id)
    key = load_or_create_tls_key(key_path)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)
