"""The SQLite index holds caller numbers and names: the real SQLite backend creates the
file and its -wal/-shm files 0600 in a 0700 directory, whatever the umask, and tightens an
index made readable by others when it opens it (with a warning in the log)."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from headoffice.index import open_index

SIDE_FILES = ("index.sqlite3", "index.sqlite3-wal", "index.sqlite3-shm")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o022, 0o000], ids=["umask022", "umask000"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def test_new_index_is_private(tmp_path: Path, umask: int, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "store"
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)
    with caplog.at_level(logging.WARNING, logger="headoffice.index.sqlite"):
        index = open_index(f"sqlite:///{root}/index.sqlite3")
    # Created 0600, not tightened after SQLite made it: no moment when others could open it.
    assert "index.sqlite3 was mode" not in caplog.text
    assert "index.sqlite3-wal was mode" not in caplog.text
    try:
        # The schema was written: WAL and shared memory exist while the index is open.
        files = {name: mode(root / name) for name in SIDE_FILES}
        assert files == dict.fromkeys(SIDE_FILES, 0o600), {k: oct(v) for k, v in files.items()}
        assert mode(root) == 0o700
    finally:
        index.close()


def test_existing_open_index_is_tightened(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "store"
    root.mkdir()
    url = f"sqlite:///{root}/index.sqlite3"
    open_index(url).close()
    for name in SIDE_FILES:
        if (root / name).exists():
            os.chmod(root / name, 0o644)
    os.chmod(root, 0o755)
    with caplog.at_level(logging.WARNING, logger="headoffice.index.sqlite"):
        index = open_index(url)
    try:
        assert mode(root / "index.sqlite3") == 0o600
        assert all(mode(root / n) == 0o600 for n in SIDE_FILES if (root / n).exists())
        assert mode(root) == 0o700
        text = caplog.text
        assert f"{root / 'index.sqlite3'} was mode 0644, readable by others: now 0600" in text
        assert f"{root} was mode 0755" in text
        assert index.search() == []  # still a working index
    finally:
        index.close()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="headoffice.index.sqlite"):
        open_index(url).close()
    assert caplog.text == "", "nothing to tighten the second time"


def test_shared_directory_is_left_alone(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A sticky directory (like /tmp) is not chmodded, only named in the log."""
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    with caplog.at_level(logging.WARNING, logger="headoffice.index.sqlite"):
        open_index(f"sqlite:///{shared}/index.sqlite3").close()
    assert mode(shared) == 0o1777
    assert mode(shared / "index.sqlite3") == 0o600
    assert f"index directory {shared} is mode 1777" in caplog.text
