"""quantkit.kernels.fourbit must produce bitsandbytes' NF4 / FP4 bytes exactly, from numpy."""

from __future__ import annotations

import bitsandbytes.functional as bnbf
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quantkit.errors import QuantkitError
from quantkit.kernels.fourbit import code_table, quantize_4bit_codes
from quantkit.schemes import fourbit_cpu as current

from .conftest import DTYPES, KINDS, as_numpy, hostile


def assert_bitsandbytes_bytes(w: torch.Tensor, blocksize: int, quant_type: str, transpose: bool = False) -> None:
    source = (w.t() if transpose else w).contiguous()
    ref_packed, ref_state = bnbf.quantize_4bit(source, blocksize=blocksize, quant_type=quant_type)
    packed, absmax = quantize_4bit_codes(as_numpy(w), blocksize=blocksize, quant_type=quant_type, transpose=transpose)
    assert packed.dtype == np.uint8 and absmax.dtype == np.float32
    np.testing.assert_array_equal(packed, ref_packed.numpy())
    np.testing.assert_array_equal(absmax.view(np.uint32), ref_state.absmax.numpy().view(np.uint32))  # NaNs bitwise
    cur_packed, cur_absmax = current.quantize_4bit_codes(w.t() if transpose else w, blocksize, quant_type)
    np.testing.assert_array_equal(packed, cur_packed.numpy())
    np.testing.assert_array_equal(absmax.view(np.uint32), cur_absmax.numpy().view(np.uint32))


@pytest.mark.parametrize("kind", KINDS + ["on-midpoints"])
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_bitsandbytes(kind, quant_type, dtype):
    for shape in [(96, 80), (7, 5), (1,), (3,), (129, 3), (0,), (2, 3, 40)]:
        if kind == "on-midpoints":  # values exactly on the midpoints (ties), each block's absmax 1
            table = np.sort(code_table(quant_type))
            mids = torch.from_numpy((table[:-1] + table[1:]) / np.float32(2))
            w = mids[torch.randint(0, 15, shape, generator=torch.Generator().manual_seed(1))]
            w.view(-1)[::32] = 1.0
        else:
            w = hostile(shape, kind, seed=len(shape))
        for blocksize in (32, 64, 4096):
            assert_bitsandbytes_bytes(w.to(dtype), blocksize, quant_type)


@pytest.mark.parametrize("kind", ["normal", "specials", "nan", "subnormal"])
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_transposed_conv1d_weights(kind, quant_type, dtype):
    for shape in [(128, 96), (256, 7), (64, 1), (192, 33), (33, 70), (1280, 48)]:
        w = hostile(shape, kind, seed=shape[1]).to(dtype)
        for blocksize in (32, 64, 4096):
            assert_bitsandbytes_bytes(w, blocksize, quant_type, transpose=True)


@pytest.mark.slow  # 80 random examples; test_matches_bitsandbytes covers each kind of value in the default run
@settings(max_examples=80, deadline=None)
@given(
    numel=st.integers(1, 700),
    blocksize=st.sampled_from([32, 64, 128]),
    quant_type=st.sampled_from(["nf4", "fp4"]),
    dtype=st.sampled_from(DTYPES),
    data=st.data(),
)
def test_matches_bitsandbytes_on_random_floats(numel, blocksize, quant_type, dtype, data):
    values = data.draw(st.lists(st.floats(width=32, allow_nan=True), min_size=numel, max_size=numel))
    assert_bitsandbytes_bytes(torch.tensor(values, dtype=torch.float32).to(dtype), blocksize, quant_type)


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_code_tables_are_bitsandbytes(quant_type):
    theirs = bnbf.get_4bit_type(quant_type, device="cpu").float().numpy()
    np.testing.assert_array_equal(code_table(quant_type).view(np.uint32), theirs.view(np.uint32))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"blocksize": 48}, "block size 48"),
        ({"blocksize": 8192}, "block size 8192"),
        ({"quant_type": "int4"}, "unknown 4-bit type"),
        ({"transpose": True, "weight": np.zeros(8, np.float32)}, "2-D"),
        ({"weight": np.zeros(8, np.float64)}, "dtype float64"),
    ],
)
def test_hostile_inputs_are_clear_errors(kwargs, message):
    args = {"weight": np.zeros((4, 64), np.float32), "blocksize": 64, "quant_type": "nf4", "name": "h.weight"} | kwargs
    with pytest.raises(QuantkitError, match=message):
        quantize_4bit_codes(args.pop("weight"), **args)
