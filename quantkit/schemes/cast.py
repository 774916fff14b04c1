"""Casting floating-point tensors to BF16 / FP16 (and back, which is the identity on values)."""

from __future__ import annotations

import torch

from ..dtypes import dtype_of

FP16_MAX = torch.finfo(torch.float16).max  # 65504


def cast(tensor: torch.Tensor, dtype) -> tuple[torch.Tensor, int]:
    """Cast a floating-point tensor; returns it and how many finite values overflowed to inf.

    Integer and bool tensors are returned unchanged. Overflow can only happen going to FP16
    (BF16 has FP32's exponent range); it is counted, never silent.
    """
    dtype = dtype_of(dtype).torch
    if not tensor.is_floating_point() or tensor.dtype == dtype:
        return tensor, 0
    out = tensor.to(dtype)
    overflow = 0
    if dtype == torch.float16 and tensor.dtype.itemsize > 1:  # no float8 value exceeds FP16's range
        overflow = int((torch.isinf(out) & torch.isfinite(tensor)).sum())
    return out, overflow
