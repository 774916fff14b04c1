"""Per-tensor accuracy of a converted checkpoint against its original, streamed.

One pair of tensors is in memory at a time: the converted tensor comes back through the
library's own dequantizing reader (`iter_dequantized`), its original is read by name.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from ..dtypes import short_name
from ..groups import group_of
from ..schemes import iter_dequantized
from ..sources import CheckpointSource
from .metrics import ErrorMoments, error_moments

# The first numbered path component is the block a tensor belongs to: `model.layers.3.mlp...`
# is block 3 of the stack `model.layers`.
_LAYER = re.compile(r"^(?P<stack>.*?)\.(?P<index>\d+)(\.|$)")


@dataclass
class TensorComparison:
    """Error figures of one tensor (dequantized where it was quantized) against its original."""

    name: str
    group: str
    layer: str | None
    shape: list[int]
    original_dtype: str
    stored_dtype: str
    original_bytes: int
    stored_bytes: int
    quantized: bool
    rel_l2: float
    max_abs: float
    cosine: float
    sqnr_db: float
    nonfinite: int = 0  # values NaN or inf here that are finite in the original


def badness(row: TensorComparison) -> tuple[int, float]:
    """Sort key, worst first: values made non-finite, then the lowest SQNR (NaN counts as -inf)."""
    return -row.nonfinite, _sqnr_key(row.sqnr_db)


def _sqnr_key(sqnr_db: float) -> float:
    return -math.inf if math.isnan(sqnr_db) else sqnr_db


@dataclass
class ErrorSummary:
    """Figures of a set of floating-point tensors laid end to end, and the worst among them."""

    num_tensors: int
    num_elements: int
    rel_l2: float
    max_abs: float
    cosine: float
    sqnr_db: float
    min_sqnr_db: float
    worst_tensor: str | None


@dataclass
class TensorAccuracy:
    overall: ErrorSummary
    by_group: dict[str, ErrorSummary]
    by_layer: dict[str, ErrorSummary]  # in depth order
    worst: list[TensorComparison]  # lowest SQNR first
    tensors: list[TensorComparison]
    missing: list[str] = field(default_factory=list)  # in the original, not in the converted
    unexpected: list[str] = field(default_factory=list)  # in the converted, not in the original
    mismatched: list[str] = field(default_factory=list)  # shapes differ: not compared


class _Pool:
    """Accumulates moments of several tensors and remembers the worst one."""

    def __init__(self) -> None:
        self.moments = ErrorMoments()
        self.num_tensors = 0
        self.worst: tuple[float, str] | None = None

    def add(self, name: str, moments: ErrorMoments) -> None:
        self.moments.add(moments)
        self.num_tensors += 1
        if self.worst is None or _sqnr_key(moments.sqnr_db) < _sqnr_key(self.worst[0]):
            self.worst = (moments.sqnr_db, name)

    def summary(self) -> ErrorSummary:
        m = self.moments
        worst_sqnr, worst_name = self.worst if self.worst else (float("inf"), None)
        return ErrorSummary(self.num_tensors, m.num_elements, m.rel_l2, m.max_abs, m.cosine, m.sqnr_db, worst_sqnr, worst_name)


def layer_of(name: str) -> str | None:
    """``"model.layers.3.mlp.up_proj.weight"`` -> ``"model.layers.3"``; None outside numbered blocks."""
    match = _LAYER.match(name)
    return f"{match['stack']}.{match['index']}" if match else None


def compare_tensors(
    original: CheckpointSource,
    converted: CheckpointSource,
    *,
    top: int = 10,
    progress: Callable[[int], None] | None = None,
) -> TensorAccuracy:
    """Compare every tensor of ``converted`` (dequantized) with the same-named one in ``original``.

    Integer tensors get figures too but stay out of the group and overall figures, which
    pool floating-point tensors only. ``progress`` is called with each original tensor's bytes.
    """
    rows: list[TensorComparison] = []
    float_rows: list[TensorComparison] = []
    overall, groups, layers = _Pool(), {}, {}
    seen: set[str] = set()
    unexpected, mismatched = [], []
    for name, approx, info in iter_dequantized(converted):
        ref_name = name if name in original.specs else original.aliases.get(name)
        if ref_name is None:
            unexpected.append(name)
            continue
        spec = original.specs[ref_name]
        seen.add(ref_name)
        if tuple(approx.shape) != spec.shape:
            mismatched.append(f"{name}: {list(spec.shape)} -> {list(approx.shape)}")
            continue
        reference = original.get_tensor(ref_name)
        moments = error_moments(reference, approx)
        row = _row(name, spec, info, moments)
        if not (math.isfinite(moments.sum_diff_sq) and math.isfinite(moments.max_abs)):  # some value is NaN or inf
            row.nonfinite = max(0, _count_nonfinite(approx) - _count_nonfinite(reference))
        del approx, reference
        rows.append(row)
        if spec.dtype.is_floating_point:
            float_rows.append(row)
            overall.add(name, moments)
            groups.setdefault(row.group, _Pool()).add(name, moments)
            if row.layer is not None:
                layers.setdefault(row.layer, _Pool()).add(name, moments)
        if progress is not None:
            progress(spec.nbytes)
    missing = [n for n in original.specs if n not in seen and n not in converted.aliases]
    worst = sorted(float_rows, key=badness)[:top]
    return TensorAccuracy(
        overall=overall.summary(),
        by_group={g: p.summary() for g, p in groups.items()},
        by_layer={k: layers[k].summary() for k in sorted(layers, key=_depth_key(rows))},
        worst=worst,
        tensors=rows,
        missing=missing,
        unexpected=unexpected,
        mismatched=mismatched,
    )


def _count_nonfinite(tensor) -> int:
    import torch

    return int((~torch.isfinite(tensor)).sum()) if tensor.is_floating_point() else 0


def _row(name: str, spec, info, moments: ErrorMoments) -> TensorComparison:
    return TensorComparison(
        name=name,
        group=group_of(name, spec.shape),
        layer=layer_of(name),
        shape=list(spec.shape),
        original_dtype=short_name(spec.dtype),
        stored_dtype=info.stored_dtype,
        original_bytes=spec.nbytes,
        stored_bytes=info.stored_bytes,
        quantized=info.quantized,
        rel_l2=moments.rel_l2,
        max_abs=moments.max_abs,
        cosine=moments.cosine,
        sqnr_db=moments.sqnr_db,
    )


def _depth_key(rows: list[TensorComparison]) -> Callable[[str], tuple[int, int]]:
    """Order blocks by their stack's first appearance, then by index (so 10 follows 9)."""
    stacks: dict[str, int] = {}
    for row in rows:
        if row.layer is not None:
            stacks.setdefault(row.layer.rpartition(".")[0], len(stacks))

    def key(layer: str) -> tuple[int, int]:
        stack, _, index = layer.rpartition(".")
        return stacks.get(stack, len(stacks)), int(index)

    return key
