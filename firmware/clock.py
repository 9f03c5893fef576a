"""The system clock's sync state, read from the kernel (adjtimex), for the manifest.

NTP daemons (systemd-timesyncd, chrony, ntpd) tell the kernel whether the clock is
synchronised; adjtimex(2) reads that without depending on which daemon runs. The head
office never trusts a device's UTC blindly: the manifest says how good it was.
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import asdict, dataclass
from typing import Any

# From <sys/timex.h>
_TIME_ERROR = 5
_STA_UNSYNC = 0x0040


class _Timex(ctypes.Structure):
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time_sec", ctypes.c_long),
        ("time_usec", ctypes.c_long),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_padding", ctypes.c_int * 11),
    ]


@dataclass(frozen=True, slots=True)
class ClockSync:
    synchronized: bool
    max_error_us: int | None
    est_error_us: int | None
    source: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@functools.cache
def _libc() -> ctypes.CDLL:
    # The process's own C library, loaded once: find_library("c") would run ldconfig in a
    # subprocess on every call (every sealed recording, every telemetry message).
    return ctypes.CDLL(None, use_errno=True)


def read_clock_sync() -> ClockSync:
    """Ask the kernel; ``synchronized`` is False whenever it cannot tell."""
    try:
        adjtimex = _libc().adjtimex
    except (OSError, AttributeError):
        return ClockSync(False, None, None, "unavailable")
    tx = _Timex()  # modes = 0: read only
    state = adjtimex(ctypes.byref(tx))
    if state < 0:
        return ClockSync(False, None, None, "unavailable")
    synced = state != _TIME_ERROR and not (tx.status & _STA_UNSYNC)
    return ClockSync(synced, int(tx.maxerror), int(tx.esterror), "adjtimex")


def boot_id() -> str | None:
    """This boot's id: monotonic timestamps are only comparable within one boot."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
            return fh.read().strip()
    except OSError:
        return None
