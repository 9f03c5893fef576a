"""Fleet health inside ``linetap-office serve``: the telemetry subscription's messages go
to :class:`~headoffice.fleet.ingest.FleetIngest` (each isolated: nothing a device sends
stops serve), a thread ticks it every ``[fleet] tick_s``, and the notification
dispatcher (:func:`headoffice.notify.dispatcher.start_dispatcher`) sends what the alarms
enqueue.

Status messages are retained and not shared: every worker of a scaled-out office
subscribes to ``linetap/+/status`` plainly and handles all of them; the ingest is
idempotent and the alarms are moved under a per-device lock, so they agree (see
:mod:`headoffice.fleet.state`).
"""

from __future__ import annotations

import logging
import threading

from headoffice.config import OfficeConfig
from headoffice.fleet.ingest import FleetIngest, Outcome, status_filter
from headoffice.index import Index
from headoffice.notify.dispatcher import DispatcherThread, start_dispatcher
from headoffice.notify.outbox import Outbox
from sealedrec.errors import LinetapError

__all__ = ["FleetRunner"]

log = logging.getLogger(__name__)


class FleetTicker(threading.Thread):
    """Ticks the ingest every ``tick_s`` until ``stop`` is set."""

    def __init__(self, ingest: FleetIngest, stop: threading.Event) -> None:
        super().__init__(name="fleet-ticker", daemon=True)
        self.ingest = ingest
        self.stop = stop

    def run(self) -> None:
        while not self.stop.wait(self.ingest.cfg.tick_s):
            try:
                self.ingest.tick()
            except LinetapError as exc:
                log.error("fleet tick: %s", exc)
            except Exception as exc:  # noqa: BLE001 - the ticker must outlive one bad tick
                log.error("fleet tick failed: %s: %s", type(exc).__name__, str(exc)[:300])


class FleetRunner:
    """The ingest, its ticker and the notification dispatcher of one serve process."""

    topic = status_filter()

    def __init__(self, cfg: OfficeConfig, index: Index, stop: threading.Event) -> None:
        self.ingest = FleetIngest(
            cfg.root,
            index,
            cfg.fleet,
            enqueue=Outbox(index, cfg.notify).enqueue_in,
            alarm_interval_s=cfg.limits.alarm_interval_s,
        )
        self.stop = stop
        self.ticker = FleetTicker(self.ingest, stop)
        self.dispatcher: DispatcherThread | None = None

    @classmethod
    def start(cls, cfg: OfficeConfig, index: Index, stop: threading.Event) -> FleetRunner:
        runner = cls(cfg, index, stop)
        runner.ticker.start()
        runner.dispatcher = start_dispatcher(cfg, index, stop)
        return runner

    @staticmethod
    def wants(topic: str) -> bool:
        return topic.startswith("linetap/") and topic.endswith("/status")

    def handle(self, topic: str, payload: bytes) -> Outcome | None:
        """One status message; no failure of it reaches the caller (paho's thread)."""
        try:
            return self.ingest.handle(topic, payload)
        except LinetapError as exc:
            log.error("telemetry on %s not kept: %s", topic[:120], exc)
        except Exception as exc:  # noqa: BLE001 - one message must never stop serve
            log.error(
                "telemetry on %s failed: %s: %s", topic[:120], type(exc).__name__, str(exc)[:300]
            )
        return None

    def close(self, timeout: float = 10.0) -> None:
        """Stop the ticker and the dispatcher (a send in progress finishes first)."""
        self.stop.set()
        if self.ticker.is_alive():
            self.ticker.join(timeout)
        if self.dispatcher is not None:
            self.dispatcher.close(timeout)
        c = self.ingest.counts
        log.info(
            "fleet: %d status message(s) stored, %d duplicate, %d malformed, %d forged, "
            "%d from unknown devices",
            c.get("stored", 0),
            c.get("duplicate", 0),
            c.get("malformed", 0),
            c.get("forged", 0),
            c.get("unknown_device", 0),
        )
