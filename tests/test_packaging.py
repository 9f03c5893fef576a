"""The wheel that the image installs (non-editable) holds every module of the project.

Development uses an editable install, which finds any file in the tree; the SD-card image
and any production install build a wheel, which holds only what pyproject.toml names.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.conftest import REPO

PACKAGE_ROOTS = ("firmware", "drivers", "buffers", "uploader", "headoffice")


def _tracked(pattern: str) -> set[str]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", pattern],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {line for line in out.splitlines() if (REPO / line).exists()}


def test_wheel_holds_every_module_and_data_file(tmp_path: Path) -> None:
    # What image/customize.sh copies into the image to install: a tree without build/,
    # whose leftovers from earlier builds would hide a package missing from the list.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", *PACKAGE_ROOTS):
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, src / name)
    pip_wheel = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
    ]
    subprocess.run(
        [
            *pip_wheel,
            "--quiet",
            "--disable-pip-version-check",
            "--wheel-dir",
            str(tmp_path),
            str(src),
        ],
        check=True,
        capture_output=True,
    )
    [wheel] = tmp_path.glob("linetap-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {path for root in PACKAGE_ROOTS for path in _tracked(f"{root}/*.py")}
    assert "firmware/tools/_checks/base.py" in sources  # git's * spans directories
    assert sources - names == set(), "modules missing from the wheel"
    for data in ("firmware/samples/sample_call.flac", "firmware/linetap.example.toml"):
        assert data in names, data
    assert any(n.startswith("headoffice/broker/") for n in names)
    assert not any(n.startswith(("tests/", "bench/")) for n in names)
