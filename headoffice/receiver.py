"""The head-office receiver: protocol messages in, durable recordings and acks out.

:class:`Receiver` is the logic, independent of MQTT (tests drive it directly); the MQTT
service in :mod:`headoffice.service` feeds it every message of ``linetap/+/up/#``
(plain or through a ``$share/…`` subscription) and publishes what it returns.

Nothing is kept in memory between messages: inits and chunks are parked in the shared
store, so with a shared subscription any worker can take any message, and whichever
worker sees the set complete finishes the recording under the store's file lock and
the index's finish lock. A recording is acknowledged ``stored`` only after its blob and
manifest are fsynced and the index transaction committed; a resend of anything already
stored gets the same ack and changes nothing.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from buffers.durable import replace_file
from firmware.errors import LinetapError
from firmware.manifest import ManifestError, verify_signature
from headoffice.index import IndexConflictError
from headoffice.store import BlobStore, StoreError, utc_now_iso
from uploader.protocol import (
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

INIT_FILE = "init.json"
# How long a fin waits for chunks another worker may still be parking, and how often it looks.
FIN_GRACE_S = 0.5
FIN_POLL_S = 0.01


@dataclass(frozen=True, slots=True)
class Reply:
    topic: str
    payload: bytes


class Receiver:
    def __init__(
        self,
        store: BlobStore,
        index: Any,  # headoffice.index.Index (SQLite or PostgreSQL)
        device_key: Callable[[str], Ed25519PublicKey],
    ) -> None:
        self.store = store
        self.index = index
        self.device_key = device_key
        self.stored = 0
        self.rejected = 0
        self.malformed = 0
        # Set at shutdown: ends the short wait for chunks a fin overtook.
        self.stop = threading.Event()

    # -- entry point --------------------------------------------------------------------
    def handle(
        self, topic: str, payload: bytes, properties: Sequence[tuple[str, str]] | None = None
    ) -> list[Reply]:
        """Process one message; return the acks to publish. Never raises on bad input."""
        try:
            parsed = parse_topic(topic)
            if parsed.kind is Kind.INIT:
                return self._init(parsed.device, Init.decode(payload, parsed))
            if parsed.kind is Kind.CHUNK:
                assert parsed.recording is not None and parsed.index is not None
                self._chunk(
                    parsed.device,
                    parsed.recording,
                    parsed.index,
                    payload,
                    user_property(properties, SHA256_PROPERTY),
                )
                return []
            if parsed.kind is Kind.FIN:
                return self._fin(parsed.device, Fin.decode(payload, parsed))
            return []  # acks and status are not ours to handle
        except ProtocolError as exc:
            self.malformed += 1
            log.warning("malformed message on %s: %s", topic[:120], exc)
            return []

    # -- messages -----------------------------------------------------------------------
    def _stored_ack(self, device: str, rec: str, sha: str | None) -> list[Reply] | None:
        """The ack for a recording id already in the index — ``stored`` only if it is this
        device's recording with this content (an id clash must never ack someone's copy)."""
        done = self.index.get(rec)
        if done is None:
            return None
        if done.device_id != device or done.blob_sha256 != sha:
            return [
                self._reject(
                    device, rec, "recording id already stored with other content or device"
                )
            ]
        return [self._ack(device, Ack(rec, AckStatus.STORED, blob_sha256=sha))]

    def _init(self, device: str, init: Init) -> list[Reply]:
        rec = init.recording_id
        stored = self._stored_ack(device, rec, init.blob_sha256)
        if stored is not None:
            return stored
        problem = self._check_manifest(device, init)
        if problem:
            return [self._reject(device, rec, problem)]
        self._save_init(device, init)
        parked = len(self.store.parked(device, rec))
        self.index.note_upload(device, rec, json.loads(init.encode()), init.chunk_count, parked)
        return self._progress(device, init)

    def _chunk(self, device: str, rec: str, index: int, data: bytes, sha: str | None) -> None:
        init = self._load_init(device, rec)
        check_chunk(data, sha, init, index)
        if self.index.get(rec) is not None:
            return  # already stored: a late duplicate
        self.store.park_chunk(device, rec, index, data)

    def _fin(self, device: str, fin: Fin) -> list[Reply]:
        rec = fin.recording_id
        stored = self._stored_ack(device, rec, fin.blob_sha256)
        if stored is not None:
            return stored
        init = self._load_init(device, rec)
        if init is None:
            return [self._reject(device, rec, "unknown upload: send init first")]
        if fin.blob_sha256 != init.blob_sha256 or fin.chunk_count != init.chunk_count:
            return [self._reject(device, rec, "fin does not match init (sha256 or chunk count)")]
        self._await_parked(device, init)
        return self._progress(device, init)

    def _await_parked(self, device: str, init: Init) -> None:
        """On a shared subscription the fin can overtake the last chunks, which another
        worker is still parking: give them a moment before answering "missing" (which
        costs the device a back-off and a resend round)."""
        deadline = time.monotonic() + FIN_GRACE_S
        needed = set(range(init.chunk_count))
        while not self.stop.is_set() and time.monotonic() < deadline:
            if needed <= self.store.parked(device, init.recording_id):
                return
            self.stop.wait(FIN_POLL_S)

    def _progress(self, device: str, init: Init) -> list[Reply]:
        rec = init.recording_id
        missing = sorted(set(range(init.chunk_count)) - self.store.parked(device, rec))
        if missing:
            return [self._ack(device, Ack(rec, AckStatus.MISSING, missing=tuple(missing)))]
        return [self._finish(device, init)]

    def _finish(self, device: str, init: Init) -> Reply:
        rec = init.recording_id
        manifest = init.manifest
        with self.store.lock(device, rec), self.index.finish_lock(device, rec):
            stored = self._stored_ack(device, rec, init.blob_sha256)
            if stored is not None:  # another worker finished it meanwhile
                return stored[0]
            blob_tmp = None
            try:
                if init.chunk_count:
                    blob_tmp = self.store.assemble(
                        device, rec, init.chunk_count, init.blob_bytes, init.blob_sha256
                    )
                path = self.store.commit(
                    device,
                    rec,
                    str(manifest["started_utc"]),
                    manifest.get("container"),
                    blob_tmp,
                    manifest,
                )
            except StoreError as exc:
                if blob_tmp is not None:
                    blob_tmp.unlink(missing_ok=True)
                if exc.reason == "missing":
                    return self._ack(device, Ack(rec, AckStatus.MISSING, missing=exc.missing))
                if exc.reason in ("sha256", "size"):
                    # A corrupt chunk slipped through: start over rather than store it.
                    self.store.drop_parking(device, rec)
                    return self._ack(
                        device, Ack(rec, AckStatus.MISSING, missing=tuple(range(init.chunk_count)))
                    )
                raise
            try:
                result = self.index.add(manifest, str(path), utc_now_iso())
            except (IndexConflictError, ManifestError) as exc:
                return self._reject(device, rec, f"not indexed: {exc}")
            for alarm in result.alarms:
                log.warning("ALARM device=%s %s: %s", device, alarm.kind, alarm.message)
            self.store.drop_parking(device, rec)
            self.index.drop_upload(device, rec)
        self.stored += 1
        log.info(
            "stored recording device=%s id=%s seq=%s bytes=%d",
            device,
            rec,
            manifest.get("seq"),
            init.blob_bytes,
        )
        return self._ack(device, Ack(rec, AckStatus.STORED, blob_sha256=init.blob_sha256))

    # -- helpers ------------------------------------------------------------------------
    def _check_manifest(self, device: str, init: Init) -> str | None:
        manifest = init.manifest
        try:
            key = self.device_key(device)
        except LinetapError as exc:
            return f"device {device} is not enrolled ({exc})"
        try:
            verify_signature(manifest, key)
        except ManifestError as exc:
            return str(exc)
        if (
            manifest.get("blob_sha256") != init.blob_sha256
            or (manifest.get("blob_bytes") or 0) != init.blob_bytes
        ):
            return "init's blob size/sha256 differ from the signed manifest"
        return None

    def _reject(self, device: str, rec: str, reason: str) -> Reply:
        self.rejected += 1
        log.error("rejected recording device=%s id=%s: %s", device, rec, reason)
        return self._ack(device, Ack(rec, AckStatus.REJECTED, reason=reason))

    def _ack(self, device: str, ack: Ack) -> Reply:
        return Reply(ack_topic(device, ack.recording_id), ack.encode())

    def _save_init(self, device: str, init: Init) -> None:
        directory = self.store.parking_dir(device, init.recording_id)
        directory.mkdir(parents=True, exist_ok=True)
        replace_file(directory / INIT_FILE, init.encode(), 0o600)

    def _load_init(self, device: str, rec: str) -> Init | None:
        path = self.store.parking_dir(device, rec) / INIT_FILE
        try:
            payload = path.read_bytes()
        except FileNotFoundError:
            return None
        return Init.decode(payload, Topic(Kind.INIT, device, rec))
