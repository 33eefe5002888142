"""Self-contained HTML reports with inline SVG charts (no plotting library, no network:
the file opens anywhere, from a CI artifact or an e-mail).

- :func:`scatter` : points (optionally joined) on numeric axes, vertical markers;
- :func:`timeline`: lanes of bars (from-to) and points on a time axis;
- :func:`bars`    : one bar per category, with interval whiskers and a reference line;
- :func:`page`    : a titled HTML document of sections (text, tables, charts).
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Sequence

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


@dataclass
class Series:
    label: str
    xs: Sequence[float]
    ys: Sequence[float]
    color: str = PALETTE[0]
    line: bool = False


@dataclass
class Marker:
    x: float
    label: str
    color: str = "#555"
    dash: str = "6,4"


@dataclass
class Lane:
    label: str
    bars: list[tuple[float, float, str, str]] = field(default_factory=list)  # (x0, x1, color, tooltip)
    points: list[tuple[float, str, str]] = field(default_factory=list)  # (x, color, tooltip)


def nice_ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    """About ``n`` round tick values covering [lo, hi]."""
    if not math.isfinite(lo) or not math.isfinite(hi):
        return []
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks, t = [], start
    while t <= hi + step * 1e-9:
        if t >= lo - step * 1e-9:
            ticks.append(round(t, 10))
        t += step
    return ticks


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 or v == int(v) else f"{v:.2g}"


class _Frame:
    def __init__(
        self,
        x0: float,
        x1: float,
        y0: float,
        y1: float,
        width: int,
        height: int,
        left: int = 64,
        right: int = 16,
        top: int = 28,
        bottom: int = 44,
    ) -> None:
        if x1 <= x0:
            x1 = x0 + 1
        if y1 <= y0:
            y1 = y0 + 1
        self.x0, self.x1, self.y0, self.y1 = x0, x1, y0, y1
        self.w, self.h, self.l, self.r, self.t, self.b = width, height, left, right, top, bottom

    def px(self, x: float) -> float:
        return self.l + (x - self.x0) / (self.x1 - self.x0) * (self.w - self.l - self.r)

    def py(self, y: float) -> float:
        return self.h - self.b - (y - self.y0) / (self.y1 - self.y0) * (self.h - self.t - self.b)

    def axes(self, xlabel: str, ylabel: str, yticks: bool = True) -> list[str]:
        out = [
            f'<rect x="{self.l}" y="{self.t}" width="{self.w - self.l - self.r}" height="{self.h - self.t - self.b}" '
            'fill="none" stroke="#bbb"/>'
        ]
        for x in nice_ticks(self.x0, self.x1):
            out.append(
                f'<line x1="{self.px(x):.1f}" x2="{self.px(x):.1f}" y1="{self.h - self.b}" y2="{self.h - self.b + 4}" stroke="#888"/>'
                f'<text x="{self.px(x):.1f}" y="{self.h - self.b + 16}" text-anchor="middle">{_fmt(x)}</text>'
            )
        if yticks:
            for y in nice_ticks(self.y0, self.y1, 5):
                out.append(
                    f'<line x1="{self.l}" x2="{self.w - self.r}" y1="{self.py(y):.1f}" y2="{self.py(y):.1f}" stroke="#eee"/>'
                    f'<text x="{self.l - 6}" y="{self.py(y) + 4:.1f}" text-anchor="end">{_fmt(y)}</text>'
                )
        out.append(
            f'<text x="{(self.l + self.w - self.r) / 2:.0f}" y="{self.h - 8}" text-anchor="middle">{html.escape(xlabel)}</text>'
        )
        if ylabel:
            out.append(
                f'<text transform="translate(14 {(self.t + self.h - self.b) / 2:.0f}) rotate(-90)" '
                f'text-anchor="middle">{html.escape(ylabel)}</text>'
            )
        return out


def _svg(width: int, height: int, title: str, body: list[str]) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="11"><text x="{width / 2:.0f}" y="16" text-anchor="middle" '
        f'font-size="13" font-weight="bold">{html.escape(title)}</text>{"".join(body)}</svg>'
    )


def scatter(
    title: str,
    series: list[Series],
    markers: list[Marker] = (),
    xlabel: str = "",
    ylabel: str = "",
    width: int = 900,
    height: int = 300,
) -> str:
    xs = [x for s in series for x in s.xs] + [m.x for m in markers]
    ys = [y for s in series for y in s.ys]
    if not xs or not ys:
        return _svg(width, 60, title, ['<text x="20" y="44">no data</text>'])
    lo = min(0.0, min(ys)) if min(ys) >= 0 else min(ys)
    f = _Frame(min(xs), max(xs), lo, max(ys) * 1.05 if max(ys) > 0 else 1.0, width, height)
    body = f.axes(xlabel, ylabel)
    for s in series:
        pts = [(f.px(x), f.py(y)) for x, y in zip(s.xs, s.ys)]
        if s.line and len(pts) > 1:
            body.append(
                f'<polyline fill="none" stroke="{s.color}" stroke-width="1.5" points="'
                + " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
                + '"/>'
            )
        else:
            body.extend(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.4" fill="{s.color}" fill-opacity="0.75"/>' for x, y in pts
            )
    for i, m in enumerate(markers):
        x = f.px(m.x)
        body.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{f.t}" y2="{height - f.b}" stroke="{m.color}" '
            f'stroke-width="1.5" stroke-dasharray="{m.dash}"/><text x="{x + 4:.1f}" y="{f.t + 12 + 13 * i}" '
            f'fill="{m.color}">{html.escape(m.label)}</text>'
        )
    lx = f.l + 8
    for i, s in enumerate(series):  # legend, bottom-left inside the frame
        y = height - f.b - 10 - 14 * (len(series) - 1 - i)
        body.append(
            f'<rect x="{lx}" y="{y - 8}" width="10" height="10" fill="{s.color}"/>'
            f'<text x="{lx + 14}" y="{y + 1}">{html.escape(s.label)}</text>'
        )
    return _svg(width, height, title, body)


def timeline(
    title: str,
    lanes: list[Lane],
    x0: float,
    x1: float,
    markers: list[Marker] = (),
    xlabel: str = "",
    width: int = 900,
    lane_height: int = 26,
) -> str:
    label_w = 240
    height = 28 + 44 + lane_height * max(len(lanes), 1)
    f = _Frame(x0, x1, 0, max(len(lanes), 1), width, height, left=label_w)
    body = f.axes(xlabel, "", yticks=False)
    for i, lane in enumerate(lanes):
        yc = f.t + lane_height * (i + 0.5)
        body.append(
            f'<text x="{label_w - 6}" y="{yc + 4:.1f}" text-anchor="end">{html.escape(lane.label)}</text>'
            f'<line x1="{label_w}" x2="{width - f.r}" y1="{yc:.1f}" y2="{yc:.1f}" stroke="#f0f0f0"/>'
        )
        for a, b, color, tip in lane.bars:
            xa, xb = f.px(max(a, x0)), f.px(min(b, x1))
            body.append(
                f'<rect x="{xa:.1f}" y="{yc - 7:.1f}" width="{max(xb - xa, 2):.1f}" height="14" fill="{color}" '
                f'fill-opacity="0.7"><title>{html.escape(tip)}</title></rect>'
            )
        for x, color, tip in lane.points:
            body.append(
                f'<circle cx="{f.px(x):.1f}" cy="{yc:.1f}" r="5" fill="{color}"><title>{html.escape(tip)}</title></circle>'
            )
    for m in markers:
        x = f.px(m.x)
        body.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{f.t}" y2="{height - f.b}" stroke="{m.color}" '
            f'stroke-dasharray="{m.dash}"/><text x="{x + 4:.1f}" y="{f.t - 3}" fill="{m.color}">{html.escape(m.label)}</text>'
        )
    return _svg(width, height, title, body)


def bars(
    title: str,
    labels: Sequence[str],
    values: Sequence[float],
    low: Sequence[float] | None = None,
    high: Sequence[float] | None = None,
    reference: float | None = None,
    ylabel: str = "",
    colors: Sequence[str] | None = None,
    width: int = 720,
    height: int = 300,
) -> str:
    """Vertical bars, one per label, with optional interval whiskers (``low``-``high``)
    and a dashed horizontal ``reference`` line (e.g. the overall rate)."""
    tops = [v for v in values if math.isfinite(v)] + [v for v in (high or []) if math.isfinite(v)]
    if reference is not None:
        tops.append(reference)
    f = _Frame(0, max(len(labels), 1), 0, max(tops, default=1.0) * 1.1 or 1.0, width, height, bottom=64)
    out = f.axes("", ylabel, yticks=True)[:1]  # the frame; category labels instead of x ticks
    for y in nice_ticks(f.y0, f.y1, 5):
        out.append(
            f'<line x1="{f.l}" x2="{f.w - f.r}" y1="{f.py(y):.1f}" y2="{f.py(y):.1f}" stroke="#eee"/>'
            f'<text x="{f.l - 6}" y="{f.py(y) + 4:.1f}" text-anchor="end">{_fmt(y)}</text>'
        )
    if ylabel:
        out.append(
            f'<text transform="translate(14 {(f.t + f.h - f.b) / 2:.0f}) rotate(-90)" '
            f'text-anchor="middle">{html.escape(ylabel)}</text>'
        )
    slot = (f.w - f.l - f.r) / max(len(labels), 1)
    for i, (label, v) in enumerate(zip(labels, values)):
        x = f.l + i * slot
        color = (colors or PALETTE)[i % len(colors or PALETTE)]
        if math.isfinite(v):
            out.append(
                f'<rect x="{x + slot * 0.2:.1f}" y="{f.py(v):.1f}" width="{slot * 0.6:.1f}" '
                f'height="{f.py(0) - f.py(v):.1f}" fill="{color}" opacity="0.8"><title>{html.escape(label)}: '
                f"{_fmt(v)}</title></rect>"
            )
        if low is not None and high is not None and math.isfinite(low[i]) and math.isfinite(high[i]):
            cx = x + slot / 2
            out.append(
                f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{f.py(low[i]):.1f}" y2="{f.py(high[i]):.1f}" stroke="#222"/>'
                f'<line x1="{cx - 5:.1f}" x2="{cx + 5:.1f}" y1="{f.py(high[i]):.1f}" y2="{f.py(high[i]):.1f}" stroke="#222"/>'
                f'<line x1="{cx - 5:.1f}" x2="{cx + 5:.1f}" y1="{f.py(low[i]):.1f}" y2="{f.py(low[i]):.1f}" stroke="#222"/>'
            )
        out.append(
            f'<text x="{x + slot / 2:.1f}" y="{f.h - f.b + 16}" text-anchor="middle">{html.escape(label[:18])}</text>'
        )
    if reference is not None:
        out.append(
            f'<line x1="{f.l}" x2="{f.w - f.r}" y1="{f.py(reference):.1f}" y2="{f.py(reference):.1f}" '
            'stroke="#555" stroke-dasharray="5,3"><title>all segments</title></line>'
        )
    return _svg(width, height, title, out)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def page(title: str, sections: list[tuple[str, str]]) -> str:
    """``sections``: (heading, HTML body) pairs."""
    style = (
        "body{font-family:sans-serif;max-width:960px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}"
        "th{background:#f4f4f4}pre{background:#f6f8fa;padding:.6em;overflow-x:auto;font-size:12px}"
        ".ok{color:#2a7d2a}.bad{color:#c0392b}"
    )
    parts = "".join(f"<h2>{html.escape(h)}</h2>{body}" for h, body in sections)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{parts}</body></html>"
    )
