"""Weights for the kernel tests: torch tensors (bitsandbytes' input) and the numpy arrays
a ``read_into`` buffer holds (bfloat16 as ml_dtypes)."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import torch


def as_numpy(w: torch.Tensor) -> np.ndarray:
    if w.dtype == torch.bfloat16:
        return w.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return w.contiguous().numpy()


def hostile(shape, kind: str, seed: int = 0) -> torch.Tensor:
    """float32 values of a kind that stresses the byte-exact rules."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) * 0.02
    flat = w.view(-1)
    n = flat.numel()
    if kind == "zeros":
        flat.zero_()
    elif kind == "specials" and n:
        flat[::7] = float("inf")
        flat[::13] = -float("inf")
        flat[::5] = -0.0
        flat[:: max(1, n // 3)] = 1e5  # beyond float16: inf for INT8
    elif kind == "nan" and n:
        flat[:: max(1, n // 4)] = float("nan")
        flat[1::11] = -float("nan")
    elif kind == "subnormal":
        flat.mul_(1e-36)  # float32 and float16 subnormals
    elif kind == "f16-edges":
        w = w * torch.logspace(-9, 5, shape[-1] if len(shape) else 1).clamp(max=65519.0)
    elif kind == "heavy":
        flat.copy_(torch.distributions.StudentT(2.0).sample(flat.shape))
    elif kind == "ties":
        flat.copy_(torch.randint(-254, 255, flat.shape, generator=g).float() / 2)
        flat[:: max(1, shape[-1] if len(shape) else 1)] = 127
    return w


KINDS = ["normal", "zeros", "specials", "nan", "subnormal", "f16-edges", "heavy", "ties"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
