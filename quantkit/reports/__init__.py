"""Comparison reports (size, per-tensor and output accuracy, memory) and their renderings.

Example:
    >>> from quantkit.reports import build_report, write_report
    >>> report = build_report("minilm", "minilm-nf4")  # doctest: +SKIP
    >>> write_report(report, "minilm-nf4.html")  # doctest: +SKIP
"""

from __future__ import annotations

from .html import render_html
from .memory import MemoryEstimate, ModelShape, estimate_memory
from .render import render_json, render_markdown, render_text, write_report
from .report import ComparisonReport, build_report

__all__ = [
    "ComparisonReport",
    "MemoryEstimate",
    "ModelShape",
    "build_report",
    "estimate_memory",
    "render_html",
    "render_json",
    "render_markdown",
    "render_text",
    "write_report",
]
