"""A faster CPU path for bitsandbytes' 4-bit quantizer, byte-identical to it.

bitsandbytes' CPU ``quantize_4bit`` scales each block by its absmax and then finds each
value's code with ``torch.bucketize`` over the 15 midpoints of the code table: a binary
search per element, which takes ~85% of its time. Here the same scaled values are
classified with two table look-ups instead: the top 16 bits of a float32 (sign, exponent and
7 mantissa bits) name a narrow interval of values, and no interval holds more than one
midpoint (checked when the tables are built), so each value's code is the interval's code,
plus one if the value lies above the interval's midpoint. The scaling, NaN handling and
packing repeat bitsandbytes' own operations, so the bytes are the same; tests check that on
many shapes, dtypes and value distributions (zeros, infs, NaNs, subnormals).
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import json
import math
from pathlib import Path

import torch

from .bnb_layout import NESTED_BLOCKSIZE, state_json

_KEYS = 1 << 16

# bitsandbytes' 4-bit code tables (``get_4bit_type``), as float32 bit patterns, so that the
# CPU path need not import bitsandbytes (which takes ~2 s: it loads torch's compiler stack).
# tests/schemes/test_fourbit_cpu.py checks them against bitsandbytes bit for bit.
_CODE_BITS = {
    "nf4": [
        -0x40800000, -0x40CDC64F, -0x40F994D0, -0x4135CD60, -0x416E5DB3, -0x41C2CAC1, -0x4245878F, 0x0,
        0x3DA2FAFF, 0x3E24CAE3, 0x3E7C04DD, 0x3EAD033A, 0x3EE1A4B8, 0x3F1007AB, 0x3F3913B3, 0x3F800000,
    ],
    "fp4": [
        0x0, 0x3BAAAAAB, 0x3F2AAAAB, 0x3F800000, 0x3EAAAAAB, 0x3F000000, 0x3E2AAAAB, 0x3E800000,
        0x0, -0x44555555, -0x40D55555, -0x40800000, -0x41555555, -0x41000000, -0x41D55555, -0x41800000,
    ],
}


def code_table(quant_type: str) -> torch.Tensor:
    """The 16 float32 values a 4-bit code stands for (a new tensor: it is written out)."""
    return torch.tensor(_CODE_BITS[quant_type], dtype=torch.int32).view(torch.float32)


@functools.cache
def _tables(quant_type: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool] | None:
    """Per 16-bit prefix: the midpoint to compare with, the code below it and above it."""
    code = code_table(quant_type)
    order = torch.argsort(code)
    midpoints = (code[order[:-1]] + code[order[1:]]) / 2  # as bitsandbytes computes them
    keys = torch.arange(_KEYS, dtype=torch.int64)
    low = ((keys << 16) ^ (1 << 31)) - (1 << 31)  # sign-extend into int32 range
    low32 = low.to(torch.int32)
    ends = torch.stack([low32.view(torch.float32), (low32 | 0xFFFF).view(torch.float32)])
    below_min = torch.bucketize(ends.amin(0), midpoints)  # midpoints strictly below the interval's least value
    below_max = torch.bucketize(ends.amax(0), midpoints)
    nan_keys = ((keys >> 7) & 0xFF) == 0xFF  # exponent all ones: NaN (no inf survives the clamp)
    if not bool((below_max - below_min)[~nan_keys].le(1).all()):
        return None
    nan_index = torch.bucketize(torch.tensor([float("nan")]), midpoints)[0]
    index = torch.where(nan_keys, nan_index, below_min)
    padded = torch.cat([midpoints, torch.tensor([float("inf")])])
    threshold = torch.where(nan_keys, torch.tensor(float("inf")), padded[index])
    code_below = order[index].to(torch.uint8)
    code_above = order[(index + 1).clamp(max=15)].to(torch.uint8)
    return threshold, code_below, code_above, bool(torch.equal(order, torch.arange(16)))


def available(quant_type: str) -> bool:
    return _tables(quant_type) is not None


def _scaled(flat: torch.Tensor, blocksize: int, absmax_out: torch.Tensor) -> torch.Tensor:
    """Values scaled into [-1, 1] by their block's absmax (written to ``absmax_out``), with
    bitsandbytes' exact operations; an odd count is padded with one zero, as it does."""
    n = flat.numel()
    full = n - n % blocksize
    blocks = flat[:full].view(-1, blocksize)
    absmax = torch.max(blocks.abs(), dim=-1)[0]  # not amax: that one rewrites NaN payloads
    absmax_out[: absmax.numel()] = absmax
    scaled = torch.empty(n + n % 2, dtype=torch.float32)
    torch.mul(blocks, 1.0 / absmax.clamp(min=1e-38).view(-1, 1), out=scaled[:full].view_as(blocks))
    if n > full:
        last = flat[full:].abs().max().clamp(min=1e-38)
        absmax_out[-1] = last
        torch.div(flat[full:], last, out=scaled[full:n])
    if n % 2:
        scaled[n] = 0.0
    return scaled.clamp_(-1, 1)


def quantize_4bit_codes(A: torch.Tensor, blocksize: int, quant_type: str, *, chunk_elements: int = 1 << 18) -> tuple[torch.Tensor, torch.Tensor]:
    """``(packed uint8 [ceil(n/2), 1], absmax float32)``, identical to bitsandbytes' CPU kernel.

    Works through the rows of ``A`` (any layout, a transposed view included) a few hundred
    thousand values at a time, each chunk a whole number of blocks, so that every
    intermediate stays in cache.
    """
    if A.dim() == 2 and A.numel() and A.t().is_contiguous() and not A.is_contiguous() and A.shape[1] % blocksize == 0:
        done = _quantize_transposed(A.t(), blocksize, quant_type, chunk_elements)
        if done is not None:
            return done
    if not A.is_contiguous():
        A = A.contiguous()
    rows = A.reshape(1, -1) if A.dim() < 2 else A.reshape(-1, A.shape[-1])
    n, cols = A.numel(), max(rows.shape[1], 1)
    whole = blocksize // math.gcd(cols, blocksize)  # rows that hold a whole number of blocks
    step = max(whole, chunk_elements // cols // whole * whole)
    packed = torch.empty((n + 1) // 2, dtype=torch.uint8)
    absmax = torch.empty(-(-n // blocksize), dtype=torch.float32)
    buffer = torch.empty(min(step, rows.shape[0]) * cols, dtype=torch.float32)
    for first in range(0, rows.shape[0], step):
        part = rows[first : first + step]
        flat = buffer[: part.numel()]
        flat.view(part.shape).copy_(part)  # to float32, in row order
        start = first * cols  # a multiple of blocksize, so even
        codes = _codes(_scaled(flat, blocksize, absmax[start // blocksize :]), quant_type)
        torch.bitwise_or(codes[::2] << 4, codes[1::2], out=packed[start // 2 : start // 2 + codes.numel() // 2])
    return packed.unsqueeze(1), absmax


def _codes(scaled: torch.Tensor, quant_type: str) -> torch.Tensor:
    """Each scaled value's 4-bit code (uint8), by the two table look-ups."""
    threshold, code_below, code_above, sorted_codes = _tables(quant_type)
    key = torch.bitwise_and(scaled.view(torch.int32) >> 16, 0xFFFF).reshape(-1)
    above = (scaled.reshape(-1) > threshold.index_select(0, key)).view(scaled.shape)
    if sorted_codes:  # NF4: the code above is always the next one
        return code_below.index_select(0, key).view(scaled.shape).add_(above)
    return torch.where(above, code_above.index_select(0, key).view(scaled.shape), code_below.index_select(0, key).view(scaled.shape))


def _quantize_transposed(W: torch.Tensor, blocksize: int, quant_type: str, chunk_elements: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``quantize_4bit_codes(W.t())`` for a contiguous ``W`` ``[in, out]`` whose ``in`` is a
    multiple of ``blocksize`` (GPT-2's Conv1D weights), ~1.4x faster: each block of ``W.t()``
    is ``blocksize`` consecutive rows of one column of ``W``, so absmax, scaling and codes are
    computed in ``W``'s own layout, and only the 1-byte codes are transposed. The operations
    on each value are the same, so are the bytes. None when ``W`` holds NaN (``amax`` does
    not return bitsandbytes' NaN payloads): the caller then takes the general path."""
    rows, cols = W.shape
    per_row = rows // blocksize  # blocks in a row of W.t()
    step = max(1, chunk_elements // (cols * blocksize)) * blocksize  # rows of W: whole blocks
    absmax = torch.empty((cols, per_row), dtype=torch.float32)  # in W.t()'s block order
    codes = torch.empty((rows, cols), dtype=torch.uint8)
    buffer = torch.empty((min(step, rows), cols), dtype=torch.float32)
    for first in range(0, rows, step):
        part = W[first : first + step]
        values = buffer[: part.shape[0]]
        values.copy_(part)  # to float32
        blocks = values.view(-1, blocksize, cols)
        block_absmax = blocks.abs().amax(dim=1)  # [blocks here, cols]
        absmax[:, first // blocksize : first // blocksize + blocks.shape[0]] = block_absmax.t()
        scaled = blocks * (1.0 / block_absmax.clamp(min=1e-38)).unsqueeze(1)
        codes[first : first + step] = _codes(scaled.clamp_(-1, 1), quant_type).view(part.shape)
    if bool(torch.isnan(absmax).any()):
        return None
    ordered = codes.t().contiguous().view(-1)  # W.t()'s row-major order
    packed = torch.bitwise_or(ordered[::2] << 4, ordered[1::2])
    return packed.unsqueeze(1), absmax.view(-1)


def quantize_4bit(A: torch.Tensor, *, blocksize: int, quant_type: str, double_quant: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``bitsandbytes.functional.quantize_4bit`` for CPU tensors (uint8 storage), faster.

    Returns the packed codes and the tensors of ``QuantState.as_dict(packed=True)`` (keys
    ``absmax``, ``quant_map``, with double quantization ``nested_absmax`` and
    ``nested_quant_map``, and ``quant_state.bitsandbytes__<type>``).
    """
    packed, absmax = quantize_4bit_codes(A, blocksize, quant_type)
    state = {"absmax": absmax, "quant_map": code_table(quant_type)}
    nested_offset = None
    if double_quant:  # the absmax values, 8-bit blockwise: small, so bitsandbytes' own C kernel
        offset = absmax.mean()
        nested, nested_absmax, code = quantize_blockwise_8bit(absmax - offset, NESTED_BLOCKSIZE)
        state.update({"absmax": nested, "nested_absmax": nested_absmax, "nested_quant_map": code})
        nested_offset = offset.item()
    raw = state_json(quant_type, blocksize, A.dtype, A.shape, nested_offset)
    state[f"quant_state.bitsandbytes__{quant_type}"] = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
    return packed, state


def dequantize_4bit(parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """The weight behind ``QuantState.as_dict(packed=True)`` parts (unprefixed: ``weight``,
    ``absmax``, ``quant_map``, [``nested_absmax``, ``nested_quant_map``] and the JSON state),
    on the CPU: each code's value times its block's absmax, in float32, as bitsandbytes
    computes it. Written here because bitsandbytes' CPU ``dequantize_4bit`` returns zeros for
    the last values of some shapes (an [8, 16] weight in blocks of 32, for one; tested)."""
    state_key = next(k for k in parts if k.startswith("quant_state.bitsandbytes__"))
    state = json.loads(bytes(parts[state_key].tolist()))
    shape, blocksize = tuple(state["shape"]), state["blocksize"]
    n = math.prod(shape)
    packed = parts["weight"].reshape(-1)
    codes = torch.stack([packed >> 4, packed & 0x0F], dim=1).reshape(-1)[:n].long()
    absmax = parts["absmax"]
    if "nested_absmax" in parts:  # double quantization: the absmax values are 8-bit codes themselves
        nested = parts["nested_quant_map"][absmax.long()] * _per_value(parts["nested_absmax"], state["nested_blocksize"], absmax.numel())
        absmax = nested + state["nested_offset"]
    values = parts["quant_map"].float()[codes] * _per_value(absmax.float(), blocksize, n)
    return values.to(getattr(torch, state["dtype"])).reshape(shape)


def _per_value(scales: torch.Tensor, blocksize: int, n: int) -> torch.Tensor:
    return scales.repeat_interleave(blocksize)[:n]


def dynamic_map() -> torch.Tensor:
    """bitsandbytes' signed 8-bit dynamic code (``functional.create_dynamic_map()``), the same
    float32 values computed the same way."""
    data: list[float] = []
    for i in range(7):
        boundaries = torch.linspace(0.1, 1, 2**i + 1, dtype=torch.float32)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        data += ((10 ** (-6 + i)) * means).tolist()
        data += (-(10 ** (-6 + i)) * means).tolist()
    data += [0, 1.0]
    data += [0] * (256 - len(data))
    data.sort()
    return torch.tensor(data, dtype=torch.float32)


def quantize_blockwise_8bit(values: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``bitsandbytes.functional.quantize_blockwise`` of a float32 CPU tensor: (codes uint8,
    absmax float32 per block, the code table). bitsandbytes' own C kernel is called through
    ctypes: importing the bitsandbytes package costs seconds (it loads torch's compiler stack)."""
    kernel = _blockwise_kernel()
    if kernel is None:  # no CPU library beside the package: bitsandbytes' Python route
        import bitsandbytes.functional as bnbf

        codes, state = bnbf.quantize_blockwise(values, blocksize=blocksize)
        return codes, state.absmax, state.code.clone()
    A = values.float().contiguous()
    code = dynamic_map()
    absmax = torch.empty(-(A.numel() // -blocksize), dtype=torch.float32)
    out = torch.empty(A.shape, dtype=torch.uint8)
    ptr = ctypes.c_void_p
    kernel(ptr(code.data_ptr()), ptr(A.data_ptr()), ptr(absmax.data_ptr()), ptr(out.data_ptr()),
           ctypes.c_longlong(blocksize), ctypes.c_longlong(A.numel()))
    return out, absmax, code


@functools.cache
def _blockwise_kernel():
    """``cquantize_blockwise_cpu_fp32`` from bitsandbytes' CPU library, found without importing
    the package; None where it is not installed or has no such library."""
    spec = importlib.util.find_spec("bitsandbytes")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        library = Path(folder) / "libbitsandbytes_cpu.so"
        if library.is_file():
            try:
                return ctypes.CDLL(str(library)).cquantize_blockwise_cpu_fp32
            except (OSError, AttributeError):
                return None
    return None
