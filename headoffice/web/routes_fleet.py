"""The Fleet pages and the office's Prometheus endpoint.

- ``GET /fleet``: every device in the viewer's reach (state badge, backlog, disk, clock,
  signed head against the office's, its lines with their last call and level alarms)
  and the open alarms, each with an Acknowledge form (right ``view_fleet``: one ledger
  leaf per view, appended before anything is read; a role without it gets 403);
- ``GET /fleet/devices/{id}?hours=48``: one device, its hourly history as server-side
  SVG charts (:mod:`headoffice.web.charts`) with tables beside them, its lines' calls
  per hour and every alarm it had (a leaf naming the device; out of scope or unknown:
  404);
- ``POST /fleet/alarms/{id}/ack``: acknowledge an alarm with a note (CSRF; right
  ``manage_fleet`` on its device and line; 404 out of scope, 403 for the role), then
  back to where the form was;
- ``GET /metrics``: :mod:`headoffice.fleet.metrics` for Prometheus, without a session
  (a scraper has none) but only to this machine (loopback) or with
  ``Authorization: Bearer`` and ``[fleet] metrics_token`` (or ``metrics_token_file``);
  ``[fleet] metrics = false`` turns it off (404).

Registers the template global ``may_fleet(viewer)`` for the navigation link.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from markupsafe import Markup
from prometheus_client import CONTENT_TYPE_LATEST

from headoffice.access import AccessDenied
from headoffice.authz import Action
from headoffice.fleet.alarms import AlarmError
from headoffice.fleet.metrics import render_metrics
from headoffice.fleet.view import (
    DeviceHistory,
    FleetGate,
    acknowledge,
    device_history,
    human_age,
    human_bytes,
    overview,
    short_time,
)
from headoffice.notify.outbox import Outbox
from headoffice.web.charts import Bar, column_chart

if TYPE_CHECKING:
    from headoffice.web.app import Viewer, _Site

__all__ = ["add_fleet_routes", "history_charts"]

log = logging.getLogger(__name__)

DEFAULT_HOURS = 48
HOUR_CHOICES = (24, 48, 168)
MAX_DEVICE_ID = 64


def _now() -> datetime:
    return datetime.now(UTC)


def history_charts(h: DeviceHistory) -> dict[str, Markup]:
    """The device page's charts: minutes online per hour, and the largest backlog."""
    online = column_chart(
        "chart-online",
        "Minutes online per hour",
        f"{len(h.hours)} hours from {short_time(h.start)} UTC: "
        f"{sum(x.online_s for x in h.hours) / 60:.0f} minutes online, "
        f"{sum(x.messages for x in h.hours)} telemetry messages.",
        [
            Bar(
                x.hour[11:13],
                round(x.online_s / 60, 1),
                f"{short_time(x.hour)} UTC: {x.online_s / 60:.0f} min online, "
                f"{x.messages} messages",
            )
            for x in h.hours
        ],
        x_label="Hour (UTC)",
        y_label="Minutes",
    )
    backlog = column_chart(
        "chart-backlog",
        "Largest backlog per hour",
        "Recordings waiting on the device, the most seen in each hour.",
        [
            Bar(
                x.hour[11:13],
                x.max_backlog or 0,
                f"{short_time(x.hour)} UTC: "
                + ("no telemetry" if x.max_backlog is None else f"{x.max_backlog} waiting"),
            )
            for x in h.hours
        ],
        x_label="Hour (UTC)",
        y_label="Recordings",
    )
    return {"online": Markup(online), "backlog": Markup(backlog)}


def _is_local(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _alarm_number(text: str | None) -> int | None:
    """``?acked=N`` after an acknowledgement (only a number is shown back)."""
    return int(text) if text and text.isdigit() and len(text) < 19 else None


def _back(target: str) -> str:
    """Where an Acknowledge form returns: a fleet page of this site, nothing else."""
    return target if target.startswith("/fleet") and "//" not in target else "/fleet"


def add_fleet_routes(app: FastAPI, site: _Site) -> None:
    """Register the Fleet pages, ``/metrics`` and the template global ``may_fleet``."""

    def gate_of(v: Viewer) -> FleetGate:
        return FleetGate.of(site.gate_of(v), site.index, site.cfg)

    def may_fleet(v: Viewer | None) -> bool:
        return v is not None and site.gate_of(v).may(Action.VIEW_FLEET)

    site.templates.env.globals["may_fleet"] = may_fleet
    site.templates.env.filters["fleet_ago"] = human_age
    site.templates.env.filters["fleet_size"] = human_bytes
    site.templates.env.filters["fleet_time"] = short_time

    def missing(request: Request, v: Viewer, what: str) -> HTMLResponse:
        context = {"title": "Not found", "message": f"There is no such {what}.", "viewer": v}
        return site.render(request, "error.html", context, 404)

    @app.get("/fleet", response_class=HTMLResponse)
    def get_fleet(request: Request) -> Response:
        v = site.viewer(request)
        gate = gate_of(v)
        try:
            view = overview(site.index, gate, detail="web: fleet")
        except AccessDenied as exc:
            return site.refused(request, v, exc)
        manageable = {
            a.id for a in view.alarms if gate.may_device(Action.MANAGE_FLEET, a.device_id, a.line)
        }
        context: dict[str, Any] = {
            "viewer": v,
            "active": "fleet",
            "view": view,
            "manageable": manageable,
            "back": "/fleet",
            "offline_after": human_age(site.cfg.fleet.offline_after_s),
            "acked": _alarm_number(request.query_params.get("acked")),
        }
        return site.render(request, "fleet.html", context)

    @app.get("/fleet/devices/{device_id}", response_class=HTMLResponse)
    def get_device(device_id: str, request: Request, hours: int = DEFAULT_HOURS) -> Response:
        v = site.viewer(request)
        gate = gate_of(v)
        try:
            h = device_history(
                site.index,
                gate,
                device_id[:MAX_DEVICE_ID],
                hours,
                _now(),
                detail="web: fleet device",
            )
        except AccessDenied as exc:
            if exc.hidden:
                return missing(request, v, "device")
            return site.refused(request, v, exc)
        context: dict[str, Any] = {
            "viewer": v,
            "active": "fleet",
            "h": h,
            "d": h.device,
            "charts": history_charts(h),
            "hour_choices": HOUR_CHOICES,
            "hours": len(h.hours),
            "manageable": {
                a.id
                for a in h.alarms
                if a.open and gate.may_device(Action.MANAGE_FLEET, a.device_id, a.line)
            },
            "back": f"/fleet/devices/{h.device.device_id}?hours={len(h.hours)}",
            "acked": _alarm_number(request.query_params.get("acked")),
        }
        return site.render(request, "fleet_device.html", context)

    @app.post("/fleet/alarms/{alarm_id}/ack")
    def post_ack(
        alarm_id: int,
        request: Request,
        note: str = Form("", max_length=2000),
        back: str = Form("/fleet", max_length=300),
    ) -> Response:
        v = site.viewer(request)
        try:
            acknowledge(
                site.index,
                site.cfg,
                gate_of(v),
                alarm_id,
                note=note,
                now=_now(),
                enqueue=Outbox(site.index, site.cfg.notify).enqueue_in,
                channel="web",
            )
        except AccessDenied as exc:
            if exc.hidden:
                return missing(request, v, "alarm")
            return site.refused(request, v, exc)
        except AlarmError as exc:
            context = {"title": "Not acknowledged", "message": str(exc), "viewer": v}
            status = 404 if str(exc).startswith("there is no alarm") else 409
            return site.render(request, "error.html", context, status)
        target = _back(back)
        sep = "&" if "?" in target else "?"
        return RedirectResponse(f"{target}{sep}acked={alarm_id}", status_code=303)

    @app.get("/metrics")
    def get_metrics(request: Request) -> Response:
        fleet = site.cfg.fleet
        if not fleet.metrics:
            return Response("metrics are off ([fleet] metrics = false)\n", 404)
        client = site.client_of(request)
        if not _is_local(client):
            try:
                token = fleet.token()
            except OSError as exc:
                log.error("metrics: token file unreadable: %s", exc)
                token = None
            sent = _bearer(request)
            if (
                token is None
                or sent is None
                or not hmac.compare_digest(sent.encode(), token.encode())
            ):
                return Response(
                    "metrics: only for this machine, or with the bearer token of "
                    "[fleet] metrics_token\n",
                    403,
                    media_type="text/plain",
                )
        return Response(render_metrics(site.index), media_type=CONTENT_TYPE_LATEST)
