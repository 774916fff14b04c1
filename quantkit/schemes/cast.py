"""BF16 / FP16: element-wise casts of every floating-point tensor.

The chunked writer casts with numpy (``quantkit.writing.chunks.cast_into``); ``cast`` here
is the same cast for a whole torch tensor (tests compare the two bit for bit).
"""

from __future__ import annotations

from ..dtypes import BFLOAT16, FLOAT16, dtype_of
from .base import CastScheme

FP16_MAX = 65504.0  # torch.finfo(torch.float16).max

BF16 = CastScheme("bf16", "BF16 cast of every floating-point tensor", dtype=BFLOAT16, config_dtype="bfloat16")
FP16 = CastScheme("fp16", "FP16 cast (values beyond +-65504 become inf, counted)", dtype=FLOAT16, config_dtype="float16")


def cast(tensor, dtype) -> tuple:
    """Cast a floating-point tensor; returns it and how many finite values overflowed to inf.

    Integer and bool tensors are returned unchanged. Overflow can only happen going to FP16
    (BF16 has FP32's exponent range); it is counted, never silent.
    """
    import torch

    dtype = dtype_of(dtype).torch
    if not tensor.is_floating_point() or tensor.dtype == dtype:
        return tensor, 0
    out = tensor.to(dtype)
    overflow = 0
    if dtype == torch.float16 and tensor.dtype.itemsize > 1:  # no float8 value exceeds FP16's range
        overflow = int((torch.isinf(out) & torch.isfinite(tensor)).sum())
    return out, overflow
