"""The seam between the daemons, checked in a fresh interpreter: the uploader loads no
driver, DSP, recorder, sealing or sound-file code (DESIGN.md: recorder and uploader share
nothing but the outbox), and ``linetap --help`` loads neither numpy nor pydantic."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO

# Modules the uploader process must not hold (a name or a package prefix).
NOT_IN_UPLOADER = (
    "drivers",
    "firmware.dsp",
    "firmware.recorder",
    "firmware.line",
    "firmware.sealing",
    "firmware.app",
    "soundfile",
    "numpy",
)
NOT_FOR_HELP = ("numpy", "pydantic", "firmware.config", "uploader", "drivers")


def loaded_after(code: str) -> list[str]:
    """``sys.modules`` of a fresh interpreter after running ``code`` in the repo."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    )
    names: list[str] = json.loads(done.stdout.splitlines()[-1])
    return names


def offenders(names: list[str], banned: tuple[str, ...]) -> list[str]:
    return [n for n in names if any(n == b or n.startswith(b + ".") for b in banned)]


def test_the_uploader_daemon_loads_nothing_of_the_recorder() -> None:
    names = loaded_after("import uploader.daemon")
    assert "uploader.client" in names  # the probe did load the daemon
    assert offenders(names, NOT_IN_UPLOADER) == []


def test_linetap_help_loads_no_config_model_and_no_numpy() -> None:
    code = (
        "import contextlib, io\n"
        "from firmware.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    main(['--help'])"
    )
    assert offenders(loaded_after(code), NOT_FOR_HELP) == []


def test_a_command_loads_only_its_own_module() -> None:
    code = (
        "import contextlib, io\n"
        "from firmware.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    main(['upload', '--help'])"
    )
    names = loaded_after(code)
    assert "uploader.daemon" in names
    assert offenders(names, (*NOT_IN_UPLOADER, "firmware.tools")) == []
