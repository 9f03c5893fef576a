"""Key files and durable writes (sealedrec.durable, sealedrec.keyfiles) through their users:
the device signing key and the TLS client key, each with every way a key file goes wrong."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from firmware.tools._provision_files import commit, stage
from sealedrec.durable import atomic_file, replace_file, write_new_file
from sealedrec.keys import DeviceKeyError, create_device_key, load_device_key
from sealedrec.tlskeys import TlsKeyError, load_or_create_tls_key


@pytest.fixture
def loose_umask():
    old = os.umask(0o000)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_new_file_is_exact_and_never_replaces(tmp_path: Path) -> None:
    old = os.umask(0o277)  # a umask that would narrow 0644 to 0400
    try:
        write_new_file(tmp_path / "a", b"one", 0o644)
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a") == 0o644 and (tmp_path / "a").read_bytes() == b"one"
    with pytest.raises(FileExistsError):
        write_new_file(tmp_path / "a", b"two", 0o644)
    assert (tmp_path / "a").read_bytes() == b"one"


def test_replace_file_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "conf"
    replace_file(target, b"v1")
    replace_file(target, b"v2", 0o600)
    assert target.read_bytes() == b"v2" and _mode(target) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conf"]


def fsynced_paths(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The path each fsync'd descriptor names at the time of the fsync, in order."""
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    return synced


@pytest.mark.parametrize("how", ["replace_file", "atomic_file", "provision_commit"])
def test_a_renamed_file_is_synced_under_its_new_name_before_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    # On FAT (the boot partition) a rename leaves the new directory entry at size 0 until
    # the file itself is synced again; fsyncing the folder does not write it (the power-cut
    # test in the VM lost the provisioning request that way). The file's own sync under
    # the new name must come after the rename and before the folder's.
    target = tmp_path / "request.csr"
    synced = fsynced_paths(monkeypatch)
    if how == "replace_file":
        replace_file(target, b"csr")
    elif how == "atomic_file":
        with atomic_file(target) as fh:
            fh.write(b"csr")
    else:
        commit(stage(target, b"csr", None), target)
    assert target.read_bytes() == b"csr"
    assert synced[-2:] == [str(target), str(tmp_path)], synced


def test_replace_file_failure_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "conf"
    replace_file(target, b"old")
    with pytest.raises(TypeError):
        replace_file(target, "not bytes", 0o644)  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conf"]


def test_device_key_made_owner_only_even_with_a_loose_umask(tmp_path: Path, loose_umask) -> None:
    path = tmp_path / "keys" / "device.key"
    key = create_device_key(path)
    assert _mode(path) == 0o600 and _mode(path.parent) == 0o700
    assert load_device_key(path).public_key() == key.public_key()
    with pytest.raises(DeviceKeyError, match="already exists"):
        create_device_key(path)


def _encrypted_pem(key: PrivateKeyTypes) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )


@pytest.mark.parametrize(
    ("content", "mode", "expected"),
    [
        (
            None,
            0o600,
            r"sealing\.device_key .*: not found; create it once with 'linetap keys init'",
        ),
        (b"junk\n", 0o600, r"not an unencrypted PEM private key"),
        ("encrypted", 0o600, r"not an unencrypted PEM private key"),
        ("ec", 0o600, r"not an Ed25519 key"),
        ("good", 0o640, r"readable by others \(mode 640\); run 'chmod 600 "),
    ],
)
def test_device_key_problems_are_one_clear_error(tmp_path: Path, content, mode, expected) -> None:
    path = tmp_path / "device.key"
    if content == "encrypted":
        path.write_bytes(_encrypted_pem(Ed25519PrivateKey.generate()))
    elif content == "ec":
        create_tls = tmp_path / "tls.key"
        load_or_create_tls_key(create_tls)
        path.write_bytes(create_tls.read_bytes())
    elif content == "good":
        create_device_key(path)
    elif content is not None:
        path.write_bytes(content)
    if path.exists():
        path.chmod(mode)
    with pytest.raises(DeviceKeyError, match=expected) as err:
        load_device_key(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    ("content", "mode", "expected"),
    [
        (b"junk\n", 0o600, r"upload\.key_file .*: not an unencrypted PEM private key .*enrolment"),
        ("encrypted", 0o600, r"not an unencrypted PEM private key"),
        ("ed25519", 0o600, r"not an EC P-256 key"),
        ("good", 0o604, r"readable by others \(mode 604\)"),
    ],
)
def test_tls_key_problems_are_one_clear_error(tmp_path: Path, content, mode, expected) -> None:
    path = tmp_path / "tls.key"
    if content == "encrypted":
        path.write_bytes(_encrypted_pem(ec.generate_private_key(ec.SECP256R1())))
    elif content == "ed25519":
        create_device_key(path)
    elif content == "good":
        load_or_create_tls_key(path)
    else:
        path.write_bytes(content)
    path.chmod(mode)
    before = path.read_bytes()
    with pytest.raises(TlsKeyError, match=expected):
        load_or_create_tls_key(path)
    assert path.read_bytes() == before  # a bad key is reported, never replaced


def test_tls_key_made_once_then_reused(tmp_path: Path, loose_umask) -> None:
    path = tmp_path / "keys" / "tls.key"
    made = load_or_create_tls_key(path)
    assert _mode(path) == 0o600
    again = load_or_create_tls_key(path)
    assert again.private_numbers() == made.private_numbers()
