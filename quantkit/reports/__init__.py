"""Comparison reports (size, per-tensor and output accuracy, memory) and their renderings.

Example:
    >>> from quantkit.reports import build_report, write_report
    >>> report = build_report("minilm", "minilm-nf4")  # doctest: +SKIP
    >>> write_report(report, "minilm-nf4.html")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib

from ..memory import MemoryEstimate, ModelShape, estimate_memory

# The rest measure tensors with torch: imported on first use, so that `quantkit inspect`
# (which needs only the memory formulas) starts without torch.
_LAZY = {
    "render_html": "html", "render_json": "render", "render_markdown": "render", "render_text": "render",
    "write_report": "render", "ComparisonReport": "report", "ReportOptions": "report", "build_report": "report",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "ComparisonReport",
    "MemoryEstimate",
    "ModelShape",
    "ReportOptions",
    "build_report",
    "estimate_memory",
    "render_html",
    "render_json",
    "render_markdown",
    "render_text",
    "write_report",
]
