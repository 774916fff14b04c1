"""Output folders: staged beside the target, written shard by shard, renamed into place when complete."""

from __future__ import annotations

import ctypes
import functools
import json
import os
import shutil
import sys
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from .version import __version__
from .errors import OutputError
from .planner import ShardPlan
from .writer import OutSpec, ShardWriter, WrittenShard, os_reason, units_in_file_order

MANIFEST = "quantkit.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt", ".h5", ".msgpack", ".index.json")
ProduceFn = Callable[[str], Iterable[tuple[str, "torch.Tensor"]]]  # noqa: F821
ProgressFn = Callable[[int], None]


@dataclass
class WriteResult:
    folder: Path
    shards: list[WrittenShard]
    weight_map: dict[str, str]
    total_bytes: int
    manifest: dict = field(default_factory=dict)

    @property
    def file_bytes(self) -> int:
        return sum(s.file_bytes for s in self.shards)

    def moved_to(self, folder: Path) -> "WriteResult":
        """The same result once the staged folder was renamed to ``folder``."""
        shards = [replace(s, path=folder / s.path.name) for s in self.shards]
        return replace(self, folder=folder, shards=shards)


@contextmanager
def staged_output(target: Path, *, force: bool) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it replaces ``target`` atomically.

    An existing ``target`` is refused unless ``force``; with ``force`` it is replaced only after
    the new folder is complete. On any error or interrupt the temporary folder is removed.
    """
    target = Path(target)
    if target.exists() and not force:
        raise OutputError(f"{target}: already exists; choose another output or pass --force to replace it")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        what = "is not a folder" if parent.exists() else "does not exist"
        raise OutputError(f"{parent}: cannot create {target.name} there: {parent} {what}")
    staging = parent / f".{target.name}.quantkit-tmp-{uuid.uuid4().hex[:8]}"
    try:
        staging.mkdir()
    except OSError as exc:
        raise OutputError(f"{parent}: cannot write here: {os_reason(exc)}") from None
    try:
        yield staging
        _swap_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _swap_into_place(staging: Path, target: Path) -> None:
    if not target.exists():
        os.replace(staging, target)
        return
    old = target.parent / f".{target.name}.quantkit-old-{uuid.uuid4().hex[:8]}"
    os.replace(target, old)
    try:
        os.replace(staging, target)
    except BaseException:  # interrupted or failed between the two renames: put the old output back
        if not target.exists():
            os.replace(old, target)
        raise
    if old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink(missing_ok=True)


def write_checkpoint(
    folder: Path,
    plan: ShardPlan,
    outputs: dict[str, list[OutSpec]],
    produce: ProduceFn,
    *,
    metadata: dict[str, str],
    manifest: dict,
    progress: ProgressFn | None = None,
    workers: int | None = None,
    window: int = 3,
    ahead_bytes: int = 64 << 20,
    fsync: bool = False,
) -> WriteResult:
    """Write ``plan``'s shards into ``folder`` (which must exist), then the index and manifest.

    ``outputs[unit]`` lists the tensors a unit writes and ``produce(unit)`` yields them.
    Reading and converting overlap with writing: ``produce`` runs on worker threads for the
    next units (at most ``window`` units and ``ahead_bytes`` of output, or one unit, are
    produced ahead of the one being written, so memory stays bounded by a few units whatever
    the shard size), the results are written in order, and each finished shard is checked in
    the background while the next is written. The files are byte-identical to a sequential run.

    ``workers``: threads calling ``produce`` (more than one only where the source allows
    concurrent reads, ``CheckpointSource.concurrent_reads``); ``None`` means 1 (``produce`` is
    then called in order, one call at a time); ``0``: no threads at all.

    Within a shard, units are produced in the order their tensors lie in the file, so the file
    is written front to back and hashed as it goes. ``fsync``: fsync each shard before it
    counts as written (off by default, as torch.save and save_pretrained; the rename into place
    already guarantees no half-written output after an interrupted run).
    """
    if workers is None:
        workers = 1
    names = plan.file_names()
    ordered = [units_in_file_order(units, outputs) for units in plan.shards]
    jobs = [unit for units in ordered for unit in units]
    if workers <= 0:
        return _write_sequential(folder, ordered, names, outputs, produce, metadata, manifest, progress, fsync)
    shards: list[WrittenShard] = []
    weight_map: dict[str, str] = {}
    job_shard = [i for i, units in enumerate(ordered) for _ in units]
    job_bytes = [sum(spec.nbytes for spec in outputs[unit]) for unit in jobs]
    writers = _ShardWriters([folder / n for n in names], [[s for u in units for s in outputs[u]] for units in ordered], metadata, fsync)
    ahead: deque[tuple[int, Future]] = deque()
    finishing: list[Future] = []
    next_job = done_jobs = since_trim = 0
    with _intra_op_threads(workers), ThreadPoolExecutor(
        max_workers=workers, thread_name_prefix="quantkit-produce"
    ) as pool, ThreadPoolExecutor(max_workers=1, thread_name_prefix="quantkit-finish") as finisher:
        try:
            for index, units in enumerate(ordered):
                writer = writers.get(index)
                for _unit in units:
                    # Produce ahead: at most `window` units and `ahead_bytes` of output (one
                    # unit always, however large), so memory does not grow with shard size.
                    while next_job < len(jobs) and len(ahead) < max(window, 1):
                        size = job_bytes[next_job]
                        if ahead and sum(b for b, _ in ahead) + size > ahead_bytes:
                            break
                        job = pool.submit(_produce_and_write, produce, jobs[next_job], writers, job_shard[next_job])
                        ahead.append((size, job))
                        next_job += 1
                    produced = ahead.popleft()[1].result()
                    for name, tensor, data in produced:
                        if data is None:  # a variable-size tensor: kept by the writer until finish
                            written = writer.write(name, tensor)
                        else:  # written by the worker: hash it here, in file order
                            writer.wrote_piece(name, 0, data)
                            written = len(data)
                        if progress:
                            progress(written)
                    del produced
                    since_trim += job_bytes[done_jobs]
                    done_jobs += 1
                    if since_trim >= TRIM_EVERY_BYTES:
                        since_trim = 0
                        _release_free_memory()
                finishing.append(finisher.submit(_finish, writers.pop(index)))
            for future in finishing:
                shards.append(future.result())
        except BaseException:
            for _, future in ahead:
                future.cancel()
            writers.abort_all()
            raise
    for shard in shards:
        weight_map.update({name: shard.path.name for name in shard.names})
    return write_index(folder, shards, weight_map, manifest)


class _ShardWriters:
    """The shards' writers, each opened by whichever thread first needs it: the main thread
    starting the shard, or a worker that produced one of its tensors ahead of time."""

    def __init__(self, paths: list[Path], specs: list[list[OutSpec]], metadata: dict[str, str], fsync: bool):
        self._paths, self._specs, self._metadata, self._fsync = paths, specs, metadata, fsync
        self._open: dict[int, ShardWriter] = {}
        self._lock = threading.Lock()

    def get(self, index: int) -> ShardWriter:
        with self._lock:
            writer = self._open.get(index)
            if writer is None:
                writer = self._open[index] = ShardWriter(self._paths[index], self._specs[index], self._metadata, fsync=self._fsync)
            return writer

    def pop(self, index: int) -> ShardWriter:
        with self._lock:
            return self._open.pop(index)

    def abort_all(self) -> None:
        with self._lock:
            for writer in self._open.values():
                writer.abort()


def _produce_and_write(produce: ProduceFn, unit: str, writers: _ShardWriters, shard: int) -> list:
    """On a worker: produce a unit and write its fixed-size tensors at their offsets (the
    main thread then only hashes them), so writing runs on the workers as well."""
    produced = list(produce(unit))
    writer = writers.get(shard)
    return [(name, tensor, writer.write_unhashed(name, tensor)) for name, tensor in produced]


TRIM_EVERY_BYTES = 128 << 20


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


def _finish(writer: ShardWriter) -> WrittenShard:
    try:
        return writer.finish()
    finally:
        writer.abort()


def _write_sequential(folder, ordered, names, outputs, produce, metadata, manifest, progress, fsync) -> WriteResult:
    shards: list[WrittenShard] = []
    weight_map: dict[str, str] = {}
    for file_name, units in zip(names, ordered):
        specs = [spec for unit in units for spec in outputs[unit]]
        writer = ShardWriter(folder / file_name, specs, metadata, fsync=fsync)
        try:
            for unit in units:
                for name, tensor in produce(unit):
                    written = writer.write(name, tensor)
                    if progress:
                        progress(written)
            shards.append(writer.finish())
        finally:
            writer.abort()
        weight_map.update({name: file_name for name in shards[-1].names})
    return write_index(folder, shards, weight_map, manifest)


def write_index(folder: Path, shards: list[WrittenShard], weight_map: dict[str, str], manifest: dict) -> WriteResult:
    total = sum(s.tensor_bytes for s in shards)
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": total, "quantkit_version": __version__, "sha256": {s.path.name: s.sha256 for s in shards}},
            "weight_map": dict(sorted(weight_map.items())),
        }
        _write_json(folder / "model.safetensors.index.json", index)
    manifest = {
        **manifest,
        "quantkit_version": __version__,
        "total_size": total,
        "files": {s.path.name: {"bytes": s.file_bytes, "sha256": s.sha256} for s in shards},
    }
    _write_json(folder / MANIFEST, manifest)
    return WriteResult(folder, shards, weight_map, total, manifest)


def _write_json(path: Path, value: object) -> None:
    try:
        path.write_text(json.dumps(value, indent=2) + "\n")
    except OSError as exc:
        raise OutputError(f"{path}: write failed: {os_reason(exc)}") from None


def copy_model_files(config_dir: Path | None, folder: Path, *, target: Path | None = None) -> list[str]:
    """Copy a Hugging Face folder's non-weight files (config, tokenizer, ...) into ``folder``.

    ``target``: where ``folder`` will end up; when that is inside ``config_dir`` (an output
    written into the model's own folder), an older output there is not copied into the new one.
    """
    if config_dir is None:
        return []
    copied = []
    skip = target.resolve() if target is not None else None
    for item in sorted(config_dir.iterdir()):
        if item.name.startswith(".") or item.name == MANIFEST or item.name.endswith(WEIGHT_SUFFIXES):
            continue
        if skip is not None and item.resolve() == skip:
            continue
        try:
            if item.is_dir():
                shutil.copytree(item, folder / item.name, ignore=shutil.ignore_patterns(*[f"*{s}" for s in WEIGHT_SUFFIXES]))
            else:
                shutil.copy2(item, folder / item.name)
        except OSError as exc:
            raise OutputError(f"{folder / item.name}: copy failed: {exc}") from None
        copied.append(item.name)
    return copied
