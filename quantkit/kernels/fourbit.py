"""NF4 / FP4 blockwise quantization, fused: absmax, scale, code and pack in one kernel.

Byte-identical to bitsandbytes' CPU ``quantize_4bit``: the values, flattened in row order,
are cut into blocks; each block's largest |value| is its ``absmax``; each value times
``1 / max(absmax, 1e-38)`` (a trailing partial block: divided by it), clamped to [-1, 1],
(that clamped absmax is what it stores for a partial block) gets the code whose table value is nearest, as ``torch.bucketize`` over the midpoints of
the sorted table finds it (a value on a midpoint takes the lower code; a NaN, from an inf
in the block, takes the highest sorted code, as bucketize places it); two codes a byte,
the first in the high nibble, an odd count padded with the code of 0.
"""

from __future__ import annotations

import numpy as np

from ..errors import QuantkitError
from . import _layout, _reference
from ._floats import ABS_MASK, F32_ONE, INF_BITS, abs_max_bits
from ._jit import kernel

# bitsandbytes' 4-bit tables (``get_4bit_type``) as float32 bits, so no torch is needed;
# tests/kernels check them against bitsandbytes.
_TABLE_BITS = {
    "nf4": [0xBF800000, 0xBF3239B1, 0xBF066B30, 0xBECA32A0, 0xBE91A24D, 0xBE3D353F, 0xBDBA7871, 0x00000000,
            0x3DA2FAFF, 0x3E24CAE3, 0x3E7C04DD, 0x3EAD033A, 0x3EE1A4B8, 0x3F1007AB, 0x3F3913B3, 0x3F800000],
    "fp4": [0x00000000, 0x3BAAAAAB, 0x3F2AAAAB, 0x3F800000, 0x3EAAAAAB, 0x3F000000, 0x3E2AAAAB, 0x3E800000,
            0x00000000, 0xBBAAAAAB, 0xBF2AAAAB, 0xBF800000, 0xBEAAAAAB, 0xBF000000, 0xBE2AAAAB, 0xBE800000],
}
QUANT_TYPES = tuple(_TABLE_BITS)
MIN_BLOCKSIZE, MAX_BLOCKSIZE = 32, 4096
_TINY = np.float32(1e-38)  # bitsandbytes' clamp before taking the reciprocal


def code_table(quant_type: str) -> np.ndarray:
    """The 16 float32 values a 4-bit code stands for (a new array: it is written out)."""
    return np.array(_TABLE_BITS[quant_type], dtype=np.uint32).view(np.float32)


def _search_tables(quant_type: str) -> tuple[np.ndarray, np.ndarray]:
    """Midpoints of the sorted table, computed as bitsandbytes does (float32 sum, halved),
    and each sorted position's code."""
    table = code_table(quant_type)
    order = np.argsort(table, kind="stable").astype(np.uint8)
    midpoints = (table[order[:-1]] + table[order[1:]]) / np.float32(2)
    return midpoints.astype(np.float32), order


@kernel
def _position(x, midpoints):
    """``torch.bucketize(x, midpoints)`` for x not NaN: how many midpoints lie below x.
    Values beyond [-1, 1] get the same answer as the clamped ones, so no clamp is needed."""
    position = np.uint8(0)
    for k in range(15):  # unrolled, and vectorised over the values of a block
        position += np.uint8(x > midpoints[k])
    return position


@kernel
def _block_positions(block, factor, safe, exact_division, midpoints, positions):
    """Each scaled value's sorted position, into ``positions`` (a NaN, from 0 * inf, gets 15)."""
    if exact_division:  # a trailing partial block: bitsandbytes divides by its absmax
        for i in range(block.shape[0]):
            x = block[i] / safe
            positions[i] = 15 if x != x else _position(x, midpoints)
    elif block.shape[0] and abs_max_bits(block) >= INF_BITS:  # an inf: its product with 1/inf is NaN
        for i in range(block.shape[0]):
            x = block[i] * factor
            positions[i] = 15 if x != x else _position(x, midpoints)
    else:
        for i in range(block.shape[0]):
            positions[i] = _position(block[i] * factor, midpoints)


@kernel
def _quantize_blocks(values, blocksize, midpoints, order, sorted_table, packed, absmax):
    """Float32 ``values`` (a whole number of blocks, or the tensor's last values) into
    ``packed`` (``ceil(len/2)`` bytes) and ``absmax``; True if a block's absmax is NaN."""
    n = values.shape[0]
    saw_nan = False
    positions = np.zeros(blocksize + 1, dtype=np.uint8)
    zero_code = order[_position(np.float32(0.0), midpoints)]
    for b in range((n + blocksize - 1) // blocksize):
        start = b * blocksize
        block = values[start : min(n, start + blocksize)]
        largest = abs_max_bits(block)
        saw_nan |= largest > INF_BITS
        block_max = np.uint32(largest).view(np.float32)
        safe = max(block_max, _TINY)
        count = block.shape[0]
        absmax[b] = safe if count < blocksize else block_max  # bitsandbytes keeps the clamped one there
        _block_positions(block, F32_ONE / safe, safe, count < blocksize, midpoints, positions)
        out = packed[start // 2 :]
        if sorted_table:  # NF4: the sorted position is the code
            for p in range(count // 2):
                out[p] = (positions[2 * p] << 4) | positions[2 * p + 1]
        else:
            for p in range(count // 2):
                out[p] = (order[positions[2 * p]] << 4) | order[positions[2 * p + 1]]
        if count % 2:  # only the tensor's last value: paired with a 0, as bitsandbytes pads
            out[count // 2] = (order[positions[count - 1]] << 4) | zero_code
    return saw_nan


@kernel
def _quantize_column_blocks(values, first, blocksize, midpoints, order, sorted_table, packed, absmax):
    """Blocks of ``values.T`` for a Conv1D weight ``[in, out]`` whose ``in`` is a multiple
    of ``blocksize``: each block is ``blocksize`` stored rows of one column, so absmax,
    scaling, positions and the packing of each pair of stored rows into bytes run along the
    stored rows (vectorised); only the packed bytes (half as many as values) are transposed
    into place (``_layout.transpose_bytes_into``). ``values``: stored rows ``first:`` (whole blocks) as float32; ``packed``
    ``[out, in/2]``, ``absmax`` ``[out, in/blocksize]``. True if a block's absmax is NaN."""
    rows, cols = values.shape
    bits = values.view(np.uint32)
    largest = np.empty(cols, dtype=np.uint32)
    factors = np.empty(cols, dtype=np.float32)
    pairs = np.empty((blocksize // 2, cols), dtype=np.uint8)
    upper = np.empty(cols, dtype=np.uint8)
    lower = np.empty(cols, dtype=np.uint8)
    saw_nan = False
    for b0 in range(0, rows, blocksize):
        largest[:] = 0
        for i in range(b0, b0 + blocksize):
            for j in range(cols):
                largest[j] = max(largest[j], np.uint32(bits[i, j] & ABS_MASK))
        block = (first + b0) // blocksize
        has_inf = False
        for j in range(cols):
            block_max = np.uint32(largest[j]).view(np.float32)
            absmax[j, block] = block_max
            factors[j] = F32_ONE / max(block_max, _TINY)
            has_inf |= largest[j] >= INF_BITS
            saw_nan |= largest[j] > INF_BITS
        for h in range(blocksize // 2):
            high, low, out = values[b0 + 2 * h], values[b0 + 2 * h + 1], pairs[h]
            if has_inf:  # an inf's product with 1/inf is NaN: position 15
                for j in range(cols):
                    x, y = high[j] * factors[j], low[j] * factors[j]
                    out[j] = (order[np.uint8(15) if x != x else _position(x, midpoints)] << 4) | order[np.uint8(15) if y != y else _position(y, midpoints)]
            elif sorted_table:  # NF4: the sorted position is the code
                for j in range(cols):
                    out[j] = (_position(high[j] * factors[j], midpoints) << 4) | _position(low[j] * factors[j], midpoints)
            else:  # FP4: positions first (a loop that vectorises), then the code table's gathers
                for j in range(cols):
                    upper[j] = _position(high[j] * factors[j], midpoints)
                for j in range(cols):
                    lower[j] = _position(low[j] * factors[j], midpoints)
                for j in range(cols):
                    out[j] = (order[upper[j]] << 4) | order[lower[j]]
        _layout.transpose_bytes_into(pairs, packed, (first + b0) // 2)
    return saw_nan


def _quantize_transposed(src: np.ndarray, kind: int, blocksize: int, quant_type: str) -> tuple[np.ndarray, np.ndarray, bool]:
    """``quantize_4bit_codes`` of ``src.T`` computed in ``src``'s stored layout (``src``
    ``[in, out]`` with ``in`` a multiple of ``blocksize``)."""
    rows, cols = src.shape
    midpoints, order = _search_tables(quant_type)
    packed = np.empty((cols, rows // 2), dtype=np.uint8)
    absmax = np.empty((cols, rows // blocksize), dtype=np.float32)
    step = _layout.rows_per_chunk(cols, multiple=blocksize, chunk_elements=1 << 18)
    scratch = np.empty(0 if kind == 0 else min(step, rows) * cols, dtype=np.float32)
    saw_nan = False
    for first in range(0, rows, step):
        values = _layout.stored_rows(src, kind, first, min(step, rows - first), scratch)
        saw_nan |= _quantize_column_blocks(values, first, blocksize, midpoints, order, quant_type == "nf4", packed, absmax)
    return packed.reshape(-1, 1), absmax.reshape(-1), saw_nan


def _check(weight: np.ndarray, blocksize: int, quant_type: str, transpose: bool, name: str) -> None:
    if quant_type not in QUANT_TYPES:
        raise QuantkitError(f"{name}: unknown 4-bit type {quant_type!r}; use one of {', '.join(QUANT_TYPES)}")
    if blocksize not in [1 << k for k in range(5, 13)]:
        raise QuantkitError(f"{name}: block size {blocksize} is not a power of two from {MIN_BLOCKSIZE} to {MAX_BLOCKSIZE}")
    if transpose and weight.ndim != 2:
        raise QuantkitError(f"{name}: only a 2-D weight can be transposed, this one has shape {list(weight.shape)}")


def quantize_4bit_codes(
    weight: np.ndarray, *, blocksize: int, quant_type: str, transpose: bool = False, name: str = "weight"
) -> tuple[np.ndarray, np.ndarray]:
    """NF4 / FP4 codes of a weight, byte-identical to bitsandbytes' ``quantize_4bit``.

    Args:
        weight: float32, bfloat16 (``ml_dtypes``) or float16 array of any shape, e.g. a
            ``read_into`` buffer; with ``transpose`` 2-D ``[in, out]`` (GPT-2's Conv1D),
            quantized as ``weight.T`` without copying it whole.
        blocksize: values per absmax, a power of two from 32 to 4096.
        quant_type: ``"nf4"`` or ``"fp4"``.
        name: the tensor's name, for error messages.

    Returns:
        ``(packed uint8 [ceil(n/2), 1], absmax float32 [ceil(n/blocksize)])``.

    Example:
        >>> packed, absmax = quantize_4bit_codes(np.ones(64, np.float32), blocksize=64, quant_type="nf4")
        >>> packed.shape, absmax.tolist(), hex(packed[0, 0])
        ((32, 1), [1.0], '0xff')
    """
    src, kind = _layout.as_source(weight, name=name)
    _check(src, blocksize, quant_type, transpose, name)
    if transpose and src.size and src.shape[0] % blocksize == 0:
        packed, absmax, saw_nan = _quantize_transposed(src, kind, blocksize, quant_type)
        if saw_nan:  # see below
            return _reference.fourbit(weight, blocksize=blocksize, quant_type=quant_type, transpose=True)
        return packed, absmax
    midpoints, order = _search_tables(quant_type)
    n = src.size
    packed = np.empty((n + 1) // 2, dtype=np.uint8)
    absmax = np.empty(-(-n // blocksize), dtype=np.float32)
    matrix = src.reshape(-1, src.shape[-1]) if src.ndim >= 2 and not transpose else src.reshape(1, -1) if not transpose else src
    rows, cols = matrix.shape[::-1] if transpose else matrix.shape
    whole = blocksize // np.gcd(max(cols, 1), blocksize)  # rows that hold a whole number of blocks
    step = _layout.rows_per_chunk(cols, multiple=whole, chunk_elements=_layout.chunk_elements(transpose))
    scratch = np.empty(0 if kind == 0 and not transpose else min(step, rows) * cols, dtype=np.float32)
    saw_nan = False
    for first in range(0, rows, step):
        count = min(step, rows - first)
        values = _layout.logical_rows(matrix, kind, transpose, first, count, scratch).reshape(-1)
        start = first * cols  # a multiple of blocksize, so even
        saw_nan |= _quantize_blocks(values, blocksize, midpoints, order, quant_type == "nf4", packed[start // 2 :], absmax[start // blocksize :])
    if saw_nan:  # NaN payloads travel through torch's casts in ways only torch reproduces
        return _reference.fourbit(weight, blocksize=blocksize, quant_type=quant_type, transpose=transpose)
    return packed.reshape(-1, 1), absmax
