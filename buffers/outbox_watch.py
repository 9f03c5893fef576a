"""Wake the uploader when a recording lands in the outbox: inotify on ``sealed/``.

Sealing commits an entry with one ``rename`` into ``outbox/sealed/`` (and the uploader's
own release of an entry renames it back there); inotify reports that rename at once, so
the uploader needs no rescan timer to find new work. The device image has Debian's
python3 only, so inotify is reached through ``ctypes`` (glibc's ``inotify_init1`` and
``inotify_add_watch``), no extra package.

:class:`SealedWatch` sets the watch up when made (so its owner knows at once whether
there is one) and, once started, runs one thread blocked in ``poll(2)`` on the inotify
descriptor and a pipe (the pipe ends it: closing an fd another thread is blocked on does
not wake it); events from before the start wait in the kernel's queue. Each batch of
events, a queue overflow (events were dropped: a rescan finds them)
and the loss of the watched directory all call ``on_change`` — which only has to make
the uploader look at the outbox again, so the events' names are not needed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import select
import struct
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

# <sys/inotify.h>
IN_CREATE = 0x00000100
IN_MOVED_TO = 0x00000080
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of name)
_WATCH_MASK = IN_CREATE | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
_LOST = IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED
_READ_BYTES = 64 * 1024


class WatchError(OSError):
    """inotify could not be set up (no such directory, the per-user watch limit)."""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _check(result: int, what: str, path: Path) -> int:
    if result < 0:
        code = ctypes.get_errno()
        hint = (
            " (raise fs.inotify.max_user_watches / max_user_instances)"
            if code in (errno.ENOSPC, errno.EMFILE)
            else ""
        )
        raise WatchError(code, f"{what} for {path}: {os.strerror(code)}{hint}")
    return result


def _masks(data: bytes) -> list[int]:
    """The event masks in one read of the inotify descriptor."""
    masks = []
    offset = 0
    while offset + _EVENT.size <= len(data):
        _wd, mask, _cookie, name_len = _EVENT.unpack_from(data, offset)
        masks.append(mask)
        offset += _EVENT.size + name_len
    return masks


class SealedWatch:
    """Once started, calls ``on_change()`` (from its own thread) whenever an entry is
    created in, or renamed into, ``directory``; see the module docstring. Use as a
    context manager, or :meth:`close` it. :class:`WatchError` if there can be no watch."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._on_change: Callable[[], None] = lambda: None
        libc = _libc()
        self._fd = _check(libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC), "inotify_init1", directory)
        try:
            _check(
                libc.inotify_add_watch(self._fd, os.fsencode(directory), _WATCH_MASK),
                "inotify_add_watch",
                directory,
            )
            self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)
        except BaseException:
            os.close(self._fd)
            raise
        self._thread = threading.Thread(target=self._run, name="outbox-watch", daemon=True)

    def start(self, on_change: Callable[[], None]) -> None:
        """Start calling ``on_change`` (once)."""
        self._on_change = on_change
        self._thread.start()

    def __enter__(self) -> SealedWatch:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the thread and release the descriptors (idempotent)."""
        if self._stop_w < 0:
            return
        os.write(self._stop_w, b"x")
        if self._thread.is_alive():
            self._thread.join()
        for fd in (self._fd, self._stop_r, self._stop_w):
            os.close(fd)
        self._stop_w = -1

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        watching = True
        while True:
            ready = {fd for fd, _ in poller.poll()}  # blocks: no timeout, no polling
            if self._stop_r in ready:
                return
            try:
                data = os.read(self._fd, _READ_BYTES)
            except BlockingIOError:
                continue
            masks = _masks(data)
            if watching and any(m & _LOST for m in masks):
                watching = False
                log.warning(
                    "outbox directory %s was removed or moved: new recordings are found by "
                    "the uploader's safety rescan only until it restarts",
                    self.directory,
                )
            if any(m & IN_Q_OVERFLOW for m in masks):
                log.info("inotify queue overflowed on %s: rescanning the outbox", self.directory)
            self._on_change()
