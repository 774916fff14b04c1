"""bitsandbytes' double quantization of 4-bit absmax values, without torch or bitsandbytes.

``quantize_4bit(..., compress_statistics=True)`` takes the float32 mean of the absmax values,
subtracts it, and quantizes the centred values 8-bit blockwise (blocks of 256) with its signed
dynamic map. Both steps are reproduced here bit for bit:

- the mean is torch's float32 ``sum`` (its cascade of partial sums, on one thread, with
  8-lane vectors: AVX2 and the default CPU build) divided by the count in float32;
- the 8-bit codes follow bitsandbytes' CPU ``quantize_blockwise``: each block's absmax is the
  largest |value| (NaN ignored, 0 for a block of NaN), a block with absmax 0 is all code 0,
  otherwise each value times ``1 / absmax``, clamped to [-1, 1], indexes a 65,536-entry table
  at ``trunc(fma((x + 1) * 0.5, 65535, 0.5))``; the table holds, for each of its evenly
  spaced points, how many midpoints of the dynamic map lie below it (a NaN takes entry 0).
"""

from __future__ import annotations

import functools

import numpy as np

from ._jit import kernel

NESTED_BLOCKSIZE = 256
_LUT_SIZE = 65536
_VECTOR_LANES = 8  # torch's Vectorized<float> on AVX2 and the default build

# The positive half of ``bitsandbytes.functional.create_dynamic_map()`` (signed, 8 bits) as
# float32 bits, ascending; the map is these negated and reversed, 0, these, and 1.0.
# tests/kernels check it against bitsandbytes.
_DYNAMIC_POSITIVE_BITS = [
    0x3513A3B7, 0x365A1A94, 0x370205FF, 0x37B24206, 0x38378034, 0x388AEFB3, 0x38BA1F4B, 0x3923D70B,
    0x398CE705, 0x39C7E283, 0x3A016F01, 0x3A1EECC1, 0x3A3C6A80, 0x3A59E83E, 0x3A7765FF, 0x3AA7EF9D,
    0x3AF1A9FC, 0x3B1DB22D, 0x3B428F5C, 0x3B676C8A, 0x3B8624DD, 0x3B989374, 0x3BAB020D, 0x3BBD70A4,
    0x3BCFDF3B, 0x3BE24DD3, 0x3BF4BC6A, 0x3C039581, 0x3C0CCCCD, 0x3C160418, 0x3C1F3B64, 0x3C3AE148,
    0x3C68F5C3, 0x3C8B851F, 0x3CA28F5D, 0x3CB9999A, 0x3CD0A3D7, 0x3CE7AE15, 0x3CFEB852, 0x3D0AE148,
    0x3D166667, 0x3D21EB85, 0x3D2D70A3, 0x3D38F5C3, 0x3D447AE1, 0x3D500000, 0x3D5B851F, 0x3D670A3D,
    0x3D728F5D, 0x3D7E147B, 0x3D84CCCD, 0x3D8A8F5D, 0x3D9051EB, 0x3D96147B, 0x3D9BD70A, 0x3DA1999A,
    0x3DA75C2A, 0x3DAD1EB8, 0x3DB2E148, 0x3DB8A3D7, 0x3DBE6667, 0x3DC428F7, 0x3DC9EB85, 0x3DDB3334,
    0x3DF80000, 0x3E0A6666, 0x3E18CCCD, 0x3E273333, 0x3E35999A, 0x3E440000, 0x3E526666, 0x3E60CCCD,
    0x3E6F3333, 0x3E7D9999, 0x3E860000, 0x3E8D3334, 0x3E946666, 0x3E9B999A, 0x3EA2CCCC, 0x3EAA0000,
    0x3EB13333, 0x3EB86666, 0x3EBF999A, 0x3EC6CCCC, 0x3ECE0000, 0x3ED53333, 0x3EDC6666, 0x3EE3999A,
    0x3EEACCCC, 0x3EF20000, 0x3EF93332, 0x3F003333, 0x3F03CCCC, 0x3F076666, 0x3F0B0000, 0x3F0E999A,
    0x3F123334, 0x3F15CCCD, 0x3F196666, 0x3F1D0000, 0x3F20999A, 0x3F243334, 0x3F27CCCD, 0x3F2B6666,
    0x3F2F0000, 0x3F32999A, 0x3F363334, 0x3F39CCCD, 0x3F3D6666, 0x3F410000, 0x3F44999A, 0x3F483333,
    0x3F4BCCCD, 0x3F4F6666, 0x3F530000, 0x3F56999A, 0x3F5A3333, 0x3F5DCCCD, 0x3F616666, 0x3F650000,
    0x3F68999A, 0x3F6C3333, 0x3F6FCCCD, 0x3F736666, 0x3F770000, 0x3F7A999A, 0x3F7E3333,
]  # fmt: skip


def dynamic_map() -> np.ndarray:
    """bitsandbytes' signed 8-bit dynamic code, 256 ascending float32 values (a new array)."""
    positive = np.array(_DYNAMIC_POSITIVE_BITS, dtype=np.uint32).view(np.float32)
    return np.concatenate([-positive[::-1], [0.0, *positive, 1.0]]).astype(np.float32)


@functools.cache
def _index_table() -> np.ndarray:
    """bitsandbytes' quantize table: for each of 65,536 points from -1 to 1 (``2 i / 65535 - 1``
    in float32), the number of midpoints ``(code[j] + code[j+1]) * 0.5`` below it."""
    code = dynamic_map()
    midpoints = (code[:-1] + code[1:]) * np.float32(0.5)
    points = np.arange(_LUT_SIZE, dtype=np.float32) * np.float32(2) / np.float32(_LUT_SIZE - 1) - np.float32(1)
    table = np.searchsorted(midpoints, points, side="left").astype(np.uint8)
    table.setflags(write=False)
    return table


@kernel
def _quantize_blocks(values, blocksize, table, codes, absmax):
    """8-bit blockwise codes of float32 ``values`` into ``codes`` and each block's ``absmax``."""
    n = values.shape[0]
    one, half = np.float32(1.0), np.float32(0.5)
    for b in range((n + blocksize - 1) // blocksize):
        start, end = b * blocksize, min(n, (b + 1) * blocksize)
        largest = np.float32(-np.inf)
        for i in range(start, end):
            magnitude = abs(values[i])
            if magnitude > largest:  # a NaN never is: ignored
                largest = magnitude
        largest = max(largest, np.float32(0.0))
        absmax[b] = largest
        if largest == 0:
            codes[start:end] = 0
            continue
        factor = one / largest
        for i in range(start, end):
            x = values[i] * factor
            x = -one if x < -one else one if x > one else x  # std::clamp: a NaN stays NaN
            t = (x + one) * half
            # bitsandbytes computes t * 65535 + 0.5 as one fused multiply-add (one rounding). In
            # float64 it is exact for t above 2**-30 (at most 53 significant bits), so rounding
            # it once to float32 is the same; below, both truncate to 0
            position = 0 if t != t else np.int64(np.float32(np.float64(t) * 65535.0 + 0.5))
            codes[i] = table[position & 0xFFFF]


def quantize_blockwise_8bit(values: np.ndarray, blocksize: int = NESTED_BLOCKSIZE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``bitsandbytes.functional.quantize_blockwise`` (default dynamic code) of float32 values
    on the CPU: (codes uint8, absmax float32 per block, the code table)."""
    flat = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    codes = np.empty(flat.shape, dtype=np.uint8)
    absmax = np.empty(-(-flat.size // blocksize), dtype=np.float32)
    _quantize_blocks(flat, blocksize, _index_table(), codes, absmax)
    return codes.reshape(np.shape(values)), absmax, dynamic_map()


@kernel(inline=True)
def _ceil_log2(x):
    """ATen's ``CeilLog2``: 1 up to 2, else the bit length of ``x - 1``."""
    if x <= 2:
        return 1
    bits, rest = 0, x - 1
    while rest:
        bits, rest = bits + 1, rest >> 1
    return bits


@kernel
def _cascade_sum(values, lanes, count):
    """torch's ``row_sum`` (SumKernel.cpp) of ``count`` elements of ``lanes`` consecutive
    float32 each: a 4-way interleaved sum whose partial sums cascade through 4 levels, then
    the leftover elements and the 4 partials added in order. Returns the ``lanes`` sums."""
    rows = count // 4
    level_power = max(4, _ceil_log2(rows) // 4)
    level_step = 1 << level_power
    level_mask = level_step - 1
    acc = np.zeros((4, 4, lanes), dtype=np.float32)
    i = 0
    while i + level_step <= rows:
        for _ in range(level_step):
            base = i * 4 * lanes
            for k in range(4):
                for lane in range(lanes):
                    acc[0, k, lane] += values[base + k * lanes + lane]
            i += 1
        for j in range(1, 4):
            for k in range(4):
                for lane in range(lanes):
                    acc[j, k, lane] += acc[j - 1, k, lane]
                    acc[j - 1, k, lane] = 0
            if i & (level_mask << (j * level_power)):
                break
    for r in range(i, rows):
        for k in range(4):
            for lane in range(lanes):
                acc[0, k, lane] += values[(r * 4 + k) * lanes + lane]
    for j in range(1, 4):
        for k in range(4):
            for lane in range(lanes):
                acc[0, k, lane] += acc[j, k, lane]
    for e in range(rows * 4, count):
        for lane in range(lanes):
            acc[0, 0, lane] += values[e * lanes + lane]
    for k in range(1, 4):
        for lane in range(lanes):
            acc[0, 0, lane] += acc[0, k, lane]
    return acc[0, 0].copy()


@kernel
def _torch_sum(values, lanes):
    """torch's float32 ``sum`` of a contiguous 1-D tensor on one thread (``cascade_sum``):
    whole vectors of ``lanes`` values summed lane by lane, then the values past the last
    whole vector, then each lane; the result added to the output's 0."""
    n = values.shape[0]
    if n < lanes:  # too short for a vector: the same cascade over single values
        return np.float32(0.0) + _cascade_sum(values, 1, n)[0]
    vectors = n // lanes
    partials = _cascade_sum(values, lanes, vectors)
    total = np.float32(0.0)
    for k in range(vectors * lanes, n):
        total += values[k]
    for lane in range(lanes):
        total += partials[lane]
    return np.float32(0.0) + total


def torch_mean(values: np.ndarray) -> np.float32:
    """``torch.from_numpy(values).mean()`` of a float32 1-D array, on one thread, bit for bit
    (torch's sum, then divided by the count in float32)."""
    flat = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    return np.float32(_torch_sum(flat, _VECTOR_LANES)) / np.float32(flat.size)


def double_quant(absmax: np.ndarray) -> tuple[float, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """bitsandbytes' nested quantization of 4-bit absmax values: (the mean, as the float the
    quant state's JSON holds; (codes, nested absmax, nested code table))."""
    flat = np.ascontiguousarray(absmax, dtype=np.float32).reshape(-1)
    offset = torch_mean(flat)
    return float(offset), quantize_blockwise_8bit(flat - offset, NESTED_BLOCKSIZE)
