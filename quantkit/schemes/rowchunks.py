"""A Linear weight quantized a run of rows at a time, so memory follows the chunk, not the tensor.

A scheme opts in by declaring ``row_chunk_multiple`` (and ``quantize_rows``, ``row_parts``,
``stored_from_rows``, see ``QuantScheme``); this module asks it and knows no scheme by name.
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

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..specs import TensorSpec
from .base import QuantScheme, SchemeSettings

if TYPE_CHECKING:
    from ..sources.base import CheckpointSource

# Source bytes read and quantized at a time (per worker thread): a 7B model's MLP weight is
# 180 MB FP32, its embedding 524 MB; a chunk this size keeps each worker's buffer and the
# kernels' temporaries at a few tens of MB. The outputs are allocated whole and filled in place.
CHUNK_BYTES = 8 << 20

ReadRows = Callable[[int, int, np.ndarray], np.ndarray]  # (first row, row count, buffer) -> rows


def rows_multiple(scheme: QuantScheme, spec: TensorSpec, settings: SchemeSettings) -> int | None:
    """Rows a chunk of ``spec`` must hold a multiple of, or None where ``scheme`` is not chunked."""
    if len(spec.shape) != 2 or 0 in spec.shape:
        return None
    return scheme.row_chunk_multiple(spec, settings)


def chunk_rows(scheme: QuantScheme, spec: TensorSpec, settings: SchemeSettings, chunk_bytes: int | None = None) -> int | None:
    """Rows per chunk for ``spec`` (a multiple of ``rows_multiple``, at least one multiple), or
    None where the weight is quantized whole: not chunkable, or no larger than one chunk unless
    the scheme ``chunks_single_chunk`` (compressed-tensors: then one chunk of all its rows, as
    its kernels are numpy, and this path needs no torch)."""
    multiple = rows_multiple(scheme, spec, settings)
    if multiple is None:
        return None
    row_bytes = spec.shape[1] * spec.dtype.itemsize
    step = max(multiple, (chunk_bytes or CHUNK_BYTES) // row_bytes // multiple * multiple)
    if step < spec.shape[0]:
        return step
    return spec.shape[0] if scheme.chunks_single_chunk else None


@dataclass(frozen=True)
class ChunkedWeight:
    """One weight quantized in row chunks: its stored arrays, its source's NaN / inf count (see
    ``quantize_in_chunks``) and how many values of the stored weight dequantize to NaN or inf."""

    stored: list[tuple[str, np.ndarray]]
    nonfinite_in_source: int | None
    nonfinite_stored: int


def quantize_weight(scheme: QuantScheme, spec: TensorSpec, source: CheckpointSource, step: int, *,
                    settings: SchemeSettings) -> ChunkedWeight | None:
    """Weight ``spec`` read from ``source`` (mapped, or read into a buffer) and quantized ``step`` rows at a time;
    None for a weight holding NaN or inf where the scheme does not ``chunks_nonfinite``: it is
    quantized whole instead (bitsandbytes: its NaN payloads come from bitsandbytes' own
    functions and depend on the value's place in the whole tensor, ``kernels._reference``). torch is imported only where a stored float is not
    finite, to count the values it spoils as the whole-weight path counts them."""
    row_bytes = spec.shape[1] * spec.dtype.itemsize

    def read_rows(first: int, count: int, buffer: np.ndarray) -> np.ndarray:
        data = source.bytes_of(spec.name, first * row_bytes, count * row_bytes, buffer)
        return data.view(spec.dtype.numpy).reshape(count, spec.shape[1])

    stored, in_source = quantize_in_chunks(scheme, spec, read_rows, step, settings=settings)
    if in_source and not scheme.chunks_nonfinite:
        return None
    if floats_finite(stored):
        return ChunkedWeight(stored, in_source, 0)
    from .ct import to_torch  # any numpy array, bfloat16 and float8 included

    return ChunkedWeight(stored, in_source, scheme.nonfinite_values([(n, to_torch(a)) for n, a in stored]))


def quantize_in_chunks(scheme: QuantScheme, spec: TensorSpec, read_rows: ReadRows, step: int, *, settings: SchemeSettings) -> tuple[list[tuple[str, np.ndarray]], int | None]:
    """The stored tensors of weight ``spec`` (numpy arrays, as ``quantize_array`` gives them),
    quantized ``step`` rows at a time from ``read_rows(first, count, buffer)``, and how many of
    the source's values are NaN or inf: counted always where the scheme
    ``stores_source_nonfinite`` (compressed-tensors, as its whole-weight path counts them),
    else only in chunks where some stored float is not finite (None where every one is: then
    no value was, as ``quantize_rows`` carries a NaN or inf into a stored float, e.g. the
    row's scale or the block's absmax)."""
    rows, cols = spec.shape
    buffer = np.empty(min(step, rows) * cols * spec.dtype.itemsize, dtype=np.uint8)
    arrays: dict[str, np.ndarray] = {}
    filled: dict[str, int] = {}
    nonfinite_in_source = None
    for first in range(0, rows, step):
        count = min(step, rows - first)
        values = read_rows(first, count, buffer)
        stored = scheme.quantize_rows(spec.name, values, settings)
        if not scheme.arrays_finite(list(stored.items())):
            nonfinite_in_source = (nonfinite_in_source or 0) + _count_nonfinite(values)
        elif scheme.stores_source_nonfinite:  # its stored floats are finite only where the source's are
            nonfinite_in_source = nonfinite_in_source or 0
        for suffix, array in stored.items():
            if suffix not in scheme.row_parts:
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
    return scheme.stored_from_rows(spec, arrays, settings), nonfinite_in_source


def _count_nonfinite(values: np.ndarray) -> int:
    if values.dtype.kind != "f":  # bfloat16 (ml_dtypes): widened, one chunk at a time
        values = values.astype(np.float32)
    return int(np.count_nonzero(~np.isfinite(values)))


def floats_finite(stored: list[tuple[str, np.ndarray]]) -> bool:
    """Whether every floating-point stored array (numpy floats and ml_dtypes' bfloat16 / float8)
    is finite, from its bits (``kernels.finite``: no temporary)."""
    from ..kernels.finite import all_finite  # numba: imported where a scheme quantizes

    return all(all_finite(a) for _, a in stored if a.dtype.kind in "fV" and a.dtype.names is None)
