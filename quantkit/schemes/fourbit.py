"""Blockwise 4-bit (NF4 / FP4) through bitsandbytes, stored as ``QuantState.as_dict(packed=True)``.

For a linear layer ``P``: ``P.weight`` U8 ``[ceil(numel/2), 1]`` (two codes a byte, first in
the high nibble), and under ``P.weight.``: ``absmax``, ``quant_map``, with double quantization
``nested_absmax`` and ``nested_quant_map``, and ``quant_state.bitsandbytes__<type>``: the
JSON of the non-tensor fields, as bytes.
"""

from __future__ import annotations

import math

import torch

from ..specs import TensorSpec
from ..writer import OutSpec
from . import fast4bit

_LONGEST_FLOAT = -2.2250738585072014e-308  # the longest repr a float can have


def fourbit_outputs(
    spec: TensorSpec, *, quant_type: str, blocksize: int, double_quant: bool, transpose: bool = False
) -> list[OutSpec]:
    """The tensors ``P.weight`` becomes, known from its spec alone.

    With double quantization the quant state's JSON holds a data-dependent float, so its
    length is declared variable, bounded by the longest a float can print.
    """
    shape = (spec.shape[1], spec.shape[0]) if transpose else spec.shape
    n_blocks = math.ceil(spec.numel / blocksize)
    w = spec.name
    outs = [OutSpec(w, torch.uint8, ((spec.numel + 1) // 2, 1)), OutSpec(f"{w}.quant_map", torch.float32, (16,))]
    state = fast4bit.state_json(quant_type, blocksize, spec.dtype, shape, _LONGEST_FLOAT if double_quant else None)
    if double_quant:
        outs += [
            OutSpec(f"{w}.absmax", torch.uint8, (n_blocks,)),
            OutSpec(f"{w}.nested_absmax", torch.float32, (math.ceil(n_blocks / fast4bit.NESTED_BLOCKSIZE),)),
            OutSpec(f"{w}.nested_quant_map", torch.float32, (256,)),
        ]
    else:
        outs.append(OutSpec(f"{w}.absmax", torch.float32, (n_blocks,)))
    outs.append(OutSpec(f"{w}.quant_state.bitsandbytes__{quant_type}", torch.uint8, (len(state),), variable=double_quant))
    return outs


def apply_fourbit(
    name: str, weight: torch.Tensor, *, quant_type: str, blocksize: int, double_quant: bool, transpose: bool = False
) -> list[tuple[str, torch.Tensor]]:
    """Quantize one weight with ``bitsandbytes.functional.quantize_4bit``; the packed tensors."""
    if transpose:
        weight = weight.t()
    if weight.device.type == "cpu" and fast4bit.available(quant_type):
        packed, parts = fast4bit.quantize_4bit(weight, blocksize=blocksize, quant_type=quant_type, double_quant=double_quant)
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
        return fast4bit.dequantize_4bit(dict(parts))
    import bitsandbytes.functional as bnbf

    packed = parts.pop("weight")
    state = bnbf.QuantState.from_dict(parts, device=packed.device)
    return bnbf.dequantize_4bit(packed, state)
