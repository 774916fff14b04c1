"""compressed-tensors FP8 / FP8-block / INT8 / INT4 weights, fused: absmax, scale, divide,
clamp, round and encode (or pack) in one kernel per row, block or group.

The arithmetic is ``quantkit.schemes.compressed``'s numpy reference, step by step (which is
compressed-tensors' own, byte for byte): a row / block / group's ``absmax`` is its largest
|value| (NaN if it holds one), ``scale = absmax / half_range`` in float32 rounded once to
the weight's dtype (a zero scale becomes that dtype's ``eps``), each ``x / scale`` in
float32 is clamped (+-448 for FP8, the integer range otherwise), rounded once to the
weight's dtype, then cast to FP8 (nearest even) or rounded half to even to an integer. A
group whose scale is not finite stores integer code 0; a NaN quotient stores FP8 0x7F.

Inputs are the bytes a checkpoint holds: float32, or bfloat16 / float16 viewed as uint16
(``kind`` 0, 1, 2). float64 weights stay on the numpy reference. The kernels release the
GIL and run one per converter worker thread (no ``prange``: numba's default threading
layer cannot be entered by two threads at once, and the converter's two workers already
keep both cores busy).
"""

from __future__ import annotations

import functools

import ml_dtypes
import numpy as np

from ._floats import ABS_MASK, INF_BITS, bf16_to_f32, f16_to_f32, round_to_f16
from ._jit import kernel

KINDS = {np.dtype(np.float32): 0, np.dtype(ml_dtypes.bfloat16): 1, np.dtype(np.float16): 2}
FP8_MAX = np.float32(448.0)
FP8_NAN_CODE = np.uint8(0x7F)


@functools.cache
def fp8_table() -> np.ndarray:
    """FP8 E4M3 code of every float32 whose bits 0-14 are zero, indexed by its bits 15-31
    (a float32's code is this table at ``(bits | sticky(bits & 0x7FFF) << 15) >> 15``; see
    ``encode_fp8``). Built from ml_dtypes' cast, which rounds to nearest even as torch does."""
    with np.errstate(invalid="ignore", over="ignore"):
        return (np.arange(1 << 17, dtype=np.uint32) << 15).view(np.float32).astype(ml_dtypes.float8_e4m3fn).view(np.uint8)


@kernel
def load(src, i, kind):
    """Element ``i`` of a float32 / bfloat16-bits / float16-bits array as float32 (exact)."""
    if kind == 0:
        return np.float32(src[i])
    if kind == 1:
        return bf16_to_f32(src[i])
    return f16_to_f32(src[i])


@kernel
def round_to_kind(x, kind):
    """``x`` rounded to the weight's dtype (nearest even), kept as float32. NaN stays NaN."""
    if kind == 0:
        return x
    if kind == 2:
        return round_to_f16(x)
    bits = np.float32(x).view(np.uint32)
    if (bits & ABS_MASK) > INF_BITS:
        return x
    odd = (bits >> np.uint32(16)) & np.uint32(1)
    return np.uint32((bits + np.uint32(0x7FFF) + odd) & np.uint32(0xFFFF0000)).view(np.float32)


@kernel
def scale_of(largest_bits, half_range, eps, kind):
    """The stored scale (as float32) of a slice whose largest |value| has these bits."""
    if largest_bits > INF_BITS:
        return np.float32(np.nan)
    scale = round_to_kind(np.uint32(largest_bits).view(np.float32) / half_range, kind)
    return eps if scale == np.float32(0.0) else scale


@kernel
def encode_fp8(q, kind, table):
    """The FP8 code of ``x / scale`` (float32, not yet clamped or rounded to the dtype)."""
    if q != q:
        return FP8_NAN_CODE
    q = min(max(q, -FP8_MAX), FP8_MAX)
    bits = np.float32(round_to_kind(q, kind)).view(np.uint32)
    sticky = ((bits & np.uint32(0x7FFF)) + np.uint32(0x7FFF)) & np.uint32(0x8000)
    return table[(bits | sticky) >> np.uint32(15)]


@kernel
def fp8_rows(src, kind, cols, codes, scales, table):
    """FP8 per output row: ``codes`` uint8 ``[rows * cols]``, ``scales`` float32 ``[rows]``.
    Returns whether any scale is not finite."""
    eps = np.float32(2.0**-23) if kind == 0 else (np.float32(2.0**-7) if kind == 1 else np.float32(2.0**-10))
    rows = scales.shape[0]
    finite = True
    for r in range(rows):
        start = r * cols
        largest = np.uint32(0)
        for c in range(start, start + cols):
            largest = max(largest, np.uint32(np.float32(load(src, c, kind)).view(np.uint32) & ABS_MASK))
        scale = scale_of(largest, FP8_MAX, eps, kind)
        scales[r] = scale
        if largest >= INF_BITS:
            finite = False
        for c in range(start, start + cols):
            codes[c] = encode_fp8(load(src, c, kind) / scale, kind, table)
    return not finite


@kernel
def fp8_blocks(src, kind, rows, cols, block, codes, scales, table):
    """FP8 per ``block x block`` tile: ``codes`` uint8 ``[rows * cols]``, ``scales`` float32
    ``[ceil(rows/block), ceil(cols/block)]``; ragged edge tiles are scaled from what they hold.
    Returns whether any scale is not finite."""
    eps = np.float32(2.0**-23) if kind == 0 else (np.float32(2.0**-7) if kind == 1 else np.float32(2.0**-10))
    finite = True
    for br in range(scales.shape[0]):
        r0, r1 = br * block, min(rows, br * block + block)
        for bc in range(scales.shape[1]):
            c0, c1 = bc * block, min(cols, bc * block + block)
            largest = np.uint32(0)
            for r in range(r0, r1):
                for c in range(r * cols + c0, r * cols + c1):
                    largest = max(largest, np.uint32(np.float32(load(src, c, kind)).view(np.uint32) & ABS_MASK))
            scale = scale_of(largest, FP8_MAX, eps, kind)
            scales[br, bc] = scale
            if largest >= INF_BITS:
                finite = False
            for r in range(r0, r1):
                for c in range(r * cols + c0, r * cols + c1):
                    codes[c] = encode_fp8(load(src, c, kind) / scale, kind, table)
    return not finite


@kernel
def int_groups(src, kind, cols, group, bits, packed, scales):
    """Symmetric integers in groups of ``group`` along each row, offset to unsigned and packed
    little end first: ``packed`` uint8 ``[rows, row_bytes]`` (zero padded), ``scales`` float32
    ``[rows, cols // group]``. Returns whether any scale is not finite."""
    eps = np.float32(2.0**-23) if kind == 0 else (np.float32(2.0**-7) if kind == 1 else np.float32(2.0**-10))
    q_max = np.float32((1 << (bits - 1)) - 1)
    q_min = np.float32(-(1 << (bits - 1)))
    half_range = np.float32(127.5) if bits == 8 else np.float32(7.5)
    offset = np.int32(1 << (bits - 1))
    finite = True
    for r in range(scales.shape[0]):
        out = packed[r]
        out[:] = 0
        for g in range(scales.shape[1]):
            start = r * cols + g * group
            largest = np.uint32(0)
            for c in range(start, start + group):
                largest = max(largest, np.uint32(np.float32(load(src, c, kind)).view(np.uint32) & ABS_MASK))
            scale = scale_of(largest, half_range, eps, kind)
            scales[r, g] = scale
            ok = largest < INF_BITS
            if not ok:
                finite = False
            for k in range(group):
                code = offset
                if ok:
                    q = min(max(load(src, start + k, kind) / scale, q_min), q_max)
                    code += np.int32(np.rint(round_to_kind(q, kind)))
                col = g * group + k
                if bits == 8:
                    out[col] = np.uint8(code)
                else:
                    out[col >> 1] |= np.uint8(code << ((col & 1) * 4))
    return not finite


def quantize(weight: np.ndarray, scheme: str, *, group_size: int, block: int = 128) -> tuple[dict[str, np.ndarray], bool] | None:
    """``{suffix: array}`` for a checked 2-D weight, as ``quantkit.schemes.compressed.quantize``
    returns it, and whether some scale is not finite (the weight held NaN or inf); None for a
    dtype the kernels do not take (float64: the numpy reference quantizes it)."""
    kind = KINDS.get(weight.dtype)
    if kind is None:
        return None
    rows, cols = weight.shape
    src = np.ascontiguousarray(weight).reshape(-1)
    src = src if kind == 0 else src.view(np.uint16)
    if scheme in ("fp8", "fp8-block"):
        codes = np.empty(rows * cols, dtype=np.uint8)
        if scheme == "fp8":
            scales = np.empty((rows, 1), dtype=np.float32)
            bad = fp8_rows(src, kind, cols, codes, scales.reshape(-1), fp8_table())
        else:
            scales = np.empty((-(-rows // block), -(-cols // block)), dtype=np.float32)
            bad = fp8_blocks(src, kind, rows, cols, block, codes, scales, fp8_table())
        return {"weight": codes.view(ml_dtypes.float8_e4m3fn).reshape(rows, cols), "weight_scale": _stored(scales, weight.dtype)}, bad
    bits = 8 if scheme == "w8a16" else 4
    packed = np.empty((rows, -(-cols * bits // 32) * 4), dtype=np.uint8)
    scales = np.empty((rows, cols // group_size), dtype=np.float32)
    bad = int_groups(src, kind, cols, group_size, bits, packed, scales)
    stored = {
        "weight_packed": packed.view("<i4").astype(np.int32, copy=False),
        "weight_scale": _stored(scales, weight.dtype),
        "weight_shape": np.array([rows, cols], dtype=np.int64),
    }
    return stored, bad


def _stored(scales: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """float32 scales (values already of ``dtype``) in ``dtype``; NaN as the canonical quiet NaN."""
    out = scales.astype(dtype)
    nan = np.isnan(scales)
    if nan.any():
        out[nan] = np.nan
    return out
