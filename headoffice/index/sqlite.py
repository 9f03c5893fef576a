"""The SQLite backend of the index.

The file holds caller numbers and names: it is created mode 0600 (SQLite gives its -wal
and -shm files the database file's mode), an existing one readable by others is
tightened to 0600 when opened, and so is a directory of ours that others can enter
(0700), each with a warning in the log.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from headoffice.index.base import DEFAULT_LOCK_TIMEOUT_S, Index
from headoffice.index.records import IndexStoreError, Query, Row
from headoffice.index.schema import _schema, migrate_sqlite

log = logging.getLogger(__name__)

FILE_MODE = 0o600
DIR_MODE = 0o700
BUSY_TIMEOUT_S = 30.0  # how long a writer waits for another (SQLite's busy timeout)
WAL_RETRY_S = 0.02


class SqliteIndex(Index):
    """SQLite backend: one file, WAL, ``synchronous=FULL``."""

    def __init__(self, path: Path, url: str) -> None:
        super().__init__(url)
        self.path = path
        if not path.parent.is_dir():
            raise IndexStoreError(
                f"index {url}: directory {path.parent} does not exist; create it first"
            )
        _private_files(path)
        try:
            self._conn = sqlite3.connect(
                path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
            _enable_wal(self._conn, time.monotonic() + BUSY_TIMEOUT_S)
            self._conn.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error as exc:
            raise IndexStoreError(f"index {url}: cannot open ({exc})") from exc
        _private_files(path)  # -wal and -shm exist now
        try:
            with self._transaction(True) as q:
                for statement in _schema(pg=False):
                    q(statement, ())
                migrate_sqlite(q)
                self._check_version(q)
        except IndexStoreError:
            self._conn.close()
            raise

    @contextmanager
    def _transaction(self, write: bool) -> Iterator[Query]:
        def q(sql: str, params: Sequence[Any]) -> list[Row]:
            cur = self._conn.execute(sql, tuple(params))
            return cur.fetchall() if cur.description else []

        with self._mutex:
            try:
                if write:
                    self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield q
                except BaseException:
                    if write and self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    raise
                if write:
                    self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise IndexStoreError(f"index {self.display}: {exc}") from exc

    @contextmanager
    def _unsynced_transaction(self) -> Iterator[Query]:
        # WAL with synchronous=NORMAL: the commit is not fsynced, the WAL is at the next
        # FULL commit or checkpoint. The level cannot change inside a transaction.
        with self._mutex:
            self._set_synchronous("NORMAL")
            try:
                with self._transaction(True) as q:
                    yield q
            finally:
                self._set_synchronous("FULL")

    def _set_synchronous(self, level: str) -> None:
        try:
            self._conn.execute(f"PRAGMA synchronous={level}")
        except sqlite3.Error as exc:
            raise IndexStoreError(f"index {self.display}: {exc}") from exc

    @contextmanager
    def _no_lock(self) -> Iterator[None]:
        yield

    def finish_lock(
        self, device: str, rec: str, timeout: float = DEFAULT_LOCK_TIMEOUT_S
    ) -> AbstractContextManager[None]:
        """A no-op: one SQLite file means one machine, where the store's file lock rules."""
        return self._no_lock()

    def close(self) -> None:
        with self._mutex:
            self._conn.close()


def _private_files(path: Path) -> None:
    """Create ``path`` 0600 if it does not exist; tighten it, its -wal and -shm files
    and its directory (0700) where others may read them, logging what was changed."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    except FileExistsError:
        pass  # SQLite opens it as it is; tightened below
    except OSError as exc:
        raise IndexStoreError(f"index {path}: cannot create ({exc.strerror or exc})") from exc
    else:
        os.close(fd)  # an empty file is an empty database to SQLite
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        _tighten(file, FILE_MODE)
    _tighten(path.parent, DIR_MODE)


def _tighten(path: Path, mode: int) -> None:
    """chmod ``path`` to ``mode`` if group or others have any access to it. Not a shared
    directory (sticky, such as /tmp) or one we do not own: that is only logged."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return
    if not st.st_mode & 0o077:
        return
    was = stat.S_IMODE(st.st_mode)
    if stat.S_ISDIR(st.st_mode) and (st.st_mode & stat.S_ISVTX or st.st_uid != os.geteuid()):
        log.warning(
            "index directory %s is mode %04o: others may list it; keep the index in a"
            " directory only the office user can enter (0700)",
            path,
            was,
        )
        return
    try:
        os.chmod(path, mode)
    except OSError as exc:
        log.warning(
            "%s is mode %04o (caller numbers and names): cannot make it %04o (%s)",
            path,
            was,
            mode,
            exc.strerror or exc,
        )
        return
    log.warning("%s was mode %04o, readable by others: now %04o", path, was, mode)


def _enable_wal(conn: sqlite3.Connection, deadline: float) -> None:
    """Switch the file to WAL. Switching needs the file to itself, and SQLite answers
    "database is locked" at once instead of waiting out the busy timeout while another
    process opens the same new file (two workers started together): try again until
    ``deadline``."""
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        # No stop event to wait on in a constructor; the wait is bounded by ``deadline``.
        time.sleep(WAL_RETRY_S)


def _sqlite_path(url: str) -> Path:
    rest = url[len("sqlite:") :]
    if rest.startswith("//"):
        rest = rest[2:]
        if not rest.startswith("/"):
            raise IndexStoreError(
                f"index URL {url!r}: use sqlite:///absolute/path.sqlite3 or sqlite:relative/path"
            )
        rest = "/" + rest.lstrip("/")
    rest = rest.split("?", 1)[0]
    if not rest:
        raise IndexStoreError(f"index URL {url!r}: no file path")
    return Path(rest)
