"""bitsandbytes itself, for the inputs the fused kernels hand back: weights holding NaN.

What a NaN becomes in bitsandbytes' output depends on how torch moves NaN payloads through
its casts and reductions, which differs between its vectorised and scalar loops (a float16
signalling NaN widens to two different floats depending on its position in the tensor). Real
weights hold no NaN, so rather than imitate that, quantkit runs bitsandbytes' own CPU
functions on such a weight; torch and bitsandbytes are imported only then.
"""

from __future__ import annotations

import numpy as np


def _torch_view(weight: np.ndarray):
    import torch

    if weight.dtype.name == "bfloat16":  # torch.from_numpy knows no bfloat16
        return torch.from_numpy(np.ascontiguousarray(weight).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(weight))


def int8(weight: np.ndarray, *, transpose: bool) -> tuple[np.ndarray, np.ndarray]:
    import bitsandbytes.functional as bnbf
    import torch

    half = _torch_view(weight).to(torch.float16)
    codes, scales, _ = bnbf.int8_vectorwise_quant((half.t() if transpose else half).contiguous())
    return codes.numpy(), scales.numpy()


def fourbit(weight: np.ndarray, *, blocksize: int, quant_type: str, transpose: bool) -> tuple[np.ndarray, np.ndarray]:
    import bitsandbytes.functional as bnbf

    tensor = _torch_view(weight)
    packed, state = bnbf.quantize_4bit((tensor.t() if transpose else tensor).contiguous(), blocksize=blocksize, quant_type=quant_type)
    return packed.numpy(), state.absmax.numpy()
