"""Property tests: quantize then dequantize keeps shapes and stays within each scheme's error bound."""

from __future__ import annotations

import bitsandbytes.functional as bnbf
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quantkit.schemes.cast import cast
from quantkit.schemes.fourbit_cpu import code_table
from quantkit.schemes.fourbit import apply_fourbit, dequantize_fourbit
from quantkit.schemes.int8 import apply_int8, dequantize_int8

finite = st.floats(min_value=-1e4, max_value=1e4, width=32, allow_subnormal=True)


@st.composite
def matrices(draw, max_rows=24, max_cols=80):
    rows, cols = draw(st.integers(1, max_rows)), draw(st.integers(1, max_cols))
    values = draw(st.lists(finite, min_size=rows * cols, max_size=rows * cols))
    w = torch.tensor(values, dtype=torch.float32).reshape(rows, cols)
    zero_row = draw(st.integers(-1, rows - 1))
    if zero_row >= 0:
        w[zero_row] = 0.0
    return w


def _half_gap(quant_type: str) -> float:
    code = code_table(quant_type).sort().values
    return float((code[1:] - code[:-1]).max()) / 2


@settings(max_examples=40, deadline=None)
@given(w=matrices(), transpose=st.booleans())
def test_int8_round_trip_within_half_a_step(w, transpose):
    out = dict(apply_int8("m.weight", w, transpose=transpose))
    back = dequantize_int8(out["m.weight"], out["m.SCB"])
    ref = (w.t() if transpose else w).to(torch.float16).float()  # bitsandbytes quantizes the FP16 weight
    assert back.shape == ref.shape
    step = ref.abs().amax(dim=1, keepdim=True) / 127
    assert torch.all((back - ref).abs() <= step / 2 * 1.001 + 1e-30)
    assert torch.all(back[ref == 0] == 0)


@settings(max_examples=30, deadline=None)
@given(w=matrices(), quant_type=st.sampled_from(["nf4", "fp4"]), blocksize=st.sampled_from([32, 64, 128]), dq=st.booleans())
def test_fourbit_round_trip_within_half_a_code_gap(w, quant_type, blocksize, dq):
    out = dict(apply_fourbit("m.weight", w, quant_type=quant_type, blocksize=blocksize, double_quant=dq))
    parts = {k.removeprefix("m.weight."): v for k, v in out.items() if k != "m.weight"}
    back = dequantize_fourbit({"weight": out["m.weight"], **parts})
    assert back.shape == w.shape and back.dtype == w.dtype
    flat, deq = w.reshape(-1), back.reshape(-1)
    pad = (-flat.numel()) % blocksize
    absmax = torch.nn.functional.pad(flat.abs(), (0, pad)).reshape(-1, blocksize).amax(dim=1)
    bound = torch.repeat_interleave(absmax, blocksize)[: flat.numel()] * _half_gap(quant_type)
    if dq:  # double quantization stores the absmax values in 8 bits: allow their error too
        bound = bound * 1.02 + absmax.max() * 0.02
    assert torch.all((deq - flat).abs() <= bound * (1 + 1e-5) + 1e-30)


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_fourbit_special_values_dequantize_as_bitsandbytes(quant_type):
    w = torch.randn(8, 64) * 0.02
    w[0, :5] = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e-42, -0.0])
    w[1] = 0.0
    ours = dict(apply_fourbit("m.weight", w, quant_type=quant_type, blocksize=64, double_quant=False))
    packed, state = bnbf.quantize_4bit(w, blocksize=64, quant_type=quant_type)
    theirs = bnbf.dequantize_4bit(packed, state)
    parts = {k.removeprefix("m.weight."): v for k, v in ours.items() if k != "m.weight"}
    back = dequantize_fourbit({"weight": ours["m.weight"], **parts})
    assert torch.equal(back.isnan(), theirs.isnan())
    assert torch.equal(torch.nan_to_num(back), torch.nan_to_num(theirs))
    assert torch.all(back[1] == 0)


@settings(max_examples=40, deadline=None)
@given(w=matrices(), scale=st.sampled_from([1.0, 30.0]), dtype=st.sampled_from([torch.bfloat16, torch.float16]))
def test_casts_round_to_nearest_and_count_overflow(w, scale, dtype):
    w = w * scale  # up to 3e5: beyond FP16's range
    out, overflow = cast(w, dtype)
    assert out.shape == w.shape and out.dtype == dtype
    expected = int((w.abs() >= 65520).sum()) if dtype == torch.float16 else 0  # 65520 rounds up to inf
    assert overflow == expected
    finite_out = torch.isfinite(out)
    rel = (out[finite_out].float() - w[finite_out]).abs() <= w[finite_out].abs() * torch.finfo(dtype).eps + torch.finfo(dtype).smallest_normal
    assert torch.all(rel)
