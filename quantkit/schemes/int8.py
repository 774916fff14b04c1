"""LLM.int8 row-wise absmax quantization, stored as transformers stores a Linear8bitLt.

For a linear layer ``P``: ``P.weight`` I8 ``[out, in]``, ``P.SCB`` F32 ``[out]`` (each row's
absmax), ``P.weight_format`` U8 scalar 0 ("row"). Dequantize: ``weight * SCB[:, None] / 127``.
"""

from __future__ import annotations

import torch

from ..specs import TensorSpec
from ..writer import OutSpec

ROW_FORMAT = 0  # bitsandbytes' code for the row-major layout, the only one it still writes


def prefix_of(weight_name: str) -> str:
    return weight_name.removesuffix(".weight")


def int8_outputs(spec: TensorSpec, *, transpose: bool = False) -> list[OutSpec]:
    rows, cols = (spec.shape[1], spec.shape[0]) if transpose else spec.shape
    p = prefix_of(spec.name)
    return [
        OutSpec(f"{p}.weight", torch.int8, (rows, cols)),
        OutSpec(f"{p}.SCB", torch.float32, (rows,)),
        OutSpec(f"{p}.weight_format", torch.uint8, ()),
    ]


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise absmax INT8 of a 2-D weight, exactly as bitsandbytes' Int8Params does it:
    the weight goes to FP16 first, then ``int8_vectorwise_quant``."""
    import bitsandbytes.functional as bnbf

    codes, scales, _ = bnbf.int8_vectorwise_quant(weight.contiguous().to(torch.float16))
    return codes, scales


def dequantize_int8(codes: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (codes.to(torch.float32) * (scales.to(torch.float32)[:, None] / 127.0)).to(dtype)


def apply_int8(name: str, weight: torch.Tensor, *, transpose: bool = False) -> list[tuple[str, torch.Tensor]]:
    if transpose:  # cast first: the transposing copy then moves half the bytes (same values)
        weight = weight.to(torch.float16).t()
    codes, scales = quantize_int8(weight)
    p = prefix_of(name)
    return [
        (f"{p}.weight", codes.cpu()),
        (f"{p}.SCB", scales.cpu()),
        (f"{p}.weight_format", torch.tensor(ROW_FORMAT, dtype=torch.uint8)),
    ]
