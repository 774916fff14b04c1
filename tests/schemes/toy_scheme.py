"""Test-only schemes: symmetric INT8, per tensor (one scale) and per row, in one module.

It shows what a new scheme takes: this module and one ``register`` call; the converter,
the loader and the anatomy then handle it without knowing its name. ``ToyInt8``'s one scale
spans the whole weight, so it is quantized whole (no row chunks: the default); ``ToyRowInt8``
scales each row and opts in to the row-chunked CPU path by declaring how.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from quantkit.dtypes import FLOAT32, INT8
from quantkit.schemes import QuantScheme, SchemeSettings, StoredWeight
from quantkit.specs import OutSpec


@dataclass(frozen=True)
class ToyInt8(QuantScheme):
    family: ClassVar[str] = "toy"

    def outputs(self, spec, *, transpose=False, settings=SchemeSettings()):
        shape = (spec.shape[1], spec.shape[0]) if transpose else spec.shape
        return [OutSpec(spec.name, INT8, shape), OutSpec(f"{spec.name}_toy_scale", FLOAT32, ())]

    def quantize(self, name, tensor, *, transpose=False, settings=SchemeSettings()):
        weight = (tensor.t() if transpose else tensor).float()
        scale = weight.abs().max().clamp(min=1e-12) / 127
        return [(name, (weight / scale).round().to(torch.int8).contiguous().cpu()), (f"{name}_toy_scale", scale.cpu())]

    def stored_weights(self, specs):
        return {
            n.removesuffix("_toy_scale"): StoredWeight(self.name, n.removesuffix("_toy_scale"), (n.removesuffix("_toy_scale"), n))
            for n in specs
            if n.endswith("_toy_scale")
        }

    def dequantize(self, stored, parts):
        return parts[stored.parts[0]].float() * parts[stored.parts[1]]

    def logical_numel(self, stored, specs):
        return specs[stored.parts[0]].numel

    def update_hf_config(self, config, assignment, settings):
        config["quantization_config"] = {"quant_method": "toy-int8"}


TOY = ToyInt8("toy-int8", "per-tensor INT8 (test only)")


@dataclass(frozen=True)
class ToyRowInt8(QuantScheme):
    """Symmetric INT8 with one scale per row: row-local, so it opts in to the row chunks
    (``quantize_rows`` in numpy) and gives there the bytes its whole-weight ``quantize`` gives."""

    family: ClassVar[str] = "toy"
    row_parts: ClassVar[frozenset[str]] = frozenset({"codes", "scales"})

    def outputs(self, spec, *, transpose=False, settings=SchemeSettings()):
        rows, cols = (spec.shape[1], spec.shape[0]) if transpose else spec.shape
        return [OutSpec(spec.name, INT8, (rows, cols)), OutSpec(f"{spec.name}_toy_row_scale", FLOAT32, (rows,))]

    def quantize(self, name, tensor, *, transpose=False, settings=SchemeSettings()):
        weight = (tensor.t() if transpose else tensor).float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127
        return [(name, (weight / scale[:, None]).round().to(torch.int8).contiguous().cpu()), (f"{name}_toy_row_scale", scale.cpu())]

    def row_chunk_multiple(self, spec, settings):
        return 1

    def quantize_rows(self, name, rows, settings):
        weight = rows.astype(np.float32)
        scale = np.maximum(np.abs(weight).max(axis=1), np.float32(1e-12)) / np.float32(127)
        return {"codes": np.round(weight / scale[:, None]).astype(np.int8), "scales": scale}

    def stored_from_rows(self, spec, arrays, settings):
        return [(spec.name, arrays["codes"]), (f"{spec.name}_toy_row_scale", arrays["scales"])]

    def stored_weights(self, specs):
        suffix = "_toy_row_scale"
        return {n.removesuffix(suffix): StoredWeight(self.name, n.removesuffix(suffix), (n.removesuffix(suffix), n)) for n in specs if n.endswith(suffix)}

    def dequantize(self, stored, parts):
        return parts[stored.parts[0]].float() * parts[stored.parts[1]][:, None]

    def logical_numel(self, stored, specs):
        return specs[stored.parts[0]].numel

    def update_hf_config(self, config, assignment, settings):
        config["quantization_config"] = {"quant_method": "toy-rows"}


TOY_ROWS = ToyRowInt8("toy-rows", "per-row INT8 in row chunks (test only)")
