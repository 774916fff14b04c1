"""torch's CPU arithmetic for BF16 / FP16 / FP32 / FP64 weights, reproduced in numpy for the
compressed-tensors kernels (``compressed.py``): each operation in float32 (float64 for F64),
its result rounded once to the weight's dtype; absmax and scales as compressed-tensors
computes them; float32 to FP8 E4M3 codes, rounded to nearest even.
"""

from __future__ import annotations

import functools

import ml_dtypes
import numpy as np

FP8_MAX = 448.0  # float8_e4m3fn's largest finite value


def widen(values: np.ndarray) -> np.ndarray:
    """The array in the precision torch computes its arithmetic in: float32 for BF16 and
    FP16 (exact), as it is for float32 and float64."""
    if values.dtype in (np.float32, np.float64):
        return values
    if values.dtype == np.float16:  # numpy's own FP16 cast is ~6x slower than a lookup here
        return np.take(_f16_to_f32_table(), values.view(np.uint16))
    return values.astype(np.float32)


def round_to(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Round a float32 result to ``dtype`` (and back, exactly), as torch stores each BF16 /
    FP16 operation's result."""
    if values.dtype == dtype:
        return values
    if dtype == np.float16 and np.isfinite(values).all():
        return _round_f16(values)
    return values.astype(dtype).astype(np.float32)


@functools.cache
def _f16_to_f32_table() -> np.ndarray:
    return np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)


def _round_f16(values: np.ndarray, *, chunk: int = 1 << 16) -> np.ndarray:
    """Finite float32 values rounded to the nearest-even FP16 value, kept as float32: the
    mantissa cut to 10 bits with integer arithmetic (normal FP16 results), the subnormal range
    (below 2^-14) rounded on its fixed 2^-24 grid. Same values as numpy's own cast, faster."""
    flat = values.reshape(-1)
    out = np.empty(flat.shape, dtype=np.uint32)
    for start in range(0, flat.size, chunk):
        x = flat[start : start + chunk]
        bits = x.view(np.uint32)
        rounded = out[start : start + chunk]
        np.right_shift(bits, 13, out=rounded)
        rounded &= np.uint32(1)  # the kept mantissa's last bit: ties go to even
        rounded += np.uint32(0xFFF)
        rounded += bits
        rounded &= np.uint32(0xFFFFE000)
        small = np.abs(x) < np.float32(2.0**-14)
        if small.any():
            rounded.view(np.float32)[small] = np.rint(x[small] * np.float32(2.0**24)) * np.float32(2.0**-24)
    return out.view(np.float32).reshape(values.shape)


def absmax(wide: np.ndarray, *, axis: int) -> np.ndarray:
    """``max(|min(x.min, 0)|, |max(x.max, 0)|)`` along ``axis``; NaN when the slice holds one."""
    high = np.maximum(wide.max(axis=axis), 0)
    low = np.minimum(wide.min(axis=axis), 0)
    return np.maximum(np.abs(low), high)


def scale_from_absmax(absmax: np.ndarray, half_range: float, dtype: np.dtype) -> np.ndarray:
    """``absmax / half_range`` in ``dtype``, a zero scale replaced by ``finfo(dtype).eps``."""
    scale = (absmax / absmax.dtype.type(half_range)).astype(dtype)
    nan = np.isnan(scale)
    if nan.any():  # one fixed NaN pattern (see the module's note on NaN bit patterns)
        scale[nan] = np.nan
    scale[scale == 0] = ml_dtypes.finfo(dtype).eps
    return scale


def divide(wide: np.ndarray, wide_scale: np.ndarray) -> np.ndarray:
    """``x / scale`` in float32 (float64 for F64), not yet rounded to a BF16 / FP16 weight's
    dtype: the callers clamp first, then round."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return wide / wide_scale


def times_scale(codes: np.ndarray, scale: np.ndarray) -> np.ndarray:
    product = codes * widen(scale)
    return product.astype(scale.dtype)


@functools.cache
def _fp8_table() -> np.ndarray:
    """FP8 E4M3 code of every float32 whose bits 0-14 are zero, indexed by its bits 15-31.

    Rounding a float32 to FP8 (3 mantissa bits) looks at bit 19 and up for normal results,
    higher for subnormal ones, and at bits below only through "any of them set". Folding
    bits 0-14 into bit 15 as one "any set" bit keeps every rounding decision, so the code of
    any float32 is this table at ``(u | sticky(u & 0x7FFF) << 15) >> 15``: two times faster
    than ml_dtypes' own cast here, and the same bytes (ml_dtypes rounds to nearest even, as
    torch does)."""
    with np.errstate(invalid="ignore", over="ignore"):
        return (np.arange(1 << 17, dtype=np.uint32) << 15).view(np.float32).astype(ml_dtypes.float8_e4m3fn).view(np.uint8)


def encode_fp8(values: np.ndarray, *, chunk: int = 1 << 16) -> np.ndarray:
    """FP8 codes of float32 (or BF16) values, rounded to nearest even; chunks stay in cache."""
    table = _fp8_table()
    flat = values.reshape(-1)
    codes = np.empty(flat.shape, dtype=np.uint8)
    if values.dtype == ml_dtypes.bfloat16:  # BF16 bits are float32's bits 16-31
        for start in range(0, flat.size, chunk):
            index = flat[start : start + chunk].view(np.uint16).astype(np.uint32)
            index <<= 1
            np.take(table, index, out=codes[start : start + chunk])
        return codes.reshape(values.shape).view(ml_dtypes.float8_e4m3fn)
    for start in range(0, flat.size, chunk):
        bits = flat[start : start + chunk].view(np.uint32)
        index = bits & np.uint32(0x7FFF)
        index += np.uint32(0x7FFF)  # bit 15 now says "bits 0-14 were not all zero"
        index |= bits
        index >>= 15
        np.take(table, index, out=codes[start : start + chunk])
    return codes.reshape(values.shape).view(ml_dtypes.float8_e4m3fn)
