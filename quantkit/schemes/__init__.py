"""Conversion schemes, and the reading back of what they wrote.

``base``: the Scheme interface; ``registry``: every scheme by name; one module per family,
each declaring its stored tensors from specs alone: ``cast`` (bf16, fp16), ``bnb`` (int8,
nf4, fp4; kernels in ``int8``, ``fourbit``, ``fourbit_cpu``), ``ct`` (compressed-tensors fp8,
fp8-block, w8a16, w4a16; kernels in ``compressed``, config in ``compressed_config``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

from ..dtypes import short_name
from ..layout import TRANSPOSED_KEY
from ..specs import TensorSpec
from .base import CastScheme, QuantScheme, Scheme, SchemeSettings, StoredWeight
from .registry import SCHEMES, get_scheme, quantizers, register

__all__ = [
    "SCHEMES", "CastScheme", "QuantScheme", "Scheme", "SchemeSettings", "StoredWeight", "TensorInfo",
    "describe_quantization", "dequantize_stored", "get_scheme", "iter_dequantized", "quantizers", "register", "stored_weights",
]


@dataclass(frozen=True)
class TensorInfo:
    stored_dtype: str  # the scheme's name ("int8", "nf4", ...) or the stored dtype's name
    stored_bytes: int  # bytes of every stored tensor behind this name
    quantized: bool


def stored_weights(specs: dict[str, TensorSpec]) -> dict[str, StoredWeight]:
    """The quantized weights among stored tensors, keyed by the original weight name."""
    found: dict[str, StoredWeight] = {}
    for scheme in quantizers():
        found.update(scheme.stored_weights(specs))
    by_first = {s.parts[0]: s for s in found.values()}  # a weight may be stored under other names (weight_packed)
    return {by_first[name].weight: by_first[name] for name in specs if name in by_first}  # in stored order


def dequantize_stored(stored: StoredWeight, parts: dict, *, transpose: bool = False) -> "torch.Tensor":  # noqa: F821
    """The floating-point weight behind one stored weight (``parts`` by stored name)."""
    weight = get_scheme(stored.scheme).dequantize(stored, parts)
    return weight.t().contiguous() if transpose else weight


def iter_dequantized(source, *, dtype=None) -> Iterator[tuple]:
    """Each original tensor of a ``CheckpointSource``, one at a time, dequantized where it was quantized.

    Yields ``(name, tensor, info)`` in stored order; quantized weights come back in their
    original name and shape (GPT-2 Conv1D weights transposed back). ``dtype`` casts
    floating-point results.
    """
    found = {s.parts[0]: s for s in stored_weights(source.specs).values()}
    members = {p for s in found.values() for p in s.parts}
    transposed = set(json.loads(source.info.metadata.get(TRANSPOSED_KEY, "[]")))
    for name, spec in source.specs.items():
        if name in found:
            stored = found[name]
            name = stored.weight
            parts = {p: source.get_tensor(p) for p in stored.parts}
            tensor = dequantize_stored(stored, parts, transpose=name in transposed)
            info = TensorInfo(stored.scheme, sum(source.specs[p].nbytes for p in stored.parts), True)
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
    found = stored_weights(specs)
    if not found:
        return None
    names = sorted({s.scheme for s in found.values()})
    logical = {s.weight: get_scheme(s.scheme).logical_numel(s, specs) for s in found.values()}
    auxiliary = [p for s in found.values() for p in s.parts[1:]]
    return {"scheme": "/".join(names), "quantized_weights": len(found), "logical_numel": logical, "auxiliary": auxiliary}
