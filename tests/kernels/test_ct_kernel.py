"""compressed-tensors kernels (``quantkit.kernels.ct``) against the numpy reference
(``quantkit.schemes.compressed``'s step-by-step arithmetic, itself byte-identical to
compressed-tensors: tests/schemes/test_ct_kernels.py), bit for bit, NaN patterns included."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from quantkit.kernels import ct
from quantkit.schemes import compressed

DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
SCHEMES = ("fp8", "fp8-block", "w8a16", "w4a16")


def reference(weight: np.ndarray, scheme: str, group_size: int) -> dict[str, np.ndarray]:
    weight = np.ascontiguousarray(weight)
    if scheme == "fp8":
        return compressed.quantize_fp8_channel(weight)
    if scheme == "fp8-block":
        return compressed.quantize_fp8_block(weight)
    return compressed.quantize_int_group(weight, bits=8 if scheme == "w8a16" else 4, group_size=group_size)


def assert_kernel_equals_reference(weight: np.ndarray, scheme: str, group_size: int = 128) -> None:
    with np.errstate(all="ignore"):
        expected = reference(weight, scheme, group_size)
    ours, bad = ct.quantize(weight, scheme, group_size=group_size)
    assert list(ours) == list(expected)
    for key, array in expected.items():
        assert (ours[key].dtype, ours[key].shape) == (array.dtype, array.shape), key
        assert ours[key].tobytes() == array.tobytes(), key
    widened = np.asarray(weight, dtype=np.float32)
    assert bad == (not np.isfinite(widened).all())


def seeded(shape: tuple[int, int], dtype: str, seed: int, std: float = 0.05) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * std).astype(DTYPES[dtype])


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("scheme", ["fp8", "fp8-block"])
@pytest.mark.parametrize("shape", [(1, 1), (1, 127), (1, 128), (3, 129), (129, 257), (128, 128), (130, 384), (7, 1000)], ids=str)
def test_fp8_equals_reference_on_odd_shapes(dtype, scheme, shape):
    assert_kernel_equals_reference(seeded(shape, dtype, sum(shape)), scheme)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("scheme", ["w8a16", "w4a16"])
@pytest.mark.parametrize("shape,group_size", [((1, 128), 128), ((5, 384), 128), ((3, 6), 2), ((2, 9), 3), ((4, 24), 8), ((1, 7), 7), ((9, 96), 32), ((2, 5), 1)], ids=str)
def test_int_equals_reference_on_odd_shapes(dtype, scheme, shape, group_size):
    """Group sizes that leave a ragged last packed word (odd column counts for INT4 too)."""
    assert_kernel_equals_reference(seeded(shape, dtype, shape[1]), scheme, group_size)


def special_weight(dtype: str) -> np.ndarray:
    """Zero rows, NaN / +-inf, the dtype's extremes and subnormals, quotients on rounding
    boundaries of every target (integer halves, FP8 ties, the dtype's own ties)."""
    info = ml_dtypes.finfo(DTYPES[dtype])
    w = seeded((300, 256), "float32", 7).astype(np.float64)
    w[0] = 0.0
    w[1, 3] = np.nan
    w[2, 0] = -np.nan
    w[3, 5] = np.inf
    w[4, 9] = -np.inf
    w[5] = float(info.max) * np.sign(w[5])
    w[6] = w[6] * float(info.smallest_subnormal) * 1e3
    w[7] = float(info.smallest_subnormal)
    w[8] = 0.0
    w[8, 200] = -float(info.smallest_normal)
    w[9] = np.arange(256) - 127.5  # integer quotients on exact halves
    w[10, 130:] = 0.0
    w[10, 0] = -0.0
    grid = np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float64)
    grid = np.sort(grid[np.isfinite(grid) & (grid >= 0)])
    ties = (grid[1:] + grid[:-1]) / 2  # FP8 ties, scaled by a row absmax of 448
    w[11, : len(ties)] = ties[:256]
    w[11, -1] = 448.0
    w[12] = np.linspace(-448, 448, 256)
    w[13, ::2] = 7.5 * (np.arange(128) % 16 - 8 + 0.5) / 8
    w[14] = -0.0
    w[200:, 3] = np.nan  # NaN in a second block row too
    w[150, 250] = np.inf
    with np.errstate(over="ignore"):
        return w.astype(DTYPES[dtype])


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("scheme", SCHEMES)
def test_special_values_equal_reference(dtype, scheme):
    assert_kernel_equals_reference(special_weight(dtype), scheme)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_all_float32_edge_patterns_equal_reference(scheme):
    """Every float32 exponent with mantissas at and around the halfway points, so that the
    divisions land on rounding boundaries of BF16 / FP16 / FP8 / the integers."""
    exponents = np.arange(256, dtype=np.uint32) << 23
    mantissas = np.array([0, 1, 0x7FFF, 0x8000, 0x8001, 0xFFF, 0x1000, 0x1001, 0x3FFFFF, 0x400000, 0x400001, 0x7FFFFF], dtype=np.uint32)
    bits = (exponents[:, None] | mantissas[None, :]).reshape(-1)
    values = np.concatenate([bits, bits | np.uint32(0x80000000)]).view(np.float32)
    values = values[: len(values) // 128 * 128].reshape(-1, 128)
    for dtype in DTYPES.values():
        with np.errstate(over="ignore", invalid="ignore"):
            assert_kernel_equals_reference(values.astype(dtype), scheme)


@settings(max_examples=80, deadline=None)
@given(
    weight=hnp.arrays(np.float32, st.tuples(st.integers(1, 40), st.integers(1, 4).map(lambda k: 32 * k)), elements=st.floats(width=32)),
    scheme=st.sampled_from(SCHEMES),
    dtype=st.sampled_from(list(DTYPES)),
)
def test_property_equal_reference(weight, scheme, dtype):
    with np.errstate(over="ignore"):
        weight = weight.astype(DTYPES[dtype])
    assert_kernel_equals_reference(weight, scheme, 32)


def test_float64_is_left_to_the_reference():
    assert ct.quantize(np.zeros((2, 128)), "fp8", group_size=128) is None
    weight = seeded((4, 128), "float32", 0).astype(np.float64)
    assert compressed.quantize(weight, "fp8")["weight"].tobytes() == compressed.quantize_fp8_channel(weight)["weight"].tobytes()


def test_fp8_code_equals_ml_dtypes_cast():
    """The kernels' arithmetic FP8 encoder against ml_dtypes' float32 -> FP8 cast (nearest
    even, as torch), on random patterns within +-448, every tie between FP8 values, its
    neighbours, the subnormal range, the exact FP8 values and signed zeros."""
    bits = np.random.default_rng(0).integers(0, 1 << 32, 4_000_000, dtype=np.uint64).astype(np.uint32)
    values = bits.view(np.float32)
    grid = np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float64)
    grid = np.sort(grid[np.isfinite(grid)])
    ties = ((grid[1:] + grid[:-1]) / 2).astype(np.float32)
    small = np.random.default_rng(1).uniform(-(2.0**-5), 2.0**-5, 1_000_000).astype(np.float32)
    near = [ties, np.nextafter(ties, np.float32(np.inf)), np.nextafter(ties, np.float32(-np.inf)), grid.astype(np.float32), small]
    values = np.concatenate([values[np.abs(values) <= 448], *near, np.float32([2.0**-149, -(2.0**-149), 0.0, -0.0, 448, -448])])
    codes = np.empty(values.size, dtype=np.uint8)
    ct.fp8_encode(values, 0, values.size, np.float32(1.0), 0, codes, 0)
    assert codes.tobytes() == values.astype(ml_dtypes.float8_e4m3fn).tobytes()
