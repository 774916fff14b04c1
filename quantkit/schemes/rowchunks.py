"""A Linear weight quantized a run of rows at a time, so memory follows the chunk, not the tensor.

Every CPU quantizer of a ``[out, in]`` weight is local to a run of rows: LLM.int8 and
compressed-tensors FP8 / W8A16 / W4A16 scale each row (or groups within it), FP8_BLOCK
scales 128x128 tiles, and NF4 / FP4 scale blocks of the flattened values. A chunk of whole
rows (whole tiles, whole blocks) therefore quantizes to exactly the bytes the whole weight
gives at those rows, and the results are laid end to end. Only the 4-bit double quantization
(a mean over every absmax) and the quant state's JSON need the whole weight: they are taken
once, from the merged absmax, as ``quantize_array`` takes them.

A weight stored transposed (GPT-2's Conv1D, ``[in, out]``) is not chunked: its output rows are
the source's columns. Those weights are small next to a 7B model's Linear weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..specs import TensorSpec
from .base import QuantScheme, SchemeSettings
from .ct import FAMILY as CT_FAMILY

# Source bytes read and quantized at a time (per worker thread): a 7B model's MLP weight is
# 180 MB FP32, its embedding 524 MB; a chunk this size keeps each worker's buffer and the
# kernels' temporaries at a few tens of MB. The outputs are allocated whole and filled in place.
CHUNK_BYTES = 8 << 20
_ROW_PARTS = {"weight", "SCB", "weight_packed", "weight_scale"}  # the stored tensors laid out by rows

ReadRows = Callable[[int, int, np.ndarray], np.ndarray]  # (first row, row count, buffer) -> rows


def rows_multiple(scheme: QuantScheme, spec: TensorSpec, settings: SchemeSettings) -> int | None:
    """Rows a chunk of ``spec`` must hold a multiple of, or None where ``scheme`` is not chunked."""
    if len(spec.shape) != 2 or 0 in spec.shape:
        return None
    cols = spec.shape[1]
    if scheme.name in ("nf4", "fp4"):
        return settings.blocksize // math.gcd(cols, settings.blocksize)  # rows holding whole blocks
    if scheme.name == "fp8-block":
        from .compressed import FP8_BLOCK

        return FP8_BLOCK
    if scheme.name in ("int8", "fp8", "w8a16", "w4a16"):
        return 1
    return None


def chunk_rows(scheme: QuantScheme, spec: TensorSpec, settings: SchemeSettings, chunk_bytes: int | None = None) -> int | None:
    """Rows per chunk for ``spec`` (a multiple of ``rows_multiple``, at least one multiple), or
    None where the weight is quantized whole: not chunkable, or (bitsandbytes) no larger than
    one chunk. A compressed-tensors weight of one chunk is one chunk of all its rows: its
    kernels are numpy, and this path needs no torch."""
    multiple = rows_multiple(scheme, spec, settings)
    if multiple is None:
        return None
    row_bytes = spec.shape[1] * spec.dtype.itemsize
    step = max(multiple, (chunk_bytes or CHUNK_BYTES) // row_bytes // multiple * multiple)
    if step < spec.shape[0]:
        return step
    return spec.shape[0] if scheme.family == CT_FAMILY else None


@dataclass(frozen=True)
class ChunkedWeight:
    """One weight quantized in row chunks: its stored arrays, its source's NaN / inf count (see
    ``quantize_in_chunks``) and how many values of the stored weight dequantize to NaN or inf."""

    stored: list[tuple[str, np.ndarray]]
    nonfinite_in_source: int | None
    nonfinite_stored: int


def quantize_weight(scheme: QuantScheme, spec: TensorSpec, read_into: Callable[[str, int, memoryview], None], step: int, *,
                    settings: SchemeSettings) -> ChunkedWeight | None:
    """Weight ``spec`` read from a source's ``read_into`` and quantized ``step`` rows at a time;
    None for a bitsandbytes weight holding NaN or inf, which is quantized whole instead: its
    NaN payloads come from bitsandbytes' own functions and depend on the value's place in the
    whole tensor (``kernels._reference``). torch is imported only where a stored float is not
    finite, to count the values it spoils as the whole-weight path counts them."""
    row_bytes = spec.shape[1] * spec.dtype.itemsize

    def read_rows(first: int, count: int, buffer: np.ndarray) -> np.ndarray:
        data = buffer[: count * row_bytes]
        read_into(spec.name, first * row_bytes, memoryview(data))
        return data.view(spec.dtype.numpy).reshape(count, spec.shape[1])

    stored, in_source = quantize_in_chunks(scheme, spec, read_rows, step, settings=settings)
    if scheme.family != CT_FAMILY and in_source:
        return None
    if floats_finite(stored):
        return ChunkedWeight(stored, in_source, 0)
    from .ct import to_torch  # any numpy array, bfloat16 and float8 included

    return ChunkedWeight(stored, in_source, scheme.nonfinite_values([(n, to_torch(a)) for n, a in stored]))


def quantize_in_chunks(scheme: QuantScheme, spec: TensorSpec, read_rows: ReadRows, step: int, *, settings: SchemeSettings) -> tuple[list[tuple[str, np.ndarray]], int | None]:
    """The stored tensors of weight ``spec`` (numpy arrays, as ``quantize_array`` or the
    compressed-tensors kernel give them), quantized ``step`` rows at a time from
    ``read_rows(first, count, buffer)``, and how many of the source's values are NaN or inf:
    counted always for compressed-tensors (as its whole-weight path counts them), for the
    bitsandbytes schemes only in chunks where some stored float is not finite (None where
    every one is: then no value was, as their kernels carry a NaN or inf into the row's
    scale or the block's absmax)."""
    rows, cols = spec.shape
    buffer = np.empty(min(step, rows) * cols * spec.dtype.itemsize, dtype=np.uint8)
    arrays: dict[str, np.ndarray] = {}
    filled: dict[str, int] = {}
    nonfinite_in_source = None
    for first in range(0, rows, step):
        count = min(step, rows - first)
        values = read_rows(first, count, buffer)
        stored = _quantize_chunk(scheme, spec.name, values, settings)
        if scheme.family == CT_FAMILY or not all(bool(np.isfinite(a).all()) for a in stored.values() if a.dtype.kind == "f"):
            nonfinite_in_source = (nonfinite_in_source or 0) + _count_nonfinite(values)
        for suffix, array in stored.items():
            if suffix not in _ROW_PARTS:
                arrays.setdefault(suffix, array)
                continue
            if suffix not in arrays:  # the first chunk is a whole one: the output grows with it in proportion
                total = -(-rows * array.shape[0] // count)  # (a partial 128-row tile or 4-bit block last)
                arrays[suffix] = np.empty((total, *array.shape[1:]), dtype=array.dtype)
            at = filled.get(suffix, 0)
            arrays[suffix][at : at + array.shape[0]] = array
            filled[suffix] = at + array.shape[0]
    if any(filled[s] != arrays[s].shape[0] for s in filled):  # the layout above is the kernels': a bug if not
        raise AssertionError(f"{spec.name}: chunks filled {filled} of {[(s, arrays[s].shape) for s in filled]}")
    return _finish(scheme, spec, arrays, settings), nonfinite_in_source


def _quantize_chunk(scheme: QuantScheme, name: str, values: np.ndarray, settings: SchemeSettings) -> dict[str, np.ndarray]:
    """One chunk's stored arrays by suffix (4-bit: codes and absmax only)."""
    if scheme.name in ("nf4", "fp4"):
        from ..kernels import quantize_4bit_codes

        packed, absmax = quantize_4bit_codes(values, blocksize=settings.blocksize, quant_type=scheme.name, name=name)
        return {"weight_packed": packed, "weight_scale": absmax}
    if scheme.name == "int8":
        from ..kernels import quantize_int8

        codes, scales = quantize_int8(values, name=name)
        return {"weight": codes, "SCB": scales}
    from . import compressed

    return compressed.quantize(values, scheme.name, group_size=settings.group_size, name=name)


def _finish(scheme: QuantScheme, spec: TensorSpec, arrays: dict[str, np.ndarray], settings: SchemeSettings) -> list[tuple[str, np.ndarray]]:
    """The merged chunks as the scheme's whole-weight outputs, named and ordered as it names them."""
    if scheme.name in ("nf4", "fp4"):
        return scheme.stored_from_codes(
            spec.name, arrays["weight_packed"], arrays["weight_scale"], shape=spec.shape, dtype_name=spec.dtype.numpy.name, settings=settings
        )
    module = spec.name.removesuffix(".weight")
    if scheme.name == "int8":
        from .bnb_layout import ROW_FORMAT

        return [(f"{module}.weight", arrays["weight"]), (f"{module}.SCB", arrays["SCB"]), (f"{module}.weight_format", np.array(ROW_FORMAT, dtype=np.uint8))]
    if "weight_shape" in arrays:
        arrays["weight_shape"] = np.array(spec.shape, dtype=np.int64)
    return [(f"{module}.{suffix}", array) for suffix, array in arrays.items()]


def _count_nonfinite(values: np.ndarray) -> int:
    if values.dtype.kind != "f":  # bfloat16 (ml_dtypes): widened, one chunk at a time
        values = values.astype(np.float32)
    return int(np.count_nonzero(~np.isfinite(values)))


def floats_finite(stored: list[tuple[str, np.ndarray]], *, slice_elements: int = 1 << 22) -> bool:
    """Whether every floating-point stored array (numpy floats and ml_dtypes' bfloat16 / float8)
    is finite, checked a slice at a time (no whole-weight temporary)."""
    for _, array in stored:
        if array.dtype.kind not in "fV" or array.dtype.names is not None:
            continue
        flat = array.reshape(-1)
        for start in range(0, flat.size, slice_elements):
            if not np.isfinite(flat[start : start + slice_elements]).all():
                return False
    return True
