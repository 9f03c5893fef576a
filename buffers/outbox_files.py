"""The outbox's file-level helpers: whole writes, fsyncs of a tree, sizes, its time
files, removal, and what an OSError on the outbox means and how to fix it."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from sealedrec.durable import fsync_dir, fsync_file, write_fd

RESERVED_PREFIX = ".outbox-"  # the outbox's own files in an entry


def write_all(path: Path, data: bytes, extra_flags: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | extra_flags, 0o600)
    try:
        write_fd(fd, data)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """fsync every regular file and directory under ``path``, children before parents."""
    with os.scandir(path) as it:
        children = list(it)
    for child in children:
        if child.is_dir(follow_symlinks=False):
            fsync_tree(Path(child.path))
        elif child.is_file(follow_symlinks=False):
            fsync_file(Path(child.path))
    fsync_dir(path)


def payload_bytes(path: Path) -> int:
    total = 0
    with os.scandir(path) as it:
        for child in it:
            if child.name.startswith(RESERVED_PREFIX):
                continue
            if child.is_dir(follow_symlinks=False):
                total += payload_bytes(Path(child.path))
            elif child.is_file(follow_symlinks=False):
                total += child.stat(follow_symlinks=False).st_size
    return total


def read_time(path: Path) -> float | None:
    """A time written by the outbox; None if the file is missing, a placeholder or torn."""
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except FileNotFoundError:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def rmtree(path: Path) -> None:
    """Remove a file or directory tree; already gone is fine."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass


def explain(exc: OSError, root: Path) -> tuple[str, str]:
    """A short reason and the fix for an OSError on the outbox."""
    code = exc.errno
    if code == errno.ENOSPC:
        return (
            "no space left (ENOSPC)",
            f"free space on the partition holding {root}: retention deletes acked "
            "recordings; if the backlog is unacked, check the uploader and the network",
        )
    if code == errno.EDQUOT:
        return ("disk quota exceeded (EDQUOT)", "raise the quota of the linetap user")
    if code == errno.EROFS:
        return (
            "read-only file system (EROFS)",
            "the data partition was remounted read-only, usually after I/O errors: "
            "check dmesg and fsck it",
        )
    if code in (errno.EACCES, errno.EPERM):
        return (
            f"permission denied ({errno.errorcode[code]})",
            f"{root} and everything in it must belong to the user running linetap "
            "(see systemd/tmpfiles)",
        )
    if code == errno.EIO:
        return ("I/O error (EIO)", "the storage device may be failing: check dmesg")
    if code == errno.ENOENT:
        return (
            "not found (ENOENT)",
            f"something outside linetap removed files under {root}",
        )
    name = errno.errorcode.get(code, str(code)) if code is not None else "?"
    return (f"{exc.strerror or exc} ({name})", f"check {root} and the partition holding it")
