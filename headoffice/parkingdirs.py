"""Folders of the file store: made durably (blobs) or not (parking), and parking folders
kept for the next upload instead of removed and made again.

A new directory costs as much as a new file: up to 0.85 ms of kernel time on this
machine's ext4, a rename ~20 µs (module doc of :mod:`headoffice.store`). Every upload
needs a parking folder and every stored recording empties one, so a worker keeps the
folders it emptied, renamed to ``parking/{device}/.spare-{random}``, and the device's
next upload gets one by renaming it to its recording id. Ids never start with ".", so
a spare is never taken for an upload, and a spare is only a cache: the pool is this
process's memory, at most :data:`SPARES_PER_DEVICE` per device; a spare another worker
or a restart removed is simply made anew. A chunk another worker parks late into a
folder being retired can ride along into the spare: a claimed folder is emptied
before it is used (nothing can be parked into it before its init is, module
:mod:`headoffice.store`).
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections import defaultdict
from pathlib import Path

from headoffice.storefiles import DIR_MODE, empty_folder, remove_folder
from sealedrec.durable import fsync_dir

SPARES_PER_DEVICE = 4
SPARE_PREFIX = ".spare-"


def makedirs_durable(path: Path, *, durable: bool = True) -> None:
    """``mkdir -p`` (mode 0700) that fsyncs the parent of every directory it creates
    (with ``durable`` False: not, for parking)."""
    missing: list[Path] = []
    p = path
    while not p.is_dir():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue  # another worker made it; it fsyncs the parent
        if durable:
            fsync_dir(d.parent)


class SpareFolders:
    """This process's emptied parking folders, per device, for the next uploads."""

    def __init__(self) -> None:
        self._spares: defaultdict[str, list[str]] = defaultdict(list)
        self._mutex = threading.Lock()

    def ensure(self, directory: str) -> None:
        """The upload's parking folder ``parking/{device}/{rec}`` exists: as it was, a
        spare of its device renamed to it (emptied), or made (with its device's)."""
        if os.path.isdir(directory):
            return
        device_dir = os.path.dirname(directory)
        while (spare := self._take(device_dir)) is not None:
            try:
                os.rename(spare, directory)
            except FileNotFoundError:
                continue  # removed meanwhile (a clean-up at start): another, or make one
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                self._give(device_dir, spare)  # another worker parked there first
                return
            empty_folder(directory)  # a late chunk may have ridden along
            return
        makedirs_durable(Path(directory), durable=False)

    def retire(self, directory: str) -> None:
        """Empty the parking folder ``directory`` and keep it as a spare (or remove it
        when its device has enough). FileNotFoundError when there is none."""
        device_dir = os.path.dirname(directory)
        with self._mutex:
            room = len(self._spares[device_dir]) < SPARES_PER_DEVICE
        if not room:
            remove_folder(directory)
            return
        empty_folder(directory)
        spare = os.path.join(device_dir, f"{SPARE_PREFIX}{os.urandom(8).hex()}")
        os.rename(directory, spare)
        self._give(device_dir, spare)

    def _take(self, device_dir: str) -> str | None:
        with self._mutex:
            spares = self._spares.get(device_dir)
            return spares.pop() if spares else None

    def _give(self, device_dir: str, spare: str) -> None:
        with self._mutex:
            self._spares[device_dir].append(spare)


def is_spare(name: str) -> bool:
    return name.startswith(SPARE_PREFIX)


def remove_stale_spares(parking: Path, older_than_s: float) -> int:
    """Remove spare folders untouched for ``older_than_s`` (left by stopped workers);
    returns how many. A live worker whose spare went makes a new folder instead."""
    removed = 0
    cutoff = time.time() - older_than_s
    for spare in parking.glob(f"*/{SPARE_PREFIX}*"):
        try:
            if spare.stat().st_mtime < cutoff:
                remove_folder(os.fspath(spare))
                removed += 1
        except FileNotFoundError:
            continue
    return removed
