"""The one write pipeline: a shard plan's units, produced on worker threads, written in order.

A unit is one of two kinds:

- chunked (a copy or a cast): read a few MB at a time into reused buffers (``read_into``),
  cast with numpy (``chunks.cast_into``) and written at their offsets; memory stays at a few
  chunks whatever the tensor size, and nothing imports torch;
- whole (a quantizer): ``produce(unit)`` returns the unit's tensors, written at their offsets.

Tasks (chunks, or whole units) run on one thread pool, at most ``window`` of them and
``ahead_bytes`` of output ahead of the one being written; the workers write at offsets and
the main thread takes what was written in file order, so each shard is written front to
back. Without a record in the header (``self_checksum``), the main thread hashes the bytes
from memory as they come, and the SHA-256 needs no second read. With one, the workers hash the
record's leaves as they write (``selfsum.py``) and the file's plain SHA-256 is one pass once
the record is in place. Each finished shard is hashed and checked on another thread while the
next is written. The files are byte-identical to a sequential run (``workers=0``).
"""

from __future__ import annotations

import ctypes
import functools
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from ..planner import ShardPlan
from ..specs import OutSpec
from . import chunks
from .folder import WriteResult, write_index
from .shard import ShardWriter, ShardWriters, WrittenShard, units_in_file_order

ProduceFn = Callable[[str], Iterable[tuple[str, "torch.Tensor"]]]  # noqa: F821
ProgressFn = Callable[[int], None]
TRIM_EVERY_BYTES = 128 << 20


@dataclass(frozen=True)
class WriteOptions:
    """How the pipeline runs. ``workers``: threads running tasks (more than one only where
    the source allows concurrent reads); 0: none, every task on the calling thread.
    ``fsync``: flush each shard to disk before it counts as written (off by default, as
    torch.save and save_pretrained; the rename into place already guarantees no half-written
    output after an interrupted run)."""

    workers: int = 1
    window: int = chunks.IN_FLIGHT
    ahead_bytes: int = 64 << 20
    fsync: bool = False
    chunk_bytes: int | None = None  # None: chunks.CHUNK_BYTES
    self_checksum: bool = False  # each shard's header carries its own record (layout.SELF_CHECKSUM_V2_KEY)
    # called (on the finishing thread) with each shard once written and checked, e.g. to upload
    # it (writing.remote_output); a shard waits for the one before it to be done with, so at
    # most two are on disk while it runs
    shard_done: Callable[[WrittenShard], None] | None = None


@dataclass(frozen=True)
class _Task:
    unit: str
    shard: int
    output_bytes: int
    piece: chunks.Piece | None = None  # None: a whole unit, produced
    input_bytes: int | None = None  # a whole unit's bytes in the source, when it has one


def write_checkpoint(
    folder: Path,
    plan: ShardPlan,
    outputs: dict[str, list[OutSpec]],
    produce: ProduceFn | None = None,
    *,
    metadata: dict[str, str],
    manifest: dict,
    source=None,
    chunked: Callable[[str], bool] = lambda unit: False,
    progress: ProgressFn | None = None,
    options: WriteOptions | None = None,
    **option_values,
) -> WriteResult:
    """Write ``plan``'s shards into ``folder`` (which must exist), then the index and manifest.

    ``outputs[unit]`` lists the tensors a unit writes. Units for which ``chunked(unit)`` is
    true have one output, read from ``source`` (``read_into``) and cast to its dtype in
    chunks. The others are ``produce(unit)``'s tensors. ``progress`` is called, on the calling
    thread as bytes are written, with input bytes: a chunk's, or a whole unit's bytes in
    ``source`` (without a source, each tensor's written bytes). ``options`` (or
    its fields as keywords: ``workers``, ``window``, ...) say how the pipeline runs.
    """
    shards, overflow = write_shards(folder, plan, outputs, produce, metadata=metadata, source=source, chunked=chunked,
                                    progress=progress, options=options, **option_values)
    weight_map = {name: shard.path.name for shard in shards for name in shard.names}
    result = write_index(folder, shards, weight_map, manifest)
    return replace(result, fp16_overflow=overflow)


def write_shards(
    folder: Path,
    plan: ShardPlan,
    outputs: dict[str, list[OutSpec]],
    produce: ProduceFn | None = None,
    *,
    metadata: dict[str, str],
    source=None,
    chunked: Callable[[str], bool] = lambda unit: False,
    progress: ProgressFn | None = None,
    options: WriteOptions | None = None,
    file_names: list[str] | None = None,
    **option_values,
) -> tuple[list[WrittenShard], dict[str, int]]:
    """``write_checkpoint``'s shards alone (no index, no manifest): the shards written, and the
    finite values a chunked FP16 cast made inf, by tensor. ``file_names``: the shards' names
    (default ``plan.file_names()``); an executor writing one shard of a larger plan per task
    passes a one-shard plan and that shard's name in the whole plan."""
    options = options or WriteOptions(**option_values)
    chunk_bytes = max(options.chunk_bytes or chunks.CHUNK_BYTES, 8)  # at least one element of any dtype
    ordered = [units_in_file_order(units, outputs) for units in plan.shards]
    tasks = [_tasks(unit, index, outputs, source, chunked(unit), chunk_bytes) for index, units in enumerate(ordered) for unit in units]
    names = file_names if file_names is not None else plan.file_names()
    writers = ShardWriters([folder / n for n in names], [[s for u in units for s in outputs[u]] for units in ordered], metadata, options.fsync, options.self_checksum)
    run = _Run(writers, produce, source, progress, chunks.Buffers(chunk_bytes, max(options.window, 1)))
    with _intra_op_threads(options.workers), _pool(options.workers) as pool, _pool(1 if options.workers else 0, "finish") as finisher:
        shards = run.all(pool, finisher, [t for unit_tasks in tasks for t in unit_tasks], len(ordered), options)
    return shards, run.overflow


def write_cast_checkpoint(folder: Path, plan: ShardPlan, outputs: dict[str, list[OutSpec]], source, **kwargs) -> WriteResult:
    """``write_checkpoint`` with every unit chunked: a copy or cast of each tensor of ``source``."""
    kwargs.setdefault("workers", 2)
    return write_checkpoint(folder, plan, outputs, source=source, chunked=lambda unit: True, **kwargs)


def _tasks(unit: str, shard: int, outputs, source, chunked: bool, chunk_bytes: int) -> list[_Task]:
    if not chunked:
        input_bytes = source.specs[unit].nbytes if source is not None and unit in source.specs else None
        return [_Task(unit, shard, sum(spec.nbytes for spec in outputs[unit]), input_bytes=input_bytes)]
    (target,) = outputs[unit]
    pieces = chunks.pieces(unit, source.specs[unit].dtype, target, chunk_bytes)
    return [_Task(unit, shard, p.count * target.dtype.itemsize, p) for p in pieces]


class _Run:
    """The main thread's side: submit tasks ahead, hash their bytes in file order, finish shards."""

    def __init__(self, writers: ShardWriters, produce, source, progress, buffers: chunks.Buffers):
        self.writers, self.produce, self.source, self.progress, self.buffers = writers, produce, source, progress, buffers
        self.overflow: dict[str, int] = {}
        self._since_trim = 0

    def all(self, pool, finisher, tasks: list[_Task], num_shards: int, options: WriteOptions) -> list[WrittenShard]:
        ahead: deque[tuple[_Task, Future]] = deque()
        todo = iter(tasks)
        pending = next(todo, None)
        finishing: list[Future] = []
        current = 0
        try:
            while pending is not None or ahead:
                # Submit ahead: at most `window` tasks and `ahead_bytes` of output (one task
                # always, however large), so memory does not grow with shard or model size.
                while pending is not None and len(ahead) < max(options.window, 1) and (
                    not ahead or sum(t.output_bytes for t, _ in ahead) + pending.output_bytes <= options.ahead_bytes
                ):
                    ahead.append((pending, pool.submit(self._work, pending)))
                    pending = next(todo, None)
                task, future = ahead.popleft()
                while current < task.shard:  # every task of the shards before is done
                    self._finishing(finisher, finishing, current, options)
                    current += 1
                self._written(task, future.result())
            while current < num_shards:
                self._finishing(finisher, finishing, current, options)
                current += 1
            return [future.result() for future in finishing]
        except BaseException:
            for _, future in ahead:
                future.cancel()
            self.writers.abort_all()
            raise

    def _finishing(self, finisher, finishing: list[Future], index: int, options: WriteOptions) -> None:
        finishing.append(finisher.submit(_finish, self.writers.pop(index), options.shard_done))
        if options.shard_done is not None and index:
            finishing[index - 1].result()  # the shard before is uploaded (and gone) before the next is begun

    def _work(self, task: _Task):
        """On a worker: produce or cast the task's bytes and write them at their offsets."""
        writer = self.writers.get(task.shard)
        if task.piece is not None:
            return chunks.cast_piece(task.piece, self.source, writer, self.buffers)
        produced = list(self.produce(task.unit))
        return [(name, tensor, writer.write_unhashed(name, tensor)) for name, tensor in produced]

    def _written(self, task: _Task, done) -> None:
        """On the main thread, in file order: hash, count, release."""
        writer = self.writers.get(task.shard)
        if task.piece is not None:
            piece = task.piece
            buffer, data, overflowed, sums = done
            writer.wrote_piece(piece.name, piece.first * piece.target.dtype.itemsize, data, sums)
            self.buffers.give(buffer)
            if overflowed:
                self.overflow[piece.name] = self.overflow.get(piece.name, 0) + overflowed
            if self.progress:
                self.progress(piece.source_bytes)
            return
        for name, tensor, wrote in done:
            if wrote is None:  # a variable-size tensor: kept by the writer until finish
                written = writer.write(name, tensor)
            else:  # written (and its leaves hashed) by the worker: recorded here, in file order
                data, sums = wrote
                writer.wrote_piece(name, 0, data, sums)
                written = len(data)
            if self.progress and task.input_bytes is None:
                self.progress(written)
        if self.progress and task.input_bytes is not None:
            self.progress(task.input_bytes)
        del done
        self._since_trim += task.output_bytes
        if self._since_trim >= TRIM_EVERY_BYTES:
            self._since_trim = 0
            _release_free_memory()


def _finish(writer: ShardWriter, shard_done: Callable[[WrittenShard], None] | None = None) -> WrittenShard:
    with writer:
        shard = writer.finish()
    if shard_done is not None:
        shard_done(shard)
    return shard


class _Inline:
    """An executor running each task at once on the calling thread (``workers=0``)."""

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 (re-raised by result())
            future.set_exception(exc)
        return future


@contextmanager
def _pool(workers: int, name: str = "write") -> Iterator:
    if workers <= 0:
        yield _Inline()
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"quantkit-{name}") as pool:
        yield pool


@contextmanager
def _intra_op_threads(workers: int) -> Iterator[None]:
    """Share the cores among the worker threads instead of giving each torch's whole pool
    (oversubscribed, the pools' threads spin against each other: ~6% slower measured here)."""
    torch = sys.modules.get("torch")  # not imported: nothing to share (a torch-free run)
    if torch is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, before // max(workers, 1)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@functools.cache
def _malloc_trim():
    try:
        libc = ctypes.CDLL(None)
        return libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def _release_free_memory() -> None:
    """Hand freed heap memory back to the OS (glibc). With several threads allocating,
    glibc keeps each thread's freed tensors (up to 32 MB each) in per-thread arenas, and RSS
    would otherwise creep up to several units' worth of dead buffers."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
