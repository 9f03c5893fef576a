"""Retention and legal hold for the filesystem blob store: a registry beside the blobs.

A file system has no Object Lock, so :class:`FileLifecycle` keeps, per stored recording,
one small JSON file ``lifecycle/{device}/{yyyy}/{mm}/{dd}/{rec}.json`` (its retention date
and legal hold), written durably (temp file, fsync, rename, directory fsync). Every
delete goes through :meth:`FileLifecycle.delete`, which refuses while the registry says
so; a recording under retention or hold also has its files made read-only (0400), so the
office user cannot overwrite them by mistake. (Root can still remove them: on this store
the registry, not the kernel, is the enforcement; an S3 bucket with Object Lock is the
store that refuses even the office's administrators.)

Updates hold one ``flock`` on ``lifecycle/.lock``: lifecycle changes are rare (the purge
job, a hold placed by compliance), and one lock orders a hold placed while a delete runs.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from headoffice.blobstore import Lifecycle, StoreError, retention_date
from sealedrec.durable import atomic_file, fsync_dir

LIFECYCLE = "lifecycle"
_LOCK_FILE = ".lock"
_LOCK_TIMEOUT_S = 30.0
_LOCK_POLL_S = 0.02
READ_ONLY = 0o400


class FileLifecycle:
    """The registry of one filesystem store (``root``), for :class:`FileBlobStore`.

    Each method takes the recording's files as the store resolved them: ``files`` (the
    blob, if any, then the manifest) and ``key`` (the path of the recording under
    ``blobs/`` without suffix, e.g. ``dev-a/2026/11/25/{rec}``)."""

    def __init__(self, root: Path, tmp_dir: Path) -> None:
        self.dir = root / LIFECYCLE
        self.tmp_dir = tmp_dir

    def _entry(self, key: str) -> Path:
        return self.dir / f"{key}.json"

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(self.dir / _LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            deadline = time.monotonic() + _LOCK_TIMEOUT_S
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise StoreError(
                            f"{self.dir / _LOCK_FILE} still locked after "
                            f"{_LOCK_TIMEOUT_S:g} s (another process is stuck in a "
                            "lifecycle change)",
                            reason="lock",
                        ) from None
                    time.sleep(_LOCK_POLL_S)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def read(self, key: str) -> Lifecycle:
        try:
            data = json.loads(self._entry(key).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return Lifecycle(retain_until=None, legal_hold=False)
        except (OSError, ValueError) as exc:
            raise StoreError(
                f"{self._entry(key)}: lifecycle entry unreadable ({exc})", reason="io"
            ) from exc
        until = data.get("retain_until")
        return Lifecycle(
            retain_until=datetime.fromisoformat(until) if isinstance(until, str) else None,
            legal_hold=data.get("legal_hold") is True,
        )

    def _write(self, key: str, state: Lifecycle, files: list[Path]) -> None:
        entry = self._entry(key)
        body = {
            "retain_until": state.retain_until.isoformat() if state.retain_until else None,
            "legal_hold": state.legal_hold,
        }
        missing: list[Path] = []
        parent = entry.parent
        while not parent.is_dir():
            missing.append(parent)
            parent = parent.parent
        for directory in reversed(missing):
            directory.mkdir(mode=0o700, exist_ok=True)
            fsync_dir(directory.parent)
        with atomic_file(entry, tmp_dir=self.tmp_dir, prefix="lifecycle-") as fh:
            fh.write((json.dumps(body, sort_keys=True) + "\n").encode())
        if state.legal_hold or state.retain_until is not None:
            for path in files:
                path.chmod(READ_ONLY)

    @staticmethod
    def _present(files: list[Path], stored: str) -> list[Path]:
        present = [p for p in files if p.exists()]
        if not present:
            raise StoreError(f"{stored}: no such stored recording", reason="missing")
        return present

    def retain_until(self, key: str, files: list[Path], stored: str, until: datetime) -> None:
        until = retention_date(until)
        with self._locked():
            present = self._present(files, stored)
            state = self.read(key)
            if state.retain_until is not None and until < state.retain_until:
                raise StoreError(
                    f"{stored}: retained until {state.retain_until.isoformat()}; a retention "
                    f"date can only be extended, not shortened to {until.isoformat()}",
                    reason="retained",
                )
            if state.retain_until != until:
                self._write(key, Lifecycle(until, state.legal_hold), present)

    def set_legal_hold(self, key: str, files: list[Path], stored: str, on: bool) -> None:
        with self._locked():
            present = self._present(files, stored)
            state = self.read(key)
            self._write(key, Lifecycle(retain_until=state.retain_until, legal_hold=on), present)

    def lifecycle(self, key: str, files: list[Path], stored: str) -> Lifecycle:
        self._present(files, stored)
        return self.read(key)

    def delete(self, key: str, files: list[Path], stored: str, now: datetime) -> None:
        """Remove ``files`` (blob first, then manifest) unless held or retained, then the
        registry entry; every directory that lost an entry is fsynced."""
        with self._locked():
            if not any(p.exists() for p in files):
                return
            state = self.read(key)
            if state.legal_hold:
                raise StoreError(f"{stored}: on legal hold; release it first", reason="held")
            if state.retain_until is not None and now < state.retain_until:
                raise StoreError(
                    f"{stored}: retained until {state.retain_until.isoformat()}",
                    reason="retained",
                )
            try:
                for path in files:
                    path.unlink(missing_ok=True)
                fsync_dir(files[0].parent)
                entry = self._entry(key)
                if entry.exists():
                    entry.unlink()
                    fsync_dir(entry.parent)
            except OSError as exc:
                reason = "full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "io"
                raise StoreError(
                    f"{stored}: cannot delete ({exc.strerror or exc})", reason=reason
                ) from exc
