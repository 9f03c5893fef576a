"""Prometheus metrics of the office itself (prometheus-client), read from the index at
each scrape, so any process (the web server serves ``/metrics``) gives the figures of the
whole office, however many ``serve`` workers there are:

- ``linetap_fleet_devices{state}``: devices online / offline (by their telemetry);
- ``linetap_fleet_alarms_open{kind,state}``: open fleet alarms, raised or acknowledged;
- ``linetap_fleet_backlog_recordings``: recordings waiting on devices (their telemetry);
- ``linetap_fleet_head_ahead_recordings``: recordings devices sealed that the office
  has not (signed heads against the office's chain heads);
- ``linetap_recordings_stored_total``: recordings ever stored (deleted ones counted by
  their tombstones, so it only grows): ``rate()`` of it is the receivers' throughput;
- ``linetap_fleet_status_messages_total``: telemetry messages taken in;
- ``linetap_uploads_open`` and ``linetap_uploads_parked_bytes``: unfinished uploads and
  what their chunks hold (by their inits, as the receiver's quota counts);
- ``linetap_ledger_leaves``: the audit ledger's size.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from headoffice.fleet.state import FleetStore
from headoffice.index import Index

__all__ = ["OfficeCollector", "render_metrics"]


class OfficeCollector(Collector):
    """Reads the figures from ``index`` at every scrape."""

    def __init__(self, index: Index) -> None:
        self.index = index

    def collect(self) -> Iterator[Metric]:
        devices = FleetStore(self.index).devices()
        online = sum(1 for d in devices if d.online)
        g = GaugeMetricFamily(
            "linetap_fleet_devices", "Devices by telemetry state", labels=["state"]
        )
        g.add_metric(["online"], online)
        g.add_metric(["offline"], len(devices) - online)
        yield g
        backlog = sum(
            d.status.outbox.unacked_count or 0
            for d in devices
            if d.status is not None and d.status.outbox is not None
        )
        yield GaugeMetricFamily(
            "linetap_fleet_backlog_recordings",
            "Recordings waiting on the devices, by their telemetry",
            value=backlog,
        )
        with self.index.transaction(False) as q:
            alarms = q(
                "SELECT kind, state, COUNT(*) FROM fleet_alarms "
                "WHERE state IN ('raised', 'acknowledged') GROUP BY kind, state",
                (),
            )
            seqs = {str(r[0]): int(r[1]) for r in q("SELECT device_id, last_seq FROM devices", ())}
            [(stored,)] = q("SELECT COUNT(*) FROM recordings", ())
            [(deleted,)] = q("SELECT COUNT(*) FROM tombstones", ())
            [(messages,)] = q("SELECT COALESCE(SUM(messages), 0) FROM fleet_device_hours", ())
            uploads = q("SELECT init, chunk_count, received FROM uploads", ())
            [(leaves,)] = q("SELECT COALESCE(MAX(idx) + 1, 0) FROM ledger", ())
        a = GaugeMetricFamily(
            "linetap_fleet_alarms_open", "Open fleet alarms", labels=["kind", "state"]
        )
        for kind, state, count in alarms:
            a.add_metric([str(kind), str(state)], int(count))
        yield a
        ahead = sum(
            max(0, d.head.seq - seqs.get(d.device_id, 0)) for d in devices if d.head is not None
        )
        yield GaugeMetricFamily(
            "linetap_fleet_head_ahead_recordings",
            "Recordings the devices sealed that the office has not received",
            value=ahead,
        )
        yield CounterMetricFamily(
            "linetap_recordings_stored",
            "Recordings stored by the receivers (deleted ones included)",
            value=int(stored) + int(deleted),
        )
        yield CounterMetricFamily(
            "linetap_fleet_status_messages", "Telemetry messages taken in", value=int(messages)
        )
        yield GaugeMetricFamily("linetap_uploads_open", "Unfinished uploads", value=len(uploads))
        yield GaugeMetricFamily(
            "linetap_uploads_parked_bytes",
            "Bytes of the chunks parked for unfinished uploads",
            value=sum(_parked(str(init), int(n), int(got)) for init, n, got in uploads),
        )
        yield GaugeMetricFamily(
            "linetap_ledger_leaves", "Leaves in the audit ledger", value=int(leaves)
        )


def _parked(init: str, chunks: int, received: int) -> int:
    """What an upload's received chunks hold: its blob's share of them."""
    try:
        size = json.loads(init).get("blob_bytes", 0)
    except (ValueError, AttributeError):
        return 0
    if not isinstance(size, int) or chunks <= 0:
        return 0
    return min(size, size * max(0, received) // chunks)


def render_metrics(index: Index) -> bytes:
    """The text exposition format of :class:`OfficeCollector`'s figures."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(OfficeCollector(index))
    return generate_latest(registry)
