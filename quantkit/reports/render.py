"""Terminal, JSON and Markdown renderings of a ComparisonReport, and writing one to a file."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import OutputError, UsageError
from ..sizes import format_bytes
from .formatting import auto_lines, OUTPUT_LABELS, fmt_cos, fmt_db, fmt_num, ratio_text, sample_count
from .report import ComparisonReport

def render_json(report: ComparisonReport) -> str:
    """Every figure, machine-readable (keys listed in README.md); infinities are null."""
    return json.dumps(report.to_dict(), indent=2, allow_nan=False)


def render_text(report: ComparisonReport) -> str:
    """A compact table for the terminal: sizes, shares, error by group, worst tensors, outputs, memory."""
    return "\n".join([*_text_size(report), "", *_text_accuracy(report), *_text_outputs(report), "", *_text_memory(report)]
                     + [f"note: {n}" for n in report.notes] + auto_lines(report))


def _side_line(label: str, side) -> str:
    return (f"{label:<10} {side.path}  ({side.format})  files {format_bytes(side.file_bytes)}, tensors "
            f"{format_bytes(side.tensor_bytes)}, {side.bits_per_weight:.2f} bits/weight")


def _text_size(r: ComparisonReport) -> list[str]:
    s = r.size
    lines = [
        _side_line("original", s.original),
        _side_line("converted", s.converted),
        f"size: {s.tensor_ratio:.3f} x the original's tensor bytes ({s.file_ratio:.3f} x on disk, "
        f"{format_bytes(s.saved_bytes)} saved); {s.original.num_parameters:,} parameters",
        "by dtype: " + " | ".join(", ".join(f"{d} {format_bytes(b)}" for d, b in side.bytes_by_dtype.items())
                                  for side in (s.original, s.converted)),
        "",
        f"{'group':<13}{'original':>12}{'share':>8}{'converted':>12}{'share':>8}{'ratio':>8}",
    ]
    for name, g in sorted(s.groups.items(), key=lambda kv: -kv[1].original_bytes):
        lines.append(f"{name:<13}{format_bytes(g.original_bytes):>12}{g.original_share:>8.1%}"
                     f"{format_bytes(g.converted_bytes):>12}{g.converted_share:>8.1%}{ratio_text(g.ratio):>8}")
    lines += ["", "largest tensors:"]
    for t in s.largest:
        lines.append(f"  {t.name:<48} {t.original_dtype:>9} -> {t.stored_dtype:<9}"
                     f"{format_bytes(t.original_bytes):>11} -> {format_bytes(t.stored_bytes)}")
    return lines


def _text_accuracy(r: ComparisonReport) -> list[str]:
    a = r.tensors
    lines = [
        f"tensor accuracy ({len(a.tensors)} tensors, dequantized and compared with the original)",
        f"{'':<13}{'rel L2':>11}{'max abs':>11}{'cosine':>11}{'SQNR dB':>9}{'min dB':>9}  worst tensor",
    ]
    for name, e in [("overall", a.overall), *sorted(a.by_group.items(), key=lambda kv: kv[1].sqnr_db)]:
        lines.append(f"{name:<13}{fmt_num(e.rel_l2):>11}{fmt_num(e.max_abs):>11}{fmt_cos(e.cosine):>11}"
                     f"{fmt_db(e.sqnr_db):>9}{fmt_db(e.min_sqnr_db):>9}  {e.worst_tensor or ''}")
    lines += ["", "worst tensors (NaN/inf first, then lowest SQNR):"]
    for t in a.worst:
        lines.append(f"  {t.name:<48} {t.stored_dtype:<9} SQNR {fmt_db(t.sqnr_db):>6} dB  rel L2 {fmt_num(t.rel_l2)}"
                     f"  cosine {fmt_cos(t.cosine)}" + (f"  {t.nonfinite} values NaN/inf" if t.nonfinite else ""))
    return lines


def _text_outputs(r: ComparisonReport) -> list[str]:
    o = r.outputs
    if o is None:
        return []
    lines = ["", f"model outputs ({o.kind}, {o.model} on {o.device}; {sample_count(o)}, {o.num_tokens} tokens, {o.inputs})"]
    lines += [f"  {OUTPUT_LABELS.get(k, k):<40} {fmt_num(v, 6)}" for k, v in o.metrics.items()]
    return lines + [f"note: {n}" for n in o.notes]


def _text_memory(r: ComparisonReport) -> list[str]:
    m = r.memory
    t = m.training
    lines = [
        f"memory (N = {m.num_parameters:,} parameters): weights " + ", ".join(f"{k} {format_bytes(v)}" for k, v in m.weights_bytes.items()),
        f"  training, mixed precision ({t['weight_bytes_per_parameter']}+{t['gradient_bytes_per_parameter']}+"
        f"{t['optimizer_bytes_per_parameter']} = {t['bytes_per_parameter']} bytes/param): model states {format_bytes(t['model_states_bytes'])}",
    ]
    if m.activations:
        act = m.activations
        lines.append(f"  activations (batch {act.batch_size}, seq {act.seq_len}, {act.num_layers} layers): "
                     f"{format_bytes(act.bytes)}; training total {format_bytes(m.training_total_bytes)}")
    if m.gpus_needed:
        lines.append(f"  GPUs of {m.gpu_memory_bytes / 2**30:g} GiB needed: " + ", ".join(f"{k} {v}" for k, v in m.gpus_needed.items()))
    return lines + [f"  note: {n}" for n in m.notes]


def render_markdown(report: ComparisonReport) -> str:
    """Markdown for a model card: size table, accuracy by group, worst tensors, outputs, memory."""
    s, a = report.size, report.tensors
    lines = [
        "## Conversion report", "",
        f"Original `{s.original.path}` vs converted `{s.converted.path}` (quantkit {report.quantkit_version}).", "",
        "| | original | converted |", "|---|---:|---:|",
        f"| files on disk | {format_bytes(s.original.file_bytes)} | {format_bytes(s.converted.file_bytes)} |",
        f"| tensor data | {format_bytes(s.original.tensor_bytes)} | {format_bytes(s.converted.tensor_bytes)} |",
        f"| bits per weight | {s.original.bits_per_weight:.2f} | {s.converted.bits_per_weight:.2f} |",
        f"| parameters | {s.original.num_parameters:,} | {s.converted.num_parameters:,} |", "",
        f"Size ratio: **{s.tensor_ratio:.3f}** of the original's tensor bytes ({format_bytes(s.saved_bytes)} saved on disk).", "",
        "### Size by group", "",
        "| group | original | share | converted | share | ratio |", "|---|---:|---:|---:|---:|---:|",
    ]
    for name, g in sorted(s.groups.items(), key=lambda kv: -kv[1].original_bytes):
        lines.append(f"| {name} | {format_bytes(g.original_bytes)} | {g.original_share:.1%} | "
                     f"{format_bytes(g.converted_bytes)} | {g.converted_share:.1%} | {ratio_text(g.ratio)} |")
    lines += ["", "### Tensor accuracy", "", "| group | tensors | rel. L2 | max abs | cosine | SQNR (dB) | min SQNR (dB) |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for name, e in [("**overall**", a.overall), *sorted(a.by_group.items())]:
        lines.append(f"| {name} | {e.num_tensors} | {fmt_num(e.rel_l2)} | {fmt_num(e.max_abs)} | {fmt_cos(e.cosine)} | "
                     f"{fmt_db(e.sqnr_db)} | {fmt_db(e.min_sqnr_db)} |")
    lines += ["", "Worst tensors (lowest SQNR):", "", "| tensor | stored as | SQNR (dB) | rel. L2 | cosine |", "|---|---|---:|---:|---:|"]
    lines += [f"| `{t.name}` | {t.stored_dtype} | {fmt_db(t.sqnr_db)} | {fmt_num(t.rel_l2)} | {fmt_cos(t.cosine)} |" for t in a.worst]
    lines += _markdown_outputs(report) + ["", "### Memory estimate", "", f"N = {report.memory.num_parameters:,} parameters.", "",
                                          "| | bytes |", "|---|---:|"]
    lines += [f"| weights, {k} | {format_bytes(v)} |" for k, v in report.memory.weights_bytes.items()]
    lines.append(f"| training model states ({report.memory.training['bytes_per_parameter']} bytes/param) | "
                 f"{format_bytes(report.memory.training['model_states_bytes'])} |")
    if report.memory.activations:
        lines.append(f"| activations (batch {report.memory.activations.batch_size}, seq {report.memory.activations.seq_len}) | "
                     f"{format_bytes(report.memory.activations.bytes)} |")
    lines += [""] + [f"> note: {n}" for n in report.notes]
    if report.auto:
        head, _, *rules = auto_lines(report, rule_prefix="    --rule ")[1:]
        lines += ["", "### Chosen by --to auto", "", head, "", "Equivalent rules:", "", *rules]
    return "\n".join(lines).rstrip() + "\n"


def _markdown_outputs(report: ComparisonReport) -> list[str]:
    o = report.outputs
    if o is None:
        return []
    lines = ["", "### Model outputs", "", f"{o.kind}, `{o.model}` on {o.device}: {sample_count(o)}, {o.num_tokens} tokens ({o.inputs}).",
             "", "| figure | value |", "|---|---:|"]
    return lines + [f"| {OUTPUT_LABELS.get(k, k)} | {fmt_num(v, 6)} |" for k, v in o.metrics.items()]


def write_report(report: ComparisonReport, path: str | Path) -> Path:
    """Write the report as JSON, Markdown or HTML, chosen by the suffix (.json, .md, .html/.htm)."""
    from .html import render_html

    path = Path(path)
    renderers = {".json": render_json, ".md": render_markdown, ".markdown": render_markdown, ".html": render_html, ".htm": render_html}
    renderer = renderers.get(path.suffix.lower())
    if renderer is None:
        raise UsageError(f"{path}: cannot tell the report format from the suffix; use .json, .md or .html")
    text = renderer(report)
    try:
        path.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    except OSError as exc:
        raise OutputError(f"{path}: cannot write the report ({exc.strerror or exc})") from None
    return path
