"""LLM.int8 row-wise quantization, fused: one kernel reads each row twice from cache.

Byte-identical to bitsandbytes' ``int8_vectorwise_quant`` (threshold 0) applied to the
weight cast to float16, which is what its ``Int8Params`` does: each value is rounded to
float16 (ties to even, beyond 65504 to inf), the row's largest |value| is its scale
``SCB``, and each code is ``round(value * (127 * (1 / SCB)))``. bitsandbytes computes
``127.0 / SCB`` as torch does, a reciprocal times 127, and rounds half to even; a NaN
product (0 * inf, from an all-zero or an inf row) becomes code 0, as torch's float to int8
conversion makes it.
"""

from __future__ import annotations

import numpy as np

from ..errors import QuantkitError
from . import _layout, _reference
from ._floats import ABS_MASK, F16_OVERFLOW_BITS, F32_ONE, INF_BITS, abs_max_bits, round_to_f16, round_to_f16_in_range
from ._jit import kernel

_127 = np.float32(127.0)


@kernel
def _quantize_rows(values, codes, scales):
    """Rows of float32 ``values`` into ``codes`` and ``scales``; True if any value is NaN
    (those rows' results are then not bitsandbytes' and are discarded)."""
    saw_nan = False
    zero = np.float32(0.0)
    for r in range(values.shape[0]):
        row, out = values[r], codes[r]
        largest = abs_max_bits(row)
        saw_nan |= largest > INF_BITS
        absmax = round_to_f16(np.uint32(largest).view(np.float32))  # rounding is monotonic: max of the rounded
        scales[r] = absmax
        factor = _127 * (F32_ONE / absmax)
        if largest < F16_OVERFLOW_BITS:
            for c in range(row.shape[0]):
                s = np.rint(round_to_f16_in_range(row[c]) * factor)
                out[c] = np.int8(zero if s != s else s)
        else:
            for c in range(row.shape[0]):
                s = np.rint(round_to_f16(row[c]) * factor)
                out[c] = np.int8(zero if s != s else s)
    return saw_nan


@kernel
def _column_abs_max_bits(values, largest):
    """``largest[j] = max(largest[j], |values[:, j]|)``, on bits (see ``abs_max_bits``)."""
    bits = values.view(np.uint32)
    for i in range(bits.shape[0]):
        for j in range(bits.shape[1]):
            largest[j] = max(largest[j], np.uint32(bits[i, j] & ABS_MASK))


@kernel
def _scale_columns_transposed(values, factors, in_range, first, codes):
    """``codes[j, first + i] = round(values[i, j] * factors[j])``: a Conv1D weight's stored
    rows scaled per column, the 1-byte codes written transposed (4x less to move than
    transposing the float32 values; ``_layout.transpose_bytes_into``)."""
    zero = np.float32(0.0)
    tile = np.empty(values.shape, dtype=np.int8)
    for i in range(values.shape[0]):
        row, out = values[i], tile[i]
        if in_range:
            for j in range(row.shape[0]):
                s = np.rint(round_to_f16_in_range(row[j]) * factors[j])
                out[j] = np.int8(zero if s != s else s)
        else:
            for j in range(row.shape[0]):
                s = np.rint(round_to_f16(row[j]) * factors[j])
                out[j] = np.int8(zero if s != s else s)
    _layout.transpose_bytes_into(tile, codes, first)


def _quantize_transposed(src: np.ndarray, kind: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """INT8 of ``src.T`` for ``src`` ``[in, out]``, computed in ``src``'s stored layout."""
    rows, cols = src.shape
    step = _layout.rows_per_chunk(cols, multiple=8, chunk_elements=1 << 16)  # 8: the codes move in 8x8 tiles
    scratch = np.empty(0 if kind == 0 else min(step, rows) * cols, dtype=np.float32)
    largest = np.zeros(cols, dtype=np.uint32)
    for first in range(0, rows, step):
        _column_abs_max_bits(_layout.stored_rows(src, kind, first, min(step, rows - first), scratch), largest)
    scales = _round_to_f16_array(largest.view(np.float32))
    with np.errstate(divide="ignore"):
        factors = _127 * (F32_ONE / scales)  # float32 throughout, as torch computes 127.0 / SCB
    codes = np.empty((cols, rows), dtype=np.int8)
    in_range = bool(largest.max(initial=0) < F16_OVERFLOW_BITS)
    for first in range(0, rows, step):
        values = _layout.stored_rows(src, kind, first, min(step, rows - first), scratch)
        _scale_columns_transposed(values, factors, in_range, first, codes)
    return codes, scales, bool(largest.max(initial=0) > INF_BITS)


@kernel
def _round_to_f16_array(values):
    out = np.empty_like(values)
    for i in range(values.shape[0]):
        out[i] = round_to_f16(values[i])
    return out


def quantize_int8(weight: np.ndarray, *, transpose: bool = False, name: str = "weight") -> tuple[np.ndarray, np.ndarray]:
    """Row-wise absmax INT8 of a 2-D weight, byte-identical to bitsandbytes.

    Args:
        weight: float32, bfloat16 (``ml_dtypes``) or float16 array, ``[out, in]``, or
            ``[in, out]`` with ``transpose`` (GPT-2's Conv1D), e.g. a ``read_into`` buffer.
        transpose: quantize ``weight.T``, without copying ``weight`` whole.
        name: the tensor's name, for error messages.

    Returns:
        ``(codes int8 [out, in], SCB float32 [out])``.

    Example:
        >>> codes, scb = quantize_int8(np.ones((2, 3), np.float32))
        >>> codes.tolist(), scb.tolist()
        ([[127, 127, 127], [127, 127, 127]], [1.0, 1.0])
    """
    src, kind = _layout.as_source(weight, name=name)
    if src.ndim != 2:
        raise QuantkitError(f"{name}: INT8 quantizes 2-D weights, this one has shape {list(weight.shape)}")
    rows, cols = src.shape[::-1] if transpose else src.shape
    if cols == 0 and rows:
        raise QuantkitError(f"{name}: shape {list(weight.shape)} has rows of no values, which have no scale")
    if transpose and rows:
        codes, scales, saw_nan = _quantize_transposed(src, kind)
        return _reference.int8(weight, transpose=True) if saw_nan else (codes, scales)
    codes = np.empty((rows, cols), dtype=np.int8)
    scales = np.empty(rows, dtype=np.float32)
    step = _layout.rows_per_chunk(cols, chunk_elements=_layout.chunk_elements(transpose))
    scratch = np.empty(0 if kind == 0 and not transpose else min(step, rows) * cols, dtype=np.float32)
    saw_nan = False
    for first in range(0, rows, step):
        count = min(step, rows - first)
        values = _layout.logical_rows(src, kind, transpose, first, count, scratch)
        saw_nan |= _quantize_rows(values, codes[first : first + count], scales[first : first + count])
    if saw_nan:  # NaN payloads travel through torch's casts in ways only torch reproduces
        return _reference.int8(weight, transpose=transpose)
    return codes, scales


def dequantize_int8(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """float32 ``codes * SCB / 127``, as quantkit reads an INT8 weight back."""
    return codes.astype(np.float32) * (scales.astype(np.float32)[:, None] / _127)
