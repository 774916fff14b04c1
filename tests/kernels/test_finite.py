"""kernels.finite.all_finite against numpy's isfinite: every bit pattern of the 8- and 16-bit
formats, edge patterns of the 32- and 64-bit ones, at every place in a slice and past it."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from quantkit.kernels.finite import _MASKS, _SLICE, all_finite

SMALL = [np.float16, ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2]


def _isfinite(values: np.ndarray) -> np.ndarray:
    return np.isfinite(values.astype(np.float64))  # ml_dtypes' own widening, exact


@pytest.mark.parametrize("dtype", SMALL, ids=lambda d: np.dtype(d).name)
def test_every_bit_pattern_of_the_small_formats(dtype):
    unsigned = _MASKS[np.dtype(dtype)][0]
    values = np.arange(1 << (8 * np.dtype(unsigned).itemsize), dtype=np.uint32).astype(unsigned).view(dtype)
    expected = _isfinite(values)
    assert (~expected).any() and expected.any()
    got = np.array([all_finite(values[i : i + 1]) for i in range(values.size)])
    assert (got == expected).all()
    assert all_finite(values[expected]) and not all_finite(values)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_edge_patterns_of_the_wide_formats(dtype):
    info = np.finfo(dtype)
    finite = np.array([0.0, -0.0, info.tiny, info.smallest_subnormal, info.max, -info.max, 1.0], dtype=dtype)
    assert all_finite(finite)
    unsigned = _MASKS[np.dtype(dtype)][0]
    top = np.iinfo(unsigned).max
    exponent = int(_MASKS[np.dtype(dtype)][1])
    for bits in (exponent, exponent | 1, top, top >> 1, exponent | (1 << (8 * np.dtype(unsigned).itemsize - 1))):  # inf, NaNs, -inf
        assert not all_finite(np.array([bits], dtype=unsigned).view(dtype))


@pytest.mark.parametrize("at", [0, _SLICE - 1, _SLICE, 2 * _SLICE + 7])
def test_a_nan_is_found_wherever_it_is(at):
    values = np.ones(2 * _SLICE + 8, dtype=np.float32)
    assert all_finite(values)
    values[at] = np.nan
    assert not all_finite(values)
    assert not all_finite(values.reshape(-1, 8))  # any shape


def test_a_strided_view_or_an_unlisted_format_is_checked_by_numpy():
    values = np.ones(64, dtype=np.float32)
    values[1] = np.inf
    assert all_finite(values[::2]) and not all_finite(values[1::2])
    odd = np.ones(8, dtype=ml_dtypes.float8_e4m3fnuz)
    assert all_finite(odd)
    odd[3] = np.nan
    assert not all_finite(odd)
