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

import ml_dtypes
import numpy as np

from ._floats import ABS_MASK, INF_BITS, bf16_to_f32, f16_to_f32, round_to_f16, round_to_f16_in_range
from ._jit import kernel

KINDS = {np.dtype(np.float32): 0, np.dtype(ml_dtypes.bfloat16): 1, np.dtype(np.float16): 2}
FP8_MAX = np.float32(448.0)
FP8_NAN_CODE = np.uint8(0x7F)
_SUBNORMAL_MAGIC = np.float32(16384.0)  # its last place is 2**-9, FP8's subnormal step
_FP8_NORMAL_MIN_BITS = np.int32(0x3C800000)  # 2**-6
_RINT_MAGIC = np.float32(12582912.0)  # 1.5 * 2**23


@kernel
def widen_into(src, start, count, kind, out):
    """``out[:count] = src[start:start + count]`` as float32 (exact), one loop per kind."""
    if kind == 0:
        for i in range(count):
            out[i] = np.float32(src[start + i])
    elif kind == 1:
        for i in range(count):
            out[i] = bf16_to_f32(src[start + i])
    else:
        for i in range(count):
            out[i] = f16_to_f32(src[start + i])


@kernel
def round_bf16(x):
    """``x`` (not NaN) rounded to the nearest-even bfloat16, kept as float32."""
    bits = np.float32(x).view(np.uint32)
    return np.uint32((bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)).view(np.float32)


@kernel
def round_to_kind(x, kind):
    """``x`` rounded to the weight's dtype (nearest even), kept as float32. NaN stays NaN."""
    if kind == 0 or x != x:
        return x
    return round_to_f16(x) if kind == 2 else round_bf16(x)


@kernel
def clamp(x, low, high):
    """``x`` within [low, high]; NaN stays NaN (as torch.clamp and np.clip)."""
    return low if x < low else (high if x > high else x)


@kernel
def fp8_code(q):
    """The FP8 E4M3 code of a float32 within +-448 (not NaN), rounded to nearest even, with
    integer and float arithmetic only (so that loops of it vectorise): normal results keep 3
    mantissa bits and rebase the exponent from 127 to 7; below 2**-6 the float adder rounds
    to a multiple of 2**-9 (16384's last place), which times 512 is the code (8: 2**-6).
    Signed 32-bit integers throughout: AVX2 converts float32 to int32 in one instruction, to
    uint32 in several (same codes for every float32 within +-448, checked exhaustively)."""
    bits = np.float32(q).view(np.int32)
    magnitude = bits & np.int32(0x7FFFFFFF)
    normal = ((magnitude + np.int32(0x7FFFF) + ((magnitude >> np.int32(20)) & np.int32(1))) >> np.int32(20)) - np.int32(120 << 3)
    tiny = np.int32(((np.float32(abs(q)) + _SUBNORMAL_MAGIC) - _SUBNORMAL_MAGIC) * np.float32(512.0))
    code = tiny if magnitude < _FP8_NORMAL_MIN_BITS else normal
    return np.uint8(code | ((bits >> np.int32(24)) & np.int32(0x80)))


@kernel
def scale_of(largest_bits, half_range, eps, kind):
    """The stored scale (as float32) of a slice whose largest |value| has these bits."""
    if largest_bits > INF_BITS:
        return np.float32(np.nan)
    scale = round_to_kind(np.uint32(largest_bits).view(np.float32) / half_range, kind)
    return eps if scale == np.float32(0.0) else scale


@kernel
def largest_bits(values, start, stop):
    """The largest |value| of ``values[start:stop]`` as float32 bits (NaN: above INF_BITS)."""
    bits = values.view(np.uint32)
    largest = np.uint32(0)
    for i in range(start, stop):
        largest = max(largest, np.uint32(bits[i] & ABS_MASK))
    return largest


@kernel
def fp8_encode(values, start, stop, scale, kind, codes, first):
    """``codes[first + i]`` = FP8 of ``values[start + i] / scale``, clamped to +-448 and rounded
    to the weight's dtype first; one vectorisable loop per kind where the scale is finite
    (no quotient is NaN then), a scalar one with NaN checks where it is not."""
    n = stop - start
    if not (abs(scale) < np.inf):
        for i in range(n):
            q = values[start + i] / scale
            codes[first + i] = FP8_NAN_CODE if q != q else fp8_code(round_to_kind(clamp(q, -FP8_MAX, FP8_MAX), kind))
    elif kind == 0:
        for i in range(n):
            codes[first + i] = fp8_code(clamp(values[start + i] / scale, -FP8_MAX, FP8_MAX))
    elif kind == 1:
        for i in range(n):
            codes[first + i] = fp8_code(round_bf16(clamp(values[start + i] / scale, -FP8_MAX, FP8_MAX)))
    else:
        for i in range(n):
            codes[first + i] = fp8_code(round_to_f16_in_range(clamp(values[start + i] / scale, -FP8_MAX, FP8_MAX)))


@kernel
def fp8_rows(src, kind, cols, codes, scales):
    """FP8 per output row: ``codes`` uint8 ``[rows * cols]``, ``scales`` float32 ``[rows]``.
    Returns whether any scale is not finite."""
    eps = _eps(kind)
    row = np.empty(cols, dtype=np.float32)
    finite = True
    for r in range(scales.shape[0]):
        widen_into(src, r * cols, cols, kind, row)
        largest = largest_bits(row, 0, cols)
        scale = scale_of(largest, FP8_MAX, eps, kind)
        scales[r] = scale
        if largest >= INF_BITS:
            finite = False
        fp8_encode(row, 0, cols, scale, kind, codes, r * cols)
    return not finite


@kernel
def fp8_blocks(src, kind, rows, cols, block, codes, scales):
    """FP8 per ``block x block`` tile: ``codes`` uint8 ``[rows * cols]``, ``scales`` float32
    ``[ceil(rows/block), ceil(cols/block)]``; ragged edge tiles are scaled from what they
    hold. A band of ``block`` rows at a time (``_fp8_band``): float32 read in place, bfloat16
    and float16 widened once. Returns whether any scale is not finite."""
    eps = _eps(kind)
    band = np.empty(0 if kind == 0 else block * cols, dtype=np.float32)
    column_largest = np.empty(cols, dtype=np.uint32)
    column_scale = np.empty(cols, dtype=np.float32)
    finite = True
    for br in range(scales.shape[0]):
        r0 = br * block
        height = min(rows, r0 + block) - r0
        if kind == 0:
            finite &= _fp8_band(src.view(np.float32)[r0 * cols : (r0 + height) * cols], height, cols, block, kind, eps, codes, r0 * cols,
                                scales[br], column_largest, column_scale)
        else:
            widen_into(src, r0 * cols, height * cols, kind, band)
            finite &= _fp8_band(band, height, cols, block, kind, eps, codes, r0 * cols, scales[br], column_largest, column_scale)
    return not finite


@kernel
def _fp8_band(band, height, cols, block, kind, eps, codes, first, band_scales, column_largest, column_scale):
    """One band of ``height`` rows (float32): its tiles' scales into ``band_scales``, its codes
    from ``codes[first]``. The columns' largest |value| in one vectorised pass per row, each
    tile's from them; then each row encoded in one loop against its columns' scales (loops
    per tile row of 128 values cost ~20% more). A band with a scale that is not finite is
    encoded tile by tile with the NaN checks. Returns whether every scale is finite."""
    bits = band.view(np.uint32)
    column_largest[:] = 0
    for r in range(height):
        at = r * cols
        for i in range(cols):
            column_largest[i] = max(column_largest[i], np.uint32(bits[at + i] & ABS_MASK))
    finite = True
    for bc in range(band_scales.shape[0]):
        c0, c1 = bc * block, min(cols, bc * block + block)
        largest = np.uint32(0)
        for i in range(c0, c1):
            largest = max(largest, column_largest[i])
        scale = scale_of(largest, FP8_MAX, eps, kind)
        band_scales[bc] = scale
        if largest >= INF_BITS:
            finite = False
        column_scale[c0:c1] = scale
    if not finite:
        for bc in range(band_scales.shape[0]):
            c0, c1 = bc * block, min(cols, bc * block + block)
            for r in range(height):
                fp8_encode(band, r * cols + c0, r * cols + c1, band_scales[bc], kind, codes, first + r * cols + c0)
        return False
    for r in range(height):
        at, out = r * cols, first + r * cols
        if kind == 0:
            for i in range(cols):
                codes[out + i] = fp8_code(clamp(band[at + i] / column_scale[i], -FP8_MAX, FP8_MAX))
        elif kind == 1:
            for i in range(cols):
                codes[out + i] = fp8_code(round_bf16(clamp(band[at + i] / column_scale[i], -FP8_MAX, FP8_MAX)))
        else:
            for i in range(cols):
                codes[out + i] = fp8_code(round_to_f16_in_range(clamp(band[at + i] / column_scale[i], -FP8_MAX, FP8_MAX)))
    return True


@kernel
def rint_small(x):
    """``np.rint(x)`` (half to even) for |x| below 2**22, by the float adder's own rounding at
    1.5 * 2**23, whose last place is 1; unlike ``np.rint`` it vectorises."""
    return (np.float32(x) + _RINT_MAGIC) - _RINT_MAGIC


@kernel
def int_groups(src, kind, cols, group, bits, packed, scales):
    """Symmetric integers in groups of ``group`` along each row, offset to unsigned and packed
    little end first: ``packed`` uint8 ``[rows, row_bytes]`` (zero padded), ``scales`` float32
    ``[rows, cols // group]``. float32 rows are read in place (a widened copy of each row cost
    ~15% more), bfloat16 and float16 rows widened. Returns whether any scale is not finite."""
    eps = _eps(kind)
    q_max = np.float32((1 << (bits - 1)) - 1)
    q_min = np.float32(-(1 << (bits - 1)))
    half_range = np.float32(127.5) if bits == 8 else np.float32(7.5)
    offset = np.int32(1 << (bits - 1))
    row = np.empty(0 if kind == 0 else cols, dtype=np.float32)
    codes = np.zeros(cols + 1, dtype=np.uint8)  # one spare zero: an odd INT4 row's padding
    finite = True
    for r in range(scales.shape[0]):
        if kind == 0:
            finite &= _int_row(src.view(np.float32), r * cols, kind, group, eps, half_range, q_min, q_max, offset, codes, scales[r])
        else:
            widen_into(src, r * cols, cols, kind, row)
            finite &= _int_row(row, 0, kind, group, eps, half_range, q_min, q_max, offset, codes, scales[r])
        _pack_row(codes, cols, bits, packed[r])
    return not finite


@kernel
def _int_row(values, base, kind, group, eps, half_range, q_min, q_max, offset, codes, row_scales):
    """One row's groups from ``values[base:]`` (float32): their scales into ``row_scales``, their
    codes into ``codes``. code = round(x / scale), clamped and rounded to the weight's dtype
    first, then half to even, plus the offset; the offset alone where the scale is not finite
    (torch casts the NaN quotients to 0). One loop per case, written out (a helper call per
    group cost ~30%). Returns whether every scale is finite."""
    finite = True
    for g in range(row_scales.shape[0]):
        first = g * group
        start = base + first
        largest = largest_bits(values, start, start + group)
        scale = scale_of(largest, half_range, eps, kind)
        row_scales[g] = scale
        if largest >= INF_BITS:
            finite = False
        if not (abs(scale) < np.inf):
            for i in range(group):
                codes[first + i] = np.uint8(offset)
        elif kind == 1:
            for i in range(group):
                codes[first + i] = np.uint8(np.int32(rint_small(round_bf16(clamp(values[start + i] / scale, q_min, q_max)))) + offset)
        elif kind == 2:
            for i in range(group):
                codes[first + i] = np.uint8(np.int32(rint_small(round_to_f16_in_range(clamp(values[start + i] / scale, q_min, q_max)))) + offset)
        else:
            for i in range(group):
                codes[first + i] = np.uint8(np.int32(rint_small(clamp(values[start + i] / scale, q_min, q_max))) + offset)
    return finite


@kernel
def _pack_row(codes, cols, bits, out):
    """One row's codes into ``out``: bytes for 8 bits; two 4-bit codes a byte, low first, zero
    padded (``codes[cols]`` is the spare zero of an odd row, kept zero)."""
    out[:] = 0
    if bits == 8:
        out[:cols] = codes[:cols]
    else:
        for j in range((cols + 1) // 2):
            out[j] = codes[2 * j] | np.uint8(codes[2 * j + 1] << np.uint8(4))
        codes[cols] = 0


@kernel
def _eps(kind):
    """``finfo(dtype).eps`` of the weight's dtype: what a zero scale becomes."""
    return np.float32(2.0**-23) if kind == 0 else (np.float32(2.0**-7) if kind == 1 else np.float32(2.0**-10))


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
            bad = fp8_rows(src, kind, cols, codes, scales.reshape(-1))
        else:
            scales = np.empty((-(-rows // block), -(-cols // block)), dtype=np.float32)
            bad = fp8_blocks(src, kind, rows, cols, block, codes, scales)
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
