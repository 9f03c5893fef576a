"""In-page playback routes: ``GET /recordings/{id}/audio`` and ``GET /recordings/{id}/peaks``.

Both need the ``listen`` right on the recording (peaks too: a waveform shows when
someone speaks). The audio is decrypted in RAM with the office identity
(``keys/office.key`` under the office root, where ``linetap-office init`` puts it and
``export -i`` reads it) and kept in a :class:`~headoffice.web.audio.PlaybackCache`;
plain audio is never written to disk. ``/audio`` answers 200 with the whole file, 206
for a ``Range`` and 416 for an unsatisfiable one; ``Cache-Control: no-store`` comes
from the app's middleware like every dynamic answer.

Logging, once per playback and not once per Range request: the browser's media element
asks many ranges for one playback, and seeks ask more. The first request of a session
for a recording (``peaks`` or ``audio``, any range) goes through
:meth:`~headoffice.access.Gate.allow` (a ``listen`` leaf in the ledger, refusals too) and
opens a *grant* for that (session, recording) pair of :data:`GRANT_S` seconds. Within
it, later requests are still authorized on every request (a live session, then
:meth:`~headoffice.access.Gate.may`, so a role or scope change or a sign-out stops the
very next byte) but not logged again; after it, the next request logs a new leaf. A
grant is never a substitute for a session: it is keyed by the session, in RAM only, and
lost (so the next request logs again) when the server restarts.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from headoffice.access import AccessDenied
from headoffice.authz import Action
from headoffice.blobstore import BlobStore
from headoffice.index.records import StoredRecord
from headoffice.officeroot import CaLayout
from headoffice.web.audio import (
    PlayableAudio,
    PlaybackCache,
    PlaybackError,
    RangeNotSatisfiable,
    byte_range,
    decrypt_playable,
    peaks_json,
    range_response_headers,
)
from sealedrec.age import load_identities
from sealedrec.errors import LinetapError

if TYPE_CHECKING:
    from headoffice.web.app import Viewer, _Site

__all__ = ["GRANT_S", "Playback", "add_audio_routes"]

GRANT_S = 600.0  # one logged "listen" covers a session's requests for 10 minutes
MAX_GRANTS = 10_000
MAX_PEAKS = 64  # recordings whose peaks are kept (a few hundred KiB each at most)
MAX_ID = 200  # bounds the ledger detail of a guessed id (Site.record never looks one up)


class Playback:
    """What the playback routes of one app share: the decrypted-audio cache, the peaks,
    the grants and the office identity (read once, on the first playback)."""

    def __init__(self, site: _Site, cache: PlaybackCache | None = None) -> None:
        self.site = site
        self.cache = cache or PlaybackCache()
        self._grants: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._peaks: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._keys: list[X25519PrivateKey] | None = None
        self._lock = threading.Lock()

    # -- authorization -----------------------------------------------------------------
    def authorize(self, v: Viewer, record: StoredRecord, what: str) -> None:
        """Allow ``listen`` on ``record`` for ``v`` (raises :class:`AccessDenied`): logged
        when no grant is open for the pair, else checked without a leaf."""
        gate = self.site.gate_of(v)
        key = (v.actor.session, record.recording_id)
        now = time.monotonic()
        with self._lock:
            opened = self._grants.get(key)
        if opened is not None and now - opened < GRANT_S and gate.may(Action.LISTEN, record):
            return
        gate.allow(Action.LISTEN, record, detail=f"web: {what}")
        with self._lock:
            self._grants[key] = now
            self._grants.move_to_end(key)
            while len(self._grants) > MAX_GRANTS:
                self._grants.popitem(last=False)

    # -- audio -------------------------------------------------------------------------
    def identities(self) -> list[X25519PrivateKey]:
        with self._lock:
            if self._keys is None:
                self._keys = load_identities(CaLayout(self.site.cfg.root).office_key)
            return self._keys

    def audio(self, store: BlobStore, record: StoredRecord) -> PlayableAudio:
        def load() -> PlayableAudio:
            keys = self.identities()
            with store.local_blob(record.path) as path:
                return decrypt_playable(path, record.manifest, keys)

        return self.cache.get_or_load(record.recording_id, load)

    def peaks(self, store: BlobStore, record: StoredRecord) -> dict[str, Any]:
        rid = record.recording_id
        with self._lock:
            if (done := self._peaks.get(rid)) is not None:
                self._peaks.move_to_end(rid)
                return done
        audio = self.audio(store, record)
        data = peaks_json(
            audio.samples(),
            audio.sample_rate,
            masked_spans=record.manifest.get("masked_spans") or (),
        )
        with self._lock:
            self._peaks[rid] = data
            while len(self._peaks) > MAX_PEAKS:
                self._peaks.popitem(last=False)
        return data


def _text(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return PlainTextResponse(message + "\n", status_code=status, headers=headers)


def _allowed_record(
    playback: Playback, request: Request, recording_id: str, what: str
) -> StoredRecord | Response:
    """The recording if the session may listen to it, else the refusal to send (404 for
    a recording out of scope or missing, 403 for a right the role lacks)."""
    site = playback.site
    v = site.viewer(request)  # LoginRequired -> the app's redirect to /login
    record = site.record(recording_id)
    if record is None:
        # Logged like the recording page's guesses: a trail of URL guessing.
        with contextlib.suppress(AccessDenied):
            site.gate_of(v).allow(
                Action.LISTEN, None, detail=f"web: {what} of no recording {recording_id[:MAX_ID]!r}"
            )
        return _text(404, "There is no such recording.")
    try:
        playback.authorize(v, record, what)
    except AccessDenied as exc:
        if exc.hidden:
            return _text(404, "There is no such recording.")
        return _text(403, str(exc))
    return record


def _playable(
    playback: Playback, request: Request, record: StoredRecord
) -> PlayableAudio | Response:
    try:
        return playback.audio(request.app.state.store, record)
    except PlaybackError as exc:
        return _text(409, f"This recording cannot be played: {exc}")
    except (LinetapError, OSError) as exc:
        return _text(503, f"The office identity cannot decrypt recordings here: {exc}")


def add_audio_routes(app: FastAPI, site: _Site) -> Playback:
    """Register the playback routes on ``app`` (the :class:`Playback` they share is also
    ``app.state.playback``)."""
    playback = Playback(site)
    app.state.playback = playback

    @app.get("/recordings/{recording_id}/audio")
    def recording_audio(recording_id: str, request: Request) -> Response:
        record = _allowed_record(playback, request, recording_id, "play audio")
        if isinstance(record, Response):
            return record
        audio = _playable(playback, request, record)
        if isinstance(audio, Response):
            return audio
        try:
            wanted = byte_range(request.headers.get("range"), audio.size)
        except RangeNotSatisfiable as exc:
            return Response(status_code=416, headers=exc.headers)
        if wanted is None:
            return Response(
                audio.data,
                media_type=audio.mime,
                headers={"Accept-Ranges": "bytes", "Content-Disposition": "inline"},
            )
        start, end = wanted
        headers = range_response_headers(start, end, audio.size, audio.mime)
        headers["Content-Disposition"] = "inline"
        return Response(audio.data[start : end + 1], status_code=206, headers=headers)

    @app.get("/recordings/{recording_id}/peaks")
    def recording_peaks(recording_id: str, request: Request) -> Response:
        record = _allowed_record(playback, request, recording_id, "waveform peaks")
        if isinstance(record, Response):
            return record
        try:
            data = playback.peaks(request.app.state.store, record)
        except PlaybackError as exc:
            return _text(409, f"This recording cannot be played: {exc}")
        except (LinetapError, OSError) as exc:
            return _text(503, f"The office identity cannot decrypt recordings here: {exc}")
        return JSONResponse(data)

    return playback
