"""The device side of the upload: outbox → head office over MQTT v5, plus telemetry.

One :class:`Uploader` runs in the caller's thread; paho's network loop (``loop_start``)
is the only other thread, and it only feeds a :class:`queue.Queue` of events (CONNACK,
SUBACK, PUBACK, incoming message, connection gone). Everything else — the connection,
the in-flight window, the current upload, the counters — belongs to the caller's thread.

Per recording (oldest first; entries a crash left in ``uploading/`` before any sealed
one), following :mod:`sealedrec.protocol`::

    claim → init → ack(missing) → chunks (≤ window in flight, each PUBACK checked)
          → fin → ack(stored, same blob sha256) → mark_acked
                  ack(missing)  → those chunks again, fin again
                  ack(rejected) → release to sealed, skip it for a while (never delete)
                  no ack within ack_timeout_s → init again (the store says where it stands)

New work is found without polling: the daemon's outbox watch
(:class:`buffers.outbox_watch.SealedWatch`, inotify on ``sealed/``) calls :meth:`Uploader.wake`
when sealing commits an entry, which ends the idle wait at once. The outbox is listed
again then, after every upload, and — a safety net — every ``rescan_s`` while idle (see
:data:`SAFETY_RESCAN_S`; without a watch, :data:`IDLE_RESCAN_S`).

A lost connection abandons the round; after reconnecting, the entry (still in
``uploading/``) is resumed by sending init again, so only the chunks the store lacks
travel twice. A recording is marked acked only on a ``stored`` ack whose blob sha256 is
the manifest's.

The parts: :mod:`firmware.mqttlink` (paho's client and the events its thread queues),
:mod:`uploader.connection` (connecting, the in-flight window, reconnect backoff),
:mod:`uploader.transfer` (one recording's rounds), :mod:`uploader.telemetry` (the status
document); this module picks the entries and ties the parts together.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, BinaryIO

from buffers.outbox import (
    Outbox,
    OutboxEntry,
    OutboxEntryNotFound,
    OutboxError,
    OutboxState,
    OutboxStateError,
)
from firmware.config import UploadConfig
from firmware.mqttlink import ClientFactory
from sealedrec import protocol
from uploader.connection import POLL_S, Backoff, Link, Lost, Sent, Stopping
from uploader.telemetry import UploadStats, status_document
from uploader.transfer import LocalProblem, Transfer, prepare, read_ack

__all__ = ["ClientFactory", "UploadStats", "Uploader"]  # ClientFactory, UploadStats: re-exported

log = logging.getLogger(__name__)

STOP_DRAIN_S = 5.0  # on stop: wait this long for PUBACKs of what is in flight
IDLE_RESCAN_S = 1.0  # idle, no outbox watch (inotify unavailable): look this often
# Idle with the outbox watch: look anyway this often. Not how new recordings are found
# (the watch's wake-up is, at once); it covers what inotify cannot see: a set-aside
# entry whose SKIP_AFTER_REJECT_S has passed (nothing moves in the outbox then), and a
# watch that died (sealed/ removed or moved under a running uploader).
SAFETY_RESCAN_S = 60.0
STATUS_MIN_INTERVAL_S = 1.0  # state-change telemetry at most this often
BACKLOG_LOG_INTERVAL_S = 5.0  # "backlog: …" progress line at most this often
SKIP_AFTER_REJECT_S = 3600.0  # a rejected / locally broken entry is retried after this
TICK_INTERVAL_S = 1.0  # on_tick (watchdog) at least this often while waiting


class Uploader:
    """Ships sealed outbox entries to the head office; see the module docstring."""

    def __init__(
        self,
        outbox: Outbox,
        device_id: str,
        settings: UploadConfig,
        *,
        status_source: Callable[[], dict[str, Any]] | None,
        stop: threading.Event,
        client_factory: ClientFactory | None = None,
        on_tick: Callable[[], None] | None = None,
        head_source: Callable[[], dict[str, Any] | None] | None = None,
        rescan_s: float = IDLE_RESCAN_S,
    ) -> None:
        """``client_factory`` (tests only) makes one paho client per connection attempt;
        it must use CallbackAPIVersion.VERSION2, MQTT v5 and reconnect_on_failure=False.
        ``on_tick`` (the daemon's watchdog) is called from the upload loop at least every
        second, the first time after the first connection attempt has finished.
        ``head_source`` gives the recorder's signed device head for the telemetry
        (:func:`uploader.telemetry.read_device_head`). ``rescan_s``: how often an idle
        uploader lists the outbox unwoken (:data:`SAFETY_RESCAN_S` when something calls
        :meth:`wake` on every new entry, else :data:`IDLE_RESCAN_S`).
        """
        protocol.status_topic(device_id)  # validates the id (ProtocolError)
        self._outbox = outbox
        self._device = device_id
        self._settings = settings
        self._status_source = status_source
        self._head_source = head_source
        self._stop = stop
        self._on_tick = on_tick
        self._rescan_s = rescan_s
        self._chunk_size = settings.chunk_kib * 1024
        self._lock = threading.Lock()  # guards the counters read by stats()
        self._link = Link(
            device_id,
            settings,
            stop=stop,
            lock=self._lock,
            client_factory=client_factory,
            on_refused=self._on_refused,
            on_message=self._on_message,
            on_wait=self._tick,
        )
        self._current: Transfer | None = None
        self._skip: dict[str, float] = {}
        self._queue: deque[OutboxEntry] = deque()
        self._drain_total = 0
        self._drain_done = 0
        self._outbox_backoff = Backoff(settings, announce=True)
        self._send_backoff = Backoff(settings, announce=False)
        self._status_dirty = True
        self._next_status = 0.0
        self._last_status = -STATUS_MIN_INTERVAL_S
        self._last_backlog_log = -BACKLOG_LOG_INTERVAL_S
        self._in_tick = False
        self._backlog = 0
        self._acked = 0
        self._rejected = 0

    # -- public -------------------------------------------------------------------------

    def stats(self) -> UploadStats:
        with self._lock:
            link = self._link
            conn = link.conn
            return UploadStats(
                connected=conn is not None and conn.ready,
                current=self._current.rec if self._current else None,
                backlog=self._backlog,
                sent_bytes=link.sent_bytes,
                acked=self._acked,
                rejected=self._rejected,
                max_in_flight=link.max_in_flight,
                receive_maximum=link.receive_maximum,
            )

    def run(self) -> None:
        """Upload until the stop event is set; then disconnect cleanly and return."""
        s = self._settings
        log.info(
            "uploader starting: device %s, broker %s:%d (%s), chunks %d KiB, window %d, outbox %s",
            self._device,
            s.host,
            s.port,
            "TLS" if s.tls else "plain TCP",
            s.chunk_kib,
            s.window,
            self._outbox.root,
        )
        first_attempt = True
        try:
            while not self._stop.is_set():
                try:
                    if self._link.conn is None:
                        connected = self._link.connect()
                        if connected:
                            self._status_dirty = True
                        if first_attempt:
                            first_attempt = False
                            self._tick()
                        if not connected:
                            self._wait(self._link.backoff.next())
                            continue
                    self._work()
                except Lost as lost:
                    self._connection_lost(lost.reason)
                    self._wait(self._link.backoff.next())
                except OutboxError as exc:
                    log.error("outbox problem: %s", exc)
                    self._queue.clear()
                    self._wait(self._outbox_backoff.next())
                else:
                    self._outbox_backoff.reset()
        except Stopping:
            pass
        finally:
            self._shutdown()

    def wake(self) -> None:
        """The outbox has something new: list it now (any thread; the outbox watch)."""
        self._link.wake()

    def telemetry(self) -> dict[str, Any]:
        """The status document published (retained) on ``linetap/{device}/status``."""
        return status_document(
            self._outbox, self._device, self.stats, self._status_source, self._head_source
        )

    # -- events from the connection -----------------------------------------------------

    def _connection_lost(self, reason: str) -> None:
        if not self._link.lost(reason):
            return
        self._queue.clear()  # re-list: the interrupted entry (uploading/) comes first
        self._status_dirty = True

    def _on_refused(self, sent: Sent, reason: str) -> None:
        transfer = self._current
        if transfer is not None:
            transfer.refused(sent, reason)

    def _on_message(self, topic: str, payload: bytes) -> None:
        ack = read_ack(topic, payload, self._device)
        if ack is None:
            return
        transfer = self._current
        if transfer is None or ack.recording_id != transfer.rec:
            log.debug(
                "ack %s for %s ignored (not the current upload)", ack.status, ack.recording_id
            )
            return
        transfer.acks.append(ack)

    def _wait(self, seconds: float) -> None:
        """Wait on the stop event, ticking; raises Stopping when it is set."""
        deadline = time.monotonic() + seconds
        while True:
            remaining = deadline - time.monotonic()
            if self._stop.wait(min(TICK_INTERVAL_S, max(0.0, remaining))):
                raise Stopping
            self._tick()
            if remaining <= TICK_INTERVAL_S:
                return

    def _tick(self) -> None:
        """Watchdog callback and telemetry when due (not re-entrant)."""
        if self._in_tick:
            return
        self._in_tick = True
        try:
            now = time.monotonic()
            if self._on_tick is not None:
                self._on_tick()
            conn = self._link.conn
            if conn is None or not conn.ready or self._stop.is_set():
                return
            due = now >= self._next_status
            if due or (self._status_dirty and now - self._last_status >= STATUS_MIN_INTERVAL_S):
                self._status_dirty = False
                self._last_status = now
                self._next_status = now + self._settings.telemetry_s
                payload = json.dumps(self.telemetry(), sort_keys=True).encode()
                self._link.publish(
                    protocol.status_topic(self._device), payload, Sent("status"), retain=True
                )
        finally:
            self._in_tick = False

    # -- the upload loop ----------------------------------------------------------------

    def _work(self) -> None:
        entry = self._next_entry()
        if entry is None:
            self._idle()
            return
        self._upload(entry)

    def _idle(self) -> None:
        """Nothing to upload: wait for a wake-up, or ``rescan_s`` (ticking, handling
        the broker's events meanwhile)."""
        deadline = time.monotonic() + self._rescan_s
        while not self._link.woken and (remaining := deadline - time.monotonic()) > 0:
            if self._stop.is_set():
                raise Stopping
            self._tick()
            self._link.pump(min(remaining, POLL_S))

    def _next_entry(self) -> OutboxEntry | None:
        if not self._queue:
            # Cleared before listing: an entry sealed while we list wakes us again.
            self._link.woken = False
            now = time.monotonic()
            for rec, until in list(self._skip.items()):
                if until <= now:
                    del self._skip[rec]
            unacked = [
                *self._outbox.entries(OutboxState.UPLOADING),
                *self._outbox.entries(OutboxState.SEALED),
            ]
            todo = [e for e in unacked if e.recording_id not in self._skip]
            with self._lock:
                self._backlog = len(unacked)
            self._queue.extend(todo)
            self._drain_total = len(todo)
            self._drain_done = 0
        if not self._queue:
            return None
        entry = self._queue.popleft()
        self._drain_done += 1
        now = time.monotonic()
        if self._drain_total > 1 and now - self._last_backlog_log >= BACKLOG_LOG_INTERVAL_S:
            self._last_backlog_log = now
            left = [entry, *self._queue]
            log.info(
                "backlog: %d recordings, %.1f MB; uploading seq %d (%d/%d)",
                len(left),
                sum(e.bytes for e in left) / 1e6,
                entry.seq,
                self._drain_done,
                self._drain_total,
            )
        return entry

    def _upload(self, entry: OutboxEntry) -> None:
        rec = entry.recording_id
        try:
            claimed = self._outbox.claim(rec)
        except OutboxStateError:
            log.debug("%s is already acked", rec)
            return
        except OutboxEntryNotFound:
            log.debug("%s left the outbox before its upload", rec)
            return
        try:
            job = prepare(claimed, self._device, self._chunk_size)
        except LocalProblem as exc:
            log.error(
                "cannot upload seq %d (%s): %s; keeping it, retrying in %.0f min",
                claimed.seq,
                rec,
                exc,
                SKIP_AFTER_REJECT_S / 60,
            )
            self._set_aside(rec)
            return
        transfer = Transfer(
            job,
            self._link,
            self._settings,
            stop=self._stop,
            tick=self._tick,
            wait=self._wait,
            backoff=self._send_backoff,
        )
        self._set_current(transfer)
        try:
            if job.blob is None:
                self._transfer(transfer, None)
            else:
                try:
                    fh = job.blob.open("rb")
                except OSError as exc:
                    raise LocalProblem(f"cannot open {job.blob}: {exc}") from exc
                with fh:
                    self._transfer(transfer, fh)
        except LocalProblem as exc:
            log.error("cannot upload seq %d (%s): %s; keeping it", claimed.seq, rec, exc)
            self._set_aside(rec)
        finally:
            self._set_current(None)

    def _transfer(self, transfer: Transfer, fh: BinaryIO | None) -> None:
        """Run the transfer; then mark the entry acked, or set it aside if rejected."""
        job = transfer.job
        rejection = transfer.run(fh)
        if rejection is not None:
            self._rejected_by_store(transfer, rejection)
            return
        entry = self._outbox.mark_acked(job.rec)
        with self._lock:
            self._acked += 1
            self._backlog = max(0, self._backlog - 1)
        self._send_backoff.reset()
        self._status_dirty = True
        log.info(
            "seq %d stored by the head office: %s (%d bytes); marked acked",
            entry.seq,
            job.rec,
            job.init.blob_bytes,
        )

    def _rejected_by_store(self, transfer: Transfer, reason: str) -> None:
        log.error(
            "head office rejected seq %d (%s): %s; keeping it unacked (retry in %.0f min)",
            transfer.job.entry.seq,
            transfer.rec,
            reason,
            SKIP_AFTER_REJECT_S / 60,
        )
        with self._lock:
            self._rejected += 1
        self._set_aside(transfer.rec)

    def _set_aside(self, rec: str) -> None:
        """Back to sealed/ and skipped for a while; never deleted, never acked."""
        self._skip[rec] = time.monotonic() + SKIP_AFTER_REJECT_S
        self._outbox.release(rec)
        self._status_dirty = True

    def _set_current(self, transfer: Transfer | None) -> None:
        with self._lock:
            self._current = transfer
        self._status_dirty = True

    # -- stopping -----------------------------------------------------------------------

    def _shutdown(self) -> None:
        link = self._link
        conn = link.conn
        if conn is not None:
            if conn.ready:
                try:
                    link.drain(conn, STOP_DRAIN_S)
                    link.publish(
                        protocol.status_topic(self._device),
                        protocol.OFFLINE_PAYLOAD,
                        Sent("status"),
                        retain=True,
                    )
                    link.drain(conn, STOP_DRAIN_S)
                except Lost as lost:
                    log.info("connection closed while stopping: %s", lost.reason)
            link.teardown(conn, clean=True)
        s = self.stats()
        log.info(
            "uploader stopped: %d acked, %d rejected, %d bytes of chunks sent",
            s.acked,
            s.rejected,
            s.sent_bytes,
        )
