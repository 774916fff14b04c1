"""Blockwise 4-bit (NF4 / FP4) through bitsandbytes, stored as ``QuantState.as_dict(packed=True)``.

For a linear layer ``P``: ``P.weight`` U8 ``[ceil(numel/2), 1]`` (two codes a byte, first in
the high nibble), and under ``P.weight.``: ``absmax``, ``quant_map``, with double quantization
``nested_absmax`` and ``nested_quant_map``, and ``quant_state.bitsandbytes__<type>``: the
JSON of the non-tensor fields, as bytes.
"""

from __future__ import annotations

import torch

from . import fourbit_cpu


def apply_fourbit(
    name: str, weight: torch.Tensor, *, quant_type: str, blocksize: int, double_quant: bool, transpose: bool = False
) -> list[tuple[str, torch.Tensor]]:
    """Quantize one weight with ``bitsandbytes.functional.quantize_4bit``; the packed tensors."""
    if transpose:
        weight = weight.t()
    if weight.device.type == "cpu" and fourbit_cpu.available(quant_type):
        packed, parts = fourbit_cpu.quantize_4bit(weight, blocksize=blocksize, quant_type=quant_type, double_quant=double_quant)
    else:
        import bitsandbytes.functional as bnbf

        packed, state = bnbf.quantize_4bit(
            weight.contiguous(), blocksize=blocksize, compress_statistics=double_quant, quant_type=quant_type
        )
        parts = state.as_dict(packed=True)
    out = [(name, packed.cpu())]
    out += [(f"{name}.{key}", value.cpu()) for key, value in parts.items()]
    return out


def dequantize_fourbit(parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """``parts``: ``weight`` plus the ``absmax``/``quant_map``/``quant_state...`` entries, unprefixed."""
    if parts["weight"].device.type == "cpu":
        return fourbit_cpu.dequantize_4bit(dict(parts))
    import bitsandbytes.functional as bnbf

    packed = parts.pop("weight")
    state = bnbf.QuantState.from_dict(parts, device=packed.device)
    return bnbf.dequantize_4bit(packed, state)
