"""BF16 / FP16 casts and plain copies (reshard) of checkpoints, streamed in small chunks.

A cast is element-wise, so a tensor need never be held whole: each task reads a few MB of
one tensor into a reused buffer (positioned reads), casts them into a reused output buffer
with numpy (ml_dtypes supplies bfloat16; both round to nearest-even exactly as torch does,
tested bit for bit) and writes them at their offset in the shard. Two worker threads run the
tasks; the main thread hashes the written chunks in file order. Nothing here imports torch
(a safetensors input is then converted without it: torch alone takes longer to import than a
3 GB model takes to cast; a ``.pth`` source has imported it to read its pickle), and no
buffer is allocated per tensor, so memory stays at a few chunks whatever the model or shard
size.

NaN stays NaN with its sign (torch's CPU kernels disagree among themselves on NaN payloads).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .dtypes import DType
from .output import WriteResult, write_index
from .planner import ShardPlan
from .writer import OutSpec, ShardWriter, WrittenShard, units_in_file_order

CHUNK_BYTES = 4 << 20  # input bytes one task reads, casts and writes
IN_FLIGHT = 8  # tasks submitted ahead of the chunk being hashed (each holds one output buffer)


@dataclass(frozen=True)
class _Piece:
    name: str
    source_dtype: DType
    target: OutSpec
    first: int  # first element
    count: int  # elements

    @property
    def source_bytes(self) -> int:
        return self.count * self.source_dtype.itemsize


def _pieces(name: str, source_dtype: DType, target: OutSpec, chunk_bytes: int) -> list[_Piece]:
    step = max(1, chunk_bytes // max(source_dtype.itemsize, target.dtype.itemsize))
    total = target.numel
    return [_Piece(name, source_dtype, target, first, min(step, total - first)) for first in range(0, total, step)] or [
        _Piece(name, source_dtype, target, 0, 0)
    ]


class _Buffers:
    """Per-thread input buffers and a pool of output buffers, all reused: no page is faulted in
    twice, and memory is ``(workers + IN_FLIGHT) * chunk_bytes``."""

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


def cast_into(source: np.ndarray, target: np.ndarray) -> int:
    """Cast ``source`` into ``target`` (same length); returns how many finite values became
    inf (only possible going to FP16)."""
    with np.errstate(over="ignore", invalid="ignore"):
        target[...] = source
        if target.dtype != np.float16:
            return 0
        infinite = np.isinf(target)
        if not infinite.any():
            return 0
        return int(np.count_nonzero(infinite & np.isfinite(source)))


def write_cast_checkpoint(
    folder: Path,
    plan: ShardPlan,
    outputs: dict[str, list[OutSpec]],
    source,
    *,
    metadata: dict[str, str],
    manifest: dict,
    progress: Callable[[int], None] | None = None,
    workers: int = 2,
    fsync: bool = False,
    chunk_bytes: int | None = None,
) -> tuple[WriteResult, dict[str, int]]:
    """Write ``plan``'s shards into ``folder``, each unit a tensor of ``source`` (read with
    ``read_into``) cast to its single output's dtype (or copied when the dtype is kept).

    Returns the write result and, per tensor, how many finite values overflowed to inf.
    ``progress`` is called with input bytes as chunks are written.
    """
    chunk_bytes = max(chunk_bytes or CHUNK_BYTES, 8)  # at least one element of any dtype
    buffers = _Buffers(chunk_bytes, IN_FLIGHT)
    overflow: dict[str, int] = {}
    shards: list[WrittenShard] = []
    names = plan.file_names()
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="quantkit-cast") as pool:
        for file_name, units in zip(names, plan.shards):
            units = units_in_file_order(units, outputs)
            writer = ShardWriter(folder / file_name, [outputs[u][0] for u in units], metadata, fsync=fsync)
            try:
                pieces = [p for u in units for p in _pieces(u, source.specs[u].dtype, outputs[u][0], chunk_bytes)]
                _run(pool, pieces, source, writer, buffers, overflow, progress)
                shards.append(writer.finish())
            finally:
                writer.abort()
    weight_map = {name: shard.path.name for shard in shards for name in shard.names}
    return write_index(folder, shards, weight_map, manifest), overflow


def _run(pool, pieces, source, writer: ShardWriter, buffers: _Buffers, overflow: dict, progress) -> None:
    ahead: deque[tuple[_Piece, Future]] = deque()
    todo = iter(pieces)
    try:
        while True:
            while len(ahead) < IN_FLIGHT and (piece := next(todo, None)) is not None:
                ahead.append((piece, pool.submit(_cast_piece, piece, source, writer, buffers)))
            if not ahead:
                return
            piece, future = ahead.popleft()
            buffer, data, overflowed = future.result()
            writer.wrote_piece(piece.name, piece.first * piece.target.dtype.itemsize, data)  # hashes, in file order
            buffers.give(buffer)
            if overflowed:
                overflow[piece.name] = overflow.get(piece.name, 0) + overflowed
            if progress:
                progress(piece.source_bytes)
    except BaseException:
        for _, future in ahead:
            future.cancel()
        raise


def _cast_piece(piece: _Piece, source, writer: ShardWriter, buffers: _Buffers):
    raw = buffers.input()[: piece.source_bytes]
    source.read_into(piece.name, piece.first * piece.source_dtype.itemsize, memoryview(raw))
    buffer = buffers.take()  # the main thread hashes from it once the task is done
    data = buffer[: piece.count * piece.target.dtype.itemsize]
    overflowed = 0
    if piece.target.dtype == piece.source_dtype:  # kept as it is (integers, --skip): a copy
        data[:] = raw
    else:
        overflowed = cast_into(raw.view(piece.source_dtype.numpy), data.view(piece.target.dtype.numpy))
    writer.write_piece(piece.name, piece.first * piece.target.dtype.itemsize, memoryview(data))
    return buffer, memoryview(data), overflowed
