"""The boot partition is not a way in (issue 13, finding 7): whoever holds the SD card can
edit its FAT partition, so after the first provisioning security settings change from it
only through a linetap.toml the head office signed for this unit; an installed CA is never
replaced from it; plain audio is refused by validation; a failed reconfigure leaves the
unit exactly as it was. Real files, real keys, real signatures; no mocks."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel

from firmware.announce_config import AnnounceConfig
from firmware.config import AudioConfig, LinetapConfig, load_config
from firmware.tools import _boot_settings as bs
from firmware.tools._provision_files import DevicePaths
from headoffice import device_settings, enroll
from headoffice.enroll import OfficeSetup
from sealedrec.keyfiles import write_private_key
from tests.test_tool_provision import DEVICE, Device, device_config, enrol

REPO = Path(__file__).resolve().parent.parent


def run_cli(main: Any, capsys: pytest.CaptureFixture[str], *args: str | Path) -> Any:
    capsys.readouterr()
    argv = [str(a) for a in args]
    code = main(argv)
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, out, err)


@pytest.fixture(scope="module")
def office(tmp_path_factory: pytest.TempPathFactory) -> OfficeSetup:
    return enroll.init_ca(tmp_path_factory.mktemp("office") / "root", "Test Office")


@pytest.fixture(scope="module")
def attacker(tmp_path_factory: pytest.TempPathFactory) -> OfficeSetup:
    """Someone else's office: their own CA, age identity and settings key."""
    return enroll.init_ca(tmp_path_factory.mktemp("attacker") / "root", "Not The Office")


@dataclass
class Unit:
    dev: Device
    text: str  # the installed linetap.toml
    office: OfficeSetup
    capsys: pytest.CaptureFixture[str]

    def boot(self) -> Any:
        from firmware.cli import main

        return run_cli(
            main, self.capsys, "provision", "--first-boot", "--boot-dir", self.dev.boot, "-c",
            self.dev.link,
        )  # fmt: skip

    def reconfigure(self, text: str, sig: dict[str, Any] | bytes | None = None) -> Any:
        self.dev.boot_file.write_text(text)
        (self.dev.boot / "linetap-reconfigure").write_text("")
        sig_file = self.dev.boot / "linetap.toml.sig"
        sig_file.unlink(missing_ok=True)
        if isinstance(sig, dict):
            sig_file.write_text(json.dumps(sig))
        elif sig is not None:
            sig_file.write_bytes(sig)
        return self.boot()

    def sign(self, text: str, device: str = DEVICE, root: Path | None = None) -> dict[str, Any]:
        return device_settings.sign_settings(
            root or self.office.root, device, text.encode(), source=Path("linetap.toml")
        ).as_dict()

    @property
    def cfg(self) -> LinetapConfig:
        return load_config(self.dev.link)

    @property
    def paths(self) -> DevicePaths:
        return DevicePaths.of(self.cfg)

    def snapshot(self) -> dict[str, tuple[bytes, int]]:
        """Every file of the data partition (config, keys, CA, cert, pin, marker)."""
        data = self.dev.root / "data"
        return {
            str(p.relative_to(data)): (p.read_bytes(), p.stat().st_mode)
            for p in sorted(data.rglob("*"))
            if p.is_file()
        }


@pytest.fixture
def unit(tmp_path: Path, office: OfficeSetup, capsys: pytest.CaptureFixture[str]) -> Unit:
    """A provisioned unit whose card carried the office's settings key, with its
    certificate and the office CA installed."""
    device_settings.ensure_settings_key(office.root)
    dev = Device(tmp_path)
    text = device_config(tmp_path, office)
    dev.boot_file.write_text(text)
    shutil.copy(office.root / device_settings.PUB, dev.boot / bs.SETTINGS_PUB)
    u = Unit(dev, text, office, capsys)
    res = u.boot()
    assert res.returncode == 0, res.stderr
    enrol(office, dev)
    res = u.boot()
    assert res.returncode == 0 and "certificate: installed" in res.stdout, res.stderr
    shutil.rmtree(dev.boot / "linetap-cert")
    assert u.paths.ca.read_bytes() == office.ca_cert.read_bytes()
    return u


def one_error(res: Any, *fragments: str) -> str:
    """Exactly one line on stderr, ``linetap provision: ...``, holding each fragment."""
    assert "Traceback" not in res.stderr + res.stdout
    [line] = res.stderr.splitlines()
    assert line.startswith("linetap provision: "), line
    for f in fragments:
        assert f in line, (f, line)
    return str(line)


def marker(u: Unit) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(u.dev.marker.read_text())
    return doc


# -- first provisioning: trust on first use ------------------------------------------------


def test_first_provisioning_pins_the_office_settings_key(unit: Unit, attacker: OfficeSetup):
    pin = unit.dev.keys / bs.PINNED_PUB
    office_pub = (unit.office.root / device_settings.PUB).read_bytes()
    assert pin.read_bytes() == office_pub
    assert pin.stat().st_mode & 0o777 == 0o644
    assert marker(unit)["settings_counter"] == 0
    # A later card with another settings key: never taken, said in one line.
    device_settings.ensure_settings_key(attacker.root)
    shutil.copy(attacker.root / device_settings.PUB, unit.dev.boot / bs.SETTINGS_PUB)
    before = unit.snapshot()
    res = unit.boot()
    assert res.returncode == 0
    [line] = [x for x in res.stdout.splitlines() if bs.SETTINGS_PUB in x]
    assert "ignored: the office settings key is taken at first provisioning only" in line
    assert unit.snapshot() == before
    # ... nor with a reconfigure.
    res = unit.reconfigure(unit.text.replace("hook_pin = 17", "hook_pin = 18"))
    assert res.returncode == 0 and pin.read_bytes() == office_pub


def test_without_a_pinned_key_no_signed_settings_but_harmless_ones_apply(
    tmp_path: Path, office: OfficeSetup, capsys: pytest.CaptureFixture[str]
):
    dev = Device(tmp_path)
    text = device_config(tmp_path, office)
    dev.boot_file.write_text(text)
    u = Unit(dev, text, office, capsys)
    assert u.boot().returncode == 0
    assert not (dev.keys / bs.PINNED_PUB).exists()
    new = text.replace("port = 8883", "port = 9883")
    before = u.snapshot()
    res = u.reconfigure(new, u.sign(new))
    one_error(res, "no office settings key is pinned", "--force")
    assert u.snapshot() == before
    harmless = text.replace("hook_pin = 17", "hook_pin = 18")
    res = u.reconfigure(harmless)
    assert res.returncode == 0, res.stderr
    assert dev.target.read_text() == harmless


def test_a_bad_settings_key_on_a_fresh_card_is_refused(
    tmp_path: Path, office: OfficeSetup, capsys: pytest.CaptureFixture[str]
):
    dev = Device(tmp_path)
    dev.boot_file.write_text(device_config(tmp_path, office))
    (dev.boot / bs.SETTINGS_PUB).write_text("not a key\n")
    res = Unit(dev, "", office, capsys).boot()
    assert res.returncode == 1
    one_error(res, bs.SETTINGS_PUB, "not an Ed25519 public key")
    assert not dev.marker.exists() and not dev.target.exists()


# -- unsigned reconfigure: harmless settings only --------------------------------------------


def test_an_unsigned_harmless_change_is_applied_byte_for_byte(unit: Unit):
    new = unit.text.replace("hook_pin = 17", "hook_pin = 18") + "# moved the hook wire\n"
    keys = {p.name: p.read_bytes() for p in unit.dev.keys.iterdir()}
    res = unit.reconfigure(new)
    assert res.returncode == 0, res.stderr
    assert "not applied" not in res.stdout
    assert "linetap-reconfigure: settings re-applied, keys kept" in res.stdout
    assert unit.dev.target.read_text() == new
    assert unit.cfg.lines[0].hook_pin == 18
    assert {p.name: p.read_bytes() for p in unit.dev.keys.iterdir()} == keys
    assert not (unit.dev.boot / "linetap-reconfigure").exists()


def attacks(office: OfficeSetup, attacker: OfficeSetup, unit: Unit) -> dict[str, tuple[str, ...]]:
    """Unsigned edits an attacker makes: {name: (config text, security key, ...)}."""
    text = unit.text
    evil_key = unit.dev.boot / "evil.key"
    if not evil_key.exists():
        write_private_key(evil_key, Ed25519PrivateKey.generate())
    return {
        "extra recipient": (
            text.replace(
                f'recipients = ["{office.recipient}"]',
                f'recipients = ["{office.recipient}", "{attacker.recipient}"]',
            ),
            "sealing.recipients",
        ),
        "recipients replaced": (
            text.replace(office.recipient, attacker.recipient),
            "sealing.recipients",
        ),
        "another broker host": (
            text.replace('host = "127.0.0.1"', 'host = "broker.attacker.example"'),
            "upload.host",
        ),
        "broker port and TLS off": (
            text.replace("port = 8883", "port = 1883\ntls = false"),
            "upload.port",
            "upload.tls",
        ),
        "planted key paths": (
            text.replace("[upload]", f'device_key = "{evil_key}"\n[upload]').replace(
                f'key_file = "{unit.dev.keys}/device-tls.key"', f'key_file = "{evil_key}"'
            ),
            "sealing.device_key",
            "upload.key_file",
        ),
        "planted CA path": (
            text.replace(f"{unit.dev.keys}/ca.crt", f"{unit.dev.boot}/ca.crt"),
            "upload.ca_file",
        ),
        "plain audio with the development flag": (
            text.replace("[sealing]", "[development]\nallow_plain_audio = true\n[sealing]").replace(
                "[storage]", '[storage]\nformat = "wav"'
            ),
            "storage.format",
            "development.allow_plain_audio",
        ),
        "another device id": (text.replace(f'"{DEVICE}"', '"shop-99"'), "device_id"),
        "dtmf masking off": (
            text.replace("[sealing]", "[telephony]\nmask_dtmf = false\n[sealing]"),
            "telephony.mask_dtmf",
        ),
    }


@pytest.mark.parametrize(
    "name",
    [
        "extra recipient",
        "recipients replaced",
        "another broker host",
        "broker port and TLS off",
        "planted key paths",
        "planted CA path",
        "plain audio with the development flag",
        "another device id",
        "dtmf masking off",
    ],
)
def test_an_unsigned_security_change_is_not_applied(
    unit: Unit, office: OfficeSetup, attacker: OfficeSetup, name: str
):
    text, *keys = attacks(office, attacker, unit)[name]
    assert text != unit.text
    before = unit.snapshot()
    res = unit.reconfigure(text)
    assert res.returncode == 0, res.stderr
    ignored = [x for x in res.stdout.splitlines() if "not applied, kept as installed" in x]
    assert [re.search(r": ([a-z_.]+): not applied", x).group(1) for x in ignored] == keys  # type: ignore[union-attr]
    for line in ignored:
        assert "linetap-office sign-settings" in line
    # Nothing of the unit changed but the marker's note of the boot file it read.
    after = unit.snapshot()
    assert after.pop("provisioned.json") and before.pop("provisioned.json")
    assert after == before, name
    assert unit.cfg.sealing.recipients == [office.recipient]
    assert unit.cfg.upload.host == "127.0.0.1" and unit.cfg.storage.format == "sealed"


def test_an_unsigned_file_with_harmless_and_security_changes_applies_the_harmless_part(
    unit: Unit, office: OfficeSetup, attacker: OfficeSetup
):
    text = attacks(office, attacker, unit)["extra recipient"][0].replace(
        "hook_pin = 17", "hook_pin = 18"
    )
    res = unit.reconfigure(text)
    assert res.returncode == 0, res.stderr
    cfg = unit.cfg
    assert cfg.lines[0].hook_pin == 18
    assert cfg.sealing.recipients == [office.recipient]
    written = unit.dev.target.read_text()
    assert written.startswith("# Written by 'linetap provision' from ")
    assert attacker.recipient not in written
    assert tomllib.loads(written)["lines"][0]["hook_pin"] == 18


def test_plain_audio_is_refused_by_validation_and_nothing_changes(unit: Unit):
    text = unit.text.replace("[storage]", '[storage]\nformat = "wav"')
    before = unit.snapshot()
    res = unit.reconfigure(text)
    assert res.returncode == 2
    [line] = res.stderr.splitlines()
    assert re.match(rf"{re.escape(str(unit.dev.boot_file))}:\d+: storage\.format: ", line), line
    assert "allow_plain_audio" in line and 'format = "sealed"' in line
    assert unit.snapshot() == before
    assert unit.dev.boot_file.read_text() == text  # left for the installer to fix


# -- signed reconfigure -----------------------------------------------------------------------


def test_a_signed_security_change_is_applied(
    unit: Unit, office: OfficeSetup, attacker: OfficeSetup
):
    new = unit.text.replace(
        f'recipients = ["{office.recipient}"]',
        f'recipients = ["{office.recipient}", "{attacker.recipient}"]',
    ).replace("port = 8883", "port = 9883")
    sig = unit.sign(new)
    keys = {p.name: p.read_bytes() for p in unit.dev.keys.iterdir()}
    res = unit.reconfigure(new, sig)
    assert res.returncode == 0, res.stderr
    assert f"signed by the office for this unit (counter {sig['counter']})" in res.stdout
    assert "not applied" not in res.stdout
    assert unit.dev.target.read_text() == new
    assert unit.cfg.upload.port == 9883 and len(unit.cfg.sealing.recipients) == 2
    assert marker(unit)["settings_counter"] == sig["counter"]
    assert {p.name: p.read_bytes() for p in unit.dev.keys.iterdir()} == keys
    assert not (unit.dev.boot / "linetap.toml.sig").exists()
    assert (unit.dev.boot / "linetap.toml.sig.applied").exists()


def test_signed_files_that_do_not_fit_are_refused_and_nothing_changes(
    unit: Unit, attacker: OfficeSetup
):
    # v1 applied; then v2; then each bad file in turn.
    v1 = unit.text.replace("port = 8883", "port = 9883")
    sig1 = unit.sign(v1)
    assert unit.reconfigure(v1, sig1).returncode == 0
    v2 = unit.text.replace("port = 8883", "port = 10883")
    sig2 = unit.sign(v2)
    assert sig2["counter"] > sig1["counter"]
    assert unit.reconfigure(v2, sig2).returncode == 0
    assert unit.cfg.upload.port == 10883
    v3 = unit.text.replace('host = "127.0.0.1"', 'host = "broker.attacker.example"')
    other = v3.replace(f'"{DEVICE}"', '"shop-99"')
    device_settings.ensure_settings_key(attacker.root)
    tampered_sig = unit.sign(v3)
    forged = dict(unit.sign(v3), signature=unit.sign(v2)["signature"])
    office_key, _ = device_settings.ensure_settings_key(unit.office.root)
    for_b = bs.signature_document(
        key=office_key, device_id="shop-99", counter=sig2["counter"] + 10, config=v3.encode()
    )
    relabelled = dict(for_b, device_id=DEVICE)  # the .sig of unit B, edited to name A
    cases: list[tuple[str, str, dict[str, Any] | bytes, tuple[str, ...]]] = [
        ("replayed older file", v1, sig1, ("counter", "not newer", "sign the settings anew")),
        (
            "signed for another device",
            other,
            unit.sign(other, device="shop-99"),
            ("signed for device 'shop-99', this unit is 'shop-12'", "--device shop-12"),
        ),
        (
            "tampered after signing",
            v3.replace("port = 8883", "port = 8884"),
            tampered_sig,
            ("the signature does not match linetap.toml",),
        ),
        ("signature of other bytes", v3, forged, ("the signature does not match",)),
        ("another unit's signature relabelled", v3, relabelled, ("signature does not match",)),
        (
            "signed with another key",
            v3,
            unit.sign(v3, root=attacker.root),
            ("signed with key", "this unit trusts"),
        ),
        ("not a signature file", v3, b"{not json", ("not a linetap-settings-signature-v1",)),
    ]
    for name, text, sig, fragments in cases:
        before = unit.snapshot()
        res = unit.reconfigure(text, sig)
        assert res.returncode == 1, (name, res.stdout, res.stderr)
        one_error(res, *fragments)
        assert unit.snapshot() == before, name
        assert unit.cfg.upload.port == 10883 and unit.cfg.upload.host == "127.0.0.1", name
        assert (unit.dev.boot / "linetap-reconfigure").exists(), name  # not spent


# -- certificates from the card ---------------------------------------------------------------


def test_an_installed_ca_is_never_replaced_from_the_card(unit: Unit, attacker: OfficeSetup):
    paths = unit.paths
    csr = paths.csr.read_bytes()
    signing = marker(unit)["signing_key"]
    foreign = enroll.enroll_device(attacker.root, csr, signing, replace=True).read_bytes()
    cert_dir = unit.dev.boot / "linetap-cert"
    cert_dir.mkdir()
    before = unit.snapshot()
    # A foreign CA and a certificate it made for this very key.
    (cert_dir / "device.crt").write_bytes(foreign)
    shutil.copy(attacker.ca_cert, cert_dir / "ca.crt")
    res = unit.boot()
    assert res.returncode == 1
    one_error(res, "not the CA installed at", "never replaced from the boot partition", "remove")
    assert unit.snapshot() == before
    # The foreign certificate alone: it must chain to the installed CA.
    (cert_dir / "ca.crt").unlink()
    res = unit.boot()
    assert res.returncode == 1
    one_error(res, f"not signed by the CA in {paths.ca}")
    assert unit.snapshot() == before
    # The office's own CA (same certificate) and a new certificate from it: accepted.
    shutil.copy(unit.office.ca_cert, cert_dir / "ca.crt")
    renewed = enrol(unit.office, unit.dev)
    res = unit.boot()
    assert res.returncode == 0, res.stderr
    assert paths.cert.read_bytes() == renewed
    assert paths.ca.read_bytes() == unit.office.ca_cert.read_bytes()


# -- a failed reconfigure leaves the unit as it was --------------------------------------------


def test_a_reconfigure_failing_at_key_loading_changes_nothing(unit: Unit):
    harmless = unit.text.replace("hook_pin = 17", "hook_pin = 18")
    key = unit.paths.signing_key
    key.chmod(0o644)  # the unit's key became unusable
    before = unit.snapshot()
    res = unit.reconfigure(harmless)
    assert res.returncode == 1
    one_error(res, "sealing.device_key", str(key))
    assert unit.snapshot() == before  # provisioned.json, config, keys, CA: all as they were
    assert unit.dev.marker.exists()
    key.chmod(0o600)
    res = unit.reconfigure(harmless)
    assert res.returncode == 0, res.stderr
    assert unit.cfg.lines[0].hook_pin == 18


def test_a_signed_reconfigure_to_an_unusable_key_changes_nothing(unit: Unit):
    planted = unit.dev.keys / "planted.key"
    planted.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    planted.chmod(0o600)
    text = unit.text.replace("[upload]", f'device_key = "{planted}"\n[upload]')
    before = unit.snapshot()
    res = unit.reconfigure(text, unit.sign(text))
    assert res.returncode == 1
    one_error(res, str(planted))
    assert unit.snapshot() == before


# -- what the security list covers, what the image ships ---------------------------------------

# Reviewed: none of these can redirect, decrypt or expose recordings.
HARMLESS = {
    "log_level",
    *(f"audio.{k}" for k in AudioConfig.model_fields),
    *(f"gpio.{k}" for k in ("backend", "chip", "script", "status_led_pin", "status_led_active")),
    *(f"call.{k}" for k in ("preroll_s", "debounce_ms", "flash_max_ms", "max_call_s")),
    "call.opt_out_mode",
    *(f"telephony.{k}" for k in ("mask_mode", "mask_guard_ms", "fsk_caller_id")),
    *(f"telephony.{k}" for k in ("caller_id_window_s", "outbound_window_s")),
    *(f"storage.{k}" for k in ("keep_acked_days", "min_free_mb", "ram_buffer_mb")),
    *(f"sealing.{k}" for k in ("codec", "opus_bitrate", "journal_sync_s")),
    *(f"upload.{k}" for k in ("chunk_kib", "window", "keepalive_s", "ack_timeout_s")),
    *(f"upload.{k}" for k in ("telemetry_s", "backoff_max_s")),
    "lines",
    # Turning the announcement off (or pointing it at another device) exposes nothing; each
    # call's signed manifest says what was played, so the office finds every call whose
    # caller was not told (search: announced = no).
    *(f"announce.{k}" for k in AnnounceConfig.model_fields),
}


def _leaves(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += _leaves(ann, f"{prefix}{name}.")
        else:
            out.append(prefix + name)
    return out


def test_every_setting_is_classified_security_or_harmless():
    """A new setting must be put in SECURITY_KEYS or reviewed into HARMLESS here."""
    security = {bs.key_name(p) for p in bs.SECURITY_KEYS}
    leaves = set(_leaves(LinetapConfig))
    assert security <= leaves
    assert security.isdisjoint(HARMLESS)
    assert leaves - security - HARMLESS == set()


def test_the_image_and_the_example_never_allow_plain_audio():
    example = REPO / "firmware" / "linetap.example.toml"
    doc = tomllib.loads(example.read_text())
    assert doc["storage"].get("format", "sealed") == "sealed"
    assert "development" not in doc
    # The image's boot partition gets the example as linetap.toml, and nothing else of ours.
    customize = (REPO / "image" / "customize.sh").read_text()
    assert 'cp "$ROOT$example" "$ROOT/boot/firmware/linetap.toml"' in customize
    assert "linetap.example.toml" in customize
    for folder, subfolders, files in os.walk(REPO / "image"):
        if Path(folder) == REPO / "image":
            # image/build/: the built image and its rootfs (git-ignored, gigabytes, and a
            # /proc of its own while a build runs); what it holds comes from the rest.
            subfolders[:] = [d for d in subfolders if d != "build"]
        for name in files:
            path = Path(folder) / name
            text = path.read_text(errors="replace")
            assert "allow_plain_audio" not in text, path
            assert not re.search(r'format\s*=\s*"wav"', text), path


# -- the office side --------------------------------------------------------------------------


def test_office_settings_key_and_sign_settings_commands(
    tmp_path: Path, office: OfficeSetup, capsys: pytest.CaptureFixture[str]
):
    from headoffice.cli import main

    root = tmp_path / "office"
    res = run_cli(main, capsys, "settings-key", "--root", root)
    assert res.returncode == 0, res.stderr
    key, pub = root / device_settings.KEY, root / device_settings.PUB
    assert key.stat().st_mode & 0o777 == 0o600
    assert f"public key {pub}: put it on each new unit's card as {bs.SETTINGS_PUB}" in res.stdout
    public = bs.parse_public_key(pub.read_bytes(), pub)
    conf = tmp_path / "linetap.toml"
    conf.write_text(device_config(tmp_path, office))
    res = run_cli(
        main, capsys, "sign-settings", "--root", root, "--device", DEVICE, "--config", conf
    )
    assert res.returncode == 0, res.stderr
    assert "(created)" not in res.stdout and str(pub) in res.stdout
    sig = json.loads((tmp_path / "linetap.toml.sig").read_text())
    counter = bs.verify_signed(
        conf.read_bytes(),
        json.dumps(sig).encode(),
        sig_name=conf,
        pinned=public,
        pinned_at=pub,
        device_id=DEVICE,
        last_counter=0,
    )
    out = tmp_path / "again.sig"
    res = run_cli(
        main, capsys, "sign-settings", "--root", root, "--device", DEVICE, "--config", conf,
        "-o", out,
    )  # fmt: skip
    assert res.returncode == 0 and json.loads(out.read_text())["counter"] > counter
    res = run_cli(
        main, capsys, "sign-settings", "--root", root, "--device", "shop-99", "--config", conf
    )
    assert res.returncode == 1
    [line] = res.stderr.splitlines()
    assert "device_id is 'shop-12', but the settings are for 'shop-99'" in line
    wav = tmp_path / "wav.toml"
    wav.write_text(conf.read_text().replace("[storage]", '[storage]\nformat = "wav"'))
    # The office checks only TOML and device_id (it does not load the device's model): it
    # signs this file, and the unit refuses it when applying it, keeping its settings
    # (test_plain_audio_is_refused_by_validation_and_nothing_changes).
    res = run_cli(
        main, capsys, "sign-settings", "--root", root, "--device", DEVICE, "--config", wav
    )
    assert res.returncode == 0, res.stderr
    broken = tmp_path / "broken.toml"
    broken.write_text('device_id = "shop-12"\n[storage\n')
    res = run_cli(
        main, capsys, "sign-settings", "--root", root, "--device", DEVICE, "--config", broken
    )
    assert res.returncode == 2 and "not valid TOML" in res.stderr
