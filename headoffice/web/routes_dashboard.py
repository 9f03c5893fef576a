"""The KPI dashboard page: ``GET /dashboard?from=&to=&site=&device=&line=``.

Calls per day (with the 7-day moving average), the call durations, the share of calls
evaluated, the average score per form section and this period against the one before,
for the period and filters asked (:mod:`headoffice.web.dashboard`), each chart a
server-side SVG (:mod:`headoffice.web.charts`) with a table of its numbers beside it.

Authorization is the ``search`` right (target ``None``) through the gate: one ledger leaf
per page view (detail ``web: dashboard FROM..TO site=...``), appended before anything is
read, and the figures count only the calls the viewer may see. A role without ``search``
(an admin alone) gets the 403 page. Parameters that are not understood get the page with
the form and a message naming the parameter (400), also after a leaf of its own.

Registers the template global ``may_dashboard(viewer)`` for the navigation link.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from markupsafe import Markup

from headoffice.access import AccessDenied
from headoffice.authz import Action
from headoffice.web.charts import Bar, bar_chart, column_chart, histogram
from headoffice.web.dashboard import (
    MAX_DAYS,
    MOVING_DAYS,
    Dashboard,
    DashboardFilters,
    DashboardParameterError,
    PeriodTotals,
    dashboard,
    visible_sites,
)

if TYPE_CHECKING:
    from headoffice.web.app import Viewer, _Site

__all__ = ["DashboardCharts", "Figure", "add_dashboard_routes", "dashboard_charts", "figures"]

#: The quick choices above the form: label, days up to and including today.
PRESETS = (("Last 7 days", 7), ("Last 30 days", 30), ("Last 90 days", 90), ("Last year", 365))


@dataclass(frozen=True, slots=True)
class DashboardCharts:
    """The page's charts, as SVG markup (escaped by :mod:`headoffice.web.charts`)."""

    per_day: Markup
    durations: Markup
    sections: Markup | None  # None: no evaluation in the period


@dataclass(frozen=True, slots=True)
class Figure:
    """One line of the trend table, formatted."""

    name: str
    current: str
    previous: str
    change: str
    direction: str  # "up", "down" or "same": the change's sign (CSS class)


def _mmss(ms: float) -> str:
    seconds = round(ms / 1000)
    minutes, secs = divmod(abs(seconds), 60)
    return f"{'−' if seconds < 0 else ''}{minutes}:{secs:02d}"


def _signed(value: float, text: str) -> str:
    return ("+" if value > 0 else "−" if value < 0 else "±") + text


def _direction(change: float) -> str:
    return "up" if change > 0 else "down" if change < 0 else "same"


def _relative(now: float, before: float) -> str:
    if before == 0:
        return ""
    return f" ({_signed(now - before, f'{abs(now - before) / before * 100:.1f} %')})"


def figures(cur: PeriodTotals, prev: PeriodTotals) -> list[Figure]:
    """The trend table: calls, average duration, share evaluated and average score, this
    period and the previous one, and the change (relative for amounts, in percentage
    points for shares and scores); ``—`` where a period has nothing to average."""
    out = [
        Figure(
            "Calls",
            str(cur.calls),
            str(prev.calls),
            _signed(cur.calls - prev.calls, str(abs(cur.calls - prev.calls)))
            + _relative(cur.calls, prev.calls),
            _direction(cur.calls - prev.calls),
        )
    ]
    pairs: list[tuple[str, float | None, float | None, str]] = [
        ("Average duration", cur.average_duration_ms, prev.average_duration_ms, "duration"),
        ("Share of calls evaluated", _pct(cur.share_evaluated), _pct(prev.share_evaluated), "%"),
        ("Average score", cur.average_score_percent, prev.average_score_percent, "%"),
    ]
    for name, now, before, unit in pairs:
        shown = _mmss if unit == "duration" else _percent
        if now is None or before is None:
            change, way = "—", "same"
        elif unit == "duration":
            change = _signed(now - before, _mmss(abs(now - before))) + _relative(now, before)
            way = _direction(round(now - before))
        else:
            change = _signed(now - before, f"{abs(now - before):.1f} points")
            way = _direction(round(now - before, 1))
        out.append(
            Figure(
                name,
                "—" if now is None else shown(now),
                "—" if before is None else shown(before),
                change,
                way,
            )
        )
    return out


def _pct(share: float | None) -> float | None:
    return None if share is None else share * 100


def _percent(value: float) -> str:
    return f"{value:.1f} %"


def dashboard_charts(d: Dashboard) -> DashboardCharts:
    """The SVG charts of a dashboard."""
    f = d.filters
    busiest = max(d.days, key=lambda x: x.calls, default=None)
    per_day = column_chart(
        "chart-days",
        "Calls per day",
        f"{_count(f.days, 'day')} from {f.start} to {f.last_day}: "
        + _count(d.current.calls, "call")
        + (f", most on {busiest.day} ({busiest.calls})." if busiest and busiest.calls else "."),
        [
            Bar(
                x.day.strftime("%m-%d"), x.calls, f"{x.day} ({x.day:%a}): {_count(x.calls, 'call')}"
            )
            for x in d.days
        ],
        x_label="Day (UTC)",
        y_label="Calls",
        line=[x.moving_average for x in d.days],
        legend=("Calls per day", f"{MOVING_DAYS}-day average"),
    )
    total = d.current.calls
    durations = histogram(
        "chart-durations",
        "Call duration",
        "; ".join(f"{b.label}: {b.calls}" for b in d.buckets) + ".",
        [
            Bar(
                b.label, b.calls, f"{b.label}: {_count(b.calls, 'call')} ({_share(b.calls, total)})"
            )
            for b in d.buckets
        ],
        x_label="Duration",
        y_label="Calls",
    )
    sections = None
    if d.sections:
        sections = Markup(
            bar_chart(
                "chart-sections",
                "Average score per form section",
                "; ".join(f"{s.form} · {s.section}: {s.average_percent:.1f} %" for s in d.sections)
                + ".",
                [
                    Bar(
                        f"{s.form} · {s.section}",
                        s.average_percent,
                        f"{s.form} · {s.section}: {s.average_percent:.1f} % "
                        f"over {_count(s.evaluations, 'evaluation')}",
                    )
                    for s in d.sections
                ],
                x_label="Average score (%)",
            )
        )
    return DashboardCharts(Markup(per_day), Markup(durations), sections)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _share(part: int, whole: int) -> str:
    return f"{part / whole * 100:.1f} %" if whole else "—"


def _presets(filters: DashboardFilters | None, today: date) -> list[tuple[str, str]]:
    """The quick choices as (label, URL), keeping the site, device and line."""
    keep = {}
    if filters is not None:
        keep = {k: v for k, v in filters.query().items() if k not in {"from", "to"}}
    out = []
    for label, days in PRESETS:
        period = DashboardFilters.last_days(today, days)
        out.append((label, "/dashboard?" + urlencode({**period.query(), **keep})))
    return out


def _today() -> date:
    return datetime.now(UTC).date()


def add_dashboard_routes(app: FastAPI, site: _Site) -> None:
    """Register ``GET /dashboard`` and the template global ``may_dashboard(viewer)``."""

    def may_dashboard(v: Viewer | None) -> bool:
        return v is not None and site.gate_of(v).may(Action.SEARCH)

    site.templates.env.globals["may_dashboard"] = may_dashboard

    def page(
        request: Request, v: Viewer, sites: list[str], context: dict[str, Any], status: int = 200
    ) -> HTMLResponse:
        base = {
            "viewer": v,
            "active": "dashboard",
            "sites": sites,
            "presets": _presets(context.get("filters"), _today()),
            "max_days": MAX_DAYS,
            "moving_days": MOVING_DAYS,
        }
        return site.render(request, "dashboard.html", {**base, **context}, status)

    @app.get("/dashboard", response_class=HTMLResponse)
    def get_dashboard(request: Request) -> Response:
        v = site.viewer(request)
        gate = site.gate_of(v)
        sites = visible_sites(v.principal, gate.sites)
        params = request.query_params
        try:
            filters = DashboardFilters.from_query(params, today=_today(), sites=sites)
        except DashboardParameterError as exc:
            try:
                # A view of the page all the same (the form): logged, and refused by role.
                gate.allow(
                    Action.SEARCH, detail=f"web: dashboard, not understood: {exc.parameter[:60]}"
                )
            except AccessDenied as denied:
                return site.refused(request, v, denied)
            form = {name: params.get(name, "")[:200] for name in ("from", "to", "device", "line")}
            bad = {"error": str(exc), "form": form, "selected_site": params.get("site", "")}
            return page(request, v, sites, bad, 400)
        try:
            data = dashboard(site.index, gate, filters)
        except AccessDenied as exc:
            return site.refused(request, v, exc)
        form = {**filters.query(), "device": filters.device or "", "line": filters.line or ""}
        context: dict[str, Any] = {
            "filters": filters,
            "form": form,
            "selected_site": filters.site or "",
            "d": data,
            "charts": dashboard_charts(data),
            "figures": figures(data.current, data.previous),
        }
        return page(request, v, sites, context)
