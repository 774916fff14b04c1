"""Conversion schemes (filled in by the convert work); helpers the readers need."""

from __future__ import annotations

import torch

from ..specs import TensorSpec


def dequantize_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return state


def describe_quantization(specs: dict[str, TensorSpec]) -> dict | None:
    return None
