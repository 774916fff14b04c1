"""One output shard as a self-contained task: open the source, convert the shard's tensors,
write the shard. Nothing here imports Ray: the Ray executor (``executors.ray``) runs
``convert_shard`` as a remote task, and it can run in-process as well.

The task goes through the same code as a local run (``convert._Converter`` and
``writing.pipeline.write_shards``, with the same shard writer), so its file is byte-identical
to the same shard of a local run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..convert import _Converter
from ..errors import UsageError
from ..devices import resolve_device
from ..planner import ShardPlan
from ..schemes import SchemeSettings
from ..selection import Assignment
from ..sources import open_checkpoint
from ..specs import OutSpec
from ..writing.pipeline import write_shards
from ..writing.remote_output import upload_task_shard
from ..writing.shard import WrittenShard

# Test hook, read on the driver when the jobs are made: a task writing the shard of this file
# name ends its process (os._exit) once part of the shard is written, as a killed worker would.
CRASH_SHARD_ENV = "QUANTKIT_TEST_CRASH_IN_SHARD"


@dataclass(frozen=True)
class ShardJob:
    """Everything a task needs: where to read, what to convert, where to write."""

    src: str  # an absolute local path (on a filesystem every node shares) or a URL
    open_options: dict
    folder: str  # the run's staging folder (absolute); unused with upload_to
    file_name: str  # the shard's name in the whole plan
    units: tuple[str, ...]
    outputs: dict[str, list[OutSpec]]
    assignment: Assignment
    settings: SchemeSettings
    device: str  # cpu, cuda (the first GPU the task sees), or auto (cuda where the task sees one, else cpu)
    quantizing: bool
    metadata: dict[str, str]
    fsync: bool = False
    crash_partway: bool = False  # the test hook (CRASH_SHARD_ENV)
    upload_to: str | None = None  # an S3 output prefix: the shard is written in a local temporary folder, then uploaded there

    @property
    def output_bytes(self) -> int:
        return sum(spec.nbytes for unit in self.units for spec in self.outputs[unit])


@dataclass
class ShardDone:
    """What a task reports: the shard as written (size, SHA-256, tensors) and what the
    conversion counted (values a cast or a quantizer made non-finite)."""

    shard: WrittenShard
    input_bytes: int
    fp16_overflow: dict[str, int] = field(default_factory=dict)
    nonfinite: dict[str, int] = field(default_factory=dict)
    nonfinite_created: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0  # the task's time, opening the source included
    bytes_fetched: int | None = None  # over the network, for a remote source
    state: dict = field(default_factory=dict)  # S3: the object's ETag and the header's self-checksum
    device: str = "cpu"  # where it quantized
    gpu_ids: list[str] = field(default_factory=list)  # the GPUs Ray gave the task (set by executors.ray)


def convert_shard(job: ShardJob) -> ShardDone:
    """Convert and write one shard of ``job``; the shard as written.

    The shard's file is (re)written from the start, so a task run again after a failure
    leaves the same bytes (tasks are idempotent). With ``upload_to`` it is written in a local
    temporary folder, uploaded (``remote_output.upload_task_shard``) and deleted."""
    started = time.perf_counter()
    device = task_device(job.device) if job.quantizing else "cpu"
    folder = Path(tempfile.mkdtemp(prefix="quantkit-task-")) if job.upload_to else Path(job.folder)
    try:
        with open_checkpoint(job.src, **job.open_options) as source:
            converter = _Converter(source, job.assignment, job.settings, device)
            plan = ShardPlan((job.units,), (job.output_bytes,))
            chunked = (lambda unit: True) if not job.quantizing else (lambda unit: not converter.quantized(unit))
            # as a local run: casts on two threads, quantizers on two where the source allows it
            workers = 2 if not job.quantizing or source.concurrent_reads else 1
            shards, overflow = write_shards(
                folder, plan, job.outputs, converter.produce, metadata=job.metadata, source=source, chunked=chunked,
                progress=_crash_partway if job.crash_partway else None, fsync=job.fsync, workers=workers, self_checksum=True,
                file_names=[job.file_name],
            )
            input_bytes = sum(source.specs[u].nbytes for u in job.units if u in source.specs)
            fetched = source.bytes_fetched
        state = upload_task_shard(job.upload_to, shards[0]) if job.upload_to else {}
    finally:
        if job.upload_to:
            shutil.rmtree(folder, ignore_errors=True)
    return ShardDone(shards[0], input_bytes, dict(overflow), dict(converter.nonfinite.in_source), dict(converter.nonfinite.created),
                     time.perf_counter() - started, fetched, state, device)


def task_device(device: str) -> str:
    """Where a task quantizes: ``cpu``; ``cuda``: the first GPU it sees (Ray sets
    ``CUDA_VISIBLE_DEVICES`` to the GPUs it gave the task); ``auto``: that GPU where there is
    one, else the CPU kernels. A task that sees no GPU for ``cuda`` fails with a UsageError."""
    if device == "auto":
        return resolve_device("auto")
    if device.startswith("cuda"):
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "(not set)")
        try:
            return resolve_device("cuda")
        except UsageError:
            raise UsageError(f"--device cuda: a Ray task sees no CUDA device (CUDA_VISIBLE_DEVICES={visible}); "
                             "give tasks GPUs with --ray-gpus-per-task on a cluster that has them, or use --device cpu") from None
    return "cpu"


def _crash_partway(num_bytes: int) -> None:
    os._exit(17)  # the first bytes of the shard are written: die as a killed worker would
