"""Server-side SVG charts for the web review (the KPI dashboard): no JavaScript, so
nothing for the CSP to forbid, and the same picture in every browser and in a printout.

Each function is pure and returns one ``<svg>`` element as text: every piece of text in
it is escaped, numbers are written with fixed precision (the same data gives the same
bytes), colours come from CSS classes (``static/app.css``, "KPI dashboard" block) and
geometry from presentation attributes (``style-src 'self'`` forbids ``style=``). Each
chart has ``role="img"``, a ``<title>`` and a ``<desc>`` it is labelled by, axis titles,
and a ``<title>`` per bar (a tooltip, and what a screen reader's image exploration finds);
the page puts a table of the same numbers beside it.

- :func:`column_chart`: vertical bars over categories (calls per day), optionally with a
  line over them (the 7-day moving average);
- :func:`histogram`: the same for ordered buckets (call durations), bars side by side;
- :func:`bar_chart`: horizontal bars on a 0–100 % scale (average score per section).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

__all__ = ["Bar", "bar_chart", "column_chart", "histogram", "nice_ticks"]

SVG_NS = "http://www.w3.org/2000/svg"
_ID = re.compile(r"[a-z][a-z0-9-]{0,40}")

# The columns' canvas (user units; the SVG scales to its box, keeping its aspect).
WIDTH = 720
HEIGHT = 300
LEFT, RIGHT, TOP, BOTTOM = 60, 16, 28, 58
MAX_X_LABELS = 12

# The horizontal bars' canvas: a row per bar.
BAR_LEFT = 260
BAR_ROW = 30
BAR_LABEL_CHARS = 36


@dataclass(frozen=True, slots=True)
class Bar:
    """One bar: its axis ``label`` (short), its ``value``, and its ``title``, the full
    sentence a tooltip and a screen reader give (e.g. ``2026-11-25: 12 calls``)."""

    label: str
    value: float
    title: str


def _num(value: float) -> str:
    """A coordinate, always with one decimal: deterministic and compact."""
    return f"{value:.1f}"


def _text(value: str) -> str:
    return escape(value, quote=True)


def _check_id(chart_id: str) -> None:
    # The id names the <title>/<desc> the SVG is labelled by: it must be a plain token.
    if not _ID.fullmatch(chart_id):
        raise ValueError(f"chart id {chart_id!r}: lower-case letters, digits and - only")


def nice_ticks(maximum: float, count: int = 5, *, whole: bool = False) -> list[float]:
    """Axis ticks from 0 to a round number at or above ``maximum``, at most about
    ``count`` steps of 1, 2, 2.5 or 5 times a power of ten (``whole``: whole steps of 1, 2
    or 5 times one, for counts). An empty or zero range gets ``[0, 1]``."""
    if not maximum > 0 or not math.isfinite(maximum):
        return [0.0, 1.0]
    raw = maximum / max(1, count)
    magnitude = 10.0 ** math.floor(math.log10(raw))
    if whole:  # a count's axis: steps of 1, 2, 5, 10, 20, ... (no 2.5, nothing under 1)
        magnitude = max(1.0, magnitude)
    steps_of = (1, 2, 5, 10) if whole else (1, 2, 2.5, 5, 10)
    step = next(m * magnitude for m in steps_of if m * magnitude >= raw)
    steps = math.ceil(maximum / step - 1e-9)
    return [round(i * step, 6) for i in range(steps + 1)]


def _tick_text(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() else f"{value:g}"


def _open(chart_id: str, title: str, summary: str, width: int, height: int) -> list[str]:
    return [
        f'<svg xmlns="{SVG_NS}" class="chart" viewBox="0 0 {width} {height}" '
        f'role="img" aria-labelledby="{chart_id}-title {chart_id}-desc" '
        f'preserveAspectRatio="xMidYMid meet">',
        f'<title id="{chart_id}-title">{_text(title)}</title>',
        f'<desc id="{chart_id}-desc">{_text(summary)}</desc>',
    ]


def _y_axis(ticks: Sequence[float], scale: Callable[[float], float], y_label: str) -> list[str]:
    out: list[str] = []
    for tick in ticks:
        y = _num(scale(tick))
        out.append(f'<line class="grid" x1="{LEFT}" y1="{y}" x2="{WIDTH - RIGHT}" y2="{y}"/>')
        out.append(
            f'<text class="tick" x="{LEFT - 6}" y="{y}" text-anchor="end" '
            f'dominant-baseline="middle">{_tick_text(tick)}</text>'
        )
    mid = _num(TOP + (HEIGHT - TOP - BOTTOM) / 2)
    out.append(
        f'<text class="axis-title" x="14" y="{mid}" text-anchor="middle" '
        f'transform="rotate(-90 14 {mid})">{_text(y_label)}</text>'
    )
    return out


def _columns(
    chart_id: str,
    title: str,
    summary: str,
    bars: Sequence[Bar],
    *,
    x_label: str,
    y_label: str,
    gap: float,
    overlay: Sequence[float] | None = None,
    legend: tuple[str, str] | None = None,
) -> str:
    """The shared drawing of :func:`column_chart` and :func:`histogram`."""
    _check_id(chart_id)
    if overlay is not None and len(overlay) != len(bars):
        raise ValueError("the line needs one value per bar")
    top_value = max([b.value for b in bars] + list(overlay or []) + [0.0])
    ticks = nice_ticks(top_value, whole=all(float(b.value).is_integer() for b in bars))
    plot_h = HEIGHT - TOP - BOTTOM
    base = HEIGHT - BOTTOM

    def scale(value: float) -> float:
        return base - plot_h * max(0.0, value) / ticks[-1]

    out = _open(chart_id, title, summary, WIDTH, HEIGHT)
    out += _y_axis(ticks, scale, y_label)
    slot = (WIDTH - LEFT - RIGHT) / max(1, len(bars))
    every = max(1, math.ceil(len(bars) / MAX_X_LABELS))
    out.append('<g class="bars">')
    for i, bar in enumerate(bars):
        x = LEFT + i * slot + slot * gap / 2
        y = scale(bar.value)
        out.append(
            f'<rect class="bar" x="{_num(x)}" y="{_num(y)}" width="{_num(slot * (1 - gap))}" '
            f'height="{_num(base - y)}"><title>{_text(bar.title)}</title></rect>'
        )
    out.append("</g>")
    for i, bar in enumerate(bars):
        if i % every == 0:
            out.append(
                f'<text class="tick" x="{_num(LEFT + (i + 0.5) * slot)}" y="{base + 16}" '
                f'text-anchor="middle">{_text(bar.label)}</text>'
            )
    out.append(f'<line class="axis" x1="{LEFT}" y1="{base}" x2="{WIDTH - RIGHT}" y2="{base}"/>')
    out.append(
        f'<text class="axis-title" x="{_num(LEFT + (WIDTH - LEFT - RIGHT) / 2)}" '
        f'y="{HEIGHT - 10}" text-anchor="middle">{_text(x_label)}</text>'
    )
    if overlay is not None and bars:
        points = " ".join(
            f"{_num(LEFT + (i + 0.5) * slot)},{_num(scale(v))}" for i, v in enumerate(overlay)
        )
        name = legend[1] if legend else "line"
        out.append(
            f'<polyline class="trend" fill="none" points="{points}"><title>{_text(name)}</title>'
            "</polyline>"
        )
    if legend is not None:
        out += _legend(legend, overlay is not None)
    out.append("</svg>")
    return "\n".join(out)


def _legend(names: tuple[str, str], with_line: bool) -> list[str]:
    x = WIDTH - RIGHT - 300
    out = [
        f'<g class="legend"><rect class="bar" x="{x}" y="8" width="12" height="12"/>',
        f'<text class="tick" x="{x + 18}" y="18">{_text(names[0])}</text>',
    ]
    if with_line:
        out += [
            f'<line class="trend" x1="{x + 150}" y1="14" x2="{x + 170}" y2="14"/>',
            f'<text class="tick" x="{x + 176}" y="18">{_text(names[1])}</text>',
        ]
    out.append("</g>")
    return out


def column_chart(
    chart_id: str,
    title: str,
    summary: str,
    bars: Sequence[Bar],
    *,
    x_label: str,
    y_label: str,
    line: Sequence[float] | None = None,
    legend: tuple[str, str] | None = None,
) -> str:
    """Vertical bars, one per category, at most :data:`MAX_X_LABELS` axis labels (every
    n-th), and ``line`` (one value per bar) drawn over them; ``legend``: the names of the
    bars and of the line. ``summary`` is the chart's ``<desc>``."""
    return _columns(
        chart_id,
        title,
        summary,
        bars,
        x_label=x_label,
        y_label=y_label,
        gap=0.2,
        overlay=line,
        legend=legend,
    )


def histogram(
    chart_id: str, title: str, summary: str, bars: Sequence[Bar], *, x_label: str, y_label: str
) -> str:
    """Bars for ordered buckets, close together, every bucket labelled."""
    if len(bars) > MAX_X_LABELS:
        raise ValueError(f"a histogram shows at most {MAX_X_LABELS} buckets")
    return _columns(
        chart_id, title, summary, bars, x_label=x_label, y_label=y_label, gap=0.04, overlay=None
    )


def _short(label: str) -> str:
    return label if len(label) <= BAR_LABEL_CHARS else label[: BAR_LABEL_CHARS - 1] + "…"


def bar_chart(chart_id: str, title: str, summary: str, bars: Sequence[Bar], *, x_label: str) -> str:
    """Horizontal bars on a 0–100 scale (values are percentages, clamped to it), a row
    each, labelled at the left (long labels shortened; the bar's title has all of it)
    and with the value at the bar's end."""
    _check_id(chart_id)
    plot_w = WIDTH - BAR_LEFT - RIGHT - 56  # room for the value after a full bar
    height = TOP + BAR_ROW * max(1, len(bars)) + 44
    base = height - 44

    def scale(value: float) -> float:
        return BAR_LEFT + plot_w * min(100.0, max(0.0, value)) / 100

    out = _open(chart_id, title, summary, WIDTH, height)
    for tick in (0, 25, 50, 75, 100):
        x = _num(scale(tick))
        out.append(f'<line class="grid" x1="{x}" y1="{TOP - 4}" x2="{x}" y2="{base}"/>')
        out.append(f'<text class="tick" x="{x}" y="{base + 16}" text-anchor="middle">{tick}</text>')
    out.append('<g class="bars">')
    for i, bar in enumerate(bars):
        y = TOP + i * BAR_ROW
        end = scale(bar.value)
        out.append(
            f'<rect class="bar" x="{BAR_LEFT}" y="{y + 5}" width="{_num(end - BAR_LEFT)}" '
            f'height="{BAR_ROW - 10}"><title>{_text(bar.title)}</title></rect>'
        )
    out.append("</g>")
    for i, bar in enumerate(bars):
        mid = TOP + i * BAR_ROW + BAR_ROW / 2
        out.append(
            f'<text class="label" x="{BAR_LEFT - 8}" y="{_num(mid)}" text-anchor="end" '
            f'dominant-baseline="middle">{_text(_short(bar.label))}</text>'
        )
        out.append(
            f'<text class="value" x="{_num(scale(bar.value) + 6)}" y="{_num(mid)}" '
            f'dominant-baseline="middle">{bar.value:.1f} %</text>'
        )
    out.append(f'<line class="axis" x1="{BAR_LEFT}" y1="{TOP - 4}" x2="{BAR_LEFT}" y2="{base}"/>')
    out.append(
        f'<text class="axis-title" x="{_num(BAR_LEFT + plot_w / 2)}" y="{height - 8}" '
        f'text-anchor="middle">{_text(x_label)}</text>'
    )
    out.append("</svg>")
    return "\n".join(out)
