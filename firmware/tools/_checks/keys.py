"""Signing key, head-office recipients, TLS key, certificate and CA."""

from __future__ import annotations

import dataclasses
import os
import pwd
import stat
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from firmware.config import (
    SealingConfig,
    UploadConfig,
)
from firmware.tools._checks.base import (
    _GROUP_OTHER,
    CERT_WARN_DAYS,
    Check,
    Status,
    _combine,
    split_fix,
)


def _private_key_file(check_id: str, key: str, path: Path) -> tuple[Check | None, bytes]:
    """Common checks of a private key file: exists, owner-only mode, readable."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return Check(check_id, Status.FAIL, f"{key} {path}: does not exist"), b""
    except OSError as exc:
        return Check(check_id, Status.FAIL, f"{key} {path}: {exc.strerror or exc}"), b""
    if not stat.S_ISREG(st.st_mode):
        return Check(check_id, Status.FAIL, f"{key} {path}: not a regular file"), b""
    mode = stat.S_IMODE(st.st_mode)
    if mode & _GROUP_OTHER:
        return Check(
            check_id,
            Status.FAIL,
            f"{key} {path}: mode {mode:04o}, a private key must be readable by its owner only",
            f"chmod 600 {path}",
        ), b""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return Check(
            check_id,
            Status.FAIL,
            f"{key} {path}: cannot read ({exc.strerror or exc}) as {_whoami()}",
            f"run the check as root or as the service's user; the key must belong to the"
            f" user the service runs as ('chown USER {path}')",
        ), b""
    return None, data


def _whoami() -> str:
    return _user(os.geteuid())


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _mode_owner(path: Path) -> str:
    """``mode 0600, owner linetap``: what an installer compares with the service's user."""
    st = path.stat()
    return f"mode {stat.S_IMODE(st.st_mode):04o}, owner {_user(st.st_uid)}"


def check_device_key(path: Path) -> Check:
    """The Ed25519 manifest-signing key: present, 0600, loads."""
    from sealedrec.keys import DeviceKeyError, key_id, load_device_key

    problem, _ = _private_key_file("keys.device", "sealing.device_key", path)
    if problem is not None:
        if problem.fix is None:
            problem = dataclasses.replace(
                problem, fix="create it once with 'linetap keys init' (then enrol the device)"
            )
        return problem
    try:
        key = load_device_key(path)
    except DeviceKeyError as exc:
        message, fix = split_fix(str(exc))
        return Check(
            "keys.device",
            Status.FAIL,
            message,
            fix or "restore the device's own key from its backup; a new key needs re-enrolment",
        )
    return Check(
        "keys.device",
        Status.PASS,
        f"sealing.device_key {path}: Ed25519, key id {key_id(key.public_key())},"
        f" {_mode_owner(path)}",
    )


def check_recipients(sealing: SealingConfig, storage_format: str) -> Check:
    """The head office's age keys the recordings are sealed to."""
    from sealedrec.age import AgeError, parse_recipient

    if not sealing.recipients:
        if storage_format == "sealed":
            return Check(
                "recipients",
                Status.FAIL,
                "sealing.recipients is empty: recordings cannot be sealed",
                "add the head office's key(s) from 'linetap-office init' / 'enroll'",
            )
        return Check(
            "recipients", Status.INFO, 'none configured (storage.format = "wav" seals nothing)'
        )
    found: list[tuple[Status, str, str | None]] = []
    for i, text in enumerate(sealing.recipients):
        try:
            parse_recipient(text)
        except AgeError as exc:
            found.append(
                (
                    Status.FAIL,
                    f"sealing.recipients[{i}]: {exc}",
                    "paste the key exactly as 'linetap-office enroll' printed it",
                )
            )
    if len(set(sealing.recipients)) != len(sealing.recipients):
        found.append(
            (Status.WARN, "sealing.recipients lists a key twice", "list each office key once")
        )
    shown = ", ".join(f"{r[:12]}…{r[-4:]}" for r in sealing.recipients)
    count = len(sealing.recipients)
    return _combine("recipients", found, f"{count} head-office key(s): {shown}")


# -- TLS ----------------------------------------------------------------------------------


def _load_certs(path: Path) -> list[Any]:
    from cryptography import x509

    return list(x509.load_pem_x509_certificates(path.read_bytes()))


def _validity(what: str, cert: Any, now: datetime) -> tuple[Status, str, str | None] | None:
    after: datetime = cert.not_valid_after_utc
    before: datetime = cert.not_valid_before_utc
    if now < before:
        return (
            Status.FAIL,
            f"{what} is not valid before {before:%Y-%m-%d %H:%M} UTC",
            "the system clock is probably wrong: sync it (see the clock check)",
        )
    if now > after:
        return (
            Status.FAIL,
            f"{what} expired on {after:%Y-%m-%d}",
            "renew it: 'linetap keys csr' here, 'linetap-office enroll-device' at the office",
        )
    if after - now < timedelta(days=CERT_WARN_DAYS):
        return (
            Status.WARN,
            f"{what} expires on {after:%Y-%m-%d}",
            "renew it now: 'linetap keys csr' here, 'linetap-office enroll-device' at the office",
        )
    return None


def _spki(public_key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    der: bytes = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


_ENROL = "from enrolment ('linetap keys csr', then 'linetap-office enroll-device')"
_Finding = tuple[Status, str, str | None]


def _check_ca(ca_file: Path | None, now: datetime) -> tuple[Check, list[Any]]:
    """upload.ca_file: PEM CA certificate(s), valid now. Returns them for the cert check."""
    from cryptography import x509

    fix = "copy the head office's ca.crt there ('linetap-office init' made it)"
    if ca_file is None:
        return Check("tls.ca", Status.FAIL, "upload.ca_file is not set", fix), []
    try:
        certs = _load_certs(ca_file)
    except OSError as exc:
        return Check("tls.ca", Status.FAIL, f"upload.ca_file {ca_file}: {exc.strerror}", fix), []
    except ValueError as exc:
        message = f"upload.ca_file {ca_file}: not a PEM certificate ({exc})"
        return Check("tls.ca", Status.FAIL, message, fix), []
    found: list[_Finding] = []
    for cert in certs:
        subject = cert.subject.rfc4514_string()
        try:
            is_ca = bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            found.append((Status.FAIL, f"{subject} in upload.ca_file is not a CA", fix))
        bad = _validity(f"CA certificate {subject}", cert, now)
        if bad:
            found.append(bad)
    names = "; ".join(c.subject.rfc4514_string() for c in certs)
    return _combine("tls.ca", found, f"upload.ca_file {ca_file}: {names}"), certs


def _check_tls_key(key_file: Path | None) -> tuple[Check, Any]:
    """upload.key_file: owner-only, an unencrypted PEM private key. Returns the key."""
    from cryptography.hazmat.primitives import serialization

    if key_file is None:
        return Check(
            "tls.key", Status.FAIL, "upload.key_file is not set", f"make it {_ENROL}"
        ), None
    problem, data = _private_key_file("tls.key", "upload.key_file", key_file)
    if problem is not None:
        return (
            problem if problem.fix else dataclasses.replace(problem, fix=f"make it {_ENROL}")
        ), None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        message = f"upload.key_file {key_file}: not an unencrypted PEM private key ({exc})"
        return Check("tls.key", Status.FAIL, message, f"make a new one {_ENROL}"), None
    kind = type(key).__name__.removeprefix("_")
    message = f"upload.key_file {key_file}: {kind}, {_mode_owner(key_file)}"
    return Check("tls.key", Status.PASS, message), key


def _check_tls_cert(
    upload: UploadConfig, device_id: str, now: datetime, cas: list[Any], key: Any
) -> Check:
    """upload.cert_file: valid now, for this device, of this key, issued by the CA."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.x509.oid import NameOID

    path = upload.cert_file
    fix = f"put this device's certificate there, {_ENROL}"
    if path is None:
        return Check("tls.cert", Status.FAIL, "upload.cert_file is not set", fix)
    try:
        cert = _load_certs(path)[0]
    except OSError as exc:
        return Check("tls.cert", Status.FAIL, f"upload.cert_file {path}: {exc.strerror}", fix)
    except (ValueError, IndexError) as exc:
        message = f"upload.cert_file {path}: not a PEM certificate ({exc})"
        return Check("tls.cert", Status.FAIL, message, fix)
    cns = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    cn = cns[0] if cns else "(no CN)"
    found: list[_Finding] = []
    bad = _validity(f"the certificate for {cn}", cert, now)
    if bad:
        found.append(bad)
    if cn != device_id:
        found.append(
            (
                Status.FAIL,
                f"the certificate is for {cn!r} but this device is {device_id!r}: the broker"
                " would confine it to another device's topics",
                "set device_id to the enrolled name, or enrol this device under its id",
            )
        )
    if key is not None and _spki(cert.public_key()) != _spki(key.public_key()):
        found.append(
            (
                Status.FAIL,
                f"the certificate does not belong to upload.key_file {upload.key_file}",
                "use the certificate issued for this key's request ('linetap keys csr')",
            )
        )

    def issued_by(ca: Any) -> bool:
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True

    if cas and not any(issued_by(ca) for ca in cas):
        found.append(
            (
                Status.FAIL,
                f"the certificate was not issued by upload.ca_file {upload.ca_file}",
                "the device certificate and the CA must come from the same head office",
            )
        )
    after = cert.not_valid_after_utc
    ok = f"upload.cert_file {path}: CN {cn}, valid until {after:%Y-%m-%d}"
    if key is not None:
        ok += ", matches the key"
    if cas:
        ok += ", issued by the CA"
    return _combine("tls.cert", found, ok)


def check_tls(upload: UploadConfig, device_id: str, now: datetime) -> list[Check]:
    """upload.ca_file, cert_file and key_file: present, parse, valid now, belong together."""
    if not upload.tls:
        return [
            Check(
                "tls",
                Status.WARN,
                "upload.tls = false: uploads travel unencrypted and unauthenticated",
                "for a test broker only; set upload.tls = true with ca_file, cert_file and"
                " key_file from enrolment",
            )
        ]
    ca_check, cas = _check_ca(upload.ca_file, now)
    key_check, key = _check_tls_key(upload.key_file)
    return [ca_check, _check_tls_cert(upload, device_id, now, cas, key), key_check]


# -- broker -------------------------------------------------------------------------------
