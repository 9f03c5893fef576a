"""The appliance SD-card image (image/, `make image`) booted under qemu-system-aarch64.

One slow test (`make image-test`): a copy of image/build/linetap.img (built first when
missing) gets a test linetap.toml on its boot partition (the file backend playing the
bundled sample call in real time, the simulated GPIO backend driven by its events script,
the office key made here) and image/smoke-check.sh. The image's own kernel and initrd
(named by its config.txt) boot it on qemu's `virt` machine with the image's cmdline.txt
(console on the PL011 UART instead of the Pi's). The check script, started by
systemd.run=, reports on the serial console whether the data partition grew, first boot
provisioned the device and both services reached active, and waits for the recorder to
seal the call; then the machine powers off. The test reads the data partition back with
debugfs (no mounts), checks the manifest's signature and hashes, and decrypts the
recording with the `age` tool.

Fast checks (not slow) of the build scripts: the image carries only the device packages,
and the build fails if head-office or demo code is importable in it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import soundfile

from sealedrec.keys import public_key_from_b64
from sealedrec.verify import read_manifest, verify_entry
from tests.vm import (
    Partition,
    boot,
    debugfs,
    extract,
    fat_names,
    fat_read,
    fat_write,
    partitions,
    run,
)

REPO = Path(__file__).resolve().parent.parent
IMAGE_DIR = REPO / "image"
IMAGE = Path(os.environ.get("LINETAP_IMAGE", IMAGE_DIR / "build" / "linetap.img"))
BUILD_TIMEOUT_S = 3 * 3600
GROW_BY = 256 * 1024 * 1024  # the test copy grows by this; first boot must claim it
DEVICE_ID = "smoke-appliance"
# sample_call.events: off-hook at 2.5 s (pre-roll: all 2.5 s before it), on-hook at
# 12.5 s, held 1 s; the recording also keeps the tail until the on-hook is confirmed.
CALL_MIN_S, CALL_MAX_S = 11.0, 20.0


@pytest.fixture(scope="module")
def image() -> Path:
    """image/build/linetap.img, built by image/build.sh if it is not there yet."""
    if os.geteuid() != 0:
        pytest.skip("the image build and test run as root (mmdebstrap, genimage)")
    check = subprocess.run(
        [str(IMAGE_DIR / "check-host.sh"), "--test"], check=False, capture_output=True, text=True
    )
    if check.returncode != 0:
        pytest.skip("image preconditions missing: " + " | ".join(check.stderr.splitlines()))
    if not IMAGE.exists():
        log = IMAGE.parent / "build.log"
        IMAGE.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as fh:
            done = subprocess.run(
                [str(IMAGE_DIR / "build.sh")],
                check=False,
                stdout=fh,
                stderr=subprocess.STDOUT,
                timeout=BUILD_TIMEOUT_S,
            )
        if done.returncode != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
            pytest.fail(f"image/build.sh failed ({done.returncode}); end of {log}:\n{tail}")
    return IMAGE


def smoke_config(samples: str, recipient: str) -> str:
    # A normal device config, as a field tech would put it on the boot partition, with the
    # simulated backends: the sample call played in real time, its events on the pins.
    return f"""\
device_id = "{DEVICE_ID}"
log_level = "info"

[audio]
backend = "file"
file = "{samples}/sample_call.flac"
file_realtime = true
sample_rate = 8000
channels = 1

[gpio]
backend = "sim"
script = "{samples}/sample_call.events"
status_led_pin = 5

[call]
preroll_s = 5.0

[storage]
format = "sealed"

[sealing]
recipients = ["{recipient}"]
codec = "flac"

[upload]
# No broker in the guest: the uploader must come up anyway and keep retrying.
host = "127.0.0.1"
port = 1883
tls = false

[[lines]]
name = "line1"
channel = 0
hook_pin = 17
led_pin = 22
opt_out_pin = 27
"""


def check_console(text: str) -> dict[str, float]:
    """The smoke check's verdicts from the serial console; its times (s since boot)."""
    end = "\n".join(text.splitlines()[-80:])
    assert "SMOKE START" in text, f"the smoke check never ran (systemd.run=):\n{end}"
    fails = re.findall(r"SMOKE FAIL .*", text)
    assert not fails, "\n".join(fails) + "\n" + end
    assert re.search(r"SMOKE END failures=0", text), end
    times: dict[str, float] = {}
    for name in ("grow-data", "firstboot"):
        m = re.search(rf"SMOKE OK {name} at=([\d.]+)", text)
        assert m, f"{name} did not finish\n{end}"
        times[name] = float(m.group(1))
    assert "SMOKE OK provisioned.json" in text, end
    for unit in ("linetap-recorder.service", "linetap-uploader.service"):
        m = re.search(rf"SMOKE OK active {unit} at=([\d.]+)", text)
        assert m, f"{unit} never reached active\n{end}"
        times[unit] = float(m.group(1))
    m = re.search(r"SMOKE OK sealed \S+ uptime=([\d.]+)", text)
    assert m, f"no sealed recording\n{end}"
    times["sealed"] = float(m.group(1))
    # The installer logged in over SSH with the boot partition's key and ran the tools;
    # root could not log in.
    assert re.search(r"SMOKE OK installer status rc=[01]", text), end
    assert re.search(r"SMOKE OK installer check rc=[01] checks=\d+ \w+", text), end
    assert "SMOKE OK root refused" in text, end
    root = re.search(r"SMOKE ROOT (\S+)", text)
    assert root and root.group(1).split(",")[0] == "ro", f"root not read-only: {root}"
    return times


def check_boot_partition_after(disk: Path, boot_part: Partition) -> None:
    """First boot consumed linetap.toml and left the enrolment request for the office."""
    names = fat_names(disk, boot_part)
    assert "linetap.toml" not in names and "linetap.toml.applied" in names, names
    request = fat_names(disk, boot_part, "linetap-request")
    assert f"{DEVICE_ID}.csr" in request, request


def check_data_partition(disk: Path, grown_to: int, work: Path, identity: Path) -> float:
    """Grown, provisioned, sealed calls that verify; the first decrypts: its length (s)."""
    data = partitions(disk)[2]
    # growpart keeps the end aligned: a few sectors short of the disk's end are fine.
    slack = 2**20
    assert data.size >= grown_to - slack, f"data partition {data.size} B, not grown to {grown_to}"
    data_fs = extract(disk, data, work / "data.ext4")
    stats = debugfs(data_fs, "stats")
    blocks = re.search(r"Block count:\s+(\d+)", stats)
    block_size = re.search(r"Block size:\s+(\d+)", stats)
    assert blocks and block_size, stats
    assert int(blocks.group(1)) * int(block_size.group(1)) >= data.size - slack, stats
    dump = work / "data"
    dump.mkdir()
    debugfs(data_fs, f"rdump / {dump}")
    provisioned = json.loads(next(dump.rglob("provisioned.json")).read_text())
    # The unit's own SSH host key, made at first boot (not one baked into the image).
    assert (dump / "ssh" / "ssh_host_ed25519_key.pub").read_text().startswith("ssh-ed25519 ")
    assert provisioned["device_id"] == DEVICE_ID
    # The recorder plays the sample call once per run; systemd restarts it when the file
    # ends (Restart=always), so a slow guest may have sealed the call more than once.
    manifests = sorted(dump.glob("outbox/*/*/manifest.json"))
    assert manifests, f"no sealed recording in {dump}/outbox"
    device_key = public_key_from_b64(provisioned["signing_key"])
    for m in manifests:
        report = verify_entry(m.parent, device_key)
        assert report.ok, report.problems
    entry = manifests[0].parent
    manifest = read_manifest(entry)
    assert manifest["seq"] == 1, manifest
    assert manifest["device_id"] == DEVICE_ID and manifest["line"] == "line1"
    assert not manifest["recovered"], manifest
    # Decrypt with the age tool (not the device's code) and check it is the call.
    plain = subprocess.run(
        ["age", "-d", "-i", str(identity), str(entry / "recording.age")],
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout
    samples, rate = soundfile.read(io.BytesIO(plain), dtype="int16", always_2d=False)
    pcm = np.asarray(samples, dtype="<i2")
    assert rate == 8000 and pcm.shape[0] == manifest["audio_frames"]
    assert hashlib.sha256(pcm.tobytes()).hexdigest() == manifest["audio_pcm_sha256"]
    seconds = float(pcm.shape[0] / rate)
    assert CALL_MIN_S <= seconds <= CALL_MAX_S, seconds
    assert np.abs(pcm).max() > 1000, "the recording is silent"
    return seconds


def prepare(image: Path, work: Path, recipient: str) -> tuple[Path, list[Partition]]:
    """A grown copy of the image with the smoke config and check on its boot partition."""
    disk = work / "linetap-test.img"
    run(["cp", "--sparse=always", str(image), str(disk)])
    parts = partitions(disk)
    assert [(p.number, p.kind) for p in parts] == [(1, 0x0C), (2, 0x83), (3, 0x83)], parts
    boot_part, root, _ = parts
    # What the image ships on its boot partition, before the test replaces linetap.toml.
    names = fat_names(disk, boot_part)
    for expected in ("config.txt", "cmdline.txt", "linetap.toml", "start4.elf", "bootcode.bin"):
        assert expected in names, f"boot partition lacks {expected}: {names}"
    assert any(n.startswith("bcm2711-rpi-4-b") for n in names), names
    assert b"[[lines]]" in fat_read(disk, boot_part, "linetap.toml")
    # The sample call ships inside the venv (firmware/samples): find it without mounting.
    root_fs = extract(disk, root, work / "root.ext4")
    libs = debugfs(root_fs, "ls -p /opt/linetap/venv/lib")
    pythons = sorted(set(re.findall(r"/(python3\.\d+)/", libs)))
    assert pythons, f"no python3.X in /opt/linetap/venv/lib: {libs}"
    samples = f"/opt/linetap/venv/lib/{pythons[-1]}/site-packages/firmware/samples"
    assert "sample_call.flac" in debugfs(root_fs, f"ls {samples}")
    root_fs.unlink()
    config = work / "linetap.toml"
    config.write_text(smoke_config(samples, recipient))
    fat_write(disk, boot_part, config, "linetap.toml")
    fat_write(disk, boot_part, IMAGE_DIR / "smoke-check.sh", "smoke-check.sh")
    # Installer access as a field tech sets it up: their public key on the boot partition.
    # The private half goes there too, for this test only: the smoke check logs in with it.
    installer_key = work / "installer"
    run(
        [
            "ssh-keygen",
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "tech@laptop",
            "-f",
            str(installer_key),
        ]
    )
    fat_write(disk, boot_part, installer_key.with_suffix(".pub"), "installer_authorized_keys")
    fat_write(disk, boot_part, installer_key, "smoke-installer.key")
    with disk.open("r+b") as fh:  # a bigger "card": first boot must grow the data partition
        fh.truncate(disk.stat().st_size + GROW_BY)
    return disk, parts


def office_key(work: Path) -> tuple[Path, str]:
    """The head office's age identity (made by age-keygen) and its recipient."""
    key = work / "office.key"
    run(["age-keygen", "-o", str(key)])
    return key, run(["age-keygen", "-y", str(key)]).stdout.strip()


@pytest.mark.slow
def test_image_boots_provisions_and_seals_a_call(image: Path) -> None:
    # Not tmp_path: the run takes minutes and other pytest sessions on this machine prune
    # old basetemp folders; image/build/ is ours (git-ignored) and keeps the evidence.
    work = IMAGE.parent / "smoke"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    identity, recipient = office_key(work)
    disk, (boot_part, _, data) = prepare(image, work, recipient)
    text, wall_s, cmd = boot(disk, boot_part, work)
    times = check_console(text)
    check_boot_partition_after(disk, boot_part)
    call_s = check_data_partition(disk, data.size + GROW_BY, work, identity)
    figures = {
        "qemu_wall_s": round(wall_s, 1),
        "boot_to_firstboot_done_s": times["firstboot"],
        "boot_to_recorder_active_s": times["linetap-recorder.service"],
        "boot_to_uploader_active_s": times["linetap-uploader.service"],
        "boot_to_call_sealed_s": times["sealed"],
        "call_s": round(call_s, 2),
        "qemu": shlex.join(cmd),
    }
    (work / "figures.json").write_text(json.dumps(figures, indent=2) + "\n")
    print("image smoke figures:", json.dumps(figures, indent=2))
    # The evidence stays (console.log, figures.json, data/); the disk copies are big.
    for big in ("linetap-test.img", "data.ext4", "vmlinuz", "initrd.img"):
        (work / big).unlink(missing_ok=True)


# -- fast checks of the build scripts ------------------------------------------------------

OFFICE_ONLY = {"headoffice", "demo"}


def device_packages() -> list[str]:
    """``DEVICE_PACKAGES`` as image/customize.sh spells it."""
    text = (IMAGE_DIR / "customize.sh").read_text()
    [line] = [ln for ln in text.splitlines() if ln.startswith("DEVICE_PACKAGES=(")]
    return shlex.split(line.removeprefix("DEVICE_PACKAGES=(").removesuffix(")"))


def check_device_only(tree: Path) -> subprocess.CompletedProcess[str]:
    """image/check-device-only.py over ``tree`` alone (-S: not this venv's editable install)."""
    return subprocess.run(
        [sys.executable, "-S", str(IMAGE_DIR / "check-device-only.py")],
        env={"PYTHONPATH": str(tree), "PATH": os.environ["PATH"]},
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_image_carries_the_device_packages_and_no_office_code(tmp_path: Path) -> None:
    packages = device_packages()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    roots = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    # Every package of the wheel but the office's goes into the image (a new device
    # package cannot be forgotten), and nothing of the office or the demo does.
    assert set(packages) == roots - OFFICE_ONLY
    script = (IMAGE_DIR / "customize.sh").read_text()
    assert '"${DEVICE_PACKAGES[@]}" | tar -C "$src" -xf -' in script
    assert 'in_root "$VENV/bin/python" - <"$HERE/check-device-only.py"' in script
    assert "headoffice" not in script.split("DEVICE_PACKAGES=(", 1)[1].split(")", 1)[0]
    subprocess.run(["bash", "-n", str(IMAGE_DIR / "customize.sh")], check=True, timeout=30)

    tree = tmp_path / "site"
    for name in packages:
        shutil.copytree(REPO / name, tree / name, ignore=shutil.ignore_patterns("__pycache__"))
    ok = check_device_only(tree)
    assert ok.returncode == 0, ok.stderr
    assert "no headoffice or demo code in the image" in ok.stdout
    for intruder in sorted(OFFICE_ONLY):
        (tree / intruder).mkdir()
        (tree / intruder / "__init__.py").write_text("")
        bad = check_device_only(tree)
        assert bad.returncode == 1, bad.stdout
        assert f"customize: {intruder} importable in the image" in bad.stderr
        assert "DEVICE_PACKAGES" in bad.stderr
        shutil.rmtree(tree / intruder)
