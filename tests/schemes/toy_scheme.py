"""A test-only scheme: symmetric per-tensor INT8 (one scale), in one module.

It shows what a new scheme takes: this module and one ``register`` call; the converter,
the loader and the anatomy then handle it without knowing its name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

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
