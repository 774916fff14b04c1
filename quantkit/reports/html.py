"""One self-contained HTML file: inline CSS and inline SVG charts, no scripts, nothing remote."""

from __future__ import annotations

import math
from html import escape

from ..sizes import format_bytes
from .formatting import OUTPUT_LABELS, auto_lines, fmt_cos, fmt_db, fmt_num, ratio_text, sample_count
from .report import ComparisonReport
from .svg import bar_chart, line_chart

CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 980px; color: #222; padding: 0 1rem; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .5rem 0 1rem; font-size: .9rem; }
th, td { padding: .25rem .6rem; border-bottom: 1px solid #eee; text-align: right; }
th:first-child, td:first-child { text-align: left; }
code { font-size: .85rem; } .muted { color: #666; } .note { background: #fff8e1; padding: .4rem .6rem; margin: .3rem 0; }
.cards { display: flex; gap: 1rem; flex-wrap: wrap; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: .6rem 1rem; min-width: 150px; }
.card b { display: block; font-size: 1.3rem; }
svg.chart { display: block; margin: 1rem 0; max-width: 100%; height: auto; }
"""


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cards(report: ComparisonReport) -> str:
    s = report.size
    cards = [
        ("size ratio", f"{s.tensor_ratio:.3f}"),
        ("bits / weight", f"{s.original.bits_per_weight:.2f} → {s.converted.bits_per_weight:.2f}"),
        ("saved on disk", format_bytes(s.saved_bytes)),
        ("overall SQNR", f"{fmt_db(report.tensors.overall.sqnr_db)} dB"),
    ]
    o = report.outputs
    if o is not None:
        key = {"causal_lm": "perplexity_ratio", "encoder": "cosine_mean"}.get(o.kind, "relative_error")
        cards.append((OUTPUT_LABELS[key], fmt_num(o.metrics.get(key), 6)))
    return '<div class="cards">' + "".join(f'<div class="card"><span class="muted">{escape(k)}</span><b>{escape(v)}</b></div>' for k, v in cards) + "</div>"


def _size_section(report: ComparisonReport) -> str:
    s = report.size
    groups = sorted(s.groups.items(), key=lambda kv: -kv[1].original_bytes)
    chart = bar_chart(
        [g for g, _ in groups],
        {"original": [v.original_bytes / 1e6 for _, v in groups], "converted": [v.converted_bytes / 1e6 for _, v in groups]},
        title="Size by group (MB)",
        value_format=lambda v: f"{v:.2f} MB",
    )
    sides = _table(
        ["", "format", "files on disk", "tensor data", "tensors", "bits / weight", "by dtype"],
        [[escape(label), escape(side.format), format_bytes(side.file_bytes), format_bytes(side.tensor_bytes), str(side.num_tensors),
          f"{side.bits_per_weight:.2f}", escape(", ".join(f"{d} {format_bytes(b)}" for d, b in side.bytes_by_dtype.items()))]
         for label, side in (("original", s.original), ("converted", s.converted))],
    )
    by_group = _table(
        ["group", "original", "share", "converted", "share", "ratio"],
        [[escape(g), format_bytes(v.original_bytes), f"{v.original_share:.1%}", format_bytes(v.converted_bytes),
          f"{v.converted_share:.1%}", ratio_text(v.ratio)] for g, v in groups],
    )
    largest = _table(
        ["tensor", "group", "original", "stored as", ""],
        [[f"<code>{escape(t.name)}</code>", escape(t.group), f"{escape(t.original_dtype)} {format_bytes(t.original_bytes)}",
          f"{escape(t.stored_dtype)} {format_bytes(t.stored_bytes)}", f"{t.stored_bytes / t.original_bytes:.3f}" if t.original_bytes else ""]
         for t in s.largest],
    )
    return f"<h2>Size</h2>{sides}{chart}{by_group}<h3>Largest tensors</h3>{largest}"


def _layer_chart(report: ComparisonReport) -> str:
    a = report.tensors
    if not a.by_layer:
        groups = sorted(a.by_group.items())
        return bar_chart([g for g, _ in groups], {"SQNR (dB)": [e.sqnr_db for _, e in groups]},
                         title="SQNR by group (dB; higher is better)", value_format=lambda v: f"{v:.1f} dB", missing_label="exact")
    labels = list(a.by_layer)
    worst: dict[str, float] = {}
    for row in a.tensors:
        if row.layer in a.by_layer:
            worst[row.layer] = min(worst.get(row.layer, math.inf), row.sqnr_db)
    stacks = ", ".join(dict.fromkeys(label.rpartition(".")[0] for label in labels))
    return line_chart(
        labels,
        {"all tensors of the layer": [a.by_layer[k].sqnr_db for k in labels], "worst tensor": [worst.get(k) for k in labels]},
        title=f"SQNR along the depth (dB; higher is better): {stacks}",
        y_label="SQNR (dB)",
        x_label="layer (input side on the left)",
    )


def _accuracy_section(report: ComparisonReport) -> str:
    a = report.tensors
    by_group = _table(
        ["group", "tensors", "rel. L2", "max abs", "cosine", "SQNR (dB)", "min SQNR (dB)", "worst tensor"],
        [[escape(name), str(e.num_tensors), fmt_num(e.rel_l2), fmt_num(e.max_abs), fmt_cos(e.cosine), fmt_db(e.sqnr_db),
          fmt_db(e.min_sqnr_db), f"<code>{escape(e.worst_tensor or '')}</code>"]
         for name, e in [("overall", a.overall), *sorted(a.by_group.items())]],
    )
    worst_chart = bar_chart(
        [t.name for t in a.worst], {"SQNR (dB)": [t.sqnr_db for t in a.worst]},
        title="Worst tensors: SQNR (dB; higher is better)", value_format=lambda v: f"{v:.1f} dB", missing_label="exact",
    ) if a.worst else ""
    worst = _table(
        ["tensor", "stored as", "SQNR (dB)", "rel. L2", "max abs", "cosine"],
        [[f"<code>{escape(t.name)}</code>", escape(t.stored_dtype), fmt_db(t.sqnr_db), fmt_num(t.rel_l2), fmt_num(t.max_abs), fmt_cos(t.cosine)]
         for t in a.worst],
    )
    return (f"<h2>Tensor accuracy</h2><p class=\"muted\">{len(a.tensors)} tensors, each dequantized by quantkit's loader and "
            f"compared with the original; groups pool their floating-point tensors.</p>{by_group}{_layer_chart(report)}{worst_chart}{worst}")


def _outputs_section(report: ComparisonReport) -> str:
    o = report.outputs
    if o is None:
        return ""
    rows = [[escape(OUTPUT_LABELS.get(k, k)), fmt_num(v, 6)] for k, v in o.metrics.items()]
    notes = "".join(f'<p class="note">{escape(n)}</p>' for n in o.notes)
    return (f"<h2>Model outputs</h2><p>{escape(o.kind)}: <code>{escape(o.model)}</code> on {escape(o.device)}, "
            f"{sample_count(o)}, {o.num_tokens} tokens ({escape(o.inputs)}).</p>{_table(['figure', 'value'], rows)}{notes}")


def _memory_section(report: ComparisonReport) -> str:
    m = report.memory
    rows = [[f"weights, {escape(k)}", format_bytes(v)] for k, v in m.weights_bytes.items()]
    rows.append([f"training model states ({m.training['bytes_per_parameter']} bytes/param)", format_bytes(m.training["model_states_bytes"])])
    if m.activations:
        act = m.activations
        rows.append([f"activations (batch {act.batch_size}, seq {act.seq_len}, {act.num_layers} layers)", format_bytes(act.bytes)])
        rows.append(["training total", format_bytes(m.training_total_bytes)])
    if m.gpus_needed:
        rows += [[f"GPUs of {m.gpu_memory_bytes / 2**30:g} GiB for {escape(k)}", str(v)] for k, v in m.gpus_needed.items()]
    notes = "".join(f'<p class="note">{escape(n)}</p>' for n in m.notes)
    return f"<h2>Memory estimate</h2><p>N = {m.num_parameters:,} parameters.</p>{_table(['', ''], rows)}{notes}"


def render_html(report: ComparisonReport) -> str:
    """A self-contained page (inline CSS and SVG charts; no scripts, no remote resources)."""
    notes = "".join(f'<p class="note">{escape(n)}</p>' for n in report.notes)
    title = f"quantkit report: {report.size.converted.path}"
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head><body>'
        f"<h1>Conversion report</h1><p><code>{escape(report.original)}</code> → <code>{escape(report.converted)}</code>"
        f' <span class="muted">(quantkit {escape(report.quantkit_version)})</span></p>'
        f"{_cards(report)}{notes}{_size_section(report)}{_accuracy_section(report)}{_outputs_section(report)}{_memory_section(report)}{_auto_section(report)}"
        "</body></html>\n"
    )


def _auto_section(report: ComparisonReport) -> str:
    """convert --to auto's choice, predicted vs measured, and its rules."""
    if not report.auto:
        return ""
    head, _, *rules = auto_lines(report)[1:]
    return f"<h2>Chosen by --to auto</h2><p>{escape(head)}</p><pre>{escape(chr(10).join(rules))}</pre>"
