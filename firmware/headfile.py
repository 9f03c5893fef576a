"""The recorder's signed device head, kept in ``data_dir/state/head.json`` for the uploader.

After each sealed recording the recorder signs the newest one's seq and manifest hash
(:func:`sealedrec.head.sign_head`) and replaces this file; the uploader publishes it
unchanged in its telemetry. Signing happens here, not in the uploader, because the
device key belongs to the process that seals: the recorder has no network at all
(``PrivateNetwork=yes``), while the uploader talks to the broker and is denied the key
file (``InaccessiblePaths=`` in its unit). Whatever the uploader could be made to do, it
cannot sign a head or a manifest.

The file is on the data partition, not the tmpfs runtime dir, so the office learns the
head even while the recorder is down (a crash loop on a broken sound card). At start the
recorder re-signs it only when it no longer names the chain's head (a crash between the
outbox hand-over and this write, a first start after an upgrade).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware.sinks import write_json_atomic
from sealedrec.head import sign_head

log = logging.getLogger(__name__)


class HeadFile:
    """``head.json``: the newest sealed recording, signed (see the module docstring)."""

    def __init__(
        self,
        path: Path,
        device_id: str,
        key: Ed25519PrivateKey,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self._device_id = device_id
        self._key = key
        self._clock = clock
        self._named: tuple[int, str] | None = None  # (seq, hash) the file names; None: unread

    def names(self) -> tuple[int, str] | None:
        """(seq, manifest hash) the file names now; None when it is missing or unreadable."""
        if self._named is None:
            try:
                doc = json.loads(self.path.read_text(encoding="utf-8"))
                self._named = (int(doc["seq"]), str(doc["manifest_sha256"]))
            except FileNotFoundError:
                return None
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("%s unreadable (%s); it is signed again", self.path, exc)
                return None
        return self._named

    def advance(self, seq: int, manifest_sha256: str, recording_id: str | None) -> None:
        """Name this recording, unless the file already names a later (or the same) one:
        recordings a crash left are sealed at start in no particular order."""
        named = self.names()
        if named is None or seq > named[0]:
            self._write(seq, manifest_sha256, recording_id)

    def ensure(self, seq: int, manifest_sha256: str, recording_id: str | None) -> None:
        """Name exactly this head (the chain's, at start) unless the file already does."""
        if self.names() != (seq, manifest_sha256):
            self._write(seq, manifest_sha256, recording_id)

    def _write(self, seq: int, manifest_sha256: str, recording_id: str | None) -> None:
        doc = sign_head(
            device_id=self._device_id,
            seq=seq,
            manifest_sha256=manifest_sha256,
            recording_id=recording_id,
            signed_at=datetime.fromtimestamp(self._clock(), UTC),
            key=self._key,
        )
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_json_atomic(self.path, doc, indent=None)
        self._named = (seq, manifest_sha256)
