"""Conversion schemes and the reading back of what they wrote.

Each scheme family lives in its own module, quantize and dequantize side by side:
``cast`` (bf16, fp16), ``int8`` (LLM.int8 row-wise), ``fourbit`` (nf4, fp4).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass

from ..dtypes import BFLOAT16, FLOAT16, INT8, short_name
from ..sources import CheckpointSource
from ..specs import TensorSpec

SCHEMES = ("bf16", "fp16", "int8", "nf4", "fp4")
CAST_DTYPES = {"bf16": BFLOAT16, "fp16": FLOAT16}
TRANSPOSED_KEY = "quantkit.transposed"
_FOURBIT_STATE = re.compile(r"^(?P<weight>.+)\.quant_state\.bitsandbytes__(?P<type>nf4|fp4)$")
_FOURBIT_PARTS = ("absmax", "quant_map", "nested_absmax", "nested_quant_map")


@dataclass(frozen=True)
class TensorInfo:
    stored_dtype: str  # "int8", "nf4", "fp4", or the stored dtype's name
    stored_bytes: int  # bytes of every stored tensor behind this name
    quantized: bool


@dataclass(frozen=True)
class QuantGroup:
    kind: str  # "int8", "nf4", "fp4"
    weight: str  # the original weight's name
    parts: tuple[str, ...]  # stored names, the weight's first


def quant_groups(specs: dict[str, TensorSpec]) -> dict[str, QuantGroup]:
    """The quantized weights among stored tensors, keyed by the original weight name."""
    groups: dict[str, QuantGroup] = {}
    for name in specs:
        if name.endswith(".SCB"):
            p = name.removesuffix(".SCB")
            if specs.get(f"{p}.weight") is not None and specs[f"{p}.weight"].dtype == INT8:
                parts = [f"{p}.weight", name] + ([f"{p}.weight_format"] if f"{p}.weight_format" in specs else [])
                groups[f"{p}.weight"] = QuantGroup("int8", f"{p}.weight", tuple(parts))
        elif m := _FOURBIT_STATE.match(name):
            w = m["weight"]
            parts = [w] + [f"{w}.{k}" for k in _FOURBIT_PARTS if f"{w}.{k}" in specs] + [name]
            groups[w] = QuantGroup(m["type"], w, tuple(parts))
    return groups


def _transposed(source: CheckpointSource) -> set[str]:
    return set(json.loads(source.info.metadata.get(TRANSPOSED_KEY, "[]")))


def dequantize_group(group: QuantGroup, parts: dict, *, transpose: bool = False) -> "torch.Tensor":  # noqa: F821
    """The floating-point weight behind one quantized group (``parts`` by stored name)."""
    from .fourbit import dequantize_fourbit  # the quantizers import torch: only when needed
    from .int8 import dequantize_int8

    if group.kind == "int8":
        weight = dequantize_int8(parts[group.parts[0]], parts[group.parts[1]])
    else:
        prefix = group.weight + "."
        unprefixed = {"weight": parts[group.weight]}
        unprefixed.update({k.removeprefix(prefix): v for k, v in parts.items() if k != group.weight})
        weight = dequantize_fourbit(unprefixed)
    return weight.t().contiguous() if transpose else weight


def iter_dequantized(source: CheckpointSource, *, dtype=None) -> Iterator[tuple]:
    """Each original tensor, one at a time, dequantized where it was quantized.

    Yields ``(name, tensor, info)`` in stored order; quantized weights come back in their
    original name and shape (GPT-2 Conv1D weights transposed back). ``dtype`` casts
    floating-point results.
    """
    groups = quant_groups(source.specs)
    members = {p for g in groups.values() for p in g.parts}
    transposed = _transposed(source)
    for name, spec in source.specs.items():
        if name in groups:
            group = groups[name]
            parts = {p: source.get_tensor(p) for p in group.parts}
            tensor = dequantize_group(group, parts, transpose=name in transposed)
            info = TensorInfo(group.kind, sum(source.specs[p].nbytes for p in group.parts), True)
        elif name in members:
            continue
        else:
            tensor = source.get_tensor(name)
            info = TensorInfo(short_name(spec.dtype), spec.nbytes, False)
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        yield name, tensor, info


def describe_quantization(specs: dict[str, TensorSpec]) -> dict | None:
    """What quantization the stored tensors show, from specs alone (None if none)."""
    groups = quant_groups(specs)
    if not groups:
        return None
    kinds = sorted({g.kind for g in groups.values()})
    logical = {}
    for g in groups.values():
        stored = specs[g.parts[0]]
        logical[g.weight] = stored.numel if g.kind == "int8" else stored.shape[0] * 2
    auxiliary = [p for g in groups.values() for p in g.parts[1:]]
    return {"scheme": "/".join(kinds), "quantized_weights": len(groups), "logical_numel": logical, "auxiliary": auxiliary}
