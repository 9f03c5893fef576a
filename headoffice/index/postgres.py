"""The PostgreSQL backend of the index (psycopg 3, imported only when used)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from headoffice.index.base import DEFAULT_LOCK_TIMEOUT_S, Index
from headoffice.index.pglock import AdvisoryLocks
from headoffice.index.records import IndexStoreError, Query, Row
from headoffice.index.schema import _schema

if TYPE_CHECKING:
    import psycopg


def _scrub(message: str, dsn: str) -> str:
    """Remove a password that an error message might quote."""
    try:
        password = urlsplit(dsn).password
    except ValueError:
        password = None
    if password is None:
        m = re.search(r"password\s*=\s*'?([^'\s]+)", dsn, re.I)
        password = m.group(1) if m else None
    if password:
        message = message.replace(password, "***")
    return " ".join(message.split())


class PostgresIndex(Index):
    """PostgreSQL backend (psycopg 3). A connection the server dropped fails the call
    in progress (the receiver then does not ack, and the device resends) and is
    replaced at the next; after ``ping_after_s`` idle it is checked before use."""

    _for_update = " FOR UPDATE"

    def __init__(self, dsn: str, *, connect_timeout: int = 10, ping_after_s: float = 10.0) -> None:
        super().__init__(dsn)
        self._connect_timeout = connect_timeout
        self._ping_after_s = ping_after_s
        self._conn = self._connect()
        self._last_used = time.monotonic()
        self._locks = AdvisoryLocks(
            dsn, self.display, lambda message: _scrub(message, dsn), connect_timeout=connect_timeout
        )
        try:
            with self._transaction(True) as q:
                # Workers starting together must not race each other's CREATE TABLE.
                q("SELECT pg_advisory_xact_lock(hashtext('linetap-office schema'))", ())
                for statement in _schema(pg=True):
                    q(statement, ())
                self._check_version(q)
        except IndexStoreError:
            self._conn.close()
            raise

    def _connect(self) -> psycopg.Connection[Row]:
        import psycopg

        try:
            return psycopg.connect(
                self.url,
                autocommit=True,
                connect_timeout=self._connect_timeout,
                application_name="linetap-office",
            )
        except psycopg.Error as exc:
            raise IndexStoreError(
                f"index {self.display}: cannot connect ({_scrub(str(exc), self.url)})"
            ) from None

    @contextmanager
    def _unsynced_transaction(self) -> Iterator[Query]:
        with self._transaction(True) as q:
            q("SET LOCAL synchronous_commit = off", ())
            yield q

    @contextmanager
    def _transaction(self, write: bool) -> Iterator[Query]:
        import psycopg

        with self._mutex:
            if not (self._conn.closed or self._conn.broken) and (
                time.monotonic() - self._last_used >= self._ping_after_s
            ):
                # Idle a while: the server may have restarted. Find out before the real
                # work, so that a dead connection costs a reconnect, not an error.
                try:
                    self._conn.execute("SELECT 1")
                except psycopg.OperationalError:
                    self._conn.close()
            if self._conn.closed or self._conn.broken:
                self._conn = self._connect()
            self._last_used = time.monotonic()
            conn = self._conn
            try:
                with conn.cursor() as cur:

                    def q(sql: str, params: Sequence[Any]) -> list[Row]:
                        cur.execute(sql.replace("?", "%s"), tuple(params))
                        return list(cur.fetchall()) if cur.description else []

                    if write:
                        with conn.transaction():
                            yield q
                    else:
                        yield q
            except psycopg.Error as exc:
                raise IndexStoreError(
                    f"index {self.display}: {_scrub(str(exc), self.url)}"
                ) from exc

    def serialize_appends(self, q: Query, name: str) -> None:
        q("SELECT pg_advisory_xact_lock(hashtext(?))", (f"linetap:{name}",))

    def finish_lock(
        self, device: str, rec: str, timeout: float = DEFAULT_LOCK_TIMEOUT_S
    ) -> AbstractContextManager[None]:
        """A session-level advisory lock on a pooled connection of its own, waited for at
        most ``timeout`` seconds (:mod:`headoffice.index.pglock`)."""
        return self._locks.hold(device, rec, timeout)

    def close(self) -> None:
        self._locks.close()
        with self._mutex:
            self._conn.close()
