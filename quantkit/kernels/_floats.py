"""Element conversions the kernels share, on bit patterns, compiled inline.

Inputs arrive as the bytes a checkpoint stores: float32, or bfloat16 / float16 viewed as
uint16 (numba has no bfloat16 type). Each kernel widens them to float32, which is exact,
as bitsandbytes' ``A.float()`` is. NaN inputs never reach these paths' results: the
kernels report them and the caller takes the reference path (see ``_reference``).
"""

from __future__ import annotations

import numpy as np

from ._jit import kernel

F32_ONE = np.float32(1.0)
_TWO_POW_M24 = np.float32(2.0**-24)  # float16's smallest subnormal
_HALF_SUBNORMAL_MAGIC = np.float32(0.5)  # floats near 0.5 are 2**-24 apart


@kernel(inline=True)
def bf16_to_f32(bits):
    return np.uint32(np.uint32(bits) << np.uint32(16)).view(np.float32)


@kernel(inline=True)
def f16_to_f32(bits):
    """An IEEE half's bits as float32 (exact); NaN payloads are not kept (NaNs are reported)."""
    b = np.int32(bits)
    sign = np.int32((b & np.int32(0x8000)) << np.int32(16))
    magnitude = np.int32(b & np.int32(0x7FFF))
    shifted = np.int32(magnitude << np.int32(13))
    # exponent rebased from 15 to 127; inf / NaN (exponent 31) to 255
    rebased = np.int32(shifted + np.int32(112 << 23) + (np.int32(112 << 23) if magnitude >= np.int32(0x7C00) else np.int32(0)))
    subnormal = np.float32(magnitude) * _TWO_POW_M24  # int32 to float: exact below 2**24, and vectorises
    value = subnormal if magnitude < np.int32(0x400) else np.int32(rebased).view(np.float32)
    return np.int32(np.float32(value).view(np.int32) | sign).view(np.float32)


@kernel(inline=True)
def round_to_f16(x):
    """``x`` rounded to the nearest float16 (ties to even, overflow to inf), as float32:
    the value ``x.to(torch.float16)`` holds. NaN stays NaN."""
    b = np.float32(x).view(np.uint32)
    sign = b & np.uint32(0x80000000)
    magnitude = b & np.uint32(0x7FFFFFFF)
    # normal range: drop 13 mantissa bits, rounding to nearest even (a carry may raise the exponent)
    odd = (magnitude >> np.uint32(13)) & np.uint32(1)
    normal = np.uint32((magnitude + np.uint32(0xFFF) + odd) & np.uint32(0xFFFFE000))
    # subnormal range: multiples of 2**-24, by the float adder's own rounding
    tiny = np.float32((abs(x) + _HALF_SUBNORMAL_MAGIC) - _HALF_SUBNORMAL_MAGIC).view(np.uint32)
    rounded = tiny if magnitude < np.uint32(0x38800000) else normal
    rounded = np.uint32(0x7F800000) if magnitude >= np.uint32(0x477FF000) else rounded
    rounded = magnitude if magnitude > np.uint32(0x7F800000) else rounded
    return np.uint32(rounded | sign).view(np.float32)


_F16_NORMAL_MIN = np.float32(2.0**-14)
F16_OVERFLOW_BITS = np.uint32(0x477FF000)  # |x| from here up rounds to inf in float16
ABS_MASK = np.uint32(0x7FFFFFFF)
INF_BITS = np.uint32(0x7F800000)


@kernel
def round_to_f16_in_range(x):
    """``round_to_f16`` for |x| below ``F16_OVERFLOW_BITS`` and not NaN: the common case,
    in a form the compiler vectorises (~2.5x faster)."""
    b = np.float32(x).view(np.uint32)
    normal = np.uint32((b + np.uint32(0xFFF) + ((b >> np.uint32(13)) & np.uint32(1))) & np.uint32(0xFFFFE000))
    magnitude = abs(x)
    tiny = np.copysign((magnitude + _HALF_SUBNORMAL_MAGIC) - _HALF_SUBNORMAL_MAGIC, x)
    return tiny if magnitude < _F16_NORMAL_MIN else normal.view(np.float32)


@kernel
def abs_max_bits(row):
    """The largest |value| of a float32 row, as bits: for floats that are not NaN, the
    order of their magnitude bits is the order of their magnitudes, and an integer maximum
    vectorises where a float one (NaN rules) does not. Above ``INF_BITS``: a NaN is there."""
    bits = row.view(np.uint32)
    largest = np.uint32(0)
    for i in range(bits.shape[0]):
        largest = max(largest, np.uint32(bits[i] & ABS_MASK))
    return largest
