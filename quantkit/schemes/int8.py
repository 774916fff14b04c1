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


def quantize_int8(weight: torch.Tensor, *, transpose: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise absmax INT8 of a 2-D weight (of its transpose with ``transpose``), exactly as
    bitsandbytes' Int8Params does it: the weight goes to FP16 first, then
    ``int8_vectorwise_quant`` (threshold 0)."""
    half = weight.to(torch.float16)
    if weight.device.type != "cpu":
        import bitsandbytes.functional as bnbf

        codes, scales, _ = bnbf.int8_vectorwise_quant((half.t() if transpose else half).contiguous())
        return codes, scales
    fast = _int8_cpu(half, transpose=transpose)
    if fast is not None:
        return fast
    return _int8_rows_cpu(half.t() if transpose else half)


def _int8_cpu(half: torch.Tensor, *, transpose: bool, chunk_elements: int = 1 << 18) -> tuple[torch.Tensor, torch.Tensor] | None:
    """bitsandbytes' CPU ``int8_vectorwise_quant`` of ``half`` (of its transpose), ~1.3x faster:
    each row's absmax with ``amax`` (bitsandbytes' ``max(dim)`` also computes indices), and a
    transposed weight quantized in its stored layout, scaled per column, with only the INT8
    result transposed. The products and roundings are the same, so are the bytes. None when
    the weight holds NaN: ``amax`` does not return bitsandbytes' NaN payloads."""
    if half.dim() != 2 or half.numel() == 0:
        return None
    dim = 0 if transpose else 1
    step = max(1, chunk_elements // max(half.shape[1], 1))
    parts = [half[i : i + step].abs().amax(dim=dim) for i in range(0, half.shape[0], step)]
    absmax = torch.stack(parts).amax(dim=0) if transpose else torch.cat(parts)
    if bool(torch.isnan(absmax).any()):
        return None
    absmax = absmax.float()
    factor = 127.0 / (absmax if transpose else absmax.unsqueeze(-1))
    codes = torch.empty(half.shape, dtype=torch.int8)
    scratch = torch.empty((min(step, half.shape[0]), half.shape[1]), dtype=torch.float32)
    for start in range(0, half.shape[0], step):
        block = half[start : start + step]
        scaled = scratch[: block.shape[0]]
        torch.mul(block, factor if transpose else factor[start : start + step], out=scaled)
        codes[start : start + step].copy_(scaled.round_())
    return (codes.t().contiguous(), absmax) if transpose else (codes, absmax)


def _int8_rows_cpu(half: torch.Tensor, chunk_elements: int = 1 << 18) -> tuple[torch.Tensor, torch.Tensor]:
    """bitsandbytes' CPU ``int8_vectorwise_quant`` (the same operations, so the same bytes), a
    block of rows at a time: the float32 intermediates stay in cache instead of being
    allocated for the whole matrix, and a transposed view is read without a full copy."""
    rows, cols = half.shape
    codes = torch.empty((rows, cols), dtype=torch.int8)
    scales = torch.empty(rows, dtype=torch.float32)
    step = max(1, chunk_elements // max(cols, 1))
    scratch = torch.empty((min(step, rows), cols), dtype=torch.float32)
    for start in range(0, rows, step):
        block = half[start : start + step]
        row_absmax = torch.max(block.abs(), dim=1).values.float()
        scales[start : start + step] = row_absmax
        scaled = scratch[: block.shape[0]]
        torch.mul(block, 127.0 / row_absmax.unsqueeze(-1), out=scaled)
        codes[start : start + step].copy_(scaled.round_())
    return codes, scales


def dequantize_int8(codes: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (codes.to(torch.float32) * (scales.to(torch.float32)[:, None] / 127.0)).to(dtype)


def apply_int8(name: str, weight: torch.Tensor, *, transpose: bool = False) -> list[tuple[str, torch.Tensor]]:
    codes, scales = quantize_int8(weight, transpose=transpose)
    p = prefix_of(name)
    return [
        (f"{p}.weight", codes.cpu()),
        (f"{p}.SCB", scales.cpu()),
        (f"{p}.weight_format", torch.tensor(ROW_FORMAT, dtype=torch.uint8)),
    ]
