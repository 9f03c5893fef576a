"""Telemetry in: :class:`FleetIngest` takes one status message (no MQTT in it, like
:class:`headoffice.receiver.Receiver`), and :meth:`FleetIngest.tick` looks for what time
alone brings (no telemetry for ``offline_after_s``, a head ahead for long enough).

One message: the topic names the device; the payload is parsed within bounds
(:func:`headoffice.fleet.telemetry.parse_status`); the device must be enrolled; its head
must verify with the enrolled manifest key (:func:`sealedrec.head.verify_head`): a head
that does not is a forgery (someone holds the device's TLS identity but not its signing
key), and the whole message is refused, logged and raised as ``telemetry_forged``. Then
the latest state and the hour's rollup are stored (idempotent: every worker gets every
status message), and the device is evaluated: the facts gathered, the rules applied
(:func:`headoffice.fleet.rules.evaluate`), its lines' new calls rolled up and the alarms
moved (:meth:`headoffice.fleet.alarms.FleetAlarms.sync`), in one transaction.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509

from headoffice.alarm_throttle import AlarmThrottle
from headoffice.fleet.alarms import Enqueue, FleetAlarms, Transition
from headoffice.fleet.config import FleetConfig
from headoffice.fleet.rules import (
    EVENT_KINDS,
    CallLevels,
    DeviceFacts,
    LineActivity,
    ReceiverEvent,
    call_levels,
    evaluate,
    is_clipped,
    is_hum,
    is_silent,
)
from headoffice.fleet.state import FleetStore, VerifiedHead, hour_of, iso, parse_iso, status_digest
from headoffice.fleet.telemetry import TelemetryError, parse_status
from headoffice.index import Index
from headoffice.index.records import Query
from headoffice.officeroot import CaLayout, device_signing_key
from sealedrec.errors import LinetapError
from sealedrec.head import HeadError, verify_head
from sealedrec.protocol import Kind, ProtocolError, parse_topic

__all__ = ["FleetIngest", "Outcome", "status_filter"]

log = logging.getLogger(__name__)

#: Recordings younger than this (by stored_at) are rolled up at a later evaluation: a
#: worker's commit never takes this long, so no recording is passed over by the cursor.
SETTLE_S = 60.0
ROLLUP_BATCH = 2000


def status_filter() -> str:
    """What the office subscribes to for telemetry (plainly: every worker gets all)."""
    return "linetap/+/status"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one status message: ``stored``, ``duplicate`` (stored already, or
    older than what is), ``malformed``, ``unknown_device`` or ``forged``."""

    result: str
    device_id: str | None
    transitions: tuple[Transition, ...] = ()


class FleetIngest:
    """Status messages in, alarms out (see the module docstring)."""

    def __init__(
        self,
        root: Path,
        index: Index,
        cfg: FleetConfig,
        *,
        enqueue: Enqueue | None = None,
        clock: Callable[[], datetime] | None = None,
        alarm_interval_s: float = 300.0,
    ) -> None:
        self.root = root
        self.index = index
        self.cfg = cfg
        self.store = FleetStore(index)
        self.alarms = FleetAlarms(index, cfg, enqueue)
        self.clock = clock or (lambda: datetime.now(UTC))
        self.forgeries = AlarmThrottle(index, alarm_interval_s, time.monotonic)
        self.counts: dict[str, int] = {}
        self._certs: dict[str, tuple[float, datetime | None]] = {}
        self._mutex = threading.Lock()

    def _count(self, what: str) -> None:
        with self._mutex:
            self.counts[what] = self.counts.get(what, 0) + 1

    # -- one message ------------------------------------------------------------------
    def handle(self, topic: str, payload: bytes, now: datetime | None = None) -> Outcome:
        """One status message; never raises for what a device sent (index trouble
        raises :class:`LinetapError`: the message is lost, the next one brings the state
        again, as telemetry is retained and repeated)."""
        at = now or self.clock()
        try:
            parsed = parse_topic(topic)
        except ProtocolError:
            parsed = None
        if parsed is None or parsed.kind is not Kind.STATUS:
            self._count("malformed")
            log.warning("telemetry on %s: not a status topic", topic[:120])
            return Outcome("malformed", None)
        device = parsed.device
        try:
            doc = parse_status(payload, device)
        except TelemetryError as exc:
            self._count("malformed")
            log.warning("telemetry of device=%s refused: %s", device, exc)
            return Outcome("malformed", device)
        try:
            key = device_signing_key(self.root, device)
        except LinetapError as exc:
            self._count("unknown_device")
            log.warning("telemetry of device=%s ignored: %s", device, exc)
            return Outcome("unknown_device", device)
        head: VerifiedHead | None = None
        if doc.online and doc.head is not None and set(doc.head) != {"error"}:
            try:
                verified = verify_head(
                    doc.head, key, device_id=device, now=at, max_skew_s=self.cfg.head_max_skew_s
                )
            except HeadError as exc:
                return self._forged(device, str(exc), at)
            head = VerifiedHead(
                verified.seq,
                verified.manifest_sha256,
                verified.recording_id,
                iso(verified.signed_at),
            )
        elif doc.head is not None and doc.online:
            log.warning("device=%s could not read its own head: %s", device, doc.head["error"])
        if not self.store.store_status(device, doc, status_digest(payload), head, at):
            self._count("duplicate")
            return Outcome("duplicate", device)
        self._count("stored")
        return Outcome("stored", device, tuple(self.evaluate(device, at)))

    def _forged(self, device: str, reason: str, at: datetime) -> Outcome:
        self._count("forged")
        log.error("telemetry of device=%s refused: %s", device, reason)
        self.forgeries.raise_alarm(device, "telemetry_forged", f"status refused: {reason}")
        return Outcome("forged", device, tuple(self.evaluate(device, at)))

    # -- time -------------------------------------------------------------------------
    def tick(self, now: datetime | None = None) -> list[Transition]:
        """Evaluate the devices time alone can change (silent since the last tick, or
        an alarm waiting out a hold or a clearing: :meth:`FleetStore.due_device_ids`);
        one device's trouble does not stop the others."""
        at = now or self.clock()
        done: list[Transition] = []
        for device in self.store.due_device_ids(at - timedelta(seconds=self.cfg.tick_s)):
            try:
                done += self.evaluate(device, at)
            except LinetapError as exc:
                log.error("fleet: device %s not evaluated: %s", device, exc)
        return done

    # -- evaluation -------------------------------------------------------------------
    def evaluate(self, device: str, now: datetime) -> list[Transition]:
        facts = self.facts(device, now)
        result = evaluate(facts, self.cfg, now)
        return self.alarms.sync(
            device, result, now, in_transaction=lambda q: self._roll_up_lines(q, device, now)
        )

    def facts(self, device: str, now: datetime) -> DeviceFacts:
        """What the rules judge ``device`` by, read from the index and the office root."""
        row = self.store.device(device)
        lines = sorted(
            {ln.line for ln in self.store.lines(device)} | self.store.recorded_lines(device)
        )
        with self.index.transaction(False) as q:
            seq_rows = q("SELECT last_seq FROM devices WHERE device_id = ?", (device,))
            events = self._events(q, device, now)
            calls = {line: self._calls(q, device, line) for line in lines}
            activity = (
                {line: self._activity(q, device, line, now) for line in lines}
                if self.cfg.no_calls
                else {}
            )
        return DeviceFacts(
            device_id=device,
            online=row.online if row is not None else False,
            state_since=row.state_since if row is not None else now,
            last_seen_at=row.last_seen_at if row is not None else None,
            status=row.status if row is not None else None,
            head_seq=row.head.seq if row is not None and row.head is not None else None,
            office_seq=int(seq_rows[0][0]) if seq_rows else 0,
            gaps=[(g.first_missing, g.last_missing) for g in self.index.gaps(device)],
            events=events,
            calls=calls,
            activity=activity,
            cert_not_after=self._cert_not_after(device),
        )

    def _events(self, q: Query, device: str, now: datetime) -> list[ReceiverEvent]:
        since = iso(now - timedelta(seconds=self.cfg.event_hold_s))
        marks = ", ".join("?" for _ in EVENT_KINDS)
        rows = q(
            f"SELECT kind, message, raised_at FROM alarms WHERE device_id = ? "
            f"AND kind IN ({marks}) AND raised_at >= ? ORDER BY id DESC LIMIT 200",
            (device, *EVENT_KINDS, since),
        )
        return [
            ReceiverEvent(str(r[0]), str(r[1]), parse_iso(r[2]) or now)
            for r in rows
            if parse_iso(r[2]) is not None
        ]

    def _calls(self, q: Query, device: str, line: str) -> list[CallLevels]:
        # Twice as many as judged: short calls and ones without levels are skipped.
        rows = q(
            "SELECT recording_id, duration_ms, manifest FROM recordings "
            "WHERE device_id = ? AND line = ? ORDER BY started_utc DESC LIMIT ?",
            (device, line, 2 * self.cfg.level_calls),
        )
        return [call_levels(str(r[0]), int(r[1]), _manifest(r[2])) for r in rows]

    def _activity(self, q: Query, device: str, line: str, now: datetime) -> LineActivity:
        quiet = now - timedelta(hours=self.cfg.no_calls_hours)
        start = quiet - timedelta(days=self.cfg.baseline_days)
        [(last, baseline)] = q(
            "SELECT MAX(started_utc), SUM(CASE WHEN started_utc >= ? AND started_utc < ? "
            "THEN 1 ELSE 0 END) FROM recordings WHERE device_id = ? AND line = ?",
            (iso(start), iso(quiet), device, line),
        )
        return LineActivity(parse_iso(last), int(baseline or 0))

    def _cert_not_after(self, device: str) -> datetime | None:
        """The enrolled TLS certificate's end (read again only when the file changes)."""
        path = CaLayout(self.root).device_cert(device)
        try:
            mtime = os.stat(path).st_mtime
        except OSError:
            return None
        cached = self._certs.get(device)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        try:
            not_after: datetime | None = x509.load_pem_x509_certificate(
                path.read_bytes()
            ).not_valid_after_utc
        except (OSError, ValueError) as exc:
            log.warning("device %s: certificate %s unreadable: %s", device, path, exc)
            not_after = None
        self._certs[device] = (mtime, not_after)
        return not_after

    # -- the lines' hourly history ----------------------------------------------------
    def _roll_up_lines(self, q: Query, device: str, now: datetime) -> None:
        """Count the device's recordings stored since the last roll-up (older than
        :data:`SETTLE_S`) into their lines' hours, and move the cursor; under the
        device's lock, so each recording counts once whichever worker does it."""
        rows = q("SELECT rolled_until FROM fleet_devices WHERE device_id = ?", (device,))
        if not rows:
            return
        cursor = rows[0][0] or ""
        settled = iso(now - timedelta(seconds=SETTLE_S))
        found = q(
            "SELECT recording_id, line, started_utc, duration_ms, manifest, stored_at "
            "FROM recordings WHERE device_id = ? AND stored_at > ? AND stored_at <= ? "
            "ORDER BY stored_at LIMIT ?",
            (device, cursor, settled, ROLLUP_BATCH),
        )
        if not found:
            return
        hours: dict[tuple[str, str], list[int]] = {}
        for rec, line, started, duration_ms, manifest, _ in found:
            when = parse_iso(started) or now
            c = call_levels(str(rec), int(duration_ms), _manifest(manifest))
            judged = c.duration_s >= self.cfg.min_call_s and c.silence_fraction is not None
            counts = hours.setdefault((str(line), hour_of(when)), [0, 0, 0, 0, 0])
            counts[0] += 1
            if judged:
                counts[1] += 1
                counts[2] += is_silent(c, self.cfg)
                counts[3] += is_hum(c, self.cfg)
                counts[4] += is_clipped(c, self.cfg)
        for (line, hour), n in hours.items():
            _add_line_hour(q, device, line, hour, n)
        q(
            "UPDATE fleet_devices SET rolled_until = ? WHERE device_id = ?",
            (str(found[-1][5]), device),
        )


def _add_line_hour(q: Query, device: str, line: str, hour: str, n: list[int]) -> None:
    old = q(
        "SELECT calls, judged_calls, silent_calls, hum_calls, clipped_calls FROM fleet_line_hours "
        "WHERE device_id = ? AND line = ? AND hour = ?",
        (device, line, hour),
    )
    if old:
        total = [int(a) + b for a, b in zip(old[0], n, strict=True)]
        q(
            "UPDATE fleet_line_hours SET calls = ?, judged_calls = ?, silent_calls = ?, "
            "hum_calls = ?, clipped_calls = ? WHERE device_id = ? AND line = ? AND hour = ?",
            (*total, device, line, hour),
        )
    else:
        q(
            "INSERT INTO fleet_line_hours (device_id, line, hour, calls, judged_calls, "
            "silent_calls, hum_calls, clipped_calls) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (device, line, hour, *n),
        )


def _manifest(text: object) -> dict[str, Any]:
    try:
        data = json.loads(str(text))
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
