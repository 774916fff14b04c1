"""quantkit's CPU INT8 path must produce bitsandbytes' bytes exactly."""

from __future__ import annotations

import bitsandbytes.functional as bnbf
import pytest
import torch

from quantkit.schemes.int8 import apply_int8, dequantize_int8, quantize_int8


def weights(kind: str, shape, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) * 0.02
    if kind == "specials":
        rows, cols = shape
        at = lambda r, c: (r % rows, c % cols)  # noqa: E731  (small shapes wrap around)
        w[at(1, 0)[0]].zero_()
        w[at(0, 1)] = float("nan")
        w[at(2, 3)] = float("inf")
        w[at(3, 0)] = 1e5  # beyond FP16: inf after the cast, as in bitsandbytes
        w[at(4, 2)] = -0.0
    elif kind == "outliers":
        w[:, 0] *= 500
    elif kind == "nan-rows":  # several NaNs in a row, and rows whose absmax is a NaN or an inf
        w[0, :] = float("nan")
        w[min(2, shape[0] - 1), ::2] = float("-nan")
        w[-1, -1] = float("-inf")
    elif kind == "fp16-edges":  # values that round to FP16 subnormals, to 65504, or overflow
        w = w * torch.logspace(-9, 5, shape[1]).clamp(max=65519.0)
    elif kind == "ties":  # values landing exactly on .5 after scaling (round half to even)
        w = torch.randint(-254, 255, shape, generator=g).float() / 2
        w[:, 0] = 127
    return w


@pytest.mark.parametrize("kind", ["normal", "specials", "outliers", "ties", "nan-rows", "fp16-edges"])
@pytest.mark.parametrize("shape", [(64, 100), (7, 1), (1, 3000), (300, 257)])
@pytest.mark.parametrize("transpose", ["no", "view", "flag"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_matches_bitsandbytes(kind, shape, transpose, dtype):
    w = weights(kind, shape).to(dtype)
    source = w.t() if transpose != "no" else w
    ref_codes, ref_scales, _ = bnbf.int8_vectorwise_quant(source.contiguous().to(torch.float16))
    codes, scales = quantize_int8(w, transpose=True) if transpose == "flag" else quantize_int8(source)
    assert torch.equal(codes, ref_codes)
    assert torch.equal(scales.view(torch.int32), ref_scales.view(torch.int32))  # bitwise, NaNs included


def test_apply_int8_layout_and_round_trip():
    w = weights("normal", (48, 32))
    out = dict(apply_int8("layer.weight", w))
    assert set(out) == {"layer.weight", "layer.SCB", "layer.weight_format"}
    back = dequantize_int8(out["layer.weight"], out["layer.SCB"])
    assert (back - w).abs().max() <= w.abs().amax(dim=1).max() / 127 / 2 + 1e-3
    t = dict(apply_int8("conv1d.weight", w, transpose=True))
    assert t["conv1d.weight"].shape == (32, 48)
