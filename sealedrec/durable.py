"""Files that survive a power cut: the fsync steps every writer in linetap shares.

A file is durable once its data is fsynced *and* the directory entry naming it is
fsynced; a rename is durable once the directory is. Leaving out the second step is the
classic way to lose a file that was "written": these helpers make it one call.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def rename_durably(src: Path, dest: Path) -> None:
    """Rename ``src`` (a file whose data is already fsynced) over ``dest``, durably.

    The renamed file is fsynced again, under its new name, before its directory. On ext4
    that costs next to nothing. On FAT (the boot partition) it is what makes the file
    whole: vfat's rename writes the new directory entry with no first cluster and size 0
    and only marks the file's inode dirty, and fsyncing the directory does not write
    that inode; until the file itself is synced, a power cut leaves a 0-byte file (the
    power-cut test in the VM found exactly that on the provisioning request).
    """
    os.replace(src, dest)
    fsync_file(dest)
    fsync_dir(dest.parent)


def write_fd(fd: int, data: bytes) -> None:
    """Write all of ``data`` to descriptor ``fd`` (``os.write`` may write less)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def fsync_dir(path: Path | str) -> None:
    """Make the entries of directory ``path`` (creates, renames, unlinks) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Make the data of file ``path`` durable (written by someone else, e.g. a library)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_new_file(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with exactly ``mode`` and ``data``, durably.

    Raises :class:`FileExistsError` if it exists (it is never replaced: keys must not be),
    and removes a half-written file if writing fails.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), mode)  # the umask may have narrowed it; make it exact
            os.fsync(fh.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def replace_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Create or replace ``path`` atomically and durably: a crash leaves the old file or
    the new one, never a mix. The temp file beside it carries the process id, so two
    processes replacing the same file do not write into each other's."""
    replace_file_via(path, data, tmp=path.with_name(f".{path.name}.{os.getpid()}.tmp"), mode=mode)


def replace_file_via(
    path: Path, data: bytes, *, tmp: Path, mode: int | None, create_mode: int = 0o644
) -> None:
    """:func:`replace_file` through a temp file the caller names, and with ``mode`` None
    the mode left to the process: ``create_mode`` less the umask, as open(2) makes it.

    A named temp file lets its owner find a killed run's leftovers; ``mode`` None suits
    files that follow the daemon's ``UMask=`` and a FAT partition, which refuses a chmod
    its mount options cannot represent. A crash leaves the old file or the new one.
    """
    tmp.unlink(missing_ok=True)  # a leftover of a killed run
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode or create_mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if mode is not None:
                os.fchmod(fh.fileno(), mode)  # the umask may have narrowed it; make it exact
            os.fsync(fh.fileno())
        rename_durably(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_file(
    path: Path, *, tmp_dir: Path | None = None, prefix: str | None = None
) -> Iterator[BinaryIO]:
    """A new file (mode 0600) to write in the ``with`` block, for callers that stream
    data or hand the file to a library: when the block ends without error it is fsynced
    and renamed onto ``path`` (atomically, durably); on an error it is removed and
    ``path`` is left as it was.

    The temp file is made in ``tmp_dir`` (default: beside ``path``; it must be on the
    same filesystem), named ``{prefix}…tmp`` (default prefix ``.{name}.``), so a writer
    that keeps its temp files in one folder can clear what a crash left there."""
    directory = path.parent if tmp_dir is None else tmp_dir
    fd, name = tempfile.mkstemp(
        prefix=f".{path.name}." if prefix is None else prefix, suffix=".tmp", dir=directory
    )
    tmp = Path(name)
    try:
        with os.fdopen(fd, "w+b") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        rename_durably(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
