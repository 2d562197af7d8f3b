"""Small inline SVG charts for the evaluation report: lines and points, horizontal bars, histograms.

Plain SVG text with no script and no external resource, so a report opens offline and can
be attached to a ticket. Every label is escaped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape
from typing import Any

COLORS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2")
WIDTH, HEIGHT = 440, 300
LEFT, RIGHT, TOP, BOTTOM = 58, 14, 14, 46


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    span = hi - lo
    if span <= 0:
        return [lo]
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 12) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.2e}"


def _range(values: Sequence[float], pad: float = 0.0) -> tuple[float, float]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return 0.0, 1.0
    lo, hi = min(vals), max(vals)
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    extra = (hi - lo) * pad
    return lo - extra, hi + extra


class _Frame:
    """Axes, grid and the mapping of data to pixels."""

    def __init__(self, x_range: tuple[float, float], y_range: tuple[float, float], *, width: int = WIDTH,
                 height: int = HEIGHT, left: int = LEFT, top: int = TOP) -> None:
        self.x0, self.x1 = x_range
        self.y0, self.y1 = y_range
        self.w, self.h, self.left, self.top = width, height, left, top
        self.pw, self.ph = width - left - RIGHT, height - top - BOTTOM

    def x(self, v: float) -> float:
        return self.left + (v - self.x0) / ((self.x1 - self.x0) or 1) * self.pw

    def y(self, v: float) -> float:
        return self.top + self.ph - (v - self.y0) / ((self.y1 - self.y0) or 1) * self.ph

    def axes(self, x_label: str, y_label: str, *, y_ticks: bool = True) -> list[str]:
        out = [f'<rect x="{self.left}" y="{self.top}" width="{self.pw}" height="{self.ph}" fill="#fff" stroke="#999"/>']
        for t in _ticks(self.y0, self.y1) if y_ticks else []:
            y = self.y(t)
            out.append(f'<line x1="{self.left}" x2="{self.left + self.pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
            out.append(f'<text x="{self.left - 6}" y="{y + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
        for t in _ticks(self.x0, self.x1):
            x = self.x(t)
            out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{self.top}" y2="{self.top + self.ph}" stroke="#eee"/>')
            out.append(f'<text x="{x:.1f}" y="{self.top + self.ph + 16}" text-anchor="middle">{_fmt(t)}</text>')
        out.append(f'<text x="{self.left + self.pw / 2:.1f}" y="{self.h - 8}" text-anchor="middle" '
                   f'class="label">{escape(x_label)}</text>')
        out.append(f'<text transform="translate(14 {self.top + self.ph / 2:.1f}) rotate(-90)" text-anchor="middle" '
                   f'class="label">{escape(y_label)}</text>')
        return out

    def svg(self, body: list[str], title: str) -> str:
        return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {self.w} {self.h}" width="{self.w}" '
                f'height="{self.h}" role="img" font-family="sans-serif" font-size="11">'
                f'<title>{escape(title)}</title><style>.label{{font-size:12px;fill:#333}}</style>'
                + "".join(body) + "</svg>")


def line_chart(series: Sequence[dict[str, Any]], *, title: str, x_label: str, y_label: str,
               x_range: tuple[float, float] | None = None, y_range: tuple[float, float] | None = None,
               diagonal: bool = False, vlines: Sequence[tuple[float, str]] = ()) -> str:
    """Lines (and/or points) of ``series`` items {name, x, y, points?, line?, dash?}, a legend, marker lines."""
    xs = [v for s in series for v in s["x"]]
    ys = [v for s in series for v in s["y"]]
    legend_rows = (len(series) + 1) // 2  # the legend sits above the plot, two entries a row
    f = _Frame(x_range or _range(xs, 0.03), y_range or _range(ys, 0.05), top=TOP + 16 * legend_rows,
               height=HEIGHT + 16 * legend_rows)
    body = f.axes(x_label, y_label)
    if diagonal:
        lo, hi = max(f.x0, f.y0), min(f.x1, f.y1)
        body.append(f'<line x1="{f.x(lo):.1f}" y1="{f.y(lo):.1f}" x2="{f.x(hi):.1f}" y2="{f.y(hi):.1f}" '
                    'stroke="#999" stroke-dasharray="4 3"/>')
    for i, (value, label) in enumerate(vlines):
        if f.x0 <= value <= f.x1:
            x = f.x(value)
            body.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{f.top}" y2="{f.top + f.ph}" stroke="#555" '
                        'stroke-dasharray="2 2"/>')
            body.append(f'<text x="{x + 3:.1f}" y="{f.top + 12 + 12 * i}" fill="#555">{escape(label)}</text>')
    for i, s in enumerate(series):
        color = s.get("color", COLORS[i % len(COLORS)])
        pts = [(f.x(a), f.y(b)) for a, b in zip(s["x"], s["y"]) if a is not None and b is not None]
        if s.get("line", True) and len(pts) > 1:
            dash = ' stroke-dasharray="5 3"' if s.get("dash") else ""
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py in pts)
            body.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.8"{dash}/>')
        if s.get("points"):
            body += [f'<circle cx="{px:.1f}" cy="{py:.1f}" r="2.6" fill="{color}" fill-opacity="0.75"/>'
                     for px, py in pts]
    for i, s in enumerate(series):
        color = s.get("color", COLORS[i % len(COLORS)])
        y = TOP + 16 * (i // 2)
        x = f.left + (f.pw // 2) * (i % 2)
        body.append(f'<rect x="{x}" y="{y - 8}" width="10" height="10" fill="{color}"/>'
                    f'<text x="{x + 15}" y="{y + 1}">{escape(str(s["name"]))}</text>')
    return f.svg(body, title)


def bar_chart(labels: Sequence[str], values: Sequence[float], *, title: str, x_label: str,
              value_format: str = "{:.1%}") -> str:
    """Horizontal bars, largest first as given, with the value at each bar's end."""
    height = TOP + BOTTOM + 18 * max(len(labels), 1)
    width = WIDTH + 80
    f = _Frame((0.0, max([*values, 1e-12]) * 1.15), (0.0, 1.0), width=width, height=height, left=190)
    body = f.axes(x_label, "", y_ticks=False)
    for i, (label, value) in enumerate(zip(labels, values)):
        y = f.top + 4 + 18 * i
        body.append(f'<text x="{f.left - 6}" y="{y + 11}" text-anchor="end">{escape(str(label))[:32]}</text>')
        body.append(f'<rect x="{f.left}" y="{y}" width="{max(f.x(value) - f.left, 0):.1f}" height="13" '
                    f'fill="{COLORS[0]}"/>')
        body.append(f'<text x="{f.x(value) + 4:.1f}" y="{y + 11}">{escape(value_format.format(value))}</text>')
    return f.svg(body, title)


def histogram(edges: Sequence[float], counts: Sequence[int], *, title: str, x_label: str,
              y_label: str = "rows") -> str:
    """Vertical bars of ``counts`` between consecutive ``edges``."""
    f = _Frame((edges[0], edges[-1]) if len(edges) > 1 else (0.0, 1.0), (0.0, max([*counts, 1]) * 1.05))
    body = f.axes(x_label, y_label)
    for lo, hi, c in zip(edges[:-1], edges[1:], counts):
        x0, x1 = f.x(lo), f.x(hi)
        body.append(f'<rect x="{x0:.1f}" y="{f.y(c):.1f}" width="{max(x1 - x0 - 1, 0.5):.1f}" '
                    f'height="{f.y(0) - f.y(c):.1f}" fill="{COLORS[0]}"/>')
    return f.svg(body, title)
