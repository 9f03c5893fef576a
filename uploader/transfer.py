"""One recording's upload: the init / chunks / fin rounds of :mod:`sealedrec.protocol`.

:func:`prepare` checks a claimed outbox entry (manifest, blob) and makes its init;
:class:`Transfer` runs the rounds until the store says stored or rejected (the diagram
in :mod:`uploader.client`), keeping ≤ window chunks in flight and checking each PUBACK.
Marking the entry acked or setting it aside is the caller's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from buffers.outbox import OutboxEntry
from firmware.config import UploadConfig
from sealedrec import protocol
from sealedrec.manifest import BLOB_FILES, MANIFEST_FILE
from sealedrec.protocol import Ack, AckStatus, Fin, Init, Kind, ProtocolError
from uploader.connection import POLL_S, Backoff, Link, Lost, Sent, Stopping

# The uploader's modules share one logger: log lines name "uploader.client" throughout.
log = logging.getLogger("uploader.client")

# Blob file of an outbox entry by manifest["container"] (None: a discarded call, no blob).


class LocalProblem(Exception):
    """An outbox entry this device cannot upload as it is (bad manifest, blob mismatch)."""


@dataclass(frozen=True, slots=True)
class Job:
    entry: OutboxEntry
    manifest: dict[str, Any]
    blob: Path | None
    init: Init

    @property
    def rec(self) -> str:
        return self.entry.recording_id


def prepare(entry: OutboxEntry, device_id: str, chunk_size: int) -> Job:
    path = entry.path / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise LocalProblem(f"manifest {path} unreadable: {exc}") from exc
    if not isinstance(manifest, dict):
        raise LocalProblem(f"manifest {path} is not a JSON object")
    try:
        protocol.init_topic(device_id, entry.recording_id)
    except ProtocolError as exc:
        raise LocalProblem(str(exc)) from exc
    if manifest.get("recording_id") != entry.recording_id:
        raise LocalProblem(f"manifest {path} is for recording {manifest.get('recording_id')!r}")
    if manifest.get("device_id") != device_id:
        raise LocalProblem(
            f"manifest device_id {manifest.get('device_id')!r} is not this uploader's "
            f"device id {device_id!r}: set device_id in linetap.toml to the id the "
            "recorder used (the broker only lets a device publish under its own id)"
        )
    container = manifest.get("container")
    blob: Path | None = None
    size = 0
    sha: str | None = None
    if container is not None:
        name = BLOB_FILES.get(container) if isinstance(container, str) else None
        if name is None:
            raise LocalProblem(f"manifest container {container!r} is not one of {list(BLOB_FILES)}")
        blob = entry.path / name
        try:
            size = blob.stat().st_size
        except OSError as exc:
            raise LocalProblem(f"blob {blob}: {exc}") from exc
        if size != manifest.get("blob_bytes"):
            raise LocalProblem(
                f"blob {blob} is {size} bytes, the manifest says {manifest.get('blob_bytes')!r}"
            )
        sha = manifest.get("blob_sha256")
        if not isinstance(sha, str) or len(sha) != 64:
            raise LocalProblem("manifest blob_sha256 missing or not a SHA-256")
    init = Init(entry.recording_id, manifest, size, sha, chunk_size)
    if len(init.encode()) > protocol.MAX_JSON_BYTES:
        raise LocalProblem(f"manifest too large for an init ({protocol.MAX_JSON_BYTES} bytes max)")
    return Job(entry, manifest, blob, init)


def chunk_properties(data: bytes) -> Properties:
    """A chunk's PUBLISH properties: its SHA-256, which the store checks."""
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.UserProperty = [(protocol.SHA256_PROPERTY, hashlib.sha256(data).hexdigest())]
    return props


def read_ack(topic_name: str, payload: bytes, device_id: str) -> Ack | None:
    """The ack an incoming message carries; None (logged) if it is not one for us."""
    try:
        topic = protocol.parse_topic(topic_name)
    except ProtocolError as exc:
        log.warning("ignoring message on %s: %s", topic_name[:120], exc)
        return None
    if topic.kind is not Kind.ACK or topic.device != device_id:
        log.debug("ignoring message on %s", topic_name)
        return None
    try:
        return Ack.decode(payload, topic)
    except ProtocolError as exc:
        log.warning("malformed ack on %s ignored: %s", topic_name, exc)
        return None


class Transfer:
    """The upload of one prepared recording over ``link`` (the current upload).

    The owner feeds it the store's acks for this recording (``acks``) and the broker's
    refusals of its publishes (:meth:`refused`). ``tick`` is the owner's watchdog /
    telemetry callback, ``wait`` its stop-aware sleep, ``backoff`` the resend backoff.
    """

    def __init__(
        self,
        job: Job,
        link: Link,
        settings: UploadConfig,
        *,
        stop: threading.Event,
        tick: Callable[[], None],
        wait: Callable[[float], None],
        backoff: Backoff,
    ) -> None:
        self.job = job
        self._link = link
        self._settings = settings
        self._stop = stop
        self._tick = tick
        self._wait = wait
        self._backoff = backoff
        self.acks: deque[Ack] = deque()
        self._request_failed: str | None = None
        self._failed_chunks: list[int] = []

    @property
    def rec(self) -> str:
        return self.job.rec

    def refused(self, sent: Sent, reason: str) -> None:
        """The broker refused one of our publishes (a chunk: sent again; init/fin: later)."""
        if sent.kind == "chunk":
            self._failed_chunks.append(sent.index)
        elif sent.kind in ("init", "fin"):
            self._request_failed = reason

    def run(self, fh: BinaryIO | None) -> str | None:
        """init / chunks / fin rounds until the store says stored or rejected.

        None: stored, with the manifest's blob sha256; else why the store rejected it.
        """
        job = self.job
        ack: Ack | None = None
        after_fin = False  # is ``ack`` the answer to a fin?
        fin_rounds = 0
        while True:
            if ack is None:
                ack = self._request("init")
                after_fin = False
                continue
            if ack.status is AckStatus.STORED:
                if ack.blob_sha256 != job.init.blob_sha256:
                    return (
                        f"the store acknowledged blob sha256 {ack.blob_sha256}, "
                        f"the manifest says {job.init.blob_sha256}"
                    )
                return None
            if ack.status is AckStatus.REJECTED:
                return ack.reason or "no reason given"
            if ack.status is AckStatus.BUSY:
                # The store cannot take it now (full disk, a quota): ask again when it
                # says (bounded by the protocol to 1 s..1 h), keeping the recording. Its
                # figure, not our growing backoff: after a long outage a device resumes
                # within retry_after_s of the store having room again.
                delay = float(max(1, ack.retry_after_s))
                log.warning(
                    "head office busy with %s (%s); asking again in %.0f s",
                    job.rec,
                    ack.reason or "no reason given",
                    delay,
                )
                self._wait(delay)
                ack = None
                continue
            wanted = [i for i in ack.missing if i < job.init.chunk_count]
            if len(wanted) != len(ack.missing):
                log.warning(
                    "store asked for chunks of %s beyond its %d chunks; ignoring those",
                    job.rec,
                    job.init.chunk_count,
                )
            if after_fin:
                fin_rounds += 1
                if fin_rounds > 1 or not wanted:
                    # The store keeps missing chunks it had every chance to get: do not
                    # loop at network speed (a store problem shows in its own logs).
                    delay = self._backoff.next()
                    log.warning(
                        "store still lacks %d chunk(s) of %s after fin (round %d); "
                        "resending in %.1f s",
                        len(wanted),
                        job.rec,
                        fin_rounds,
                        delay,
                    )
                    self._wait(delay)
            if wanted:
                assert fh is not None  # chunk_count > 0 means there is a blob
                self._send_chunks(fh, wanted)
            ack = self._request("fin")
            after_fin = True

    def _request(self, what: Literal["init", "fin"]) -> Ack | None:
        """Publish init or fin and wait for the store's ack; None: ask again with init."""
        job = self.job
        device = self._link.device
        self.acks.clear()
        self._request_failed = None
        if what == "init":
            topic = protocol.init_topic(device, job.rec)
            payload = job.init.encode()
        else:
            topic = protocol.fin_topic(device, job.rec)
            payload = Fin(job.rec, job.init.blob_sha256, job.init.chunk_count).encode()
        self._link.publish(topic, payload, Sent(what, job.rec))
        timeout = self._settings.ack_timeout_s
        deadline = time.monotonic() + timeout
        while True:
            if self._stop.is_set():
                raise Stopping
            if self.acks:
                return self.acks.popleft()
            if self._request_failed is not None:
                delay = self._backoff.next()
                log.info("resending init of %s in %.1f s", job.rec, delay)
                self._wait(delay)
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.warning(
                    "no ack for the %s of seq %d (%s) within %g s; sending init again",
                    what,
                    job.entry.seq,
                    job.rec,
                    timeout,
                )
                return None
            self._tick()
            self._link.pump(min(remaining, POLL_S))

    def _send_chunks(self, fh: BinaryIO, indices: Iterable[int]) -> None:
        """Publish the chunks, ≤ window in flight, until every one has a good PUBACK."""
        job = self.job
        conn = self._link.conn
        if conn is None:
            raise Lost("not connected")
        pending = deque(sorted(set(indices)))
        self._failed_chunks.clear()
        timeout = self._settings.ack_timeout_s
        while pending or self._failed_chunks or conn.chunks_in_flight():
            if self._stop.is_set():
                raise Stopping
            if self._failed_chunks:
                pending = deque(sorted(set(pending).union(self._failed_chunks)))
                self._failed_chunks.clear()
                delay = self._backoff.next()
                log.info("resending %d chunk(s) of %s in %.1f s", len(pending), job.rec, delay)
                self._wait(delay)
            self._tick()
            while pending and len(conn.inflight) < conn.limit:
                index = pending.popleft()
                data = self._read_chunk(fh, index)
                self._link.publish(
                    protocol.chunk_topic(self._link.device, job.rec, index),
                    data,
                    Sent("chunk", job.rec, index, len(data)),
                    properties=chunk_properties(data),
                )
            if conn.inflight and time.monotonic() - conn.last_puback > timeout:
                raise Lost(f"no PUBACK from the broker for {timeout:g} s")
            self._link.pump(POLL_S)

    def _read_chunk(self, fh: BinaryIO, index: int) -> bytes:
        job = self.job
        size = job.init.chunk_size
        expected = min(size, job.init.blob_bytes - index * size)
        try:
            fh.seek(index * size)
            data = fh.read(expected)
        except OSError as exc:
            raise LocalProblem(f"reading chunk {index} of {job.blob}: {exc}") from exc
        if len(data) != expected:
            raise LocalProblem(
                f"{job.blob} changed: chunk {index} is {len(data)} bytes, expected {expected}"
            )
        return data
