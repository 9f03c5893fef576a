"""Alarms a flood must not turn into a flood of alarm rows: the receiver's and the fleet
ingest's."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from headoffice.index import Index
from sealedrec.errors import LinetapError

log = logging.getLogger("headoffice.receiver")  # where these alarms were always logged


class AlarmThrottle:
    """Raise an alarm in the index and the log, at most once per ``interval_s`` per device
    and kind (a flood must not become a flood of alarm rows); counts what it held back."""

    def __init__(self, index: Index, interval_s: float, clock: Callable[[], float]) -> None:
        self._index = index
        self._interval = interval_s
        self._clock = clock
        self._last: dict[tuple[str, str], float] = {}
        self._held: dict[tuple[str, str], int] = {}
        self._mutex = threading.Lock()

    def raise_alarm(
        self, device: str, kind: str, message: str, *, recording_id: str | None = None
    ) -> bool:
        """True when raised now, False when held back as a repeat."""
        key = (device, kind)
        now = self._clock()
        with self._mutex:
            last = self._last.get(key)
            if last is not None and now - last < self._interval:
                self._held[key] = self._held.get(key, 0) + 1
                return False
            self._last[key] = now
            held = self._held.pop(key, 0)
        if held:
            message += f" ({held} more since the last alarm of this kind)"
        log.warning("ALARM device=%s kind=%s: %s", device, kind, message)
        try:
            self._index.raise_alarm(device, kind, message[:2000], recording_id=recording_id)
        except LinetapError as exc:  # the index may be on the full disk the alarm is about
            log.error("could not record alarm %s for device %s: %s", kind, device, exc)
        return True
