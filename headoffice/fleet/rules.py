"""Which fleet alarms' conditions hold for a device now: pure rules over plain facts (no
I/O, like :mod:`headoffice.retention`). :mod:`headoffice.fleet.ingest` gathers the facts
(the device's latest telemetry and verified head, the office's chain head, its gaps and
receiver alarms, its lines' latest calls with their level summaries, its certificate)
and :mod:`headoffice.fleet.alarms` turns the conditions into alarms.

The kinds, per device (``line`` None) or per line:

- ``offline``: the last will said so, or no telemetry for ``offline_after_s``;
- ``silent_line`` / ``hum`` / ``clipping``: of a line's last ``level_calls`` calls longer
  than ``min_call_s`` that carry a level summary, at least ``level_share`` (and two) are
  silent (silence ≥ ``silence_fraction`` of the call, or RMS under ``silent_rms_dbfs``),
  hum at ≥ ``hum_dbfs``, or clip on more than ``clip_fraction`` of their samples;
- ``no_calls`` (with ``no_calls = true``): no call for ``no_calls_hours`` on a line that
  had at least ``no_calls_min_per_day`` a day over the ``baseline_days`` before;
- ``backlog``: the device's oldest unacknowledged recording is older than ``backlog_s``;
- ``head_ahead``: the signed head names a seq the office has not received, held for
  ``head_ahead_s``; ``missing_tail``: more recordings between the office's last seq and
  the head than the device still holds unacknowledged (they are on neither side);
- ``gap``: seqs missing between received recordings; ``replay``, ``chain``,
  ``conflict``, ``signature``, ``recipients``, ``telemetry_forged``: the receiver's (and
  the telemetry ingest's) alarms of the last ``event_hold_s``, raised at once;
- ``clock_unsynced``, ``disk_low`` (under ``disk_min_free_mb``), ``recorder_fault`` (an
  audio or storage fault, or no recorder running), from the latest telemetry: while the
  device is offline these are unknown, and alarms of theirs stay as they are;
- ``cert_expiring``: the enrolled TLS certificate ends within ``cert_warn_days``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from headoffice.fleet.config import FleetConfig
from headoffice.fleet.telemetry import StatusDocument
from sealedrec.levels import CallLevels as SignedLevels

__all__ = [
    "EVENT_KINDS",
    "KINDS",
    "TELEMETRY_KINDS",
    "CallLevels",
    "Condition",
    "DeviceFacts",
    "Evaluation",
    "LineActivity",
    "ReceiverEvent",
    "call_levels",
    "evaluate",
    "is_clipped",
    "is_hum",
    "is_silent",
    "severity_of",
]

#: Receiver (and ingest) alarms surfaced as fleet alarms, each for ``event_hold_s``.
EVENT_KINDS = ("replay", "chain", "conflict", "signature", "recipients", "telemetry_forged")
#: Judged from the latest telemetry: unknown while the device is offline.
TELEMETRY_KINDS = ("backlog", "missing_tail", "clock_unsynced", "disk_low", "recorder_fault")
LINE_KINDS = ("silent_line", "hum", "clipping", "no_calls")
KINDS = (
    "offline",
    *LINE_KINDS,
    "head_ahead",
    "gap",
    "cert_expiring",
    *TELEMETRY_KINDS,
    *EVENT_KINDS,
)
CRITICAL = frozenset({"offline", "silent_line", "missing_tail", "recorder_fault", *EVENT_KINDS})
#: At least this many judged calls before a line's levels raise anything.
MIN_JUDGED_CALLS = 2
MIB = 1024 * 1024


def severity_of(kind: str) -> str:
    """``critical`` for what loses or forges recordings, else ``warning``."""
    return "critical" if kind in CRITICAL else "warning"


@dataclass(frozen=True, slots=True)
class Condition:
    """A condition that holds now: ``hold_s`` is how long it must hold to be raised."""

    kind: str
    line: str | None
    detail: str
    hold_s: float

    @property
    def key(self) -> tuple[str, str]:
        return (self.line or "", self.kind)


@dataclass(frozen=True, slots=True)
class Evaluation:
    """The conditions that hold, and the kinds that cannot be judged now (their alarms
    are left as they are)."""

    conditions: tuple[Condition, ...]
    unknown: frozenset[str]


@dataclass(frozen=True, slots=True)
class CallLevels:
    """A stored call's level summary (from its signed manifest)."""

    recording_id: str
    duration_s: float
    silence_fraction: float | None
    rms_dbfs: float | None
    hum_dbfs: float | None
    clipped_fraction: float | None


@dataclass(frozen=True, slots=True)
class LineActivity:
    """A line's calls for ``no_calls``: the newest start, and how many started in the
    baseline period (the ``baseline_days`` before the last ``no_calls_hours``)."""

    last_call: datetime | None
    baseline_calls: int


@dataclass(frozen=True, slots=True)
class ReceiverEvent:
    kind: str
    message: str
    raised_at: datetime


@dataclass(frozen=True, slots=True)
class DeviceFacts:
    device_id: str
    online: bool
    state_since: datetime
    last_seen_at: datetime | None  # None: never heard (known only from recordings)
    status: StatusDocument | None  # the last online document
    head_seq: int | None
    office_seq: int  # the highest seq the office holds (0: none)
    gaps: Sequence[tuple[int, int]] = ()
    events: Sequence[ReceiverEvent] = ()
    calls: Mapping[str, Sequence[CallLevels]] = field(default_factory=dict)  # newest first
    activity: Mapping[str, LineActivity] = field(default_factory=dict)
    cert_not_after: datetime | None = None


def call_levels(recording_id: str, duration_ms: int, manifest: Mapping[str, Any]) -> CallLevels:
    """The level summary a stored manifest carries (:class:`sealedrec.levels.CallLevels`,
    signed with it); every figure None when it has none (older firmware, a discarded or
    recovered call) or one that does not read as a summary."""
    raw = manifest.get("levels")
    summary: SignedLevels | None = None
    if isinstance(raw, Mapping):
        try:
            summary = SignedLevels.model_validate(dict(raw))
        except ValidationError:
            summary = None  # checked at ingest; an index row from before cannot stop us
    seconds = max(0, duration_ms) / 1000
    if summary is None:
        return CallLevels(recording_id, seconds, None, None, None, None)
    hum = summary.hum
    return CallLevels(
        recording_id,
        seconds,
        summary.silent_fraction,
        summary.rms_dbfs,
        None if hum is None else hum[1],
        summary.clipped_fraction,
    )


# --------------------------------------------------------------------------- the rules


def _offline(f: DeviceFacts, cfg: FleetConfig, now: datetime) -> Condition | None:
    if f.last_seen_at is None:
        return None  # never heard: no telemetry yet, nothing to say it went away
    if not f.online:
        return Condition(
            "offline", None, f"offline (last will) since {_hm(f.state_since)}", cfg.raise_after_s
        )
    silent = (now - f.last_seen_at).total_seconds()
    if silent >= cfg.offline_after_s:
        # The silence itself has lasted offline_after_s: damping enough.
        return Condition(
            "offline",
            None,
            f"no telemetry for {human_age(silent)} (since {_hm(f.last_seen_at)})",
            0,
        )
    return None


def _judged(calls: Sequence[CallLevels], cfg: FleetConfig) -> list[CallLevels]:
    usable = [
        c
        for c in calls
        if c.duration_s >= cfg.min_call_s
        and (c.silence_fraction is not None or c.rms_dbfs is not None)
    ]
    return usable[: cfg.level_calls]


def _share(hits: int, judged: int, cfg: FleetConfig) -> bool:
    return (
        judged >= MIN_JUDGED_CALLS and hits >= MIN_JUDGED_CALLS and hits / judged >= cfg.level_share
    )


def is_silent(c: CallLevels, cfg: FleetConfig) -> bool:
    return (c.silence_fraction is not None and c.silence_fraction >= cfg.silence_fraction) or (
        c.rms_dbfs is not None and c.rms_dbfs < cfg.silent_rms_dbfs
    )


def is_hum(c: CallLevels, cfg: FleetConfig) -> bool:
    return c.hum_dbfs is not None and c.hum_dbfs >= cfg.hum_dbfs


def is_clipped(c: CallLevels, cfg: FleetConfig) -> bool:
    return c.clipped_fraction is not None and c.clipped_fraction > cfg.clip_fraction


def _levels(line: str, calls: Sequence[CallLevels], cfg: FleetConfig) -> list[Condition]:
    judged = _judged(calls, cfg)
    n = len(judged)
    out = []
    silent = sum(is_silent(c, cfg) for c in judged)
    if _share(silent, n, cfg):
        out.append(
            Condition(
                "silent_line",
                line,
                f"{silent} of the last {n} calls silent (dead or one-way audio)",
                cfg.raise_after_s,
            )
        )
    hum = [c.hum_dbfs for c in judged if is_hum(c, cfg) and c.hum_dbfs is not None]
    if _share(len(hum), n, cfg):
        out.append(
            Condition(
                "hum",
                line,
                f"mains hum up to {max(hum):.1f} dBFS in {len(hum)} of the last {n} calls "
                f"(limit {cfg.hum_dbfs:g} dBFS)",
                cfg.raise_after_s,
            )
        )
    clipped = sum(is_clipped(c, cfg) for c in judged)
    if _share(clipped, n, cfg):
        out.append(
            Condition(
                "clipping",
                line,
                f"{clipped} of the last {n} calls clip (over {cfg.clip_fraction:.1%} of samples)",
                cfg.raise_after_s,
            )
        )
    return out


def _no_calls(line: str, a: LineActivity, cfg: FleetConfig, now: datetime) -> Condition | None:
    if not cfg.no_calls:
        return None
    per_day = a.baseline_calls / cfg.baseline_days
    quiet_since = now - timedelta(hours=cfg.no_calls_hours)
    if per_day < cfg.no_calls_min_per_day or (
        a.last_call is not None and a.last_call >= quiet_since
    ):
        return None
    last = f"since {_hm(a.last_call)}" if a.last_call else "at all"
    return Condition(
        "no_calls",
        line,
        f"no call {last}; it usually has {per_day:.1f} a day",
        cfg.raise_after_s,
    )


def _chain(f: DeviceFacts, cfg: FleetConfig) -> list[Condition]:
    out = []
    if f.head_seq is not None and f.head_seq > f.office_seq:
        ahead = f.head_seq - f.office_seq
        out.append(
            Condition(
                "head_ahead",
                None,
                f"the device holds {ahead} recording(s) the office has not received "
                f"(device head seq {f.head_seq}, office seq {f.office_seq})",
                max(cfg.raise_after_s, cfg.head_ahead_s),
            )
        )
        outbox = f.status.outbox if f.status is not None else None
        held = outbox.unacked_count if outbox is not None else None
        if f.online and held is not None and held < ahead:
            out.append(
                Condition(
                    "missing_tail",
                    None,
                    f"{ahead - held} recording(s) up to seq {f.head_seq} are neither at the "
                    f"office (seq {f.office_seq}) nor waiting on the device ({held} unacked)",
                    cfg.raise_after_s,
                )
            )
    if f.gaps:
        spans = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in f.gaps[:5])
        more = f" and {len(f.gaps) - 5} more" if len(f.gaps) > 5 else ""
        out.append(Condition("gap", None, f"seq {spans}{more} missing", cfg.raise_after_s))
    return out


def _events(f: DeviceFacts, cfg: FleetConfig, now: datetime) -> list[Condition]:
    since = now - timedelta(seconds=cfg.event_hold_s)
    latest: dict[str, tuple[ReceiverEvent, int]] = {}
    for e in f.events:
        if e.kind not in EVENT_KINDS or e.raised_at < since:
            continue
        seen = latest.get(e.kind)
        if seen is None or e.raised_at >= seen[0].raised_at:
            latest[e.kind] = (e, (seen[1] if seen else 0) + 1)
        else:
            latest[e.kind] = (seen[0], seen[1] + 1)
    return [
        Condition(kind, None, f"{n}× since {_hm(since)}; last: {e.message[:300]}", 0)
        for kind, (e, n) in sorted(latest.items())
    ]


def _telemetry(s: StatusDocument, cfg: FleetConfig) -> list[Condition]:
    out = []
    age = s.outbox.oldest_unacked_age_s if s.outbox is not None else None
    if age is not None and age >= cfg.backlog_s:
        held = s.outbox.unacked_count if s.outbox is not None else None
        out.append(
            Condition(
                "backlog",
                None,
                f"oldest unacknowledged recording {human_age(age)} old ({held} waiting)",
                cfg.raise_after_s,
            )
        )
    if s.clock_sync is not None and s.clock_sync.synchronized is False:
        out.append(
            Condition(
                "clock_unsynced", None, "the device clock is not synchronised", cfg.raise_after_s
            )
        )
    free = s.disk_free_bytes
    if free is not None and free < cfg.disk_min_free_mb * MIB:
        out.append(
            Condition(
                "disk_low",
                None,
                f"{free / MIB:.0f} MiB free on the data partition (limit {cfg.disk_min_free_mb})",
                cfg.raise_after_s,
            )
        )
    fault = _recorder_fault(s)
    if fault:
        out.append(Condition("recorder_fault", None, fault, cfg.raise_after_s))
    return out


def _recorder_fault(s: StatusDocument) -> str | None:
    r = s.recorder
    if r is None:
        return None
    if r.state in ("unknown", "stale"):
        why = r.reason or r.error or r.state
        return f"the recorder is not running ({why[:200]})"
    if r.faults is None:
        return None
    faults = [
        f"{k} fault: {v[:200]}"
        for k, v in (
            ("audio", r.faults.audio),
            ("storage", r.faults.storage),
            ("announcement playback", r.faults.announce),
        )
        if v
    ]
    return "; ".join(faults) or None


def _cert(f: DeviceFacts, cfg: FleetConfig, now: datetime) -> Condition | None:
    if f.cert_not_after is None:
        return None
    left = f.cert_not_after - now
    if left > timedelta(days=cfg.cert_warn_days):
        return None
    when = f.cert_not_after.strftime("%Y-%m-%d")
    if left.total_seconds() <= 0:
        text = f"the TLS certificate expired on {when}"
    else:
        text = f"the TLS certificate expires on {when} (in {left.days} days)"
    return Condition("cert_expiring", None, text, 0)


def evaluate(f: DeviceFacts, cfg: FleetConfig, now: datetime) -> Evaluation:
    """The conditions of ``f`` at ``now`` under ``cfg``'s thresholds."""
    out: list[Condition] = []
    offline = _offline(f, cfg, now)
    if offline is not None:
        out.append(offline)
    for line, calls in sorted(f.calls.items()):
        out += _levels(line, calls, cfg)
    for line, activity in sorted(f.activity.items()):
        quiet = _no_calls(line, activity, cfg, now)
        if quiet is not None:
            out.append(quiet)
    out += _chain(f, cfg)
    out += _events(f, cfg, now)
    cert = _cert(f, cfg, now)
    if cert is not None:
        out.append(cert)
    unknown: frozenset[str] = frozenset()
    if f.online and f.status is not None and offline is None:
        out += _telemetry(f.status, cfg)
    else:
        unknown = frozenset(TELEMETRY_KINDS)
    return Evaluation(tuple(out), unknown)


def _hm(when: datetime | None) -> str:
    return when.strftime("%Y-%m-%d %H:%M UTC") if when else "?"


def human_age(seconds: float | None) -> str:
    """A duration as people say it: ``35 s``, ``12 min``, ``5.0 h``, ``3.0 d`` (``-``: none);
    in alarm texts here, and in the fleet's table and pages (headoffice.fleet.view)."""
    if seconds is None:
        return "-"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"
