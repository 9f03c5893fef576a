"""Where ``linetap provision`` puts the device's files, and how it writes them durably.

:class:`DevicePaths` names every file the config places (keys, request, certificate,
CA). Each file is written as a temp file ``<dir>/.provision-<name>.tmp`` beside its
destination (same filesystem), fsynced and renamed into place, and the rename made
durable; a killed run leaves only whole files plus temp files the next run removes.
"""

from __future__ import annotations

import contextlib
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from firmware.app import device_key_path
from firmware.config import LinetapConfig
from firmware.errors import LinetapError
from sealedrec.durable import fsync_dir, rename_durably, replace_file_via

STAGE_PREFIX = ".provision-"  # temp files beside their destination: <dir>/.provision-<name>.tmp


class ProvisionError(LinetapError, OSError):
    """A provisioning step cannot be done (unwritable directory, missing file)."""


def say(text: str) -> None:
    """One line of progress, flushed at once."""
    print(text, flush=True)


# -- where things go -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DevicePaths:
    device_id: str
    signing_key: Path
    tls_key: Path
    csr: Path
    cert: Path
    ca: Path

    @classmethod
    def of(cls, cfg: LinetapConfig) -> DevicePaths:
        keys = cfg.storage.data_dir / "keys"
        did = cfg.device_id
        return cls(
            device_id=did,
            signing_key=device_key_path(cfg),
            tls_key=cfg.upload.key_file or keys / "device-tls.key",
            csr=keys / f"{did}.csr",
            cert=cfg.upload.cert_file or keys / "device.crt",
            ca=cfg.upload.ca_file or keys / "ca.crt",
        )


# -- durable files ---------------------------------------------------------------------


def staged(dest: Path) -> Path:
    return dest.with_name(f"{STAGE_PREFIX}{dest.name}.tmp")


def take_owner_of_dir(path: Path) -> None:
    """As root: give ``path`` the owner of its directory (the daemons' user)."""
    if os.geteuid() != 0:
        return
    st = path.parent.stat()
    os.chown(path, st.st_uid, st.st_gid, follow_symlinks=False)


def make_dirs(path: Path, mode: int, *, inherit_owner: bool = True) -> None:
    """``mkdir -p``; as root each new directory takes its parent's owner (not on the FAT
    boot partition: ``inherit_owner=False``)."""
    missing: list[Path] = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir(mode=mode)
        if inherit_owner:
            take_owner_of_dir(d)
        fsync_dir(d.parent)


def stage(dest: Path, data: bytes, mode: int | None) -> Path:
    """Write ``data`` to a temp file beside ``dest`` (fsynced); removed again on failure.

    ``mode`` None: leave the mode to the filesystem (the FAT boot partition refuses a
    chmod that its mount options cannot represent).
    """
    tmp = staged(dest)
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode or 0o644)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)  # the umask may have narrowed it
    except BaseException:
        discard(tmp)
        raise
    return tmp


def commit(tmp: Path, dest: Path) -> None:
    """Rename a staged file into place (atomic) and make the rename durable."""
    try:
        rename_durably(tmp, dest)
    except BaseException:
        discard(tmp)
        raise


def discard(tmp: Path) -> None:
    with contextlib.suppress(OSError):
        tmp.unlink()


def write_atomic(dest: Path, data: bytes, mode: int | None) -> None:
    """Replace ``dest`` with ``data``: temp file beside it, fsync, rename, fsync the dir
    (``mode`` None: the filesystem's, for the FAT boot partition; see :func:`stage`)."""
    replace_file_via(dest, data, tmp=staged(dest), mode=mode)


def remove_leftovers(directory: Path) -> None:
    """Temp files a killed run left (never committed, so never in use)."""
    if not directory.is_dir():
        return
    for p in directory.glob(f"{STAGE_PREFIX}*.tmp"):
        p.unlink(missing_ok=True)


def read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def install_prompts(boot_dir: Path, config_dir: Path, config: bytes) -> list[Path]:
    """Copy the announcement prompts the config names by a plain file name (relative
    ``lines.announce_file``) from the boot partition into the config's folder, where the
    daemons read them (the boot partition is root's only: ``umask=0077``). Returns the
    prompts installed. Absolute paths are left to be on the unit already."""
    try:
        lines = tomllib.loads(config.decode("utf-8")).get("lines", [])
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return []  # the config's own check reports it
    names = {
        str(line["announce_file"])
        for line in lines
        if isinstance(line, dict) and isinstance(line.get("announce_file"), str)
    }
    installed: list[Path] = []
    for name in sorted(n for n in names if not Path(n).is_absolute()):
        if Path(name).name != name or name in (".", ".."):
            raise ProvisionError(
                f"lines.announce_file {name!r}: a prompt on the boot partition is given by its"
                ' file name alone (e.g. "announce.wav" beside linetap.toml), or by an'
                " absolute path on the unit"
            )
        data = read_or_none(boot_dir / name)
        if data is None:
            raise ProvisionError(
                f"{boot_dir / name}: no such file; lines.announce_file names it: copy the"
                " prompt WAV beside linetap.toml on the boot partition and boot again"
            )
        dest = config_dir / name
        if read_or_none(dest) != data:
            commit(stage(dest, data, 0o644), dest)
        installed.append(dest)
    return installed
