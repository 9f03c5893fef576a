"""Shared fixtures. The autouse guard fails any test that leaves threads or children behind."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.tmux_pane import TmuxPane

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin"


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
