"""The finish lock across workers on any number of machines: a PostgreSQL advisory lock
per recording, on database sessions of its own.

Key: ``(hashtext('linetap:' || device), hashtext(rec))``, the two-int key space (the
key every version of the office has used, so workers of an older and a newer version
exclude each other during a rolling upgrade). ``hashtext`` is the server's own function,
the same for every client of one server; two recordings that collide only take turns.

**Session-level, on a dedicated connection** (not ``pg_advisory_xact_lock`` in the
finishing transaction): the lock has to span the assembly and the S3 upload of the blob,
which can take minutes for a long call, while the index's own transaction (the row, the
ledger leaf) is short and on the index's connection. A session lock keeps no transaction
open meanwhile: no idle-in-transaction session (which ``idle_in_transaction_session_timeout``
may end, silently dropping the lock), no snapshot holding back vacuum. Sessions are
pooled (a connection costs a TCP and TLS handshake and authentication: several ms), so
a lock costs two round trips: lock and unlock.

**Bounded wait**: ``lock_timeout`` on the session and a blocking ``pg_advisory_lock``:
the server hands the lock over the moment its holder releases it (no polling interval
added to the fin race of a shared subscription, where two workers often reach the same
recording together), and gives up after the timeout with SQLSTATE 55P03, reported as
:class:`LockTimeoutError`.

**Threads**: a session lock is re-entrant *within its session*, so each holding thread
has a session of its own (two threads of one worker exclude each other like two
workers); a thread that already holds the lock of a recording and asks again (the
receiver takes the store's lock, then the index's: both are this lock with an S3 store)
just nests, without another round trip.

**A session lost while held** (the server restarted, the network dropped) has released
its lock on the server: another worker may then finish the same recording at the same
time. That is harmless by construction (the blob is written once with ``If-None-Match``,
the index adds a recording id once, with its one ledger leaf); it is logged.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from headoffice.index.records import IndexStoreError, Row

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

_LOCK = "SELECT pg_advisory_lock(hashtext(%s), hashtext(%s))"
_UNLOCK = "SELECT pg_advisory_unlock(hashtext(%s), hashtext(%s))"
_IDLE_KEPT = 4  # sessions kept open between locks (a worker holds one or two at a time)


class LockTimeoutError(IndexStoreError):
    """The recording's finish lock is still held by another worker after the timeout."""


@dataclass(slots=True)
class _Session:
    conn: psycopg.Connection[Row]
    timeout_ms: int = -1  # the session's lock_timeout as last set (-1: not yet)


@dataclass(slots=True)
class _Held:
    session: _Session
    depth: int


class AdvisoryLocks:
    """Finish locks of one worker process; see the module docstring."""

    def __init__(
        self, dsn: str, display: str, scrub: Callable[[str], str], *, connect_timeout: int = 10
    ) -> None:
        self._dsn = dsn
        self._display = display
        self._scrub = scrub  # removes the password from a driver's message
        self._connect_timeout = connect_timeout
        self._idle: list[_Session] = []
        self._held: dict[tuple[int, str, str], _Held] = {}
        self._mutex = threading.Lock()
        self._closed = False

    def _error(self, what: str, exc: Exception) -> IndexStoreError:
        return IndexStoreError(f"index {self._display}: {what}: {self._scrub(str(exc))}")

    # -- sessions ------------------------------------------------------------------------
    def _connect(self) -> _Session:
        import psycopg  # as the index does: only an office with PostgreSQL loads the driver

        try:
            # keepalives: a dead server (power cut, partition) must not hang a finishing
            # worker for the kernel's two-hour default: probes after 30 s idle, 3 lost: gone.
            conn: psycopg.Connection[Row] = psycopg.connect(
                self._dsn,
                autocommit=True,
                connect_timeout=self._connect_timeout,
                application_name="linetap-office finish-lock",
                keepalives=1,
                keepalives_idle=30,
                keepalives_interval=10,
                keepalives_count=3,
            )
        except psycopg.Error as exc:
            raise self._error("finish lock: cannot connect", exc) from None
        return _Session(conn)

    def _checkout(self) -> tuple[_Session, bool]:
        """A session for one lock, and whether it was just opened."""
        with self._mutex:
            if self._closed:
                raise IndexStoreError(f"index {self._display}: closed")
            if self._idle:
                return self._idle.pop(), False
        return self._connect(), True

    def _checkin(self, session: _Session) -> None:
        conn = session.conn
        with self._mutex:
            keep = not (self._closed or conn.closed or conn.broken)
            if keep and len(self._idle) < _IDLE_KEPT:
                self._idle.append(session)
                return
        conn.close()

    # -- locking -------------------------------------------------------------------------
    @contextmanager
    def hold(self, device: str, rec: str, timeout: float) -> Iterator[None]:
        """The recording's lock for the ``with`` block (nested in the same thread: free);
        :class:`LockTimeoutError` after ``timeout`` seconds, :class:`IndexStoreError`
        when the database cannot be reached."""
        me = (threading.get_ident(), device, rec)
        with self._mutex:
            held = self._held.get(me)
            if held is not None:
                held.depth += 1
        if held is not None:
            try:
                yield
            finally:
                with self._mutex:
                    held.depth -= 1
            return
        session = self._lock(device, rec, timeout)
        with self._mutex:
            self._held[me] = _Held(session, 1)
        try:
            yield
        finally:
            with self._mutex:
                del self._held[me]
            self._unlock(session, device, rec)

    def _lock(self, device: str, rec: str, timeout: float) -> _Session:
        import psycopg

        key = ("linetap:" + device, rec)
        timeout_ms = max(1, round(timeout * 1000))  # 0 would mean "wait for ever"
        while True:
            session, fresh = self._checkout()
            try:
                if session.timeout_ms != timeout_ms:
                    session.conn.execute(
                        "SELECT set_config('lock_timeout', %s, false)", (f"{timeout_ms}ms",)
                    )
                    session.timeout_ms = timeout_ms
                session.conn.execute(_LOCK, key)
                return session
            except psycopg.errors.LockNotAvailable:
                self._checkin(session)  # the session is fine: only the wait ended
                raise LockTimeoutError(
                    f"recording {rec}: finish lock still held after {timeout:g} s (another "
                    "worker is finishing it, or is stuck)"
                ) from None
            except psycopg.OperationalError as exc:
                session.conn.close()
                if fresh:
                    raise self._error("finish lock", exc) from None
                # A pooled session died while idle (the server restarted): a new one.
            except psycopg.Error as exc:
                session.conn.close()
                raise self._error("finish lock", exc) from None

    def _unlock(self, session: _Session, device: str, rec: str) -> None:
        """Release; never raises (the finishing work is done either way, and a session
        that is gone has released its locks on the server)."""
        import psycopg

        try:
            row = session.conn.execute(_UNLOCK, ("linetap:" + device, rec)).fetchone()
        except psycopg.Error as exc:
            session.conn.close()
            log.warning(
                "finish lock of %s/%s: its database session ended while it was held (%s); "
                "another worker may have finished the recording at the same time, which "
                "the write-once store and the index's unique ids make harmless",
                device,
                rec,
                self._scrub(str(exc)),
            )
            return
        if not (row and row[0]):
            log.warning("finish lock of %s/%s was no longer held at release", device, rec)
        self._checkin(session)

    def close(self) -> None:
        """Close the idle sessions; a held one is closed when its holder releases it."""
        with self._mutex:
            self._closed = True
            idle, self._idle = self._idle, []
        for session in idle:
            session.conn.close()


__all__ = ["AdvisoryLocks", "LockTimeoutError"]
