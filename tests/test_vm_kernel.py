"""The drivers on a real kernel: the image's own kernel under qemu, with gpio-sim and snd-aloop.

One slow test (`make test-vm-kernel`). This machine's kernel has neither gpio-sim nor any
sound, so the gpiod contract suite and the snd-aloop capture tests skip here. The test
boots a copy of image/build/linetap.img (tests/vm.py) with a second virtio disk, an ext4
filesystem made here with `mke2fs -d` (no mounts): gpio-sim.ko built for the image's
kernel (tests/vm/build-gpio-sim.sh, cached in image/build/), the device packages and
test files of the tree under test, and pytest with its dependencies (`pip install
--target`, pure-Python wheels for the image's Python). tests/vm/guest-kernel-tests.sh,
started by systemd.run=, loads the modules, runs pytest with the image's Python onto
that disk and powers off. The test reads the junit XML back with debugfs, prints the
guest's summary and fails if a guest test failed, or skipped, or did not run: every test
the files hold here must have passed there (the appliance's own services are masked so
they do not compete for the emulated CPUs).

LINETAP_VM_SOURCE names the tree whose code and tests go into the guest (default: this
repository); a copy with a planted bug shows that a guest failure fails this test.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests import vm

REPO = Path(__file__).resolve().parent.parent
SOURCE = Path(os.environ.get("LINETAP_VM_SOURCE", REPO))
IMAGE = Path(os.environ.get("LINETAP_IMAGE", REPO / "image" / "build" / "linetap.img"))
WORK = IMAGE.parent / "vm-kernel"
BUILD_GPIO_SIM = REPO / "tests" / "vm" / "build-gpio-sim.sh"
GUEST_SCRIPT = REPO / "tests" / "vm" / "guest-kernel-tests.sh"
GUEST_SCRIPT_NAME = "kernel-tests.sh"  # on the boot partition, /boot/firmware in the guest
GUEST_TESTS = ("tests/test_gpio_contract.py", "tests/test_alsa_kernel.py")
TEST_DISK_LABEL = "linetap-tests"
TEST_DISK_SIZE = "256M"
# Boot about 3 min, the guest's tests about 1 min under TCG; a kernel hang (a task stuck
# in D state cannot be killed by the guest script's own limit) ends here instead.
VM_TIMEOUT_S = 1200
# pytest as it runs here, for the guest's Python; pip resolves its dependencies.
GUEST_WHEELS = (f"pytest=={importlib.metadata.version('pytest')}",)
# The appliance would provision itself and record; neither is wanted here.
MASKED_UNITS = (
    "linetap-firstboot.service",
    "linetap-recorder.service",
    "linetap-uploader.service",
)


@dataclass
class GuestResults:
    """The guest's junit XML: each test id with its outcome and captured output."""

    outcomes: dict[str, str] = field(default_factory=dict)  # id -> passed/failed/...
    messages: dict[str, str] = field(default_factory=dict)  # id -> failure/skip text
    output: dict[str, str] = field(default_factory=dict)  # id -> captured stdout
    seconds: float = 0.0


def junit_id(classname: str, name: str) -> str:
    """'tests.test_x.TestY' + 'test_z[p]' -> 'tests/test_x.py::TestY::test_z[p]'."""
    parts = classname.split(".")
    split = next(i for i, p in enumerate(parts) if p.startswith("test_")) + 1
    return "/".join(parts[:split]) + ".py::" + "::".join([*parts[split:], name])


def read_junit(xml_text: str) -> GuestResults:
    results = GuestResults()
    root = ET.fromstring(xml_text)
    for suite in root.iter("testsuite"):
        results.seconds += float(suite.get("time", "0"))
    for case in root.iter("testcase"):
        test_id = junit_id(case.get("classname", ""), case.get("name", ""))
        outcome = "passed"
        for kind in ("failure", "error", "skipped"):
            found = case.find(kind)
            if found is not None:
                outcome = kind
                results.messages[test_id] = (found.get("message") or found.text or "").strip()
                break
        results.outcomes[test_id] = outcome
        out = case.find("system-out")
        # pytest heads each test's output with a "--- Captured Out ---" line.
        lines = (out.text if out is not None and out.text else "").splitlines()
        printed = "\n".join(ln for ln in lines if ln.strip() and "Captured Out" not in ln)
        if printed:
            results.output[test_id] = printed
    return results


def collected_here(files: tuple[str, ...]) -> list[str]:
    """The test ids of ``files`` in the source tree, as pytest collects them here."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         "-m", "", *files],
        cwd=SOURCE, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    ids = [line for line in done.stdout.splitlines() if "::" in line]
    assert done.returncode == 0 and ids, f"collecting {files} failed:\n{done.stdout}{done.stderr}"
    return ids


def image_facts(disk: Path, work: Path) -> tuple[str, str, Path]:
    """(kernel version, Python X.Y, a module of that kernel) of the image, via debugfs."""
    root = vm.partitions(disk)[1]
    root_fs = vm.extract(disk, root, work / "root.ext4")
    try:
        kernels = re.findall(r"/(\d[^/\s]*-arm64)/", vm.debugfs(root_fs, "ls -p /usr/lib/modules"))
        assert len(set(kernels)) == 1, f"the image should have one kernel: {kernels}"
        kernel = kernels[0]
        venv = vm.debugfs(root_fs, "cat /opt/linetap/venv/pyvenv.cfg")
        version = re.search(r"^version\s*=\s*(\d+\.\d+)", venv, re.M)
        assert version, f"no Python version in the image's venv:\n{venv}"
        reference = work / "configfs.ko.xz"
        module = f"/usr/lib/modules/{kernel}/kernel/fs/configfs/configfs.ko.xz"
        vm.debugfs(root_fs, f"dump {module} {reference}")
        assert reference.stat().st_size > 0, f"{module} missing in the image"
    finally:
        root_fs.unlink()
    return kernel, version.group(1), reference


def build_gpio_sim(kernel: str, reference: Path) -> Path:
    started = time.monotonic()
    done = subprocess.run(
        [str(BUILD_GPIO_SIM), kernel, str(reference)],
        capture_output=True, text=True, timeout=3 * 3600, check=False,
    )  # fmt: skip
    tail = "\n".join(done.stderr.splitlines()[-30:])
    assert done.returncode == 0, f"{BUILD_GPIO_SIM.name} failed:\n{tail}"
    print(
        f"gpio-sim.ko for {kernel} in {time.monotonic() - started:.0f} s: {tail.splitlines()[-1]}"
    )
    return Path(done.stdout.strip().splitlines()[-1])


def guest_site(python: str) -> Path:
    """pytest and its dependencies for the guest's Python, pure-Python wheels only."""
    site = IMAGE.parent / "vm-site" / f"py{python}-{'-'.join(GUEST_WHEELS)}"
    if not (site / ".complete").exists():
        shutil.rmtree(site, ignore_errors=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--target", str(site),
             "--python-version", python, "--implementation", "py", "--abi", "none",
             "--platform", "any", "--only-binary=:all:", *GUEST_WHEELS],
            check=True, timeout=600,
        )  # fmt: skip
        (site / ".complete").write_text("")
    return site


def device_packages() -> list[str]:
    """``DEVICE_PACKAGES`` as image/customize.sh spells it: what the image ships."""
    text = (SOURCE / "image" / "customize.sh").read_text()
    [line] = [ln for ln in text.splitlines() if ln.startswith("DEVICE_PACKAGES=(")]
    return line.removeprefix("DEVICE_PACKAGES=(").removesuffix(")").split()


def make_test_disk(work: Path, gpio_sim: Path, site: Path, args: list[str]) -> Path:
    tree = work / "disk"
    src = tree / "src"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in device_packages():
        shutil.copytree(SOURCE / package, src / package, ignore=skip)
    (src / "tests").mkdir()
    # The tests and every helper module of tests/ (conftest imports some).
    helpers = [p for p in (SOURCE / "tests").glob("*.py") if not p.name.startswith("test_")]
    for path in [*helpers, *(SOURCE / t for t in GUEST_TESTS)]:
        shutil.copy2(path, src / "tests" / path.name)
    shutil.copy2(SOURCE / "pyproject.toml", src / "pyproject.toml")  # pytest's settings
    shutil.copytree(site, tree / "site", ignore=skip)
    shutil.copy2(gpio_sim, tree / "gpio-sim.ko")
    (tree / "pytest-args").write_text("".join(f"{a}\n" for a in args))
    disk = work / "tests.ext4"
    vm.run(["mke2fs", "-q", "-F", "-t", "ext4", "-O", "^has_journal", "-L", TEST_DISK_LABEL,
            "-d", str(tree), str(disk), TEST_DISK_SIZE])  # fmt: skip
    return disk


def guest_file(disk: Path, name: str, work: Path) -> str:
    dest = work / Path(name).name
    dest.unlink(missing_ok=True)
    vm.debugfs(disk, f"dump {name} {dest}")
    assert dest.exists(), f"{name} missing on the test disk: the guest did not write it"
    return dest.read_text(errors="replace")


def check_results(results: GuestResults, expected: list[str], console: str) -> None:
    end = "\n".join(line for line in console.splitlines() if "VMTEST" in line)
    problems = [
        f"{test_id}: {outcome}: {results.messages.get(test_id, '')[:500]}"
        for test_id, outcome in results.outcomes.items()
        if outcome != "passed"
    ]
    missing = [t for t in expected if t not in results.outcomes]
    if missing:
        problems.append(f"{len(missing)} test(s) never ran in the guest: {missing[:10]}")
    assert not problems, "in the guest:\n" + "\n".join(problems) + "\n" + end


@pytest.mark.slow
def test_drivers_on_the_image_kernel_gpio_sim_and_snd_aloop() -> None:
    if os.geteuid() != 0:
        pytest.skip("the gpio-sim build runs as root (mmdebstrap)")
    check = subprocess.run(
        [str(REPO / "image" / "check-host.sh"), "--test"], capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    if check.returncode != 0:
        pytest.skip("VM preconditions missing: " + " | ".join(check.stderr.splitlines()))
    if not IMAGE.exists():
        pytest.skip(f"{IMAGE} missing: build it first with `make image`")
    # Not tmp_path: other pytest sessions prune old basetemp folders; image/build/ is ours.
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    disk = WORK / "linetap.img"
    vm.run(["cp", "--sparse=always", str(IMAGE), str(disk)])
    boot_part = vm.partitions(disk)[0]
    kernel, python, reference = image_facts(disk, WORK)
    gpio_sim = build_gpio_sim(kernel, reference)
    expected = collected_here(GUEST_TESTS)
    args = ["-o", "junit_logging=system-out", *GUEST_TESTS]
    test_disk = make_test_disk(WORK, gpio_sim, guest_site(python), args)
    vm.fat_write(disk, boot_part, GUEST_SCRIPT, GUEST_SCRIPT_NAME)
    console = WORK / "console.log"
    cmd = vm.boot_command(
        disk, boot_part, WORK, console,
        script=f"/boot/firmware/{GUEST_SCRIPT_NAME}",
        drive=["-drive", f"file={disk},if=virtio,format=raw",
               "-drive", f"file={test_disk},if=virtio,format=raw"],
        kernel_args=[f"systemd.mask={unit}" for unit in MASKED_UNITS],
    )  # fmt: skip
    text, wall_s = vm.run_until_poweroff(cmd, console, VM_TIMEOUT_S)
    assert "VMTEST START" in text, "the guest script never ran (systemd.run=)"
    fails = re.findall(r"VMTEST FAIL .*", text)
    assert not fails, "\n".join(fails)
    log = guest_file(test_disk, "/results/pytest.log", WORK)
    print("guest pytest:\n" + "\n".join(log.splitlines()[-15:]))
    assert re.search(r"VMTEST END pytest rc=\d+", text), "the guest's pytest did not finish"
    results = read_junit(guest_file(test_disk, "/results/junit.xml", WORK))
    for test_id, out in results.output.items():
        print(f"{test_id}: {out}")
    counts: dict[str, dict[str, int]] = {}
    for test_id, outcome in results.outcomes.items():
        per_file = counts.setdefault(test_id.split("::")[0], {})
        per_file[outcome] = per_file.get(outcome, 0) + 1
    figures = {
        "kernel": kernel,
        "qemu_wall_s": round(wall_s, 1),
        "guest_pytest_s": round(results.seconds, 1),
        "tests": counts,
        "gpiod_passed": sum(
            1
            for t, o in results.outcomes.items()
            if o == "passed" and ("[gpiod" in t or "::test_gpiod_" in t)
        ),
    }
    (WORK / "figures.json").write_text(json.dumps(figures, indent=2) + "\n")
    print("vm kernel figures:", json.dumps(figures, indent=2))
    check_results(results, expected, text)
    for big in ("linetap.img", "vmlinuz", "initrd.img", "disk"):
        path = WORK / big
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
