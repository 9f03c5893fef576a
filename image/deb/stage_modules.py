"""Copy the device packages into the .deb's private module directory (image/deb/build.sh).

    python3 image/deb/stage_modules.py PROJECT DEST PACKAGE...

DEST receives what a wheel built from pyproject.toml would hold of these packages:
every ``.py`` file of a package directory (one with ``__init__.py``, as setuptools'
``packages.find`` sees it) and the package data that
``[tool.setuptools.package-data]`` names; nothing else: no ``__pycache__``/``.pyc``
(postinst byte-compiles with py3compile), no documents that sit beside the code. It
fails, one line on stderr, when a named package is missing or not one of pyproject's,
or when head-office or demo code would land in DEST (an appliance that anyone can pull
from a desk holds nothing of the office: promise 3 of DESIGN.md, as
image/check-device-only.py checks for the image). Only the standard library: the
build host's python3 runs it, not the project's venv.
"""

from __future__ import annotations

import shutil
import sys
import tomllib
from pathlib import Path
from typing import Any

OFFICE_ONLY = ("headoffice", "demo")


class StageError(Exception):
    """A problem that stops the build; its text is the one line the user sees."""


def package_roots(pyproject: dict[str, Any]) -> set[str]:
    """The top-level packages pyproject's ``packages.find.include`` patterns name."""
    include: list[str] = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    return {pattern.rstrip("*").rstrip(".") for pattern in include}


def package_data(pyproject: dict[str, Any], package: str, project: Path) -> set[Path]:
    """Files of ``package`` (and its subpackages) that pyproject's package-data names."""
    table: dict[str, list[str]] = pyproject["tool"]["setuptools"].get("package-data", {})
    found: set[Path] = set()
    for dotted, patterns in table.items():
        if dotted.split(".")[0] != package:
            continue
        directory = project.joinpath(*dotted.split("."))
        for pattern in patterns:
            found.update(p for p in directory.glob(pattern) if p.is_file())
    return found


def modules(project: Path, package: str) -> set[Path]:
    """The ``.py`` files of ``package``'s package directories (``__init__.py`` all the way
    down, as setuptools' ``packages.find`` would take them)."""
    top = project / package
    found: set[Path] = set()
    for init in top.rglob("__init__.py"):
        above = init.parent.relative_to(top).parents
        if all((top / p / "__init__.py").is_file() for p in above):
            found.update(p for p in init.parent.glob("*.py") if p.is_file())
    return found


def stage(project: Path, dest: Path, packages: list[str]) -> int:
    """Copy ``packages`` from ``project`` into ``dest``; the number of files copied."""
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    roots = package_roots(pyproject)
    intruders = sorted(set(packages) & set(OFFICE_ONLY))
    if intruders:
        raise StageError(
            f"{', '.join(intruders)} would go into the package; keep DEVICE_PACKAGES in"
            " image/deb/build.sh to the device packages (no head office, no demo)"
        )
    for package in packages:
        if package not in roots:
            raise StageError(
                f"{package}: not a package of pyproject.toml's packages.find.include"
                f" ({', '.join(sorted(roots))}); fix DEVICE_PACKAGES in image/deb/build.sh"
            )
        if not (project / package / "__init__.py").is_file():
            raise StageError(f"{project / package}/__init__.py: missing; is {project} the tree?")
    count = 0
    for package in packages:
        for source in sorted(modules(project, package) | package_data(pyproject, package, project)):
            target = dest / source.relative_to(project)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            count += 1
    found = [name for name in OFFICE_ONLY if (dest / name).exists()]
    if found:
        raise StageError(f"{dest}: holds {', '.join(found)}; the package carries device code only")
    return count


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print("usage: stage_modules.py PROJECT DEST PACKAGE...", file=sys.stderr)
        return 2
    project, dest, packages = Path(argv[0]), Path(argv[1]), argv[2:]
    try:
        count = stage(project, dest, packages)
    except StageError as exc:
        print(f"deb: {exc}", file=sys.stderr)
        return 1
    print(f"deb:   {count} files of {' '.join(packages)} in {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
