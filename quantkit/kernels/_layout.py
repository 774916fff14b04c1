"""Getting a weight's values into float32 rows of the matrix quantkit quantizes.

A kernel sees the weight as the matrix bitsandbytes would quantize: ``[out, in]``, which
for a GPT-2 Conv1D weight stored ``[in, out]`` is its transpose. Rows of that matrix are
copied, a few at a time, into a small float32 buffer that stays in the CPU cache; a
float32 weight used as stored needs no copy at all.
"""

from __future__ import annotations

import numpy as np

from ..errors import QuantkitError
from ._floats import bf16_to_f32, f16_to_f32
from ._jit import kernel

SOURCE_DTYPES = ("float32", "bfloat16", "float16")
MAX_ELEMENTS = 1 << 40  # far beyond any weight: a shape past it is a damaged header


def as_source(weight: np.ndarray, *, name: str) -> tuple[np.ndarray, int]:
    """``weight`` as the kernels read it (float32, or uint16 bits) and its dtype's index in
    ``SOURCE_DTYPES``; clear errors for what cannot be quantized."""
    if not isinstance(weight, np.ndarray):
        raise QuantkitError(f"{name}: expected a numpy array, got {type(weight).__name__}")
    dtype = weight.dtype.name
    if dtype not in SOURCE_DTYPES:
        raise QuantkitError(f"{name}: cannot quantize dtype {dtype}; quantkit quantizes {', '.join(SOURCE_DTYPES)}")
    if weight.size > MAX_ELEMENTS:
        raise QuantkitError(f"{name}: {weight.size} elements is beyond any real weight; is the checkpoint damaged?")
    if not weight.flags.c_contiguous:
        weight = np.ascontiguousarray(weight)
    kind = SOURCE_DTYPES.index(dtype)
    return (weight if kind == 0 else weight.view(np.uint16)), kind


def chunk_elements(transpose: bool) -> int:
    """Values a chunk copies: a transposed chunk reads a segment of every stored row (shorter
    chunks measured ~1.3x faster here)."""
    return 1 << 16 if transpose else 1 << 18


def rows_per_chunk(cols: int, *, multiple: int = 1, chunk_elements: int = 1 << 16) -> int:
    """Rows a chunk holds so that its float32 copy stays in cache: a multiple of ``multiple``."""
    rows = max(1, chunk_elements // max(cols, 1))
    return max(multiple, rows // multiple * multiple)


@kernel(inline=True)
def _widen(bits, kind):
    return bf16_to_f32(bits) if kind == 1 else f16_to_f32(bits)


@kernel
def widen(src, kind, out):
    """``out[:] = src`` as float32, for bfloat16 (kind 1) or float16 (kind 2) bits, 1-D."""
    for i in range(out.shape[0]):
        out[i] = _widen(src[i], kind)


@kernel
def gather_transposed_f32(src, first, out):
    """``out[r, c] = src[c, first + r]``: rows of ``src.T`` (``src`` float32 ``[in, out]``)."""
    rows, cols = out.shape
    for c in range(cols):
        for r in range(rows):
            out[r, c] = src[c, first + r]


@kernel
def gather_transposed_u16(src, kind, first, out):
    """``gather_transposed_f32`` for bfloat16 / float16 bits, widened on the way."""
    rows, cols = out.shape
    for c in range(cols):
        for r in range(rows):
            out[r, c] = _widen(src[c, first + r], kind)


_M32, _M16, _M8 = np.uint64(0x00000000FFFFFFFF), np.uint64(0x0000FFFF0000FFFF), np.uint64(0x00FF00FF00FF00FF)


@kernel(inline=True)
def _swap(a, b, shift, mask):
    """Exchange the bytes of ``a`` above ``shift`` in each ``mask`` lane with those of ``b`` below it."""
    t = ((a >> np.uint64(shift)) ^ b) & mask
    return a ^ (t << np.uint64(shift)), b ^ t


@kernel
def transpose_bytes_into(src, dst, offset):
    """``dst[j, offset + i] = src[i, j]`` for 1-byte arrays (``src`` C-contiguous). Where
    ``src``'s rows, its columns, ``dst``'s columns and ``offset`` are multiples of 8, it moves
    8x8 tiles as eight 64-bit words, transposed by three rounds of lane swaps; otherwise byte
    by byte, along ``dst``'s rows."""
    rows, cols = src.shape
    if rows % 8 or cols % 8 or offset % 8 or dst.shape[1] % 8:
        for j in range(cols):
            for i in range(rows):
                dst[j, offset + i] = src[i, j]
        return
    words_in, words_out = src.view(np.uint64), dst.view(np.uint64)
    for i0 in range(0, rows, 8):
        for c in range(cols // 8):  # the tile of src rows i0..i0+7, columns 8c..8c+7
            r0, r1, r2, r3 = words_in[i0, c], words_in[i0 + 1, c], words_in[i0 + 2, c], words_in[i0 + 3, c]
            r4, r5, r6, r7 = words_in[i0 + 4, c], words_in[i0 + 5, c], words_in[i0 + 6, c], words_in[i0 + 7, c]
            r0, r4 = _swap(r0, r4, 32, _M32)
            r1, r5 = _swap(r1, r5, 32, _M32)
            r2, r6 = _swap(r2, r6, 32, _M32)
            r3, r7 = _swap(r3, r7, 32, _M32)
            r0, r2 = _swap(r0, r2, 16, _M16)
            r1, r3 = _swap(r1, r3, 16, _M16)
            r4, r6 = _swap(r4, r6, 16, _M16)
            r5, r7 = _swap(r5, r7, 16, _M16)
            r0, r1 = _swap(r0, r1, 8, _M8)
            r2, r3 = _swap(r2, r3, 8, _M8)
            r4, r5 = _swap(r4, r5, 8, _M8)
            r6, r7 = _swap(r6, r7, 8, _M8)
            w = (offset + i0) // 8
            j = 8 * c
            words_out[j, w], words_out[j + 1, w], words_out[j + 2, w], words_out[j + 3, w] = r0, r1, r2, r3
            words_out[j + 4, w], words_out[j + 5, w], words_out[j + 6, w], words_out[j + 7, w] = r4, r5, r6, r7


def stored_rows(src: np.ndarray, kind: int, first: int, count: int, scratch: np.ndarray) -> np.ndarray:
    """Rows ``first:first+count`` of ``src`` as stored, as float32 (a view where it is)."""
    part = src[first : first + count]
    if kind == 0:
        return part
    out = scratch[: part.size].reshape(part.shape)
    widen(part.reshape(-1), kind, out.reshape(-1))
    return out


def logical_rows(src: np.ndarray, kind: int, transpose: bool, first: int, count: int, scratch: np.ndarray) -> np.ndarray:
    """Rows ``first:first+count`` of the matrix to quantize, as float32 ``[count, cols]``: a
    view of ``src`` where it is float32 and used as stored, else filled into ``scratch``."""
    if not transpose:
        return stored_rows(src, kind, first, count, scratch)
    out = scratch[: count * src.shape[0]].reshape(count, src.shape[0])
    if kind == 0:
        gather_transposed_f32(src, first, out)
    else:
        gather_transposed_u16(src, kind, first, out)
    return out
