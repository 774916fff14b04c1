"""Error figures between a reference tensor and its approximation, computed in bounded memory.

Every figure follows from five running sums, so tensors are compared chunk by chunk and
figures for a group of tensors are those of the tensors laid end to end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# Elements compared at once: bounds the float64 temporaries to a few MB whatever the tensor size.
CHUNK_ELEMENTS = 1 << 20


@dataclass
class ErrorMoments:
    """Running sums over reference x and approximation y: enough for every error figure."""

    num_elements: int = 0
    sum_ref_sq: float = 0.0  # sum x^2
    sum_approx_sq: float = 0.0  # sum y^2
    sum_cross: float = 0.0  # sum x*y
    sum_diff_sq: float = 0.0  # sum (x - y)^2
    max_abs: float = 0.0  # max |x - y|

    def add(self, other: "ErrorMoments") -> None:
        self.num_elements += other.num_elements
        self.sum_ref_sq += other.sum_ref_sq
        self.sum_approx_sq += other.sum_approx_sq
        self.sum_cross += other.sum_cross
        self.sum_diff_sq += other.sum_diff_sq
        self.max_abs = _max_keep_nan(self.max_abs, other.max_abs)

    @property
    def rel_l2(self) -> float:
        """||x - y|| / ||x||: 0 when equal, inf when x is zero and y is not."""
        if self.sum_diff_sq == 0:
            return 0.0
        return math.sqrt(self.sum_diff_sq / self.sum_ref_sq) if self.sum_ref_sq > 0 else math.inf

    @property
    def cosine(self) -> float:
        """Cosine similarity of x and y: 1 when both are zero, 0 when only one is."""
        if self.sum_ref_sq == 0 and self.sum_approx_sq == 0:
            return 1.0
        if self.sum_ref_sq == 0 or self.sum_approx_sq == 0:
            return 0.0
        value = self.sum_cross / math.sqrt(self.sum_ref_sq * self.sum_approx_sq)
        return min(1.0, max(-1.0, value))

    @property
    def sqnr_db(self) -> float:
        """Signal to quantization-noise ratio, 10 log10(sum x^2 / sum (x-y)^2): inf when exact."""
        if self.sum_diff_sq == 0:
            return math.inf
        if self.sum_ref_sq == 0:
            return -math.inf
        return 10.0 * math.log10(self.sum_ref_sq / self.sum_diff_sq)


def error_moments(reference: torch.Tensor, approx: torch.Tensor) -> ErrorMoments:
    """Sums over two tensors of the same shape, in float64, ``CHUNK_ELEMENTS`` at a time.

    Example:
        >>> m = error_moments(torch.ones(4), -torch.ones(4))
        >>> m.cosine, m.rel_l2
        (-1.0, 2.0)
    """
    if tuple(reference.shape) != tuple(approx.shape):
        raise ValueError(f"shapes differ: {tuple(reference.shape)} vs {tuple(approx.shape)}")
    ref_flat, approx_flat = reference.reshape(-1), approx.reshape(-1)
    moments = ErrorMoments(num_elements=ref_flat.numel())
    for start in range(0, ref_flat.numel(), CHUNK_ELEMENTS):
        x = ref_flat[start : start + CHUNK_ELEMENTS].to(torch.float64)
        y = approx_flat[start : start + CHUNK_ELEMENTS].to(device=x.device, dtype=torch.float64)
        diff = x - y
        moments.sum_ref_sq += float(torch.dot(x, x))
        moments.sum_approx_sq += float(torch.dot(y, y))
        moments.sum_cross += float(torch.dot(x, y))
        moments.sum_diff_sq += float(torch.dot(diff, diff))
        moments.max_abs = _max_keep_nan(moments.max_abs, float(diff.abs().max()))
    return moments


def _max_keep_nan(a: float, b: float) -> float:
    # Python's max() drops a NaN in second place; a NaN in the data must show in the figures.
    return math.nan if math.isnan(a) or math.isnan(b) else max(a, b)


def finite_or_none(value: float) -> float | None:
    """JSON has no infinity: an exact comparison's infinite SQNR is written as null."""
    return value if math.isfinite(value) else None
