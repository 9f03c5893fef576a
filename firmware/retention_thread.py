"""Local retention in a thread of its own, beside the capture loop.

Deleting acknowledged recordings (a rename and an ``rmtree`` per recording, under the
outbox's lock) takes as long as the card makes it; the capture loop's ALSA buffer holds
160 ms. So the daemon runs :func:`apply_retention` here, once at start and then every
``RETENTION_INTERVAL_S``, until its own stop event is set; the daemon sets it on its way
out (SIGTERM) and waits ``JOIN_TIMEOUT_S`` at most for a deletion in progress.
"""

from __future__ import annotations

import logging
import threading
import time

from buffers.outbox import Outbox
from buffers.retention import apply_retention as outbox_retention
from firmware.config import LinetapConfig
from firmware.errors import StorageError
from firmware.recorder import StorageHealth

log = logging.getLogger(__name__)

# How often the daemon applies the retention rules (deleting acked recordings).
RETENTION_INTERVAL_S = 60.0
# How long the daemon waits, stopping, for a retention pass in progress.
JOIN_TIMEOUT_S = 10.0


def apply_retention(cfg: LinetapConfig, health: StorageHealth) -> None:
    """One retention pass over the outbox; a storage problem shows as a fault."""
    try:
        deleted = outbox_retention(
            Outbox(cfg.storage.outbox_dir),
            now=time.time(),
            keep_acked_s=cfg.storage.keep_acked_days * 86400,
            min_free_bytes=cfg.storage.min_free_mb * 1024 * 1024,
        )
    except OSError as exc:
        health.report(StorageError(f"retention in {cfg.storage.outbox_dir}: {exc}"))
        return
    if deleted:
        log.info("retention deleted %d acknowledged recording(s)", len(deleted))


class RetentionThread:
    """Runs :func:`apply_retention` every ``interval_s`` until :meth:`stop`."""

    def __init__(
        self, cfg: LinetapConfig, health: StorageHealth, *, interval_s: float = RETENTION_INTERVAL_S
    ) -> None:
        self._cfg = cfg
        self._health = health
        self._interval_s = interval_s
        self.stop_event = threading.Event()
        # daemon: a deletion stuck on a failing card must not keep the process alive.
        self._thread = threading.Thread(target=self._run, name="linetap-retention", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = JOIN_TIMEOUT_S) -> None:
        """Set the stop event and wait for a pass in progress, ``timeout`` at most."""
        self.stop_event.set()
        if not self._thread.is_alive():
            return
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning(
                "retention still deleting after %.0f s; stopping without it (the next "
                "start finishes an interrupted deletion)",
                timeout,
            )

    def _run(self) -> None:
        while not self.stop_event.is_set():
            try:
                apply_retention(self._cfg, self._health)
            except Exception as exc:  # a bug: report it as a fault, keep recording
                log.exception("retention failed")
                self._health.report(
                    StorageError(f"retention in {self._cfg.storage.outbox_dir}: {exc}")
                )
            self.stop_event.wait(self._interval_s)
