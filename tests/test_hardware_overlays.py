"""The HAT overlays (image/overlays/*.dts) and image/check-hardware.py, without a kernel.

Every overlay compiles with the device-tree compiler the image build uses (``dtc -@``,
no warnings), and a broken one makes check-hardware.py fail with a line that names the
overlay, the place and the fix. What needs Debian's kernel and device trees (modules,
fdtoverlay) is tests/test_hardware_image.py (slow).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
OVERLAYS = REPO / "image" / "overlays"
CHECK_HARDWARE = REPO / "image" / "check-hardware.py"

pytestmark = pytest.mark.skipif(
    shutil.which("dtc") is None, reason="dtc missing: apt-get install device-tree-compiler"
)


def sources() -> list[Path]:
    found = sorted(OVERLAYS.glob("*.dts"))
    assert found, f"no overlay sources in {OVERLAYS}"
    return found


@pytest.mark.parametrize("source", sources(), ids=lambda p: p.stem)
def test_overlay_compiles_without_warnings(source: Path, tmp_path: Path) -> None:
    dtbo = tmp_path / f"{source.stem}.dtbo"
    done = subprocess.run(
        ["dtc", "-@", "-I", "dts", "-O", "dtb", "-o", str(dtbo), str(source)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr
    # An overlay: fragments, and the labels of the base tree it needs left to fix up.
    listing = subprocess.run(
        ["fdtget", "-l", str(dtbo), "/"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert "__fixups__" in listing and any(n.startswith("fragment@") for n in listing)


def run_check(root: Path, overlays: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(CHECK_HARDWARE), "--overlays", str(overlays), str(root)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_a_broken_overlay_fails_the_check_naming_it(tmp_path: Path) -> None:
    broken = tmp_path / "overlays"
    broken.mkdir()
    for source in sources():
        # One missing semicolon, as a slip of the editor makes it.
        text = source.read_text().replace('status = "okay";', 'status = "okay"', 1)
        (broken / source.name).write_text(text)
    root = tmp_path / "root"
    root.mkdir()
    done = run_check(root, broken)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    for source in sources():
        line = next(
            (ln for ln in done.stderr.splitlines() if f"overlay {source.stem}: dtc" in ln), ""
        )
        assert line.startswith(
            f"check-hardware: overlay {source.stem}: dtc cannot compile {broken / source.name}:"
        ), done.stderr
        assert "syntax error" in line and line.endswith("; fix the source")
    # The empty root has no kernel: said once, with what to install.
    assert "no kernel in" in done.stderr and "linux-image-arm64" in done.stderr


def test_an_overlay_without_a_row_fails(tmp_path: Path) -> None:
    overlays = tmp_path / "overlays"
    overlays.mkdir()
    for source in sources():
        shutil.copy(source, overlays)
    shutil.copy(sources()[0], overlays / "linetap-mystery.dts")
    root = tmp_path / "root"
    root.mkdir()
    done = run_check(root, overlays)
    assert done.returncode == 1
    assert (
        "check-hardware: overlay linetap-mystery: no row of firmware/hardware.py names it"
        in done.stderr
    )
    # The real ones compile.
    for source in sources():
        assert f"check-hardware: overlay {source.stem}: compiles (dtc -@)" in done.stdout
