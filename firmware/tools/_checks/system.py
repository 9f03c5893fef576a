"""The config, the clock and the data partition."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from firmware.clock import ClockSync
from firmware.config import (
    LinetapConfig,
    config_path,
    load_config,
)
from firmware.errors import ConfigError
from firmware.tools._checks.base import (
    MIB,
    MIN_WRITE_MB_S,
    WRITE_CHUNK_BYTES,
    WRITE_TEST_BYTES,
    Check,
    Status,
)
from firmware.tools._checks.keys import _whoami


def check_config(path: Path | None) -> tuple[LinetapConfig | None, Check]:
    """Load and validate the config; its problems become the check's ``details``."""
    shown = config_path(path)
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        count = len(exc.problems)
        return None, Check(
            "config",
            Status.FAIL,
            f"{shown}: {count} problem{'s' if count != 1 else ''}",
            "fix each line, then run 'linetap validate-config' (or this check) again",
            tuple(exc.problems),
        )
    ok = f"{shown}: valid, {len(cfg.lines)} line(s): {', '.join(x.name for x in cfg.lines)}"
    simulated: list[str] = []
    fixes: list[str] = []
    if cfg.audio.backend == "file":
        simulated.append('audio.backend = "file" (the lines are played from a file)')
        fixes.append('audio.backend = "alsa"')
    if cfg.gpio.backend == "sim":
        simulated.append('gpio.backend = "sim" (no real hook inputs or LEDs)')
        fixes.append('gpio.backend = "gpiod" (or "rpigpio" on a Pi 3/4)')
    if cfg.storage.format == "wav":
        simulated.append('storage.format = "wav" (plain recordings on the card)')
        fixes.append('storage.format = "sealed"')
    if not simulated:
        return cfg, Check("config", Status.PASS, ok)
    return cfg, Check(
        "config",
        Status.WARN,
        f"{ok}; development settings: {', '.join(simulated)}",
        "on a real appliance set " + ", ".join(fixes),
    )


# -- clock --------------------------------------------------------------------------------


def check_clock(sync: ClockSync) -> Check:
    """The kernel's clock state: recordings are evidence, their times must be right."""
    if sync.synchronized:
        err = "" if sync.max_error_us is None else f" (max error {sync.max_error_us / 1000:g} ms)"
        return Check("clock", Status.PASS, f"system clock synchronised{err}")
    why = (
        "the kernel's clock state cannot be read"
        if sync.source == "unavailable"
        else "the kernel says the system clock is not synchronised"
    )
    return Check(
        "clock",
        Status.FAIL,
        f"{why}: recordings are evidence and carry an unsynchronised time until it syncs",
        "enable NTP: 'timedatectl set-ntp true' (systemd-timesyncd) or install chrony; check"
        " 'timedatectl timesync-status' / 'chronyc tracking' and that UDP port 123 to the"
        " NTP server is open, then wait for the sync",
    )


# -- audio --------------------------------------------------------------------------------


def check_free_space(
    data_dir: Path,
    min_free_mb: int,
    usage: Callable[[Path], Any] = shutil.disk_usage,
) -> Check:
    """Free space on the data partition against storage.min_free_mb."""
    if not data_dir.is_dir():
        return _data_dir_missing("storage.free", data_dir)
    try:
        free_mb = int(usage(data_dir).free) // MIB
    except OSError as exc:
        return Check(
            "storage.free", Status.FAIL, f"storage.data_dir {data_dir}: {exc.strerror or exc}"
        )
    message = (
        f"storage.data_dir {data_dir}: {free_mb} MB free (storage.min_free_mb = {min_free_mb})"
    )
    if free_mb < min_free_mb:
        return Check(
            "storage.free",
            Status.FAIL,
            f"{message}: under the minimum, acknowledged recordings are deleted early and"
            " new ones will soon be held in RAM only",
            "free space on the data partition (other files there?), make sure the uploader"
            " gets its recordings acknowledged, or use a bigger card",
        )
    if free_mb < 2 * min_free_mb:
        return Check(
            "storage.free",
            Status.WARN,
            f"{message}: less than twice the minimum left",
            "free space on the data partition or use a bigger card",
        )
    return Check("storage.free", Status.PASS, message)


def _data_dir_missing(check_id: str, data_dir: Path) -> Check:
    state = "is not a directory" if data_dir.exists() else "does not exist"
    return Check(
        check_id,
        Status.FAIL,
        f"storage.data_dir {data_dir} {state}",
        f"create it on the data partition, owned by the user the recorder runs as:"
        f" 'install -d -m 0750 -o USER {data_dir}'",
    )


def check_write_speed(
    data_dir: Path,
    *,
    nbytes: int = WRITE_TEST_BYTES,
    clock: Callable[[], float] = time.monotonic,
) -> Check:
    """Write and fsync ``nbytes`` in a temporary file in ``data_dir``; report MB/s; delete it.

    Never fills the partition: with less than twice ``nbytes`` free it writes one chunk.
    """
    check_id = "storage.write"
    if not data_dir.is_dir():
        return _data_dir_missing(check_id, data_dir)
    try:
        free = shutil.disk_usage(data_dir).free
    except OSError as exc:
        return Check(check_id, Status.FAIL, f"storage.data_dir {data_dir}: {exc.strerror or exc}")
    size = nbytes if free >= 2 * nbytes else min(nbytes, WRITE_CHUNK_BYTES)
    chunk = os.urandom(min(size, WRITE_CHUNK_BYTES))  # incompressible, like sealed audio
    path: Path | None = None
    try:
        fd, name = tempfile.mkstemp(prefix=".linetap-check-", dir=data_dir)
        path = Path(name)
        start = clock()
        with os.fdopen(fd, "wb") as fh:
            written = 0
            while written < size:
                written += fh.write(chunk[: size - written])
            fh.flush()
            os.fsync(fh.fileno())
        seconds = max(clock() - start, 1e-6)
    except OSError as exc:
        return Check(check_id, Status.FAIL, *_write_failure(data_dir, exc))
    finally:
        if path is not None:
            path.unlink(missing_ok=True)
    mb_s = size / 1e6 / seconds
    message = (
        f"storage.data_dir {data_dir}: wrote and fsynced {size / MIB:g} MiB in"
        f" {seconds:.3f} s ({mb_s:.1f} MB/s)"
    )
    if size < nbytes:
        return Check(
            check_id,
            Status.WARN,
            f"{message}; only a small test: the partition is nearly full",
            "free space on the data partition",
        )
    if mb_s < MIN_WRITE_MB_S:
        return Check(
            check_id,
            Status.WARN,
            f"{message}: slower than {MIN_WRITE_MB_S:g} MB/s",
            "the SD card is slow or wearing out: replace it with an endurance card",
        )
    return Check(check_id, Status.PASS, message)


def _write_failure(data_dir: Path, exc: OSError) -> tuple[str, str]:
    what = f"storage.data_dir {data_dir}: cannot write ({exc.strerror or exc})"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return (
            f"{what} as {_whoami()}",
            f"run the check as root or as the recorder's user; the recorder's user needs"
            f" write access: 'chown -R USER {data_dir}'",
        )
    if exc.errno == errno.EROFS:
        return what, "the data partition is mounted read-only: check 'mount' and 'dmesg'"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return what, "the data partition is full: free space on it"
    return what, "check the data partition ('dmesg' for SD card errors)"


# -- keys ---------------------------------------------------------------------------------
