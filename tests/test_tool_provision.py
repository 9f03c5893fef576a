"""`linetap provision`: keys and request, certificate checks and install, first boot from
the boot partition (happy path through a real mTLS connection, bad settings) and crash
safety: a forked run is SIGKILLed before each of its filesystem changes in turn, and
the device must then be fully provisioned or not at all, and a re-run must finish it."""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import hashlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import traceback
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from firmware.config import load_config
from firmware.tools._firstboot import FirstBoot, first_boot
from firmware.tools._provision_files import DevicePaths
from headoffice import enroll
from headoffice.enroll import CaLayout, OfficeSetup
from sealedrec import protocol
from sealedrec.keys import load_device_key, public_key_b64
from sealedrec.tlskeys import load_or_create_tls_key
from tests.conftest import VENV_BIN
from tests.helpers import mounted_tmpfs
from tests.mqtt_broker import MqttProbe, office_broker_conf, run_mosquitto

LINETAP = [str(VENV_BIN / "linetap")]
DEVICE = "shop-12"


def linetap(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LINETAP, *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Run:
    """``linetap`` in this process (the real parser, error printing and exit codes,
    without a start-up per call); ``linetap()`` runs the installed command."""
    from firmware.cli import main

    def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
        capsys.readouterr()
        argv = [str(a) for a in args]
        code = main(argv)
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(argv, code, out, err)

    return run


@pytest.fixture(scope="module")
def office(tmp_path_factory: pytest.TempPathFactory) -> OfficeSetup:
    return enroll.init_ca(tmp_path_factory.mktemp("office") / "root", "Test Office")


def device_config(
    root: Path, office: OfficeSetup, *, port: int = 8883, device: str = DEVICE
) -> str:
    data = root / "data"
    return f"""# settings for one appliance, edited by the installer
device_id = "{device}"
[audio]
backend = "file"
file = "line.wav"
channels = 2
[gpio]
backend = "sim"
[storage]
data_dir = "{data}"
runtime_dir = "{root / "run"}"
[sealing]
recipients = ["{office.recipient}"]
[upload]
host = "127.0.0.1"
port = {port}
ca_file = "{data}/keys/ca.crt"
cert_file = "{data}/keys/device.crt"
key_file = "{data}/keys/device-tls.key"
[[lines]]
name = "line1"
channel = 0
hook_pin = 17
led_pin = 22
"""


@dataclass
class Device:
    """A device's filesystem: boot partition, /etc link into the data partition."""

    root: Path

    def __post_init__(self) -> None:
        self.boot.mkdir(parents=True, exist_ok=True)
        self.link.parent.mkdir(parents=True, exist_ok=True)
        if not self.link.is_symlink():
            self.link.symlink_to(self.target)  # dangling until provisioned, as on the image

    @property
    def boot(self) -> Path:
        return self.root / "boot"

    @property
    def link(self) -> Path:
        return self.root / "etc" / "linetap.toml"

    @property
    def target(self) -> Path:
        return self.root / "data" / "config" / "linetap.toml"

    @property
    def marker(self) -> Path:
        return self.root / "data" / "provisioned.json"  # storage.data_dir

    @property
    def boot_file(self) -> Path:
        return self.boot / "linetap.toml"

    @property
    def keys(self) -> Path:
        return self.root / "data" / "keys"

    def run(self, *, force: bool = False) -> int:
        return first_boot(FirstBoot.of(self.boot, self.link), force=force)


def sha256(data: str | bytes) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def assert_provisioned(dev: Device, text: str) -> DevicePaths:
    """Everything a provisioned device has, consistent with each other and with ``text``."""
    marker = json.loads(dev.marker.read_text())
    assert dev.link.is_symlink() and dev.target.read_text() == text
    assert mode(dev.target) == 0o644
    assert marker["config_sha256"] == sha256(text)
    paths = DevicePaths.of(load_config(dev.link))
    assert marker["device_id"] == paths.device_id == DEVICE
    signing = load_device_key(paths.signing_key)  # also checks it is private (0600)
    assert mode(paths.signing_key) == 0o600
    assert public_key_b64(signing.public_key()) == marker["signing_key"]
    assert paths.tls_key.exists() and mode(paths.tls_key) == 0o600
    tls_public = load_or_create_tls_key(paths.tls_key).public_key()
    csr = x509.load_pem_x509_csr(paths.csr.read_bytes())
    assert csr.is_signature_valid and csr.public_key() == tls_public
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == DEVICE
    request = dev.boot / "linetap-request"
    assert (request / f"{DEVICE}.csr").read_bytes() == paths.csr.read_bytes()
    assert (request / f"{DEVICE}.signing-key").read_text().strip() == marker["signing_key"]
    assert marker["signing_key"] in (request / "ENROL.txt").read_text()
    return paths


def leftovers(dev: Device) -> list[Path]:
    return sorted(p for p in dev.root.rglob(".provision-*") if p.is_file())


def enrol(office: OfficeSetup, dev: Device, *, into_boot: bool = True) -> bytes:
    """The office side: enrol the request from the boot partition, hand back the cert."""
    request = dev.boot / "linetap-request"
    cert_path = enroll.enroll_device(
        office.root,
        (request / f"{DEVICE}.csr").read_bytes(),
        (request / f"{DEVICE}.signing-key").read_text(),
        replace=True,  # the office fixture is shared by the tests of this module
    )
    cert = cert_path.read_bytes()
    if into_boot:
        (dev.boot / "linetap-cert").mkdir(exist_ok=True)
        (dev.boot / "linetap-cert" / "device.crt").write_bytes(cert)
        shutil.copy(office.ca_cert, dev.boot / "linetap-cert" / "ca.crt")
    return cert


# -- init and install-cert ----------------------------------------------------------------


def test_init_makes_keys_once_and_prints_what_the_office_needs(cli: Run, tmp_path: Path, office):
    conf = tmp_path / "linetap.toml"
    conf.write_text(device_config(tmp_path, office))
    res = linetap("provision", "init", "-c", conf)
    assert res.returncode == 0, res.stderr
    keys = tmp_path / "data" / "keys"
    signing = load_device_key(keys / "device.key")
    b64 = public_key_b64(signing.public_key())
    assert f"signing key {keys / 'device.key'} (created)" in res.stdout
    assert f"TLS key {keys / 'device-tls.key'} (created)" in res.stdout
    assert f"certificate request {keys / 'shop-12.csr'}" in res.stdout
    assert f"--csr {keys / 'shop-12.csr'} --signing-key {b64}" in res.stdout
    assert mode(keys / "device.key") == mode(keys / "device-tls.key") == 0o600
    csr = (keys / "shop-12.csr").read_bytes()
    tls = (keys / "device-tls.key").read_bytes()
    again = cli("provision", "init", "-c", conf)
    assert again.returncode == 0
    assert f"signing key {keys / 'device.key'} (exists)" in again.stdout
    assert "TLS key" in again.stdout and "(exists)" in again.stdout
    assert b64 in again.stdout
    # Idempotent: same keys, same request.
    assert (keys / "device-tls.key").read_bytes() == tls
    assert (keys / "shop-12.csr").read_bytes() == csr
    # What init made is what the office enrols.
    cert = enroll.enroll_device(office.root, csr, b64, replace=True)
    assert x509.load_pem_x509_certificate(cert.read_bytes()).public_key() == (
        load_or_create_tls_key(keys / "device-tls.key").public_key()
    )


def _issue(
    ca_root: Path,
    public_key: Any,
    *,
    cn: str = DEVICE,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    eku: x509.ObjectIdentifier = ExtendedKeyUsageOID.CLIENT_AUTH,
) -> bytes:
    """A certificate signed by the office CA with chosen flaws."""
    layout = CaLayout(ca_root)
    ca_key = serialization.load_pem_private_key(layout.ca_key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca = x509.load_pem_x509_certificate(layout.ca_cert.read_bytes())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - dt.timedelta(days=1))
        .not_valid_after(not_after or now + dt.timedelta(days=365))
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def test_install_cert_checks_everything_before_it_replaces_anything(
    cli: Run, tmp_path: Path, office: OfficeSetup
):
    conf = tmp_path / "linetap.toml"
    conf.write_text(device_config(tmp_path, office))
    assert cli("provision", "init", "-c", conf).returncode == 0
    keys = tmp_path / "data" / "keys"
    device_public = load_or_create_tls_key(keys / "device-tls.key").public_key()
    signing = public_key_b64(load_device_key(keys / "device.key").public_key())
    ca = office.ca_cert

    def install(cert: bytes, ca_file: Path = ca) -> subprocess.CompletedProcess[str]:
        path = tmp_path / "offered.crt"
        path.write_bytes(cert)
        return cli("provision", "install-cert", path, "--ca", ca_file, "-c", conf)

    other_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    other_office = enroll.init_ca(tmp_path / "other-office", "Other Office")
    wrong_ca_cert = enroll.enroll_device(
        other_office.root, (keys / "shop-12.csr").read_bytes(), signing
    ).read_bytes()
    now = dt.datetime.now(dt.UTC)
    bad: list[tuple[bytes, Path, str]] = [
        (b"not a certificate\n", ca, "not a PEM certificate"),
        (_issue(office.root, other_key), ca, "issued for another key, not this device's TLS key"),
        (wrong_ca_cert, ca, "not signed by the CA in"),
        (
            _issue(
                office.root,
                device_public,
                not_before=now - dt.timedelta(days=800),
                not_after=now - dt.timedelta(days=1),
            ),
            ca,
            "expired on",
        ),
        (_issue(office.root, device_public, cn="shop-99"), ca, "issued to 'shop-99', but this"),
        (
            _issue(office.root, device_public, eku=ExtendedKeyUsageOID.SERVER_AUTH),
            ca,
            "not a TLS client certificate",
        ),
        (_issue(office.root, device_public), office.server_cert, "not a CA certificate"),
    ]
    for cert, ca_file, message in bad:
        res = install(cert, ca_file)
        assert res.returncode == 1, (message, res.stdout, res.stderr)
        [line] = res.stderr.splitlines()
        assert line.startswith("linetap provision: ") and message in line, (message, line)
        assert not (keys / "device.crt").exists() and not (keys / "ca.crt").exists(), message
    # No CA given and none installed yet.
    good = enroll.enroll_device(
        office.root, (keys / "shop-12.csr").read_bytes(), signing, replace=True
    ).read_bytes()
    (tmp_path / "good.crt").write_bytes(good)
    res = cli("provision", "install-cert", tmp_path / "good.crt", "-c", conf)
    assert res.returncode == 1 and "give --ca" in res.stderr
    res = install(good)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"installed: certificate for {DEVICE} (serial ")
    assert "then: systemctl restart linetap-uploader.service" in res.stdout
    assert (keys / "device.crt").read_bytes() == good
    assert (keys / "ca.crt").read_bytes() == ca.read_bytes()
    assert mode(keys / "device.crt") == mode(keys / "ca.crt") == 0o644
    # A bad one later leaves the good one in place; the installed CA is used without --ca.
    (tmp_path / "expired.crt").write_bytes(bad[3][0])
    res = cli("provision", "install-cert", tmp_path / "expired.crt", "-c", conf)
    assert res.returncode == 1 and "expired on" in res.stderr
    assert (keys / "device.crt").read_bytes() == good
    res = cli("provision", "install-cert", tmp_path / "good.crt", "-c", conf)
    assert res.returncode == 0 and res.stdout.startswith("already installed: ")
    assert "restart" not in res.stdout  # nothing changed: nothing to restart


def test_usage_errors_are_exit_2(cli: Run, tmp_path: Path):
    for args, message in (
        ([], "say what to do"),
        (["install-cert"], "install-cert needs the certificate file"),
        (["init", "--force"], "--force and --boot-dir go with --first-boot only"),
        (["init", "--first-boot"], "do not go together"),
        (["--first-boot", "--ca", "x"], "go with install-cert only"),
    ):
        res = cli("provision", *args)
        assert res.returncode == 2, args
        assert res.stderr.strip() == f"linetap provision: {res.stderr.split(': ', 1)[1].strip()}"
        assert message in res.stderr, (args, res.stderr)


# -- first boot ---------------------------------------------------------------------------


def refuse_a_strangers_certificate(
    cli: Run, dev: Device, office: OfficeSetup, paths: DevicePaths, text: str
) -> None:
    """Another unit's certificate on the card: refused, nothing installed, still provisioned."""
    (dev.boot / "linetap-cert").mkdir()
    stranger = ec.generate_private_key(ec.SECP256R1()).public_key()
    (dev.boot / "linetap-cert" / "device.crt").write_bytes(_issue(office.root, stranger))
    shutil.copy(office.ca_cert, dev.boot / "linetap-cert" / "ca.crt")
    res = cli("provision", "--first-boot", "--boot-dir", dev.boot, "-c", dev.link)
    assert res.returncode == 1
    assert res.stdout.startswith("already provisioned: shop-12 at ")
    [error] = res.stderr.splitlines()
    assert "issued for another key" in error and error.endswith("; certificate not installed")
    assert not paths.cert.exists() and not paths.ca.exists()
    assert_provisioned(dev, text)
    shutil.rmtree(dev.boot / "linetap-cert")


def connect_as_device(tmp_path: Path, office: OfficeSetup, paths: DevicePaths) -> None:
    """An MQTT v5 connection over mTLS to the office's broker (its ACL) with what
    provisioning installed, and a publish on the device's own status topic."""
    with (
        run_mosquitto(
            tmp_path, office_broker_conf(office.root, tmp_path / "broker-data")
        ) as broker,
        MqttProbe(
            broker, ca=paths.ca, cert=paths.cert, key=paths.tls_key, client_id=DEVICE
        ) as probe,
    ):
        probe.connect()
        rc = probe.publish(protocol.status_topic(DEVICE), b'{"state": "online"}')
        assert rc is not None and not rc.is_failure


def test_first_boot_then_certificate_then_an_mtls_connection(
    cli: Run, tmp_path: Path, office: OfficeSetup
):
    dev = Device(tmp_path)
    text = device_config(tmp_path, office)
    dev.boot_file.write_text(text)
    res = linetap("provision", "--first-boot", "--boot-dir", dev.boot, "-c", dev.link)
    assert res.returncode == 0, res.stdout + res.stderr
    paths = assert_provisioned(dev, text)
    out = res.stdout
    assert f"config: {dev.target} (via {dev.link}) from {dev.boot_file}" in out
    assert f"signing key: {paths.signing_key} (created), key id" in out
    assert f"request: {dev.boot / 'linetap-request' / 'shop-12.csr'} and shop-12.signing-key" in out
    assert "certificate: none yet" in out
    assert out.rstrip().endswith(
        "provisioned shop-12; linetap.toml renamed to linetap.toml.applied"
    )
    assert not dev.boot_file.exists()
    assert (dev.boot / "linetap.toml.applied").read_text() == text
    assert leftovers(dev) == []

    refuse_a_strangers_certificate(cli, dev, office, paths, text)

    # The installer takes the request to the office and comes back with the certificate.
    cert = enrol(office, dev)
    res = cli("provision", "first-boot", "--boot-dir", dev.boot, "-c", dev.link)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("already provisioned: shop-12 at ")
    assert f"certificate: installed from {dev.boot / 'linetap-cert' / 'device.crt'}" in res.stdout
    assert paths.cert.read_bytes() == cert
    assert paths.ca.read_bytes() == office.ca_cert.read_bytes()
    res = cli("provision", "--first-boot", "--boot-dir", dev.boot, "-c", dev.link)
    assert res.returncode == 0 and "certificate: already installed" in res.stdout
    assert_provisioned(dev, text)

    # What was installed gets this device onto the office's broker, under its own topics.
    connect_as_device(tmp_path, office, paths)

    # New settings from the installer: left alone without --force, applied with it.
    changed = text.replace("port = 8883", "port = 9883")
    dev.boot_file.write_text(changed)
    res = cli("provision", "--first-boot", "--boot-dir", dev.boot, "-c", dev.link)
    assert res.returncode == 0
    assert "holds other settings: not applied" in res.stdout and "--force" in res.stdout
    assert dev.target.read_text() == text
    signing_before = paths.signing_key.read_bytes()
    res = cli("provision", "--first-boot", "--force", "--boot-dir", dev.boot, "-c", dev.link)
    assert res.returncode == 0, res.stderr
    assert f"signing key: {paths.signing_key} (kept)" in res.stdout
    assert "certificate: already installed" in res.stdout
    assert_provisioned(dev, changed)
    assert paths.signing_key.read_bytes() == signing_before
    assert (dev.boot / "linetap.toml.applied").read_text() == text  # nothing lost
    assert (dev.boot / "linetap.toml.applied.2").read_text() == changed

    reconfigure_in_the_field(cli, dev, paths, changed, signing_before)


def reconfigure_in_the_field(
    cli: Run, dev: Device, paths: DevicePaths, changed: str, signing_before: bytes
) -> None:
    """Without a login: new settings plus an empty linetap-reconfigure file on the boot
    partition, and the next boot (plain --first-boot) applies them (harmless ones: the
    security settings need the office's signature, tests/test_boot_partition_security.py)."""
    again = changed.replace("hook_pin = 17", "hook_pin = 18")
    dev.boot_file.write_text(again)
    (dev.boot / "linetap-reconfigure").write_text("")
    res = cli("provision", "--first-boot", "--boot-dir", dev.boot, "-c", dev.link)
    assert res.returncode == 0, res.stderr
    assert "linetap-reconfigure: settings re-applied, keys kept" in res.stdout
    assert_provisioned(dev, again)
    assert paths.signing_key.read_bytes() == signing_before
    assert not (dev.boot / "linetap-reconfigure").exists()  # spent: not applied twice
    assert (dev.boot / "linetap-reconfigure.applied").exists()
    # A reconfigure file alone (no new settings) changes nothing.
    (dev.boot / "linetap-reconfigure").write_text("")
    res = cli("provision", "--first-boot", "--boot-dir", dev.boot, "-c", dev.link)
    assert res.returncode == 0 and res.stdout.startswith("already provisioned")
    assert_provisioned(dev, again)


def test_bad_boot_settings_are_listed_and_nothing_is_written(cli: Run, tmp_path: Path, office):
    dev = Device(tmp_path)
    good = device_config(tmp_path, office)
    prefix = re.escape(str(dev.boot_file))
    for text, expected in (
        (
            good.replace("hook_pin = 17", "hook_pin = 99\nhook_pn = 3"),
            [
                rf"{prefix}:\d+: lines\[0\]\.hook_pin: Input should be less than or equal to 63",
                rf"{prefix}:\d+: lines\[0\]\.hook_pn: unknown key; did you mean 'hook_pin'\?",
            ],
        ),
        (
            good.replace(f'recipients = ["{office.recipient}"]', "recipients = []"),
            [rf'{prefix}:\d+: sealing\.recipients: storage\.format = "sealed" needs'],
        ),
    ):
        dev.boot_file.write_text(text)
        res = cli("provision", "--first-boot", "--boot-dir", dev.boot, "-c", dev.link)
        assert res.returncode == 2
        problems = res.stderr.splitlines()
        assert len(problems) == len(expected), res.stderr
        for pattern, line in zip(expected, problems, strict=True):
            assert re.match(pattern, line), line
        assert dev.boot_file.read_text() == text  # still there for the installer to fix
        assert not dev.target.exists() and not dev.marker.exists() and not dev.keys.exists()
        assert not (dev.boot / "linetap-request").exists()

    dev.boot_file.write_text(device_config(tmp_path, office).replace(f'device_id = "{DEVICE}"', ""))
    res = cli("provision", "--first-boot", "--boot-dir", dev.boot, "-c", dev.link)
    assert res.returncode == 2
    assert res.stderr.startswith(f"{dev.boot_file}: device_id: missing; set device_id")
    dev.boot_file.unlink()
    res = cli("provision", "--first-boot", "--boot-dir", dev.boot, "-c", dev.link)
    assert res.returncode == 2
    assert res.stderr.startswith(f"{dev.boot_file}: no such file; copy the device's settings")
    assert not dev.keys.exists()


def write_prompt(path: Path, seconds: float = 1.0, rate: int = 8000) -> bytes:
    t = np.arange(round(seconds * rate)) / rate
    samples = (8000 * np.sin(2 * np.pi * 440 * t)).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return path.read_bytes()


def test_first_boot_installs_a_prompt_named_beside_the_boot_file(
    cli: Run, tmp_path: Path, office: OfficeSetup
):
    """The daemons cannot read the boot partition (umask=0077): a prompt named by its file
    name is copied beside the installed config, where the daemons' config finds it."""
    dev = Device(tmp_path)
    text = device_config(tmp_path, office).replace(
        "led_pin = 22", 'led_pin = 22\nannounce = "file+tone"\nannounce_file = "hello.wav"'
    )
    (dev.boot / "sub").mkdir()
    write_prompt(dev.boot / "sub" / "hello.wav")
    for bad, error in (
        ("sub/hello.wav", "a prompt on the boot partition is given by its file name alone"),
        ("hello.wav", "hello.wav: cannot read (No such file or directory)"),
    ):
        dev.boot_file.write_text(text.replace('"hello.wav"', f'"{bad}"'))
        res = cli("provision", "--first-boot", "--boot-dir", dev.boot, "-c", dev.link)
        assert res.returncode != 0 and error in res.stderr, res.stderr
        assert not dev.target.exists() and not dev.marker.exists()
    dev.boot_file.write_text(text)
    prompt = write_prompt(dev.boot / "hello.wav")
    res = cli("provision", "--first-boot", "--boot-dir", dev.boot, "-c", dev.link)
    assert res.returncode == 0, res.stderr
    installed = dev.target.parent / "hello.wav"
    assert installed.read_bytes() == prompt
    assert f"announcement prompt: {installed} from {dev.boot / 'hello.wav'}" in res.stdout
    assert load_config(dev.link).lines[0].announce_file == installed


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_as_root_new_keys_belong_to_the_data_partitions_owner(tmp_path: Path, office):
    dev = Device(tmp_path)
    dev.boot_file.write_text(device_config(tmp_path, office))
    (tmp_path / "data").mkdir()
    os.chown(tmp_path / "data", 4242, 4243)  # the daemons' user owns the data partition
    assert dev.run() == 0
    for path in (dev.keys, dev.keys / "device.key", dev.keys / "device-tls.key"):
        st = path.stat()
        assert (st.st_uid, st.st_gid) == (4242, 4243), path


# -- crash safety -------------------------------------------------------------------------

# Audit events of calls that change the filesystem (os.replace raises "os.rename").
MUTATING = {"open", "os.rename", "os.remove", "os.mkdir", "os.rmdir", "os.chmod", "os.chown"}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def run_child(
    root: Path, at: int, action: Callable[[], int], log: Path, *, fail: str = "kill"
) -> tuple[int, list[str]]:
    """Run ``action`` in a forked child that, just before its ``at``-th filesystem change
    under ``root`` (0: never), SIGKILLs itself (``fail="kill"``) or has that call fail
    with ENOSPC (``fail="enospc"``). Returns the wait status and the changes it reached."""
    events = log.with_suffix(".events")
    events_fd = os.open(events, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 99
        try:
            sys.stdout = sys.stderr = open(log, "w")  # noqa: SIM115 - the child exits below
            count = 0

            def hook(event: str, args: tuple[Any, ...]) -> None:
                nonlocal count
                if event not in MUTATING or not isinstance(args[0], str | bytes | os.PathLike):
                    return
                if event == "open" and not (isinstance(args[2], int) and args[2] & WRITE_FLAGS):
                    return
                path = os.fsdecode(args[0])
                if not path.startswith(str(root)):
                    return
                count += 1
                os.write(events_fd, f"{count} {event} {path}\n".encode())
                if count == at and fail == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                if count == at:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

            sys.addaudithook(hook)
            code = action()
        except BaseException:  # noqa: BLE001 - report anything, then _exit: never back into pytest
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            os._exit(code)
    os.close(events_fd)
    _, status = os.waitpid(pid, 0)
    return status, events.read_text().splitlines()


def run_killed_at(root: Path, kill_at: int, action: Callable[[], int], log: Path) -> list[str]:
    """``run_child`` with SIGKILL; checks that it was killed (or, for 0, exited 0)."""
    status, seen = run_child(root, kill_at, action, log)
    if kill_at:
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (
            f"not killed at change {kill_at}: {seen[-3:]}\n{log.read_text()}"
        )
    else:
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, log.read_text()
    return seen


@dataclass
class Scenario:
    prepare: Callable[[Device], None]  # the state before the run that is killed
    action: Callable[[Device], int]
    after_crash: Callable[[Device], None]  # what must hold right after the kill
    finish: Callable[[Device], int]  # the re-run (the next boot, the operator again)
    done: Callable[[Device], None]  # what must hold after it


def _bound(action: Callable[[Device], int], dev: Device) -> Callable[[], int]:
    return lambda: action(dev)


@pytest.fixture
def sweep_dir(tmp_path: Path) -> Iterator[Path]:
    """Where the sweeps' devices live: RAM (/dev/shm) when there is one. A SIGKILL loses
    nothing the page cache holds, so the sweeps do not need the disk, and on it the
    fsyncs (some 20 per run, hundreds per sweep) would take most of the time."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK):
        yield tmp_path
        return
    root = Path(tempfile.mkdtemp(prefix="linetap-provision-", dir=shm))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def sweep(tmp_path: Path, scenario: Scenario) -> int:
    """Kill the action before each of its filesystem changes in turn; returns how many."""
    clean = Device(tmp_path / "count")
    scenario.prepare(clean)
    changes = run_killed_at(clean.root, 0, _bound(scenario.action, clean), tmp_path / "count.log")
    assert len(changes) > 5, changes
    for k in range(1, len(changes) + 1):
        dev = Device(tmp_path / f"kill-{k}")
        scenario.prepare(dev)
        keys_before = {p.name: p.read_bytes() for p in dev.keys.glob("*.key")}
        run_killed_at(dev.root, k, _bound(scenario.action, dev), tmp_path / f"kill-{k}.log")
        where = f"killed before change {k}: {changes[k - 1]}"
        try:
            scenario.after_crash(dev)
            committed = {p.name: p.read_bytes() for p in dev.keys.glob("*.key")}
            assert scenario.finish(dev) == 0
            scenario.done(dev)
            # A key that existed (before the run, or committed by it) is never replaced.
            for name, data in {**committed, **keys_before}.items():
                assert (dev.keys / name).read_bytes() == data, name
            assert leftovers(dev) == []
        except AssertionError as exc:
            raise AssertionError(f"{where}: {exc}") from exc
        shutil.rmtree(dev.root)
    return len(changes)


def test_first_boot_killed_at_every_step_is_all_or_nothing_and_completes(
    sweep_dir: Path, office: OfficeSetup, capsys: pytest.CaptureFixture[str]
):
    def prepare(dev: Device) -> None:
        dev.boot_file.write_text(device_config(dev.root, office))

    def after_crash(dev: Device) -> None:
        text = device_config(dev.root, office)
        if dev.marker.exists():
            assert_provisioned(dev, text)
        else:  # not provisioned: the boot file is untouched, ready for the next boot
            assert dev.boot_file.read_text() == text
            assert not (dev.boot / "linetap.toml.applied").exists()

    def done(dev: Device) -> None:
        assert_provisioned(dev, device_config(dev.root, office))
        assert not dev.boot_file.exists()
        assert (dev.boot / "linetap.toml.applied").read_text() == device_config(dev.root, office)
        assert not (dev.boot / "linetap.toml.applied.2").exists()

    n = sweep(
        sweep_dir,
        Scenario(prepare, lambda d: d.run(), after_crash, lambda d: d.run(), done),
    )
    assert n >= 15  # keys, request, copies, marker, rename: each a step
    capsys.readouterr()


def test_certificate_install_at_boot_killed_at_every_step(
    sweep_dir: Path, office: OfficeSetup, capsys: pytest.CaptureFixture[str]
):
    certs: dict[Path, bytes] = {}

    def prepare(dev: Device) -> None:
        dev.boot_file.write_text(device_config(dev.root, office))
        assert dev.run() == 0
        certs[dev.root] = enrol(office, dev)

    def paths(dev: Device) -> DevicePaths:
        return DevicePaths.of(load_config(dev.link))

    def after_crash(dev: Device) -> None:
        assert_provisioned(dev, device_config(dev.root, office))
        p = paths(dev)
        if p.cert.exists():
            assert p.cert.read_bytes() == certs[dev.root]
        if p.ca.exists():
            assert p.ca.read_bytes() == office.ca_cert.read_bytes()

    def done(dev: Device) -> None:
        assert paths(dev).cert.read_bytes() == certs.pop(dev.root)
        assert paths(dev).ca.read_bytes() == office.ca_cert.read_bytes()

    sweep(sweep_dir, Scenario(prepare, lambda d: d.run(), after_crash, lambda d: d.run(), done))
    capsys.readouterr()


def test_forced_reprovisioning_killed_at_every_step_keeps_the_keys(
    sweep_dir: Path, office: OfficeSetup, capsys: pytest.CaptureFixture[str]
):
    def new_text(dev: Device) -> str:
        return device_config(dev.root, office, port=9883)

    def prepare(dev: Device) -> None:
        dev.boot_file.write_text(device_config(dev.root, office))
        assert dev.run() == 0
        dev.boot_file.write_text(new_text(dev))

    def after_crash(dev: Device) -> None:
        # The old marker is replaced, never removed first: the unit stays provisioned.
        old, new = device_config(dev.root, office), new_text(dev)
        marker = json.loads(dev.marker.read_text())
        if marker["config_sha256"] == sha256(new):
            assert_provisioned(dev, new)
        else:  # killed before the new marker: the old one, the config old or committed
            assert marker["config_sha256"] == sha256(old)
            assert dev.target.read_text() in (old, new)
            assert dev.boot_file.read_text() == new  # the re-run applies it again

    def finish(dev: Device) -> int:
        # The operator repeats the command; if the old marker was gone, the next boot's
        # plain --first-boot would do too: both must complete.
        return dev.run(force=dev.marker.exists())

    def done(dev: Device) -> None:
        assert_provisioned(dev, new_text(dev))
        assert (dev.boot / "linetap.toml.applied.2").read_text() == new_text(dev)

    sweep(sweep_dir, Scenario(prepare, lambda d: d.run(force=True), after_crash, finish, done))
    capsys.readouterr()


def test_first_boot_failing_at_every_step_says_why_in_one_line_and_leaves_no_debris(
    sweep_dir: Path, office: OfficeSetup, capsys: pytest.CaptureFixture[str]
):
    """Each filesystem change in turn fails (ENOSPC): `linetap provision --first-boot`
    prints one line naming the file and exits 1; the device is not provisioned (unless
    only the boot file's rename failed), no temp file is left, the next boot completes."""
    from firmware.cli import main

    def first_boot_cli(dev: Device) -> Callable[[], int]:
        argv = ["provision", "--first-boot", "--boot-dir", str(dev.boot), "-c", str(dev.link)]
        return lambda: main(argv)

    count = Device(sweep_dir / "count")
    count.boot_file.write_text(device_config(count.root, office))
    status, changes = run_child(count.root, 0, first_boot_cli(count), sweep_dir / "count.log")
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (
        sweep_dir / "count.log"
    ).read_text()
    for k in range(1, len(changes) + 1):
        dev = Device(sweep_dir / f"fail-{k}")
        text = device_config(dev.root, office)
        dev.boot_file.write_text(text)
        log = sweep_dir / f"fail-{k}.log"
        status, _ = run_child(dev.root, k, first_boot_cli(dev), log, fail="enospc")
        where = f"failing change {k}: {changes[k - 1]}"
        output = log.read_text()
        assert os.WIFEXITED(status), (where, output)
        if os.WEXITSTATUS(status) == 0:
            # mkdir(exist_ok=True) of a directory that exists takes any error for EEXIST.
            assert " os.mkdir " in changes[k - 1], (where, output)
            assert_provisioned(dev, text)
            shutil.rmtree(dev.root)
            continue
        assert os.WEXITSTATUS(status) == 1, (where, output)
        [error] = [line for line in output.splitlines() if line.startswith("linetap provision: ")]
        assert "No space left on device" in error, (where, error)
        assert "Traceback" not in output, where
        assert leftovers(dev) == [], where
        if dev.marker.exists():  # only the last step, retiring the boot file, came after it
            assert changes[k - 1].endswith(f"os.rename {count.boot_file}"), where
            assert_provisioned(dev, text)
        else:
            assert dev.boot_file.read_text() == text, where
        assert dev.run() == 0, where
        assert_provisioned(dev, text)
        assert not dev.boot_file.exists(), where
        shutil.rmtree(dev.root)
    capsys.readouterr()


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "data", "256k") as mount:
        yield mount


def test_a_full_data_partition_fails_cleanly_and_the_next_boot_completes(
    cli: Run, tmp_path: Path, tiny_tmpfs: Path, office: OfficeSetup
):
    dev = Device(tmp_path)
    text = device_config(tmp_path, office)
    dev.boot_file.write_text(text)
    filler = tiny_tmpfs / "filler"
    with contextlib.suppress(OSError), filler.open("wb", buffering=0) as fh:
        while True:
            fh.write(b"\0" * 4096)
    assert os.statvfs(tiny_tmpfs).f_bavail == 0
    res = linetap("provision", "--first-boot", "--boot-dir", dev.boot, "-c", dev.link)
    assert res.returncode == 1, res.stdout + res.stderr
    [line] = res.stderr.splitlines()
    assert line.startswith("linetap provision: ") and "No space left on device" in line, line
    assert not dev.marker.exists() and dev.boot_file.read_text() == text
    assert leftovers(dev) == []
    filler.unlink()
    res = cli("provision", "--first-boot", "--boot-dir", dev.boot, "-c", dev.link)
    assert res.returncode == 0, res.stderr
    assert_provisioned(dev, text)
