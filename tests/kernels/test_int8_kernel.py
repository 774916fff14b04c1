"""quantkit.kernels.int8 must produce bitsandbytes' INT8 bytes exactly, from numpy."""

from __future__ import annotations

import bitsandbytes.functional as bnbf
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quantkit.errors import QuantkitError
from quantkit.kernels.int8 import dequantize_int8, quantize_int8
from quantkit.schemes import int8 as current

from .conftest import DTYPES, KINDS, as_numpy, hostile


def assert_bitsandbytes_bytes(w: torch.Tensor, transpose: bool) -> None:
    source = w.t() if transpose else w
    ref_codes, ref_scales, _ = bnbf.int8_vectorwise_quant(source.contiguous().to(torch.float16))
    codes, scales = quantize_int8(as_numpy(w), transpose=transpose)
    assert codes.dtype == np.int8 and scales.dtype == np.float32
    np.testing.assert_array_equal(codes, ref_codes.numpy())
    np.testing.assert_array_equal(scales.view(np.uint32), ref_scales.numpy().view(np.uint32))  # NaNs bitwise
    cur_codes, cur_scales = current.quantize_int8(w, transpose=transpose)
    np.testing.assert_array_equal(codes, cur_codes.numpy())
    np.testing.assert_array_equal(scales.view(np.uint32), cur_scales.numpy().view(np.uint32))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("transpose", [False, True])
def test_matches_bitsandbytes(kind, dtype, transpose):
    for shape in [(64, 100), (7, 1), (1, 3000), (300, 257), (1, 1)] + ([] if transpose else [(0, 5)]):
        assert_bitsandbytes_bytes(hostile(shape, kind, seed=shape[0]).to(dtype), transpose)


def test_gpt2_conv1d_shape_chunks():
    w = hostile((1280, 384), "heavy")  # several chunks of stored rows
    for dtype in DTYPES:
        assert_bitsandbytes_bytes(w.to(dtype), transpose=True)
        assert_bitsandbytes_bytes(w.to(dtype), transpose=False)


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 9), cols=st.integers(1, 70), transpose=st.booleans(), dtype=st.sampled_from(DTYPES), data=st.data())
def test_matches_bitsandbytes_on_random_floats(rows, cols, transpose, dtype, data):
    values = data.draw(st.lists(st.floats(width=32, allow_nan=True), min_size=rows * cols, max_size=rows * cols))
    assert_bitsandbytes_bytes(torch.tensor(values, dtype=torch.float32).view(rows, cols).to(dtype), transpose)


def test_round_trip_error_is_half_a_step():
    w = hostile((48, 32), "normal")
    codes, scales = quantize_int8(w.numpy())
    back = dequantize_int8(codes, scales)
    assert np.abs(back - w.numpy()).max() <= scales.max() / 127 / 2 + 1e-3


@pytest.mark.parametrize(
    "weight, message",
    [
        (np.zeros(5, np.float32), "2-D"),
        (np.zeros((2, 2, 2), np.float32), "2-D"),
        (np.zeros((3, 0), np.float32), "no values"),
        (np.zeros((0, 3), np.float32).T, "no values"),
        (np.zeros((2, 2), np.int32), "dtype int32"),
        ([[1.0]], "numpy array"),
    ],
)
def test_hostile_inputs_are_clear_errors(weight, message):
    with pytest.raises(QuantkitError, match=message):
        quantize_int8(weight, name="h.weight")


def test_non_contiguous_input_is_read_as_its_values():
    w = hostile((40, 64), "normal")
    codes, _ = quantize_int8(w.numpy()[:, ::2])
    np.testing.assert_array_equal(codes, quantize_int8(np.ascontiguousarray(w.numpy()[:, ::2]))[0])
