"""image/check-hardware.py against Debian's real arm64 kernel and Pi device trees (slow).

The tree is what the image build installs, extracted without running anything
(``mmdebstrap --variant=extract`` of linux-image-arm64 and raspi-firmware, trixie) and
cached in image/build/kernel-tree/ (git-ignored). Two steps of a real install are done
here as the packages' scripts would: the usrmerge ``lib -> usr/lib`` link and
``depmod``. Then:

- the check passes on it: every module and config symbol of the hardware table is
  there, the overlays apply to the Pi 3/4 trees, and not to the Pi 5's;
- a required module the kernel lacks (PCM186X, which trixie does not build) fails it,
  naming the module: the image build stops there (customize.sh runs the check);
- overlays that lose the Pi 4's I2S DMA channels or target a label the trees lack fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CHECK_HARDWARE = REPO / "image" / "check-hardware.py"
OVERLAY = REPO / "image" / "overlays" / "linetap-wm8960.dts"
TREE = REPO / "image" / "build" / "kernel-tree"
MIRROR = os.environ.get("LINETAP_DEBIAN_MIRROR", "http://deb.debian.org/debian")

pytestmark = pytest.mark.slow


def extract_tree(dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    subprocess.run(
        [
            "mmdebstrap",
            "--variant=extract",
            "--arch=arm64",
            "--include=linux-image-arm64,raspi-firmware",
            "--components=main,non-free-firmware",
            "trixie",
            str(tmp),
            f"deb {MIRROR} trixie main non-free-firmware",
        ],
        check=True,
        capture_output=True,
        timeout=1800,
    )
    (tmp / "lib").symlink_to("usr/lib")
    for version in (tmp / "usr/lib/modules").iterdir():
        subprocess.run(["depmod", "-b", str(tmp), version.name], check=True, timeout=600)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


@pytest.fixture(scope="module")
def tree() -> Path:
    if not list(TREE.glob("lib/modules/*/modules.dep")):
        missing = [
            t
            for t in ("mmdebstrap", "depmod", "dtc", "fdtoverlay", "modinfo")
            if not shutil.which(t)
        ]
        if missing or os.geteuid() != 0:
            pytest.skip(f"needs root and {', '.join(missing) or 'the tools'} to extract the kernel")
        TREE.parent.mkdir(parents=True, exist_ok=True)
        extract_tree(TREE)
    return TREE


def check(tree: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(CHECK_HARDWARE), *args, str(tree)],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done, time.monotonic() - start


def test_the_image_kernel_drives_the_table_and_the_overlays_apply(
    tree: Path, tmp_path: Path
) -> None:
    install = tmp_path / "boot-firmware-overlays"
    done, seconds = check(tree, "--install", str(install))
    print(done.stdout)
    print(f"check-hardware.py took {seconds:.1f} s")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for module in ("snd-usb-audio", "snd-soc-bcm2835-i2s", "snd-soc-wm8960", "i2c-bcm2835"):
        assert module in out.split(": modules ")[1].split(": present")[0]
    assert "CONFIG_SND_SIMPLE_CARD" in out and "CONFIG_SND_USB_AUDIO" in out
    for dtb in ("bcm2837-rpi-3-b.dtb", "bcm2837-rpi-3-b-plus.dtb", "bcm2711-rpi-4-b.dtb"):
        line = next(ln for ln in out.splitlines() if f"linetap-wm8960 on {dtb}:" in ln)
        assert "applies; card 'linetap' (ALSA id linetap)" in line
        assert "(brcm,bcm2835-i2s) -> snd-soc-bcm2835-i2s, DMA tx+rx" in line
        assert "(wlf,wm8960) -> snd-soc-wm8960, on /soc/i2c@7e804000 -> i2c-bcm2835" in line
        assert "clock /linetap-wm8960-mclk 12288000 Hz" in line
    assert "overlay linetap-wm8960 does not apply (FDT_ERR_NOTFOUND) on bcm2712-rpi-5-b.dtb" in out
    assert [p.name for p in install.iterdir()] == ["linetap-wm8960.dtbo"]


def test_a_module_the_kernel_lacks_fails_the_build(tree: Path, tmp_path: Path) -> None:
    install = tmp_path / "overlays"
    done, _ = check(tree, "--require-module", "snd-soc-pcm186x-i2c", "--install", str(install))
    assert done.returncode == 1
    problems = done.stderr.splitlines()
    assert len(problems) == 2, done.stderr
    assert problems[0].startswith("check-hardware: kernel 6.")
    assert (
        ": no module snd-soc-pcm186x-i2c (needed by --require-module): this kernel" in problems[0]
    )
    assert "install a kernel that builds it" in problems[0]
    assert problems[1] == (
        "check-hardware: 1 problem(s): the image would not drive its capture hardware"
    )
    assert not install.exists(), "nothing is installed when the check fails"


def overlays_with(tmp_path: Path, old: str, new: str) -> Path:
    text = OVERLAY.read_text()
    assert old in text
    out = tmp_path / "overlays"
    out.mkdir()
    (out / OVERLAY.name).write_text(text.replace(old, new))
    return out


def test_an_overlay_that_drops_the_pi4_i2s_dma_fails_on_the_pi4_trees(
    tree: Path, tmp_path: Path
) -> None:
    overlays = overlays_with(
        tmp_path, 'dmas = <&dma 2>, <&dma 3>;\n\t\t\tdma-names = "tx", "rx";', ""
    )
    done, _ = check(tree, "--overlays", str(overlays))
    assert done.returncode == 1
    failing = [ln for ln in done.stderr.splitlines() if "has no dmas" in ln]
    # Mainline's Pi 3 trees have the channels; its Pi 4 trees (4 B, 400, CM4) do not.
    assert failing and all(" on bcm2711-rpi-" in ln for ln in failing), done.stderr
    assert (
        "check-hardware: overlay linetap-wm8960 on bcm2711-rpi-4-b.dtb: CPU DAI"
        " /soc/i2s@7e203000 has no dmas: its driver moves no audio; give it dmas and"
        " dma-names in the overlay" in failing
    )


def test_an_overlay_targeting_a_label_the_trees_lack_does_not_apply(
    tree: Path, tmp_path: Path
) -> None:
    # Raspberry Pi OS's trees have a "sound" node to target; mainline's have none.
    overlays = overlays_with(tmp_path, "target = <&i2c1>;", "target = <&sound>;")
    done, _ = check(tree, "--overlays", str(overlays))
    assert done.returncode == 1
    assert (
        "check-hardware: overlay linetap-wm8960 does not apply on bcm2711-rpi-4-b.dtb"
        " (FDT_ERR_NOTFOUND): a label or path it targets is not in that tree; fix the"
        " overlay's targets" in done.stderr.splitlines()
    )
