"""Helpers for tests that boot a copy of the appliance image under qemu-system-aarch64.

The image (image/build/linetap.img) is an MBR disk: FAT boot partition, read-only ext4
root, ext4 data partition. These helpers read and write the boot partition with mtools,
read the ext4 partitions back with debugfs (never a mount: the test needs no privileges
for it and cannot disturb the host), and boot what the Pi's firmware would boot on qemu's
`virt` machine. Used by tests/test_image.py (the smoke test) and tests/test_powercut.py.
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

SECTOR = 512
BOOT_TIMEOUT_S = 1800  # TCG emulation on a loaded 2-core machine: minutes, not seconds
SMOKE_SCRIPT = "/boot/firmware/smoke-check.sh"


@dataclass(frozen=True)
class Partition:
    number: int
    kind: int
    offset: int
    size: int


def partitions(image: Path) -> list[Partition]:
    """The MBR's primary partitions (the image has no extended ones)."""
    with image.open("rb") as fh:
        mbr = fh.read(SECTOR)
    assert mbr[510:512] == b"\x55\xaa", f"{image}: no MBR boot signature"
    found = []
    for i in range(4):
        entry = mbr[446 + 16 * i : 446 + 16 * (i + 1)]
        kind = entry[4]
        start, count = struct.unpack("<II", entry[8:16])
        if kind:
            found.append(Partition(i + 1, kind, start * SECTOR, count * SECTOR))
    return found


def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)


def fat_read(image: Path, part: Partition, name: str) -> bytes:
    out = subprocess.run(
        ["mcopy", "-n", "-i", f"{image}@@{part.offset}", f"::{name}", "-"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return out.stdout


def fat_write(image: Path, part: Partition, source: Path, name: str) -> None:
    run(["mcopy", "-o", "-i", f"{image}@@{part.offset}", str(source), f"::{name}"])


def fat_names(image: Path, part: Partition, directory: str = "") -> list[str]:
    out = run(["mdir", "-b", "-i", f"{image}@@{part.offset}", f"::{directory}"]).stdout
    return [line.rstrip("/").rsplit("/", 1)[-1] for line in out.splitlines() if line.strip()]


def extract(image: Path, part: Partition, dest: Path) -> Path:
    """The partition as a file of its own, for debugfs (sparse-aware enough: 1 MiB holes)."""
    chunk = 1024 * 1024
    zero = bytes(chunk)
    with image.open("rb") as src, dest.open("wb") as out:
        src.seek(part.offset)
        left = part.size
        while left:
            block = src.read(min(chunk, left))
            if block == zero[: len(block)]:
                out.seek(len(block), os.SEEK_CUR)
            else:
                out.write(block)
            left -= len(block)
        out.truncate(part.size)
    return dest


def debugfs(fs: Path, request: str) -> str:
    out = run(["debugfs", "-R", request, str(fs)])
    return out.stdout


def boot_command(
    image: Path,
    boot: Partition,
    work: Path,
    console: Path,
    *,
    script: str = SMOKE_SCRIPT,
    drive: Sequence[str] | None = None,
    memory_mb: int = 1024,
    kernel_args: Sequence[str] = (),
    extra_args: Sequence[str] = (),
) -> list[str]:
    """qemu-system-aarch64 booting what the Pi's firmware would boot: config.txt's kernel
    and initramfs, cmdline.txt's arguments (console moved to the virt machine's UART).

    ``script`` is what systemd.run= starts (a path in the guest); ``drive`` replaces the
    default ``-drive`` arguments (e.g. another cache mode or a block filter);
    ``kernel_args`` are added to the kernel's command line; ``extra_args`` go at the end
    of qemu's (e.g. a user-mode network with guestfwd: it replaces the default one)."""
    config = fat_read(image, boot, "config.txt").decode()
    kernel = re.search(r"^kernel=(\S+)", config, re.M)
    initrd = re.search(r"^initramfs (\S+)", config, re.M)
    assert kernel and initrd, f"config.txt names no kernel/initramfs:\n{config}"
    (work / "vmlinuz").write_bytes(fat_read(image, boot, kernel.group(1)))
    (work / "initrd.img").write_bytes(fat_read(image, boot, initrd.group(1)))
    cmdline = fat_read(image, boot, "cmdline.txt").decode().split()
    assert "ro" in cmdline and "root=LABEL=linetap-root" in cmdline, cmdline
    args = [a for a in cmdline if not a.startswith("console=")] + [
        "console=ttyAMA0",
        "systemd.show_status=1",
        "systemd.status_unit_format=combined",
        # The FAT partition gives its files the x bit: the script runs as it is.
        f"systemd.run={script}",
        # systemd.run= makes its own default target; the appliance's units hang off
        # multi-user.target, so pull that in too.
        "systemd.wants=multi-user.target",
        "systemd.run_success_action=poweroff",
        "systemd.run_failure_action=poweroff",
        *kernel_args,
    ]
    if drive is None:
        drive = ["-drive", f"file={image},if=virtio,format=raw"]
    network = ["-nic", "user,model=virtio-net-pci,restrict=on"]  # nothing leaves this machine
    if any(a.startswith(("-nic", "-netdev")) for a in extra_args):
        network = []  # the caller brings its own network
    return [
        "qemu-system-aarch64",
        "-M", "virt",
        "-cpu", "cortex-a72",
        "-smp", "2",
        "-m", str(memory_mb),
        "-kernel", str(work / "vmlinuz"),
        "-initrd", str(work / "initrd.img"),
        "-append", " ".join(args),
        *drive,
        *network,
        "-display", "none",
        "-monitor", "none",
        "-serial", f"file:{console}",
        "-no-reboot",
        *extra_args,
    ]  # fmt: skip


def boot(disk: Path, boot_part: Partition, work: Path) -> tuple[str, float, list[str]]:
    """Boot the disk until the guest powers off; (console text, wall seconds, command)."""
    console = work / "console.log"
    cmd = boot_command(disk, boot_part, work, console)
    text, wall_s = run_until_poweroff(cmd, console)
    return text, wall_s, cmd


# -- a card that loses its volatile cache: qemu's blklogwrites filter --------------------
#
# SIGKILLing qemu loses the guest's page cache, but every write qemu had already made to
# the disk file survives in the host's page cache: a card that never loses a write it has
# acknowledged. A real card acknowledges writes into a volatile cache and only a FLUSH
# makes them durable. So the guest writes to a throwaway qcow2 overlay through qemu's
# blklogwrites filter, which logs every write and flush in order (dm-log-writes format);
# after the cut the test replays the log onto the raw disk up to the last flush, plus
# (if asked) a random subset of the writes after it: what a card may keep of its cache.

LOG_FLUSH_FLAG = 1 << 0
LOG_FUA_FLAG = 1 << 1
LOG_DISCARD_FLAG = 1 << 2
LOG_MARK_FLAG = 1 << 3
LOG_FLAG_MASK = LOG_FLUSH_FLAG | LOG_FUA_FLAG | LOG_DISCARD_FLAG | LOG_MARK_FLAG
WRITE_LOG_MAGIC = 0x6A736677736872
LOG_SECTOR = 512
_LOG_SUPER = struct.Struct("<QQQI")
_LOG_ENTRY = struct.Struct("<QQQQ")


@dataclass(frozen=True)
class LoggedWrite:
    """One entry of the write log: a write (data at ``data_offset`` in the log) or a flush."""

    offset: int  # byte offset on the disk
    size: int  # bytes written (0 for a flush)
    flush: bool
    data_offset: int  # where the written bytes sit in the log file


def logged_drive(disk: Path, overlay: Path, log: Path) -> list[str]:
    """qemu arguments for ``disk`` as the guest's virtio disk, its writes going to a new
    qcow2 ``overlay`` (``disk`` stays untouched) through blklogwrites into ``log``.

    On the virtual device: no request merging (virtio-blk merges adjacent requests up
    to IOV_MAX buffers; blklogwrites adds two for its entry header and the write to the
    log then fails with EINVAL: an I/O error in the guest), no write-zeroes and no
    discard (not needed; a card model without them is simpler)."""
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(disk), str(overlay)])
    log.write_bytes(b"")
    return [
        "-blockdev", f"driver=file,filename={disk},node-name=card-base-file,read-only=on",
        "-blockdev", "driver=raw,file=card-base-file,node-name=card-base,read-only=on",
        "-blockdev", f"driver=file,filename={overlay},node-name=card-overlay-file",
        "-blockdev", "driver=qcow2,file=card-overlay-file,backing=card-base,node-name=card-overlay",
        "-blockdev", f"driver=file,filename={log},node-name=card-log",
        "-blockdev",
        f"driver=blklogwrites,file=card-overlay,log=card-log,log-sector-size={LOG_SECTOR},"
        "node-name=card",
        "-device", "virtio-blk-pci,drive=card,write-cache=on,request-merging=off,write-zeroes=off,discard=off",
    ]  # fmt: skip


def read_write_log(log: Path, disk_size: int) -> list[LoggedWrite]:
    """The log's entries in order, up to the first one that is not whole (qemu was killed
    while writing it). The superblock's count is updated at each flush: the entries up
    to the last flush must all be there, or the log is broken (AssertionError)."""
    entries: list[LoggedWrite] = []
    size = log.stat().st_size
    with log.open("rb") as fh:
        magic, _version, logged, sector = _LOG_SUPER.unpack(fh.read(_LOG_SUPER.size))
        assert magic == WRITE_LOG_MAGIC and sector == LOG_SECTOR, f"{log}: not a write log"
        at = LOG_SECTOR
        while at + LOG_SECTOR <= size:
            fh.seek(at)
            first, sectors, flags, _ = _LOG_ENTRY.unpack(fh.read(_LOG_ENTRY.size))
            offset, nbytes = first * LOG_SECTOR, sectors * LOG_SECTOR
            flush = bool(flags & LOG_FLUSH_FLAG)
            valid = not flags & ~LOG_FLAG_MASK and not flags & LOG_DISCARD_FLAG
            valid = valid and (flush or nbytes > 0) and offset + nbytes <= disk_size
            if not valid or at + LOG_SECTOR + nbytes > size:
                break
            entries.append(LoggedWrite(offset, nbytes, flush, at + LOG_SECTOR))
            at += LOG_SECTOR + nbytes
    assert len(entries) >= logged, (
        f"{log}: {len(entries)} whole entries, but {logged} were logged by the last flush "
        f"(entry {len(entries) + 1}, at byte {at}, is missing: a write qemu failed?)"
    )
    return entries


def replay_write_log(
    log: Path, disk: Path, keep_unflushed: Callable[[LoggedWrite], bool]
) -> tuple[int, int, int]:
    """Apply the logged writes to ``disk``: all up to the last flush, then those after it
    that ``keep_unflushed`` keeps. Returns (writes applied, writes dropped, flushes)."""
    entries = read_write_log(log, disk.stat().st_size)
    last_flush = max((i for i, e in enumerate(entries) if e.flush), default=-1)
    applied = dropped = 0
    with log.open("rb") as src, disk.open("r+b") as dst:
        for i, entry in enumerate(entries):
            if entry.flush:
                continue
            if i > last_flush and not keep_unflushed(entry):
                dropped += 1
                continue
            src.seek(entry.data_offset)
            dst.seek(entry.offset)
            dst.write(src.read(entry.size))
            applied += 1
        dst.flush()
        os.fsync(dst.fileno())
    return applied, dropped, sum(1 for e in entries if e.flush)


# -- booting any command until the guest powers off -----------------------------------------


def run_until_poweroff(
    cmd: list[str], console: Path, timeout_s: float = BOOT_TIMEOUT_S
) -> tuple[str, float]:
    """Run a boot_command() until the guest powers off; (console text, wall seconds).

    boot() runs its own standard command through this; callers with their own script,
    drives or kernel args pass theirs."""
    started = time.monotonic()
    qemu = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        qemu_out, _ = qemu.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        qemu.kill()
        qemu.communicate()
        tail = "\n".join(console.read_text(errors="replace").splitlines()[-60:])
        pytest.fail(f"the guest did not power off within {timeout_s} s; console:\n{tail}")
    wall_s = time.monotonic() - started
    text = console.read_text(errors="replace")
    end = "\n".join(text.splitlines()[-80:])
    assert qemu.returncode == 0, f"qemu: {qemu_out.decode(errors='replace')[-2000:]}\n{end}"
    return text, wall_s
