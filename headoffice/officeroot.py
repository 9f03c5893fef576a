"""The office root: where the CA, broker, keys, devices and receivers keep their files.

Layout under the office ``root`` (made by :func:`headoffice.enroll.init_ca`)::

    ca/ca.key  ca/ca.crt          EC P-256 CA, 10 years, CA:TRUE pathlen 0 (ca.key 0600)
    broker/server.key|crt         the broker's TLS server certificate (SAN: DNS + IP)
    broker/ca.crt                 a copy of ca/ca.crt: broker/ is all the broker host needs
    broker/mosquitto.conf, acl    written by headoffice.brokerconf.write_broker_config()
    keys/office.key  office.pub   the age identity recordings are sealed to (key 0600)
    devices/{id}.crt  {id}.json   one per enrolled appliance (headoffice.enroll)
    devices/replaced/             records superseded by enroll_device(replace=True)
    office/{name}.key|crt         client certificates of head-office receivers
    office/share-group            the receivers' shared-subscription group (brokerconf)

The broker takes a client certificate's CN as the MQTT username, so device ids and
office-client names share one namespace (:func:`check_name`). What the receiver and
``verify`` read from here (a device's manifest-signing key) needs nothing of the CA:
this module, not :mod:`headoffice.enroll`, is what they import.
"""

from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519

from sealedrec.errors import LinetapError
from sealedrec.keys import DeviceKeyError, public_key_from_b64
from sealedrec.tlskeys import DEVICE_ID_PATTERN

DEFAULT_OFFICE_CLIENT = "office-receiver"
DEVICE_ID = re.compile(DEVICE_ID_PATTERN)
DNS_NAME = re.compile(r"(?=.{1,253}$)(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)+")


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


def check_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not DEVICE_ID.fullmatch(name):
        raise EnrollError(
            f"{what} {str(name)[:80]!r} is not valid: use 1-64 characters, letters, digits,"
            " '_', '.' or '-', starting with a letter or digit"
        )
    return name


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """What an enrolment record (``devices/{id}.json``) is read for."""

    device_id: object  # as written; checked against the file name by its reader
    signing_key: str  # base64 of the raw Ed25519 manifest-signing public key


def read_device_record(path: Path) -> DeviceRecord:
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
    return DeviceRecord(data.get("device_id"), data["signing_key"])


def _valid_device_id(device_id: object) -> str:
    """``device_id`` if it is a valid device id (so also one path part), else
    :class:`DeviceUnknown`."""
    if not isinstance(device_id, str) or not DEVICE_ID.fullmatch(device_id):
        raise DeviceUnknown(f"device {str(device_id)[:80]!r}: not a valid device id")
    return device_id


def device_signing_key(root: Path, device_id: str) -> ed25519.Ed25519PublicKey:
    """The Ed25519 manifest-signing key registered for ``device_id``.

    Raises :class:`DeviceUnknown` if the device is not enrolled (or the id is not a
    valid device id) and :class:`EnrollError` if its record is damaged.
    """
    layout = CaLayout(Path(root))
    path = layout.device_record(_valid_device_id(device_id))
    if not path.exists():
        raise DeviceUnknown(
            f"device {device_id}: not enrolled ({path} missing); enrol it with enroll_device"
        )
    record = read_device_record(path)
    if record.device_id != device_id:
        raise EnrollError(
            f"{path}: record is for device {record.device_id!r}, not {device_id!r};"
            " restore it from the office backup or re-enrol the device"
        )
    try:
        return public_key_from_b64(record.signing_key)
    except DeviceKeyError:
        raise EnrollError(
            f"{path}: signing_key is not a base64 Ed25519 key; restore it from the office"
            " backup or re-enrol the device"
        ) from None


class DeviceSigningKeys:
    """:func:`device_signing_key` for the receiver, which looks a key up per init: each
    loaded key is kept with its record's identity (inode, size, mtime, ctime), and a
    lookup only stats the record (~3 µs instead of ~50 µs to read and parse it). A
    record replaced (enrolment writes a new file and renames it in) or edited is read
    again; a removed one makes the device unknown at once."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._devices = os.fspath(CaLayout(self.root).devices)  # a str: Path joins cost
        self._keys: dict[str, tuple[tuple[int, int, int, int], ed25519.Ed25519PublicKey]] = {}
        self._mutex = threading.Lock()

    def __call__(self, device_id: str) -> ed25519.Ed25519PublicKey:
        try:
            st = os.stat(os.path.join(self._devices, f"{_valid_device_id(device_id)}.json"))
        except OSError:
            return device_signing_key(self.root, device_id)  # its errors name the fix
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        with self._mutex:
            known = self._keys.get(device_id)
        if known is not None and known[0] == stamp:
            return known[1]
        # Stamped before reading: a record changed in between is read again next time.
        key = device_signing_key(self.root, device_id)
        with self._mutex:
            self._keys[device_id] = (stamp, key)
        return key


def office_clients(root: Path) -> list[str]:
    """Names of the issued office receiver certificates, sorted."""
    office = CaLayout(Path(root)).office
    if not office.is_dir():
        return []
    return sorted(p.stem for p in office.glob("*.crt") if DEVICE_ID.fullmatch(p.stem))
