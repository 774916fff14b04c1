"""Two small inline-SVG charts (grouped horizontal bars, lines) for the self-contained HTML report.

Hand-written rather than a charting library: the report must open offline with no remote
scripts, and two chart shapes do not justify a dependency.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from html import escape

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#af7aa1")
FONT = 'font-family="system-ui, sans-serif" font-size="12"'


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _legend(names: list[str], x: float, y: float) -> list[str]:
    parts, dx = [], x
    for i, name in enumerate(names):
        parts.append(f'<rect x="{dx:.1f}" y="{y - 10:.1f}" width="12" height="12" fill="{PALETTE[i % len(PALETTE)]}"/>')
        parts.append(f'<text x="{dx + 18:.1f}" y="{y:.1f}" {FONT}>{escape(name)}</text>')
        dx += 18 + 7 * len(name) + 24  # ~7 px per character at 12 px
    return parts


def bar_chart(
    categories: list[str],
    series: dict[str, list[float | None]],
    *,
    title: str,
    value_format: Callable[[float], str] = lambda v: f"{v:g}",
    missing_label: str = "n/a",
    width: int = 720,
) -> str:
    """Horizontal bars, one row per category and one bar per series; non-finite values are labelled.

    Bars start at zero (values are clipped at zero), so use it for sizes and positive figures.
    """
    names = list(series)
    label_w, bar_h, gap, top = 230, 14, 10, 48
    row_h = bar_h * len(names) + gap
    height = top + row_h * len(categories) + 10
    finite = [v for vals in series.values() for v in vals if _finite(v)]
    scale = (width - label_w - 110) / max(max(finite, default=1.0), 1e-12)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" width="{width}" height="{height}" viewBox="0 0 {width} {height}">',
        f"<title>{escape(title)}</title>",
        f'<text x="0" y="16" {FONT} font-weight="bold">{escape(title)}</text>',
        *_legend(names, label_w, 36),
    ]
    for row, category in enumerate(categories):
        y0 = top + row * row_h
        short = category if len(category) <= 34 else "…" + category[-33:]
        parts.append(f'<text x="{label_w - 6}" y="{y0 + row_h / 2:.1f}" text-anchor="end" {FONT}>{escape(short)}</text>')
        for i, name in enumerate(names):
            value = series[name][row]
            y = y0 + i * bar_h
            if _finite(value):
                w = max(value, 0.0) * scale
                parts.append(f'<rect x="{label_w}" y="{y:.1f}" width="{w:.1f}" height="{bar_h - 2}" fill="{PALETTE[i % len(PALETTE)]}"/>')
                text, tx = value_format(value), label_w + w + 4
            else:
                text, tx = missing_label, label_w + 4
            parts.append(f'<text x="{tx:.1f}" y="{y + bar_h - 4:.1f}" {FONT}>{escape(text)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def line_chart(
    labels: list[str],
    series: dict[str, list[float | None]],
    *,
    title: str,
    y_label: str,
    x_label: str = "",
    width: int = 720,
    height: int = 280,
) -> str:
    """Lines over ordered labels (e.g. layers by depth); non-finite points leave gaps."""
    left, right, top, bottom = 60, 20, 48, 60
    plot_w, plot_h = width - left - right, height - top - bottom
    finite = [v for vals in series.values() for v in vals if _finite(v)]
    low, high = (min(finite), max(finite)) if finite else (0.0, 1.0)
    if high - low < 1e-9:
        low, high = low - 1.0, high + 1.0
    x_at = (lambda i: left + plot_w / 2) if len(labels) < 2 else (lambda i: left + i * plot_w / (len(labels) - 1))

    def y_at(v: float) -> float:
        return top + plot_h * (1 - (v - low) / (high - low))

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" width="{width}" height="{height}" viewBox="0 0 {width} {height}">',
        f"<title>{escape(title)}</title>",
        f'<text x="0" y="16" {FONT} font-weight="bold">{escape(title)}</text>',
        *_legend(list(series), left, 36),
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#888"/>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#888"/>',
        f'<text x="{left - 6}" y="{top + 4}" text-anchor="end" {FONT}>{high:.3g}</text>',
        f'<text x="{left - 6}" y="{top + plot_h}" text-anchor="end" {FONT}>{low:.3g}</text>',
        f'<text x="12" y="{top + plot_h / 2:.1f}" transform="rotate(-90 12 {top + plot_h / 2:.1f})" text-anchor="middle" {FONT}>{escape(y_label)}</text>',
    ]
    parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 12}" text-anchor="middle" {FONT}>{escape(x_label)}</text>')
    step = max(1, math.ceil(len(labels) / 12))  # at most ~12 x labels
    for i in range(0, len(labels), step):
        parts.append(
            f'<text x="{x_at(i):.1f}" y="{top + plot_h + 16}" text-anchor="middle" {FONT}>{escape(labels[i].rpartition(".")[2] or labels[i])}</text>'
        )
    for s, (name, values) in enumerate(series.items()):
        color = PALETTE[s % len(PALETTE)]
        for run in _finite_runs(values):
            points = " ".join(f"{x_at(i):.1f},{y_at(values[i]):.1f}" for i in run)
            parts.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="2"/>')
        for i, v in enumerate(values):
            if _finite(v):
                parts.append(f'<circle cx="{x_at(i):.1f}" cy="{y_at(v):.1f}" r="3" fill="{color}"><title>{escape(labels[i])}: {v:.4g}</title></circle>')
    parts.append("</svg>")
    return "\n".join(parts)


def _finite_runs(values: list[float | None]) -> list[list[int]]:
    runs, current = [], []
    for i, v in enumerate(values):
        if _finite(v):
            current.append(i)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return runs


def scatter_chart(
    series: dict[str, list[tuple[float, float, str]]],
    *,
    title: str,
    x_label: str,
    y_label: str,
    connect: tuple[str, ...] = (),
    width: int = 720,
    height: int = 360,
) -> str:
    """Points on numeric axes, each with a label; the series named in ``connect`` are joined in x order."""
    left, right, top, bottom = 70, 30, 48, 50
    plot_w, plot_h = width - left - right, height - top - bottom
    xs = [p[0] for pts in series.values() for p in pts if _finite(p[0]) and _finite(p[1])]
    ys = [p[1] for pts in series.values() for p in pts if _finite(p[0]) and _finite(p[1])]
    x_low, x_high = (min(xs), max(xs)) if xs else (0.0, 1.0)
    y_low, y_high = (min(ys), max(ys)) if ys else (0.0, 1.0)
    if x_high - x_low < 1e-12:
        x_low, x_high = x_low - 1.0, x_high + 1.0
    if y_high - y_low < 1e-12:
        y_low, y_high = y_low - 1.0, y_high + 1.0
    x_pad, y_pad = 0.05 * (x_high - x_low), 0.08 * (y_high - y_low)
    x_low, x_high, y_low, y_high = x_low - x_pad, x_high + x_pad, y_low - y_pad, y_high + y_pad

    def at(x: float, y: float) -> tuple[float, float]:
        return left + plot_w * (x - x_low) / (x_high - x_low), top + plot_h * (1 - (y - y_low) / (y_high - y_low))

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" width="{width}" height="{height}" viewBox="0 0 {width} {height}">',
        f"<title>{escape(title)}</title>",
        f'<text x="0" y="16" {FONT} font-weight="bold">{escape(title)}</text>',
        *_legend(list(series), left, 36),
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#888"/>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#888"/>',
        f'<text x="{left - 6}" y="{top + 4}" text-anchor="end" {FONT}>{y_high:.4g}</text>',
        f'<text x="{left - 6}" y="{top + plot_h}" text-anchor="end" {FONT}>{y_low:.4g}</text>',
        f'<text x="{left}" y="{top + plot_h + 16}" text-anchor="middle" {FONT}>{x_low:.3g}</text>',
        f'<text x="{left + plot_w}" y="{top + plot_h + 16}" text-anchor="middle" {FONT}>{x_high:.3g}</text>',
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 10}" text-anchor="middle" {FONT}>{escape(x_label)}</text>',
        f'<text x="14" y="{top + plot_h / 2:.1f}" transform="rotate(-90 14 {top + plot_h / 2:.1f})" text-anchor="middle" {FONT}>{escape(y_label)}</text>',
    ]
    for s, (name, points) in enumerate(series.items()):
        color = PALETTE[s % len(PALETTE)]
        shown = sorted((p for p in points if _finite(p[0]) and _finite(p[1])), key=lambda p: p[0])
        if name in connect and len(shown) > 1:
            line = " ".join("{:.1f},{:.1f}".format(*at(x, y)) for x, y, _ in shown)
            parts.append(f'<polyline points="{line}" fill="none" stroke="{color}" stroke-width="1.5" stroke-dasharray="4 3"/>')
        for x, y, label in shown:
            cx, cy = at(x, y)
            parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="4" fill="{color}"><title>{escape(label)}: {x:.4g}, {y:.5g}</title></circle>')
            parts.append(f'<text x="{cx + 6:.1f}" y="{cy - 6:.1f}" {FONT} font-size="10" fill="{color}">{escape(label)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)
