"""Chunked units: a tensor copied or cast a few MB at a time, through reused buffers.

A cast is element-wise, so a tensor need never be held whole: each task reads one chunk of
one tensor into a reused buffer (positioned reads, ``read_into``), casts it into a reused
output buffer with numpy (ml_dtypes supplies bfloat16; FP16 from float32 / bfloat16 through
``kernels.halfcast``; all round to nearest-even exactly as
torch does, tested bit for bit) and writes it at its offset in the shard. Nothing here imports
torch (a safetensors input is then converted without it: torch alone takes longer to import
than a 3 GB model takes to cast), and no buffer is allocated per tensor.

NaN stays NaN with its sign (torch's CPU kernels disagree among themselves on NaN payloads).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import ml_dtypes
import numpy as np

from ..dtypes import DType
from ..specs import OutSpec

CHUNK_BYTES = 4 << 20  # input bytes one task reads, casts and writes
IN_FLIGHT = 8  # tasks submitted ahead of the one being hashed (a chunk holds one output buffer)


@dataclass(frozen=True)
class Piece:
    name: str
    source_dtype: DType
    target: OutSpec
    first: int  # first element
    count: int  # elements

    @property
    def source_bytes(self) -> int:
        return self.count * self.source_dtype.itemsize


def pieces(name: str, source_dtype: DType, target: OutSpec, chunk_bytes: int) -> list[Piece]:
    """One tensor's chunks, in order (an empty tensor is one empty piece)."""
    step = max(1, chunk_bytes // max(source_dtype.itemsize, target.dtype.itemsize))
    total = target.numel
    return [Piece(name, source_dtype, target, first, min(step, total - first)) for first in range(0, total, step)] or [
        Piece(name, source_dtype, target, 0, 0)
    ]


class Buffers:
    """Per-thread input buffers and a pool of output buffers, all reused: no page is faulted in
    twice, and memory is ``(workers + count) * chunk_bytes``."""

    def __init__(self, chunk_bytes: int, count: int):
        self._chunk_bytes = chunk_bytes
        self._free = [np.empty(chunk_bytes, np.uint8) for _ in range(count)]
        self._lock = threading.Lock()
        self._local = threading.local()

    def input(self) -> np.ndarray:
        buffer = getattr(self._local, "buffer", None)
        if buffer is None:
            buffer = self._local.buffer = np.empty(self._chunk_bytes, np.uint8)
        return buffer

    def take(self) -> np.ndarray:
        with self._lock:
            return self._free.pop()  # never empty: at most `count` tasks are in flight

    def give(self, buffer: np.ndarray) -> None:
        with self._lock:
            self._free.append(buffer)


# numpy casts to float16 in a scalar loop (a tenth of its bfloat16 cast's speed); these
# sources go through quantkit's kernel instead, which gives the same bits
_HALF_KERNEL_SOURCES = (np.dtype(np.float32), np.dtype(ml_dtypes.bfloat16))


def cast_into(source: np.ndarray, target: np.ndarray) -> int:
    """Cast ``source`` into ``target`` (same length); returns how many finite values became
    inf (only possible going to FP16)."""
    if target.dtype == np.float16 and source.dtype in _HALF_KERNEL_SOURCES:
        from ..kernels.halfcast import to_float16  # numba, loaded only where a cast to FP16 needs it

        return to_float16(source, target)
    with np.errstate(over="ignore", invalid="ignore"):
        target[...] = source
        if target.dtype != np.float16:
            return 0
        infinite = np.isinf(target)
        if not infinite.any():
            return 0
        return int(np.count_nonzero(infinite & np.isfinite(source)))


def cast_piece(piece: Piece, source, writer, buffers: Buffers) -> tuple[np.ndarray, memoryview, int, object]:
    """On a worker: read, cast (or copy) and write one piece; returns its output buffer (to be
    given back once hashed), the bytes written, how many values overflowed and the writer's
    sums of them (hashed here, on the worker)."""
    raw = source.bytes_of(piece.name, piece.first * piece.source_dtype.itemsize, piece.source_bytes, buffers.input())
    buffer = buffers.take()  # the main thread hashes from it once the task is done
    data = buffer[: piece.count * piece.target.dtype.itemsize]
    overflowed = 0
    if piece.target.dtype == piece.source_dtype:  # kept as it is (integers, --skip): a copy
        data[:] = raw
    else:
        overflowed = cast_into(raw.view(piece.source_dtype.numpy), data.view(piece.target.dtype.numpy))
    sums = writer.write_piece(piece.name, piece.first * piece.target.dtype.itemsize, memoryview(data))
    return buffer, memoryview(data), overflowed, sums
