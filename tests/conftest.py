"""Shared fixtures. The autouse guard fails any test that leaves threads or children behind."""

from __future__ import annotations

import compileall
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.seaweed import Seaweed, run_seaweed
from tests.tmux_pane import TmuxPane

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin"


# The packages the suite's subprocesses import (`linetap`, `linetap-office`, `python -m
# demo`, ...): hundreds of them start during a run.
_PACKAGES = (
    "sealedrec",
    "runtime",
    "firmware",
    "drivers",
    "buffers",
    "uploader",
    "headoffice",
    "demo",
)


def pytest_configure(config: pytest.Config) -> None:
    """Byte-compile the project once, before any test. With PYTHONDONTWRITEBYTECODE set
    (as on the CI machine) no process writes a .pyc, so every `linetap ...` subprocess
    would compile each module it imports from source again (~0.3 s a start). The .pyc
    files go where Python keeps them (``__pycache__``, git-ignored; packaging and the
    image copy the sources without them) and are checked against their source as usual."""
    for name in _PACKAGES:
        compileall.compile_dir(REPO / name, quiet=1)


def _children() -> set[int]:
    """Live child processes of this test process (zombies excluded)."""
    out: set[int] = set()
    task_dir = Path(f"/proc/{os.getpid()}/task")
    for task in task_dir.iterdir():
        try:
            pids = (task / "children").read_text().split()
        except OSError:
            continue
        for pid in pids:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z":
                out.add(int(pid))
    return out


@pytest.fixture(autouse=True)
def no_leftovers() -> Iterator[None]:
    threads_before = set(threading.enumerate())
    children_before = _children()
    yield
    deadline = time.monotonic() + 2.0
    while True:
        threads = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
        children = _children() - children_before
        if not threads and not children:
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    pytest.fail(
        f"test left behind threads {[t.name for t in threads]} / child processes {sorted(children)}"
    )


@pytest.fixture
def linetap_bin() -> Path:
    exe = VENV_BIN / "linetap"
    if not exe.exists():
        pytest.fail(f"{exe} missing: run `make test` (it installs the project into .venv)")
    return exe


@pytest.fixture(scope="session")
def office(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A head-office identity made by the real age-keygen, and its recipient string."""
    key = tmp_path_factory.mktemp("office") / "office.key"
    subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
    recipient = subprocess.run(
        ["age-keygen", "-y", str(key)], check=True, capture_output=True, text=True
    ).stdout.strip()
    return key, recipient


@pytest.fixture
def pane(tmp_path: Path) -> Iterator[TmuxPane]:
    """A real terminal (tests/tmux_pane.py), its tmux server killed afterwards."""
    p = TmuxPane(tmp_path)
    try:
        yield p
    finally:
        p.close()


@pytest.fixture(scope="session")
def seaweed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seaweed]:
    """One SeaweedFS (tests/seaweed.py) for the whole run: it takes seconds to start and
    outlasts SIGTERM's grace. Each module makes buckets of its own in it (distinct names)
    and each test its own bucket or key prefix, as they did with a server per module.
    Killed at the end: nothing reads its data afterwards."""
    with run_seaweed(tmp_path_factory.mktemp("seaweed"), kill_at_exit=True) as weed:
        yield weed
