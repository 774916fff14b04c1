"""Renderings of a ``Profile``: a terminal table, JSON, and a self-contained HTML page."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from html import escape

from ..profile import CAST, KEEP, Profile
from ..sizes import format_bytes
from .formatting import fmt_db, fmt_num
from .html import CSS, _table
from .svg import line_chart


@dataclass(frozen=True)
class UniformFigures:
    """One scheme on every decided tensor: what ``convert --to SCHEME`` would give."""

    scheme: str
    total_bytes: int  # whole checkpoint's tensor bytes
    bits_per_weight: float  # over the decided tensors
    overall_sqnr_db: float  # compare's overall SQNR
    min_sqnr_db: float
    worst_tensor: str | None


def _candidate(t, scheme: str):
    """``t``'s figures for ``scheme``, or as stored (exact) where the scheme cannot take ``t``
    (convert keeps a Conv1D weight under a compressed-tensors scheme)."""
    return t.candidates.get(scheme) or t.candidates[KEEP]


def _cell(t, scheme: str, text) -> str:
    return text(t.candidates[scheme]) if scheme in t.candidates else "n/a"


def uniform_figures(profile: Profile) -> list[UniformFigures]:
    """Each measured scheme applied uniformly, predicted from the profile (a weight the scheme
    cannot store counted as kept)."""
    values = sum(t.numel for t in profile.tensors)
    rows = []
    for scheme in profile.schemes:
        stored = sum(_candidate(t, scheme).stored_bytes for t in profile.tensors)
        members = profile.tensors + (profile.castable if scheme == CAST else [])  # bf16 casts the kept tensors too
        cast_saved = sum(t.original_bytes - _candidate(t, scheme).stored_bytes for t in members[len(profile.tensors):])
        noise = math.fsum(_candidate(t, scheme).noise_energy for t in members)
        worst = min(members, key=lambda t: _candidate(t, scheme).sqnr_db, default=None)
        rows.append(UniformFigures(
            scheme, stored + profile.kept_bytes - cast_saved, 8 * stored / values if values else 0.0,
            10 * math.log10(profile.total_signal_energy / noise) if noise > 0 else math.inf,
            _candidate(worst, scheme).sqnr_db if worst else math.inf, worst.name if worst else None,
        ))
    return rows


def layer_sqnr(profile: Profile) -> tuple[list[str], dict[str, list[float | None]]]:
    """SQNR per numbered block and scheme, the block's tensors pooled (as compare pools them)."""
    layers = list(dict.fromkeys(t.layer for t in profile.tensors if t.layer is not None))
    series: dict[str, list[float | None]] = {}
    for scheme in profile.schemes:
        values = []
        for layer in layers:
            members = [t for t in profile.tensors if t.layer == layer]
            noise = math.fsum(_candidate(t, scheme).noise_energy for t in members)
            signal = math.fsum(t.signal_energy for t in members)
            values.append(10 * math.log10(signal / noise) if noise > 0 and signal > 0 else None)
        series[scheme] = values
    return layers, series


def render_profile_json(profile: Profile) -> str:
    """The profile file's JSON (keys in README.md, ``profile_version`` 2); infinities are null."""
    return json.dumps(profile.to_dict(), indent=2, allow_nan=False)


def render_profile_text(profile: Profile, *, top: int | None = None) -> str:
    """Uniform figures per scheme, then per tensor: SQNR (dB) and bits per weight of each scheme."""
    s = profile.source
    lines = [
        f"{s.path}: {len(profile.tensors)} tensors measured, {len(profile.kept)} kept ({format_bytes(profile.kept_bytes)}), "
        f"{profile.elapsed_s:.1f} s",
        "",
        f"{'uniform':<10}{'size':>12}{'bits/w':>8}{'SQNR dB':>9}{'min dB':>8}  worst tensor",
    ]
    for u in uniform_figures(profile):
        lines.append(f"{u.scheme:<10}{format_bytes(u.total_bytes):>12}{u.bits_per_weight:>8.3f}{fmt_db(u.overall_sqnr_db):>9}"
                     f"{fmt_db(u.min_sqnr_db):>8}  {u.worst_tensor or ''}")
    lines += ["", f"{'tensor':<48}" + "".join(f"{sch:>16}" for sch in profile.schemes), f"{'':<48}" + f"{'dB / bits':>16}" * len(profile.schemes)]
    for t in profile.tensors[:top] if top else profile.tensors:
        cells = "".join(f"{_cell(t, sch, lambda c: fmt_db(c.sqnr_db) + ' / ' + f'{8 * c.stored_bytes / t.numel:.2f}'):>16}"
                        for sch in profile.schemes)
        lines.append(f"{t.name[-48:]:<48}{cells}")
    return "\n".join(lines)


def render_profile_html(profile: Profile) -> str:
    """A self-contained page: uniform figures, SQNR per layer for each scheme, every tensor."""
    uniform = _table(
        ["scheme", "size", "bits / weight", "overall SQNR (dB)", "min SQNR (dB)", "worst tensor"],
        [[escape(u.scheme), format_bytes(u.total_bytes), f"{u.bits_per_weight:.3f}", fmt_db(u.overall_sqnr_db),
          fmt_db(u.min_sqnr_db), f"<code>{escape(u.worst_tensor or '')}</code>"] for u in uniform_figures(profile)],
    )
    labels, series = layer_sqnr(profile)
    chart = line_chart(labels, series, title="SQNR per layer for each scheme (dB; higher is better)", y_label="SQNR (dB)",
                       x_label="layer (input side on the left)") if labels else ""
    tensors = _table(
        ["tensor", "shape", *(f"{s} dB" for s in profile.schemes), *(f"{s} bits" for s in profile.schemes)],
        [[f"<code>{escape(t.name)}</code>", escape(str(t.shape)), *(_cell(t, s, lambda c: fmt_db(c.sqnr_db)) for s in profile.schemes),
          *(_cell(t, s, lambda c: fmt_num(8 * c.stored_bytes / t.numel, 4)) for s in profile.schemes)] for t in profile.tensors],
    )
    src = profile.source
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>quantkit profile: {escape(src.path)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head><body>'
        f"<h1>Profile</h1><p><code>{escape(src.path)}</code>: {len(profile.tensors)} tensors measured with "
        f"{escape(', '.join(profile.schemes))}; {len(profile.kept)} kept as stored ({format_bytes(profile.kept_bytes)}).</p>"
        f"<h2>Each scheme on every tensor</h2>{uniform}{chart}<h2>Tensors</h2>"
        f'<p class="muted">SQNR of each tensor quantized alone, and its stored bits per weight; "{KEEP}" is exact.</p>{tensors}'
        "</body></html>\n"
    )
