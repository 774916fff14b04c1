"""The fast CPU 4-bit path must produce bitsandbytes' bytes exactly."""

from __future__ import annotations

import bitsandbytes.functional as bnbf
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quantkit.schemes import fourbit_cpu


def special_values(shape, kind: str, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(shape, generator=g) * 0.02
    flat = a.reshape(-1)
    if kind == "zeros":
        flat.zero_()
    elif kind == "zero_block":
        flat[:64] = 0
    elif kind == "specials":
        flat[::7] = float("inf")
        flat[::11] = float("nan")
        flat[::13] = -float("inf")
        flat[::5] = -0.0
    elif kind == "subnormal":
        flat.mul_(1e-40)
    elif kind == "heavy_tail":
        flat.copy_(torch.distributions.StudentT(2.0).sample(flat.shape))
    elif kind == "on_midpoints":  # values exactly on the code midpoints (the ties)
        code = bnbf.get_4bit_type("nf4", device="cpu")
        mids = (code[:-1] + code[1:]) / 2
        flat.copy_(mids[torch.randint(0, 15, flat.shape, generator=g)])
        flat[::64] = 1.0
    return a


def assert_same(a: torch.Tensor, quant_type: str, blocksize: int, double_quant: bool = False):
    ref_packed, ref_state = bnbf.quantize_4bit(a, blocksize=blocksize, quant_type=quant_type, compress_statistics=double_quant)
    packed, ours = fourbit_cpu.quantize_4bit(a, blocksize=blocksize, quant_type=quant_type, double_quant=double_quant)
    assert torch.equal(packed, ref_packed)
    ref = ref_state.as_dict(packed=True)
    assert ref.keys() == ours.keys()
    for key in ref:
        assert torch.equal(ours[key].view(torch.uint8), ref[key].view(torch.uint8)), key  # bitwise, NaNs included


@pytest.mark.parametrize("kind", ["normal", "zeros", "zero_block", "specials", "subnormal", "heavy_tail", "on_midpoints"])
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_matches_bitsandbytes_on_value_distributions(kind, quant_type, dtype):
    for shape in [(96, 80), (7, 5), (1,), (129, 3)]:
        for blocksize in (32, 64, 4096):
            assert_same(special_values(shape, kind, seed=len(shape)).to(dtype), quant_type, blocksize)


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_matches_bitsandbytes_with_double_quant(quant_type):
    assert_same(special_values((300, 70), "heavy_tail", seed=3), quant_type, 64, double_quant=True)


@pytest.mark.slow  # 60 random examples; the fixed kinds of value stay in the default run
@settings(max_examples=60, deadline=None)
@given(
    numel=st.integers(1, 700),
    blocksize=st.sampled_from([32, 64, 128]),
    quant_type=st.sampled_from(["nf4", "fp4"]),
    data=st.data(),
)
def test_matches_bitsandbytes_on_random_floats(numel, blocksize, quant_type, data):
    values = data.draw(st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), min_size=numel, max_size=numel))
    assert_same(torch.tensor(values, dtype=torch.float32), quant_type, blocksize)


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_code_tables_are_bitsandbytes(quant_type):
    ours, theirs = fourbit_cpu.code_table(quant_type), bnbf.get_4bit_type(quant_type, device="cpu")
    assert torch.equal(ours.view(torch.int32), theirs.float().view(torch.int32))


def test_cpu_path_does_not_import_bitsandbytes():
    import subprocess
    import sys

    code = (
        "import sys, torch; from quantkit.schemes.fourbit import apply_fourbit; from quantkit.schemes.int8 import apply_int8;"
        "apply_fourbit('w', torch.randn(8, 64), quant_type='nf4', blocksize=64, double_quant=False);"
        "apply_int8('w', torch.randn(8, 64)); print('bitsandbytes' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_tables_hold_at_most_one_midpoint_per_prefix():
    assert fourbit_cpu.available("nf4") and fourbit_cpu.available("fp4")


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("shape", [(96, 80), (33, 7), (5, 129), (1, 1000)])
@pytest.mark.parametrize("transposed", [False, True])
def test_chunk_boundaries_and_transposed_views(quant_type, shape, transposed):
    a = special_values(shape, "specials", seed=5)
    a = a.t() if transposed else a
    for blocksize in (32, 64, 128):
        ref_packed, ref_state = bnbf.quantize_4bit(a.contiguous(), blocksize=blocksize, quant_type=quant_type)
        for chunk_elements in (1, 64, 200, 1 << 18):
            packed, absmax = fourbit_cpu.quantize_4bit_codes(a, blocksize, quant_type, chunk_elements=chunk_elements)
            assert torch.equal(packed, ref_packed), (blocksize, chunk_elements)
            assert torch.equal(absmax.view(torch.int32), ref_state.absmax.view(torch.int32))


def _packed_parts(w: torch.Tensor, quant_type: str, blocksize: int, dq: bool) -> tuple:
    packed, state = bnbf.quantize_4bit(w, blocksize=blocksize, quant_type=quant_type, compress_statistics=dq)
    return {"weight": packed, **state.as_dict(packed=True)}, packed, state


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("dq", [False, True])
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("shape,blocksize", [((37, 129), 64), ((256, 300), 32), ((3, 1000), 128), ((1, 7), 64)])
def test_dequantize_equals_bitsandbytes(shape, blocksize, quant_type, dq, dtype):
    w = (torch.randn(shape, generator=torch.Generator().manual_seed(3)) * 3).to(dtype)
    parts, packed, state = _packed_parts(w, quant_type, blocksize, dq)
    ours = fourbit_cpu.dequantize_4bit(parts)
    assert ours.dtype == dtype and ours.shape == shape
    assert torch.equal(ours, bnbf.dequantize_4bit(packed, state))  # values equal (FP4's zero code may be -0 there)


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("shape,blocksize", [((8, 16), 32), ((4, 32), 64), ((8, 16), 64)])
def test_dequantize_is_right_where_bitsandbytes_cpu_is_not(shape, blocksize, quant_type):
    """bitsandbytes' CPU dequantize_4bit gives wrong values after the first block for these
    shapes; each block here holds one 1.0 (stored exactly: it is its block's absmax)."""
    w = torch.zeros(shape)
    w.view(-1)[blocksize - 1 :: blocksize] = 1.0
    parts, _, _ = _packed_parts(w, quant_type, blocksize, False)
    assert torch.equal(fourbit_cpu.dequantize_4bit(parts), w)


@pytest.mark.parametrize("kind", ["normal", "zeros", "zero_block", "specials", "subnormal", "heavy_tail", "on_midpoints"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_transposed_layout_path_matches_bitsandbytes(monkeypatch, kind, dtype, quant_type):
    """Conv1D-style weights ``W [in, out]`` quantized as ``W.t()`` with ``in`` a multiple of the
    block size take the stored-layout path (unless they hold NaN); bytes as bitsandbytes'."""
    taken = []
    real = fourbit_cpu._quantize_transposed
    monkeypatch.setattr(fourbit_cpu, "_quantize_transposed", lambda *a: taken.append(r := real(*a)) or r)
    for shape in [(128, 96), (256, 7), (64, 1), (192, 33)]:
        w = special_values(shape, kind, seed=shape[1]).to(dtype)
        for blocksize in (32, 64):
            ref_packed, ref_state = bnbf.quantize_4bit(w.t().contiguous(), blocksize=blocksize, quant_type=quant_type)
            for chunk_elements in (1, 500, 1 << 18):
                packed, absmax = fourbit_cpu.quantize_4bit_codes(w.t(), blocksize, quant_type, chunk_elements=chunk_elements)
                assert torch.equal(packed, ref_packed), (shape, blocksize, chunk_elements)
                assert torch.equal(absmax.view(torch.int32), ref_state.absmax.view(torch.int32)), (shape, blocksize)
    has_nan = kind == "specials"
    assert len(taken) == 3 * 2 * 3 and all  # (64, 1) transposed is contiguous: the general path((r is None) == has_nan for r in taken)
