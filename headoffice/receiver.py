"""The head-office receiver: protocol messages in, durable recordings and acks out.

:class:`Receiver` is the logic, independent of MQTT (tests drive it directly); the MQTT
service in :mod:`headoffice.service` feeds it every message of ``linetap/+/up/#``
(plain or through a ``$share/…`` subscription) and publishes what it returns.

Nothing is kept in memory between messages that another worker would need: inits and
chunks are parked in the shared store, so with a shared subscription any worker can take
any message, and whichever worker sees the set complete finishes the recording under the
store's file lock and the index's finish lock. A recording is acknowledged ``stored``
only after its blob and manifest are fsynced and the index transaction committed; a
resend of anything already stored gets the same ack and changes nothing. What is
parked before that is not fsynced (the device still holds it all): the durability
argument is in :mod:`headoffice.store` (three fsyncs per recording there, plus the
index's one synced commit, which also ends the upload's row and appends the audit leaf).

Every device is hostile until its bytes are verified (an enrolled device's keys are on
an SD card anyone can pull), so:

- the signed manifest is checked completely (signature, then the one typed model:
  types, ranges, dates, lengths) before anything is written for it;
- chunks are parked only for an upload whose checked init is parked; an upload is
  bounded in bytes and chunks, and a device in open uploads and parked bytes
  (``[limits]``); past a bound the device is told ``busy`` or ``rejected`` with a reason,
  and an alarm is raised (at most once per ``alarm_interval_s`` per device and kind);
- a full disk is ``busy`` too: nothing is half-written, serving goes on, and the device's
  next ask succeeds once space is back;
- a fin that finds chunks missing does not hold the message thread: it is parked in
  :attr:`Receiver.waiting` (once per upload, however many fins come) and answered by
  :meth:`Receiver.poll_waiting`, which the service calls from its own thread;
- rejections carry a reason for the device and never an office path; details go to
  the log.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from headoffice.alarm_throttle import AlarmThrottle
from headoffice.blobstore import BlobStore, StoreError
from headoffice.config import LimitsConfig
from headoffice.index import AddResult, Index, IndexConflictError, Query, now_iso
from headoffice.ledger.leaves import IngestLeaf
from headoffice.ledger.store import Ledger
from headoffice.parked_inits import ParkedInit, ParkedInits
from sealedrec.errors import LinetapError
from sealedrec.manifest import ManifestError, verify_signature
from sealedrec.model import CheckedManifest, Manifest, check_manifest
from sealedrec.protocol import (
    MAX_MISSING_LISTED,
    SHA256_PROPERTY,
    Ack,
    AckStatus,
    Fin,
    Init,
    Kind,
    ProtocolError,
    Topic,
    ack_topic,
    check_chunk,
    parse_topic,
    user_property,
)

log = logging.getLogger(__name__)

# How long a fin waits for chunks another worker may still be parking, and how often the
# service looks at the fins waiting.
FIN_GRACE_S = 0.5
# Each poll lists the waiting uploads' parking folders (microseconds). On a shared
# subscription most fins reach the worker that did not get the last chunk, and each
# waited half a poll on average for it: 10 ms cost the two-worker office throughput.
FIN_POLL_S = 0.002
# A parking folder without an init older than this was not made by an init being parked
# right now (the folder and its init.json are written one after the other).
ORPHAN_AGE_S = 60.0


@dataclass(frozen=True, slots=True)
class Reply:
    topic: str
    payload: bytes


@dataclass(slots=True)
class Counts:
    stored: int = 0
    rejected: int = 0
    busy: int = 0
    malformed: int = 0
    errors: int = 0
    expired: int = 0


class _Refusal(Exception):
    """Raised inside a handler to answer the device ``rejected`` / ``busy``."""

    def __init__(self, status: AckStatus, reason: str, alarm: str | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.alarm = alarm


class Receiver:
    def __init__(
        self,
        store: BlobStore,
        index: Index,
        device_key: Callable[[str], Ed25519PublicKey],
        limits: LimitsConfig | None = None,
        recipients: frozenset[str] | None = None,
        *,
        fin_grace_s: float = FIN_GRACE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.index = index
        # The audit ledger lives in the index database: each stored recording's ingest
        # leaf commits in the same transaction as its index row.
        self.ledger = Ledger(index)
        self.device_key = device_key
        self.limits = limits or LimitsConfig()
        # The age recipients every manifest must name (None: not checked).
        self.recipients = recipients
        self.fin_grace_s = fin_grace_s
        self.clock = clock
        self.counts = Counts()
        self.alarms = AlarmThrottle(index, self.limits.alarm_interval_s, clock)
        # Fins that found chunks missing: (device, rec) -> (parked init, deadline).
        self.waiting: dict[tuple[str, str], tuple[ParkedInit, float]] = {}
        # The inits this worker parked or read, decoded and checked: their chunks and fin
        # need not do it again (each lookup still reads the parked bytes and compares).
        self.parked_inits = ParkedInits()
        # Set when a fin starts waiting: wakes the service's housekeeper, which otherwise
        # sleeps (an idle office does not poll).
        self.fin_parked = threading.Event()
        self._mutex = threading.Lock()
        # Set at shutdown: ends the wait for chunks a fin overtook.
        self.stop = threading.Event()

    # The figures the service logs at stop (and tests read).
    @property
    def stored(self) -> int:
        return self.counts.stored

    @property
    def rejected(self) -> int:
        return self.counts.rejected

    @property
    def malformed(self) -> int:
        return self.counts.malformed

    def count(self, what: str) -> None:
        with self._mutex:
            setattr(self.counts, what, getattr(self.counts, what) + 1)

    # -- entry point --------------------------------------------------------------------
    def handle(
        self, topic: str, payload: bytes, properties: Sequence[tuple[str, str]] | None = None
    ) -> list[Reply]:
        """Process one message; return the acks to publish. Bad input never raises:
        it is logged (and answered when the device can be told why). Storage or index
        trouble raises :class:`LinetapError`: no ack, the device asks again later."""
        try:
            parsed = parse_topic(topic)
        except ProtocolError as exc:
            self.count("malformed")
            log.warning("malformed message on %s: %s", topic[:120], exc)
            return []
        device, rec = parsed.device, parsed.recording
        try:
            if parsed.kind is Kind.INIT:
                return self._init(device, Init.decode(payload, parsed))
            if parsed.kind is Kind.CHUNK:
                assert rec is not None and parsed.index is not None
                sha = user_property(properties, SHA256_PROPERTY)
                self._chunk(device, rec, parsed.index, payload, sha)
                return []
            if parsed.kind is Kind.FIN:
                return self._fin(device, Fin.decode(payload, parsed))
            return []  # acks and status are not ours to handle
        except ProtocolError as exc:
            self.count("malformed")
            log.warning("malformed message device=%s on %s: %s", device, topic[:120], exc)
            return []
        except _Refusal as refusal:
            assert rec is not None
            return [self._refuse(device, rec, refusal)]

    # -- messages -----------------------------------------------------------------------
    def _stored_ack(self, device: str, rec: str, sha: str | None) -> list[Reply] | None:
        """The ack for a recording id already in the index — ``stored`` only if it is this
        device's recording with this content (an id clash must never ack someone's copy)."""
        done = self.index.get(rec)
        if done is None:
            return None
        if done.device_id != device or done.blob_sha256 != sha:
            raise _Refusal(
                AckStatus.REJECTED, "recording id already stored with other content or device"
            )
        return [self._ack(device, Ack(rec, AckStatus.STORED, blob_sha256=sha))]

    def _init(self, device: str, init: Init) -> list[Reply]:
        rec = init.recording_id
        stored = self._stored_ack(device, rec, init.blob_sha256)
        if stored is not None:
            return stored
        self._check_size(init)
        checked = self._check_manifest(device, init)
        self._check_quota(device, init)
        data = init.encode()
        try:
            self.store.park_init(device, rec, data)
        except StoreError as exc:
            raise self._store_refusal(device, rec, exc) from None
        entry = self.parked_inits.remember(device, rec, data, init, checked)
        parked = self.store.parked(device, rec)
        self.index.note_upload(device, rec, init.message(), init.chunk_count, len(parked))
        return self._progress(device, entry, parked)

    def _chunk(self, device: str, rec: str, index: int, data: bytes, sha: str | None) -> None:
        entry = self._parked_init(device, rec)
        if entry is None:
            # Parking is the licence of a checked init: without one, nothing is kept.
            raise ProtocolError(f"chunk {index} of {rec}: no init known for it (not parked)")
        # No look in the index for a late duplicate: committing a recording moves its
        # parked init away (its inode becomes the manifest), so a chunk after that has
        # no init above, and one just before is removed with the parking folder.
        check_chunk(data, sha, entry.init, index)
        try:
            self.store.park_chunk(device, rec, index, data)
        except StoreError as exc:
            # No answer to a chunk; the fin will find it missing, or the disk full.
            self._store_refusal(device, rec, exc)
            return
        if (device, rec) in self.waiting:
            self.fin_parked.set()  # its fin came first: answer it now, not at the next poll

    def _fin(self, device: str, fin: Fin) -> list[Reply]:
        rec = fin.recording_id
        entry = self._parked_init(device, rec)
        if entry is None:
            # Storing a recording moves its parked init away: a fin resent after the
            # "stored" ack it missed finds none, and gets that ack again. (A parked
            # init and a stored recording together are seen by _finish, under the lock.)
            stored = self._stored_ack(device, rec, fin.blob_sha256)
            if stored is not None:
                return stored
            raise _Refusal(AckStatus.REJECTED, "unknown upload: send init first")
        init = entry.init
        if fin.blob_sha256 != init.blob_sha256 or fin.chunk_count != init.chunk_count:
            raise _Refusal(AckStatus.REJECTED, "fin does not match init (sha256 or chunk count)")
        parked = self.store.parked(device, rec)
        if self.fin_grace_s > 0 and not _complete(init, parked):
            # On a shared subscription the fin can overtake the last chunks, which another
            # worker is still parking: answer once they are in, or after the grace (a
            # "missing" costs the device a resend round). Many fins: one wait.
            with self._mutex:
                self.waiting.setdefault((device, rec), (entry, self.clock() + self.fin_grace_s))
            self.fin_parked.set()
            return []
        return self._progress(device, entry, parked)

    def poll_waiting(self) -> list[Reply]:
        """Answer the fins whose chunks have all arrived or whose grace is over."""
        return list(self.answer_waiting())

    def answer_waiting(self) -> Iterator[Reply]:
        """:meth:`poll_waiting`, each answer yielded as soon as it is made: with several
        fins waiting, the first recording's ack must not wait for the others to be
        stored (the service publishes as it iterates)."""
        with self._mutex:
            pending = list(self.waiting.items())
        now = self.clock()
        for (device, rec), (entry, deadline) in pending:
            parked = self.store.parked(device, rec)
            if not (self.stop.is_set() or now >= deadline or _complete(entry.init, parked)):
                continue
            with self._mutex:
                self.waiting.pop((device, rec), None)
            try:
                yield from self._progress(device, entry, parked)
            except _Refusal as refusal:
                yield self._refuse(device, rec, refusal)

    def _progress(
        self, device: str, entry: ParkedInit, parked: set[int] | None = None
    ) -> list[Reply]:
        """Ack ``missing`` or finish; ``parked``: the chunks just listed, if the caller did."""
        init = entry.init
        rec = init.recording_id
        if parked is None:
            parked = self.store.parked(device, rec)
        missing = sorted(set(range(init.chunk_count)) - parked)
        if missing:
            listed = tuple(missing[:MAX_MISSING_LISTED])
            return [self._ack(device, Ack(rec, AckStatus.MISSING, missing=listed))]
        return [self._finish(device, entry)]

    def _finish(self, device: str, entry: ParkedInit) -> Reply:
        init = entry.init
        rec = init.recording_id
        manifest = init.manifest
        with self.store.lock(device, rec), self.index.finish_lock(device, rec):
            stored = self._stored_ack(device, rec, init.blob_sha256)
            if stored is not None:  # another worker finished it meanwhile
                return stored[0]
            checked = entry.checked
            if checked is None:  # not checked by this worker: the parked copy again
                checked = self._check_parked(device, rec, entry)
            model = checked.model
            blob_tmp = None
            try:
                if init.chunk_count:
                    blob_tmp = self.store.assemble(
                        device, rec, init.chunk_count, init.blob_bytes, init.blob_sha256
                    )
                path = self.store.commit(
                    device, rec, model.started_utc, model.container, blob_tmp, manifest
                )
            except StoreError as exc:
                if blob_tmp is not None:
                    blob_tmp.unlink(missing_ok=True)
                return self._not_committed(device, init, exc)
            result = self._index(device, entry, checked, path)
            if isinstance(result, Reply):
                return result
            for alarm in result.alarms:
                log.warning("ALARM device=%s kind=%s: %s", device, alarm.kind, alarm.message)
            self._check_recipients(device, rec, model)
            self.store.drop_parking(device, rec)
            self.parked_inits.forget(device, rec)
            if not result.created:  # indexed before (a worker killed after its commit)
                self.index.drop_upload(device, rec)
        self.count("stored")
        log.info(
            "stored recording device=%s id=%s seq=%d bytes=%d",
            device,
            rec,
            model.seq,
            init.blob_bytes,
        )
        return self._ack(device, Ack(rec, AckStatus.STORED, blob_sha256=init.blob_sha256))

    def _index(
        self, device: str, entry: ParkedInit, checked: CheckedManifest, path: str | os.PathLike[str]
    ) -> AddResult | Reply:
        """Index the committed recording with its audit leaf; a refusal when the id is
        indexed with another manifest. On any other index failure the init is parked
        again before the error goes up (no ack: the device asks again): ``commit`` made
        its inode the manifest, and a fin resent meanwhile must still find its upload."""
        rec = entry.init.recording_id
        model = checked.model
        stamp = now_iso()
        leaf = IngestLeaf(
            device_id=device,
            seq=model.seq,
            recording_id=rec,
            manifest_sha256=checked.sha256,
            blob_sha256=model.blob_sha256,
            at=stamp,
        )
        try:
            return self.index.add(
                checked, os.fspath(path), stamp, on_insert=lambda q: self._indexed_in(q, leaf)
            )
        except IndexConflictError as exc:
            log.error("recording %s of %s not indexed: %s", rec, device, exc)
            return self._refuse(
                device,
                rec,
                _Refusal(AckStatus.REJECTED, "recording id already stored with another manifest"),
            )
        except LinetapError:
            try:
                self.store.park_init(device, rec, entry.init.encode())
            except StoreError as exc:
                log.error("recording %s of %s: init not parked again: %s", rec, device, exc)
            raise

    def _not_committed(self, device: str, init: Init, exc: StoreError) -> Reply:
        """The answer to a recording the store could not assemble or commit."""
        rec = init.recording_id
        if exc.reason == "missing":
            listed = exc.missing[:MAX_MISSING_LISTED]
            return self._ack(device, Ack(rec, AckStatus.MISSING, missing=listed))
        if exc.reason in ("sha256", "size"):
            # A corrupt chunk slipped through: start over rather than store it.
            self.store.drop_parking(device, rec)
            self.store.park_init(device, rec, init.encode())
            listed = tuple(range(min(init.chunk_count, MAX_MISSING_LISTED)))
            return self._ack(device, Ack(rec, AckStatus.MISSING, missing=listed))
        if exc.reason == "conflict":
            log.error("recording %s of %s not stored: %s", rec, device, exc)
            return self._refuse(
                device,
                rec,
                _Refusal(AckStatus.REJECTED, "recording id already stored differently"),
            )
        return self._refuse(device, rec, self._store_refusal(device, rec, exc))

    def _indexed_in(self, q: Query, leaf: IngestLeaf) -> None:
        """In the transaction indexing a new recording (which also ends its upload row):
        its audit leaf (one commit, so one database sync, for both)."""
        self.ledger.append_in(q, leaf)

    def _check_parked(self, device: str, rec: str, entry: ParkedInit) -> CheckedManifest:
        """The checks of a parked init this worker did not check itself (parked by another
        worker, or before a restart by an older version): the model again."""
        try:
            checked = check_manifest(entry.init.manifest)
        except ManifestError as exc:
            self.store.drop_parking(device, rec)
            self.parked_inits.forget(device, rec)
            raise _Refusal(AckStatus.REJECTED, str(exc)[:300], alarm="manifest") from None
        self.parked_inits.with_checked(device, rec, entry, checked)
        return checked

    # -- checks -------------------------------------------------------------------------
    def _check_size(self, init: Init) -> None:
        lim = self.limits
        if init.blob_bytes > lim.max_blob_bytes or init.chunk_count > lim.max_chunks:
            raise _Refusal(
                AckStatus.REJECTED,
                f"too large: {init.blob_bytes} bytes in {init.chunk_count} chunks (this office "
                f"takes at most {lim.max_blob_bytes} bytes in {lim.max_chunks} chunks)",
                alarm="oversize",
            )

    def _check_manifest(self, device: str, init: Init) -> CheckedManifest:
        manifest = init.manifest
        try:
            key = self.device_key(device)
        except LinetapError as exc:
            log.error("device %s: no signing key at the office: %s", device, exc)
            raise _Refusal(
                AckStatus.REJECTED, f"device {device} is not enrolled", alarm="enrollment"
            ) from None
        try:
            verify_signature(manifest, key)
        except ManifestError as exc:
            # Someone holds the device's identity on the broker but not its signing key,
            # or a manifest was altered: a security event, not just a bad message.
            raise _Refusal(AckStatus.REJECTED, str(exc)[:300], alarm="signature") from None
        try:
            checked = check_manifest(manifest)
        except ManifestError as exc:
            raise _Refusal(AckStatus.REJECTED, str(exc)[:300], alarm="manifest") from None
        model = checked.model
        if model.blob_sha256 != init.blob_sha256 or model.blob_bytes != init.blob_bytes:
            raise _Refusal(
                AckStatus.REJECTED,
                "init's blob size/sha256 differ from the signed manifest",
                alarm="manifest",
            )
        return checked

    def _check_quota(self, device: str, init: Init) -> None:
        others = [u for u in self.index.uploads(device) if u.recording_id != init.recording_id]
        lim = self.limits
        parked = sum(_init_bytes(u.init) for u in others)
        reason = None
        if len(others) >= lim.max_open_uploads:
            reason = f"quota: {len(others)} unfinished uploads (at most {lim.max_open_uploads})"
        elif parked + init.blob_bytes > lim.max_parked_bytes:
            reason = (
                f"quota: {parked} bytes in unfinished uploads, {init.blob_bytes} more would "
                f"pass {lim.max_parked_bytes}"
            )
        if reason is not None:
            raise _Refusal(AckStatus.BUSY, reason, alarm="quota")

    def _check_recipients(self, device: str, rec: str, model: Manifest) -> None:
        """Stored either way: the call happened and must be kept, and the device (whose
        card may now hold a copy readable by someone else) should not keep it. So a
        recipient set other than the office's is a security alarm, not a rejection."""
        if self.recipients is None:
            return
        named = frozenset(model.recipients or ())
        if named == self.recipients:
            return
        extra = sorted(named - self.recipients)
        lacking = sorted(self.recipients - named)
        self.alarms.raise_alarm(
            device,
            "recipients",
            f"recording {rec} is encrypted to recipients other than the office's: "
            f"extra {extra or 'none'}, lacking {lacking or 'none'} (someone changed the "
            "device's sealing.recipients: treat its recordings as exposed)",
            recording_id=rec,
        )

    # -- helpers ------------------------------------------------------------------------
    def _store_refusal(self, device: str, rec: str, exc: StoreError) -> _Refusal:
        """A store failure as a refusal the device can act on: ``busy`` (the device asks
        again later); the details, with their paths, only in the log."""
        log.error("store problem for device=%s id=%s: %s", device, rec, exc)
        if exc.reason == "full":
            refusal = _Refusal(AckStatus.BUSY, "office storage is full", alarm="disk_full")
        else:
            refusal = _Refusal(AckStatus.BUSY, "office storage error", alarm="store")
        self.alarms.raise_alarm(device, str(refusal.alarm), refusal.reason, recording_id=rec)
        refusal.alarm = None  # raised here already
        return refusal

    def _refuse(self, device: str, rec: str, refusal: _Refusal) -> Reply:
        if refusal.status is AckStatus.BUSY:
            self.count("busy")
            log.warning("told device=%s id=%s to wait: %s", device, rec, refusal.reason)
        else:
            self.count("rejected")
            log.error("rejected recording device=%s id=%s: %s", device, rec, refusal.reason)
        if refusal.alarm is not None:
            self.alarms.raise_alarm(
                device, refusal.alarm, f"recording {rec}: {refusal.reason}", recording_id=rec
            )
        retry = self.limits.busy_retry_s if refusal.status is AckStatus.BUSY else 0
        ack = Ack(rec, refusal.status, reason=refusal.reason, retry_after_s=retry)
        return self._ack(device, ack)

    def _ack(self, device: str, ack: Ack) -> Reply:
        return Reply(ack_topic(device, ack.recording_id), ack.encode())

    def _parked_init(self, device: str, rec: str) -> ParkedInit | None:
        """The upload's parked init as on disk now; decoded only when these bytes are not
        the ones this worker parked or decoded before."""
        try:
            payload = self.store.parked_init(device, rec)
        except StoreError as exc:
            if exc.reason == "id":
                raise ProtocolError(str(exc)) from None
            raise
        if payload is None:
            return None
        entry = self.parked_inits.lookup(device, rec, payload)
        if entry is None:
            init = Init.decode(payload, Topic(Kind.INIT, device, rec))
            entry = self.parked_inits.remember(device, rec, payload, init, None)
        return entry

    # -- housekeeping -------------------------------------------------------------------
    def expire(self, now_wall: float | None = None) -> int:
        """Drop uploads untouched for ``limits.parked_expiry_s`` (parked files and index
        row; the device still holds each and starts over with init), parked chunks
        without an init (left by older versions), and what is still parked for a
        recording already stored (a worker killed between the index commit and the
        clean-up, or a store that failed just then: the resend got its ``stored`` ack,
        and the leftover would count against the device's quota). Returns how many
        uploads went."""
        now = time.time() if now_wall is None else now_wall
        cutoff = now - self.limits.parked_expiry_s
        dropped = 0
        for device, rec, newest in self.store.list_parking():
            orphan = newest < now - ORPHAN_AGE_S and self.store.parked_init(device, rec) is None
            stored = self.index.get(rec) is not None
            if newest >= cutoff and not orphan and not stored:
                continue
            with self.store.lock(device, rec), self.index.finish_lock(device, rec):
                self.store.drop_parking(device, rec)
                self.index.drop_upload(device, rec)
            self.parked_inits.forget(device, rec)
            dropped += 1
            log.info(
                "dropped upload device=%s id=%s: %s",
                device,
                rec,
                "already stored"
                if stored
                else f"untouched for {int(now - newest)} s{' and no init' if orphan else ''}",
            )
        for upload in self.index.uploads():
            if self.store.parked_init(upload.device_id, upload.recording_id) is None:
                self.index.drop_upload(upload.device_id, upload.recording_id)
        if dropped:
            with self._mutex:
                self.counts.expired += dropped
            log.info(
                "expired %d unfinished upload(s) (untouched for %d s, without an init, or "
                "already stored)",
                dropped,
                self.limits.parked_expiry_s,
            )
        return dropped


def _complete(init: Init, parked: set[int]) -> bool:
    return len(parked) >= init.chunk_count


def _init_bytes(init: object) -> int:
    """The blob size an upload row's init names (0 when unreadable)."""
    value = init.get("blob_bytes") if isinstance(init, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
