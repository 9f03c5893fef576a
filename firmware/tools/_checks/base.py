"""Check results: :class:`Status`, :class:`Check` and how they combine."""

from __future__ import annotations

import dataclasses
import stat
from collections.abc import Sequence
from enum import StrEnum
from typing import Any

MIB = 1024 * 1024

# -- thresholds ---------------------------------------------------------------------------

# Audio captured per check: long enough for several 20 ms silence windows and for the
# hum fit (levels needs 200 ms blocks, i.e. ten cycles of 50 Hz), short enough to wait for.
CAPTURE_S = 1.5
# Less than this (a file source that ends early) is too little to judge a line by.
MIN_CAPTURE_S = 0.5
# Samples at full scale: over 0.1 % of them distort every loud syllable (FAIL); a few are
# a loud click or a ring burst, worth a WARN. (Silence and hum: firmware.dsp.levels.)
CLIP_FAIL_FRACTION = 0.001

# How long the LEDs stay lit so an installer at the desk sees each one come on.
LED_ON_S = 1.0

# Write-speed test on the data partition: 4 MiB written and fsynced. A healthy SD card
# does 5-20 MB/s; recordings need well under 1 MB/s, but under 1 MB/s with fsync the
# card is worn out or failing, and the per-second journal syncs start to lag.
WRITE_TEST_BYTES = 4 * MIB
WRITE_CHUNK_BYTES = 256 * 1024
MIN_WRITE_MB_S = 1.0

# A client certificate that expires within this many days needs renewing now: a
# device whose certificate lapses stops uploading.
CERT_WARN_DAYS = 30

# Broker probe: TCP + TLS connect, then the CONNACK, each bounded by this.
BROKER_TIMEOUT_S = 5.0
# After the TLS handshake, how long to wait for the broker's verdict on the client
# certificate (TLS 1.3 sends it after the handshake; a local broker answers in ~1 ms).
TLS_VERDICT_S = 1.0
_MQTT_LOOP_S = 0.1
# CONNACK reason codes that mean "this client is not allowed in" (MQTT v5).
# (bad user name or password, not authorised, banned)
_NOT_AUTHORISED = frozenset({0x86, 0x87, 0x8A})
# OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH.
_X509_NAME_MISMATCH = (62, 64)

# Who may read a private key: its owner only.
_GROUP_OTHER = stat.S_IRWXG | stat.S_IRWXO


class Status(StrEnum):
    PASS = "PASS"
    INFO = "INFO"  # nothing to judge automatically (LEDs: the installer looks at them)
    WARN = "WARN"
    FAIL = "FAIL"
    SKIP = "SKIP"  # not run: a check it needs failed, or --skip


_SEVERITY = {Status.SKIP: 0, Status.PASS: 0, Status.INFO: 0, Status.WARN: 1, Status.FAIL: 2}


@dataclasses.dataclass(frozen=True, slots=True)
class Check:
    """One result: ``message`` says what was found, ``fix`` how to put it right.

    ``details`` lists several problems of one check (the config's), one line each.
    """

    id: str
    status: Status
    message: str
    fix: str | None = None
    details: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "status": self.status.value,
            "message": self.message,
            "fix": self.fix,
        }
        if self.details:
            out["details"] = list(self.details)
        return out


def skipped(check_id: str, why: str) -> Check:
    return Check(check_id, Status.SKIP, why)


def worst(statuses: Sequence[Status]) -> Status:
    """The most severe of ``statuses`` (PASS for none)."""
    result = Status.PASS
    for s in statuses:
        if _SEVERITY[s] > _SEVERITY[result]:
            result = s
    return result


def _combine(check_id: str, found: list[tuple[Status, str, str | None]], ok: str) -> Check:
    """One check from several findings: the worst status, messages and fixes joined."""
    problems = [f for f in found if f[0] is not Status.PASS]
    if not problems:
        return Check(check_id, Status.PASS, ok)
    status = worst([f[0] for f in problems])
    message = "; ".join(f[1] for f in problems)
    fixes = [f[2] for f in problems if f[2]]
    return Check(check_id, status, message, "; ".join(fixes) if fixes else None)


def split_fix(text: str) -> tuple[str, str | None]:
    """Split a linetap error message ("what is wrong; how to fix") into its two halves."""
    what, sep, fix = text.partition("; ")
    return (what, fix) if sep else (text, None)


# -- config -------------------------------------------------------------------------------
