"""Float32 / bfloat16 to float16, the cast ``--to fp16`` spends its time in.

numpy converts to float16 in a scalar loop (0.35 GB/s of float32 on this project's development
machine, a tenth of its bfloat16 cast); this kernel does the same rounding on bit patterns in a
loop the compiler vectorises. Its results equal numpy's ``astype(np.float16)`` bit for bit on
every input, NaN payloads included (tested on every float32 and bfloat16 value): round to nearest even,
values from 65520 up to inf, float16 subnormals through the float adder's own rounding.
"""

from __future__ import annotations

import numpy as np

from ._jit import kernel

_ABS = np.uint32(0x7FFFFFFF)
_INF = np.uint32(0x7F800000)
_OVERFLOW = np.uint32(0x477FF000)  # |x| from 65520 up rounds to inf
_NORMAL_MIN = np.uint32(0x38800000)  # 2**-14, float16's smallest normal
_REBIAS = np.uint32(112 << 23)  # exponent bias 127 -> 15
_HALF = np.float32(0.5)  # floats in [0.5, 1) are 2**-24 apart: float16's subnormal step
_HALF_BITS = np.uint32(0x3F000000)


@kernel(inline=True)
def _to_half(bits, value, keep_payload):
    magnitude = bits & _ABS
    sign = (bits >> np.uint32(16)) & np.uint32(0x8000)
    normal = (magnitude - _REBIAS + np.uint32(0xFFF) + ((magnitude >> np.uint32(13)) & np.uint32(1))) >> np.uint32(13)
    tiny = np.float32(abs(value) + _HALF).view(np.uint32) - _HALF_BITS
    payload = (magnitude & np.uint32(0x7FFFFF)) >> np.uint32(13)
    nan = np.uint32(0x7C00) + (payload if payload > np.uint32(0) else np.uint32(1))
    nan = nan if keep_payload else np.uint32(0x7E00)
    half = tiny if magnitude < _NORMAL_MIN else normal
    half = np.uint32(0x7C00) if magnitude >= _OVERFLOW else half
    half = nan if magnitude > _INF else half
    return np.uint16(half | sign)


@kernel
def _f32_to_f16(bits, values, out):
    """``out[:] = values.astype(float16)`` (``bits``: the same buffer as uint32, ``out`` as
    uint16); returns the largest finite magnitude's bits (a max vectorises, a count does not)."""
    top = np.uint32(0)
    for i in range(bits.shape[0]):
        b = bits[i]
        out[i] = _to_half(b, values[i], True)
        magnitude = b & _ABS
        top = max(top, magnitude if magnitude < _INF else np.uint32(0))
    return top


@kernel
def _bf16_to_f16(bits, out):
    """``_f32_to_f16`` for bfloat16 bits (uint16), widened exactly on the way; a NaN becomes
    the quiet NaN of its sign, as ml_dtypes' bfloat16 cast gives."""
    top = np.uint32(0)
    for i in range(bits.shape[0]):
        b = np.uint32(np.uint32(bits[i]) << np.uint32(16))
        out[i] = _to_half(b, b.view(np.float32), False)
        magnitude = b & _ABS
        top = max(top, magnitude if magnitude < _INF else np.uint32(0))
    return top


@kernel
def _overflowing(bits, shift):
    """How many of ``bits`` (float32 bits once shifted left by ``shift``) are finite and round to inf."""
    count = 0
    for i in range(bits.shape[0]):
        magnitude = np.uint32(np.uint32(bits[i]) << np.uint32(shift)) & _ABS
        if magnitude >= _OVERFLOW and magnitude < _INF:
            count += 1
    return count


def to_float16(source: np.ndarray, out: np.ndarray) -> int:
    """``out[...] = source`` for 1-D float32 or bfloat16 ``source`` and float16 (or uint16)
    ``out`` of its length; returns how many finite values became inf."""
    half = out.view(np.uint16)
    if source.dtype == np.float32:
        bits, shift = source.view(np.uint32), 0
        top = _f32_to_f16(bits, source, half)
    else:  # bfloat16
        bits, shift = source.view(np.uint16), 16
        top = _bf16_to_f16(bits, half)
    return int(_overflowing(bits, shift)) if top >= _OVERFLOW else 0
