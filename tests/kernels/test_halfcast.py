"""The FP16 cast kernel against numpy's ``astype(np.float16)``, bit for bit, NaN payloads included."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from quantkit.kernels.halfcast import to_float16

# float32 bit patterns where the rounding changes rule: float16's subnormal half step (2**-25),
# smallest subnormal (2**-24), smallest normal (2**-14), the largest finite (65504), the
# first value that rounds to inf (65520), inf and the NaNs
EDGES = (0x00000000, 0x33000000, 0x33800000, 0x387FC000, 0x38800000, 0x477FE000, 0x477FF000, 0x47800000, 0x7F800000, 0x7FC00000)


def numpy_half(values: np.ndarray) -> tuple[np.ndarray, int]:
    with np.errstate(over="ignore", invalid="ignore"):
        half = values.astype(np.float16)
    return half.view(np.uint16), int(np.count_nonzero(np.isinf(half) & np.isfinite(values)))


def check(values: np.ndarray) -> None:
    out = np.full(values.size, 0xDEAD, np.uint16)
    overflowed = to_float16(values, out)
    expected, expected_overflowed = numpy_half(values)
    differ = np.nonzero(out != expected)[0]
    assert differ.size == 0, [(hex(int(values.view(np.uint16 if values.itemsize == 2 else np.uint32)[i])), hex(out[i]), hex(expected[i])) for i in differ[:5]]
    assert overflowed == expected_overflowed


def test_every_float32_near_each_rounding_edge_both_signs():
    around = np.concatenate([np.arange(max(0, e - 5000), e + 5000, dtype=np.int64) for e in EDGES])
    bits = np.concatenate([around, around | 0x80000000]).astype(np.uint32)
    check(bits.view(np.float32))


def test_a_strided_sweep_of_all_float32_bit_patterns():
    bits = np.arange(0, 1 << 32, 251, dtype=np.uint64).astype(np.uint32)  # 17M values, every exponent and sign
    check(bits.view(np.float32))


def test_every_bfloat16_value():
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    check(bits.view(ml_dtypes.bfloat16))


def test_overflow_is_counted_only_for_finite_values():
    values = np.float32([65504, 65519.996, 65520, -70000, np.inf, -np.inf, np.nan, 3.4e38, 1.0])
    out = np.empty(values.size, np.float16)
    assert to_float16(values, out) == 3  # 65520, -70000, 3.4e38
    assert to_float16(np.float32([1.0, np.inf, np.nan]), np.empty(3, np.float16)) == 0


def test_empty():
    assert to_float16(np.empty(0, np.float32), np.empty(0, np.float16)) == 0


@pytest.mark.slow
def test_every_float32_bit_pattern():
    step = 1 << 24
    for first in range(0, 1 << 32, step):
        check(np.arange(first, first + step, dtype=np.uint64).astype(np.uint32).view(np.float32))
