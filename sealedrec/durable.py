"""Files that survive a power cut: the fsync steps every writer in linetap shares.

A file is durable once its data is fsynced *and* the directory entry naming it is
fsynced; a rename is durable once the directory is. Leaving out the second step is the
classic way to lose a file that was "written": these helpers make it one call.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
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
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)  # a leftover of a killed process that had our pid
    try:
        write_new_file(tmp, data, mode)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
