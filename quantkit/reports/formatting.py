"""How numbers read in every rendering of a report (text, Markdown, HTML)."""

from __future__ import annotations

import math

from ..sizes import format_bytes

OUTPUT_LABELS = {
    "perplexity_original": "perplexity (original)",
    "perplexity_converted": "perplexity (converted)",
    "perplexity_ratio": "perplexity ratio (converted / original)",
    "mean_kl_divergence": "mean KL divergence, next token (nats)",
    "top1_agreement": "top-1 agreement",
    "cosine_mean": "embedding cosine, mean",
    "cosine_min": "embedding cosine, min",
    "relative_error": "relative error",
    "cosine": "cosine similarity",
    "max_abs_error": "max abs error",
    "sqnr_db": "SQNR (dB)",
}


def fmt_db(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return "exact" if math.isinf(value) and value > 0 else f"{value:.2f}"


def fmt_num(value: float | None, digits: int = 4) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value == 0:
        return "0"
    return f"{value:.{digits}g}" if abs(value) < 1e-3 or abs(value) >= 1e5 else f"{value:.{digits}f}".rstrip("0").rstrip(".")


def ratio_text(value: float) -> str:
    return f"{value:.3f}" if math.isfinite(value) else "new"


def fmt_cos(value: float) -> str:
    return f"{value:.6f}"


def sample_count(o) -> str:
    """Causal LMs run windows of one text; encoders run sentences; other models a batch."""
    unit = {"causal_lm": "window(s)", "encoder": "sentence(s)"}.get(o.kind, "sample(s)")
    return f"{o.num_samples} {unit}"


def auto_lines(report, rule_prefix: str = "  --rule ") -> list[str]:
    """convert --to auto's choice: the target, predicted vs measured, and the equivalent rules."""
    auto = report.auto
    if not auto:
        return []
    target = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v:,}" for k, v in auto["target"].items())
    a = report.tensors
    return [
        "", f"auto ({auto['family']}, target {target}): predicted {format_bytes(auto['predicted_bytes'])} of tensors, "
        f"overall SQNR {fmt_db(auto['predicted_sqnr_db'])} dB, worst tensor {fmt_db(auto['predicted_min_sqnr_db'])} dB; "
        f"measured {format_bytes(report.size.converted.tensor_bytes)}, {fmt_db(a.overall.sqnr_db)} dB, worst {fmt_db(a.overall.min_sqnr_db)} dB",
        "equivalent rules:", *[f"{rule_prefix}'{r}'" for r in auto["rules"]],
    ]
