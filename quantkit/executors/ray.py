"""The Ray executor: each output shard is one Ray task (``shard_task.convert_shard``).

The driver (the process running ``convert``) plans from the headers alone, as a local run
does. Each task opens the source itself (a path on a filesystem every node shares, or a
URL), converts the tensors of its shard and writes the shard into the run's partial folder
beside the output; it returns the shard's size and SHA-256, a few hundred bytes: no tensor
passes through Ray's object store. The driver records each finished shard
(``resume.RunRecord``), then writes the index, the copied config and tokenizer files and
``quantkit.json``, checks every shard it did not write itself, and renames the folder into place.

A failed or interrupted run keeps its partial folder (``.X.quantkit-partial``): the same
command with ``--resume`` converts only the shards not finished; without ``--resume`` the
folder is removed first and everything is converted again.

An S3 output (``-o s3://bucket/prefix``, for a cluster without a shared filesystem): each
task writes its shard in a local temporary folder and uploads it straight to the prefix
(``remote_output.upload_task_shard``); the record is an object there (``remote_shards``), and
the driver uploads the copied files, the index and ``quantkit.json`` last. A failed or
interrupted run keeps the uploaded shards and the record for ``--resume``.

GPUs: ``gpus_per_task`` gives each task that many of the cluster's GPUs (``num_gpus``); with
``--device cuda`` (or ``auto`` when tasks get GPUs) a task quantizes on the first GPU it sees.

Ray is imported only here, when an executor is made (``pip install quantkit[ray]``).
"""

from __future__ import annotations

import logging
import math
import os
from contextlib import contextmanager
from pathlib import Path

from ..devices import check_device
from ..errors import QuantkitError, UsageError, VerificationError
from ..layout import MANIFEST, RUN_RECORD
from ..planner import ShardPlan
from ..safetensors_format import read_header
from ..sources.remote import RemoteLocation, is_url
from ..writing.folder import WriteResult, write_index
from ..writing.remote_output import staged_remote_output
from ..writing.shard import WrittenShard
from ..writing.staging import InterruptedAfterOutput, partial_folder, staged_output
from .remote_shards import RemoteShards
from .resume import LocalShards, RunRecord, plan_digest, source_files
from .shard_task import CRASH_SHARD_ENV, ShardDone, ShardJob, convert_shard

INSTALL_HINT = "--executor ray needs Ray: pip install 'quantkit[ray]'"
CANCEL_WAIT_S = 30  # after an interrupt, how long the driver waits for its cancelled tasks to end
TASK_RETRIES = 2  # a task whose worker died is run again this many times (tasks are idempotent)


class ShardTaskError(QuantkitError):
    """A shard's task failed (its worker died, after Ray's retries); the shards finished are
    kept for --resume. A task that raised a quantkit error is reported as that error instead."""

    exit_code = 7


class InterruptedWithPartial(KeyboardInterrupt):
    """The driver was interrupted; its message says where the finished shards are kept."""


def task_resources(device: str, gpus_per_task: float | None) -> tuple[str, float]:
    """The device each task is given (``ShardJob.device``) and its ``num_gpus``, from
    ``--device`` and ``--ray-gpus-per-task`` (None: 1 with ``--device cuda``, else 0).

    A task sees only the GPUs Ray gave it, numbered from 0. Refused (UsageError): a count that
    is negative, not a number, or a fraction above 1 (Ray's rule); ``--device cuda`` with no
    GPU per task; ``cuda:N`` other than ``cuda:0``; GPUs for ``--device cpu``, which would go unused.
    ``auto`` is the CPU kernels (as a local run) unless tasks get GPUs: then each task's GPU."""
    check_device(device)
    if gpus_per_task is not None and (not math.isfinite(gpus_per_task) or gpus_per_task < 0
                                      or (gpus_per_task > 1 and not float(gpus_per_task).is_integer())):
        raise UsageError(f"--ray-gpus-per-task {gpus_per_task:g}: give 0, a fraction of one GPU up to 1 (e.g. 0.5), or a whole number")
    if device.startswith("cuda:") and device != "cuda:0":
        raise UsageError(f"--device {device} with --executor ray: a task sees only the GPUs Ray gives it, numbered from 0; use --device cuda")
    if device.startswith("cuda"):
        if gpus_per_task == 0:
            raise UsageError("--device cuda with --ray-gpus-per-task 0: tasks would share GPUs Ray does not schedule; give each task one (the default) or a fraction")
        return "cuda", 1.0 if gpus_per_task is None else float(gpus_per_task)
    if device == "cpu" and gpus_per_task:
        raise UsageError(f"--ray-gpus-per-task {gpus_per_task:g} with --device cpu: the GPUs would go unused; use --device cuda or auto")
    gpus = float(gpus_per_task or 0)
    return ("auto" if gpus else "cpu"), gpus


def import_ray():
    """The ``ray`` module, or a UsageError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    return ray


class RayExecutor:
    """``convert(..., executor=RayExecutor(src, ...))``: the shards of one conversion as Ray tasks.

    Args:
        src: the checkpoint, as given to ``open_checkpoint`` (each task opens it again).
        open_options: ``open_checkpoint``'s keywords (``key``, ``strip_prefix``, ``allow_globals``).
        address: a running cluster's address (``ray start --head`` prints it); None: the
            cluster this process is connected to already, or ``RAY_ADDRESS``, or a new local one.
        resume: keep the shards a failed run of the same command finished (checked by size and
            SHA-256) and convert only the rest.
        gpus_per_task: GPUs each task is given (``task_resources``; None: 1 with ``--device cuda``).
    """

    def __init__(self, src, *, open_options: dict | None = None, address: str | None = None, resume: bool = False,
                 gpus_per_task: float | None = None):
        self.ray = import_ray()
        self.gpus_per_task = gpus_per_task
        self.num_gpus = 0.0  # per task, set by task_device
        self.task_devices: dict[str, str] = {}  # each converted shard's device, as its task resolved it
        self.gpu_ids: dict[str, list[str]] = {}  # each converted shard's GPUs, as Ray gave them
        self._remote: RemoteShards | None = None  # an S3 output's store, while staged
        self._record_live = False  # an S3 output's record is there (--resume can finish the run)
        self._own_cluster = False  # the cluster was started here (ray.init), and stops with this run
        self.src = str(src) if is_url(str(src)) else os.path.abspath(src)  # tasks may run in another folder
        self.open_options = dict(open_options or {})
        self.address = address
        self.resume = resume
        self.kept: list[str] = []  # the shards a resumed run kept, by file name
        self.converted: list[str] = []  # the shards this run's tasks wrote
        self.task_seconds: dict[str, float] = {}  # each converted shard's task time
        self.bytes_fetched = 0  # by the tasks, over the network (a remote source)

    def task_device(self, device: str) -> str:
        """What ``convert`` resolves ``--device`` to for this executor (nothing on the driver
        needs a GPU): ``cpu``, ``cuda`` or ``auto``, resolved by each task (``task_resources``)."""
        task, self.num_gpus = task_resources(device, self.gpus_per_task)
        return task

    @contextmanager
    def staged(self, target: Path | RemoteLocation, *, force: bool, notes: list[str]):
        """``staged_output``, resumable: the partial folder is kept when the run fails; for an S3
        target, ``staged_remote_output`` keeping the uploaded shards and the record."""
        with self._connected():
            if isinstance(target, RemoteLocation):
                with self._staged_remote(target, force=force, notes=notes) as stage:
                    yield stage
                return
            try:
                with staged_output(target, force=force, notes=notes, resumable=True, resume=self.resume) as staging:
                    yield staging
            except (InterruptedWithPartial, InterruptedAfterOutput):
                raise
            except KeyboardInterrupt:  # outside the tasks' loop (checking kept shards, writing the index)
                if not partial_folder(target).is_dir():
                    raise
                raise InterruptedWithPartial(
                    f"the partial output is kept in {partial_folder(target)}: rerun the same command with --resume to finish it"
                ) from None

    @contextmanager
    def _staged_remote(self, target: RemoteLocation, *, force: bool, notes: list[str]):
        try:
            with staged_remote_output(target, force=force, notes=notes, resumable=True, resume=self.resume) as stage:
                self._remote = RemoteShards(stage.uploader)
                yield stage
        except InterruptedWithPartial:
            raise
        except KeyboardInterrupt:  # checking kept shards, or uploading the index
            fix = "rerun the same command with --resume to finish it" if self._record_live else "rerun with --force to replace it"
            raise InterruptedWithPartial(f"{target.url} is incomplete (no {MANIFEST}): {fix}") from None
        finally:
            self._remote, self._record_live = None, False

    def write(self, staging: Path, plan: ShardPlan, outputs, converter, *, metadata: dict[str, str], manifest: dict,
              quantizing: bool, fsync: bool, progress) -> WriteResult:
        """Run one task per shard not kept, record each as it finishes; then the index and manifest."""
        names = plan.file_names()
        assignment = converter.assignment
        digest = plan_digest(
            source=self.src, source_files=source_files(converter.source.info.files), plan=plan, names=names, outputs=outputs,
            schemes=assignment.schemes, transpose=assignment.transpose, settings=converter.settings, metadata=metadata,
        )
        remote = self._remote
        record, kept = RunRecord.start(remote or LocalShards(staging), digest, resume=self.resume)
        self._record_live = True
        self.kept = sorted(kept)
        crash = os.environ.get(CRASH_SHARD_ENV)
        jobs = {
            name: ShardJob(self.src, self.open_options, str(staging), name, units, {u: outputs[u] for u in units}, assignment,
                           converter.settings, converter.device, quantizing, metadata, fsync, crash_partway=crash == name,
                           upload_to=remote.where if remote else None)
            for name, units in zip(names, plan.shards) if name not in kept
        }
        if progress:
            for name in kept:
                progress(sum(converter.source.specs[u].nbytes for u in plan.shards[names.index(name)] if u in converter.source.specs))
        done = self._run(jobs, record, progress)
        shards = [kept[name] if name in kept else self._checked(done[name], jobs[name]) for name in names]
        record.remove()  # the folder now holds the shards only; the manifest lists every file in it
        self._record_live = False
        overflow: dict[str, int] = {}
        for counts in [record.counts(name) for name in kept] + [_counts(result) for result in done.values()]:
            overflow.update(counts.get("fp16_overflow", {}))
            converter.nonfinite.in_source.update(counts.get("nonfinite", {}))
            converter.nonfinite.created.update(counts.get("nonfinite_created", {}))
        weight_map = {tensor: shard.path.name for shard in shards for tensor in shard.names}
        result = write_index(staging, shards, weight_map, manifest)
        result.fp16_overflow = overflow
        return result

    @contextmanager
    def _connected(self):
        ray = self.ray
        started = not ray.is_initialized()
        if started:
            try:  # ERROR: Ray's notices on starting a cluster (token authentication, ...) would break the CLI's one-line output
                ray.init(address=self.address, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
            except ConnectionError as exc:
                raise UsageError(f"--ray-address {self.address}: cannot connect to a Ray cluster there: {exc}") from None
            self._own_cluster = _started_a_cluster(ray)
        try:
            gpus = ray.cluster_resources().get("GPU", 0)
            if self.num_gpus > gpus:  # the tasks would wait forever for a node that has them
                where = self.address or "started here"
                raise UsageError(f"--ray-gpus-per-task {self.num_gpus:g}: the Ray cluster ({where}) has {gpus:g} GPU(s) in all; "
                                 "use a cluster with GPUs, or --device cpu")
            yield
        finally:
            if started:
                ray.shutdown()
                self._own_cluster = False

    def _run(self, jobs: dict[str, ShardJob], record: RunRecord, progress) -> dict[str, ShardDone]:
        ray = self.ray
        task = ray.remote(_shard_in_task).options(max_retries=TASK_RETRIES, num_gpus=self.num_gpus)
        pending = {task.remote(job): name for name, job in jobs.items()}
        done: dict[str, ShardDone] = {}
        failed: list[tuple[str, Exception]] = []

        def finish(ref) -> None:
            name = pending.pop(ref)
            try:
                result = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 (the others go on: their shards count for --resume)
                failed.append((name, exc))
                return
            done[name] = result
            self.converted.append(name)
            self.task_seconds[name] = result.elapsed_s
            self.bytes_fetched += result.bytes_fetched or 0
            self.task_devices[name], self.gpu_ids[name] = result.device, result.gpu_ids
            record.finished(result.shard, _counts(result), state=result.state)
            if progress:
                progress(result.input_bytes)

        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                finish(ready[0])
        except KeyboardInterrupt:
            try:
                self._stop(pending)
            except KeyboardInterrupt:  # a second Ctrl-C: leave now
                pass
            raise InterruptedWithPartial(self._kept_message(record)) from None
        if failed:
            name, exc = failed[0]
            cause = getattr(exc, "cause", None)
            kind = type(cause) if isinstance(cause, QuantkitError) else ShardTaskError
            raise kind(f"{len(failed)} shard task(s) failed, first {name}: {_task_reason(exc)}; {self._kept_message(record)}")
        return done

    def _stop(self, pending: dict) -> None:
        """After an interrupt: stop the tasks still running, so that none is still writing its
        shard when a resumed run rewrites it.

        A cluster started here is shut down, which ends its workers before ``ray.shutdown``
        returns. Its tasks are not cancelled: Ray 2.60's driver aborts on a failed internal
        check ("Tried to complete task that was not pending") when ``ray.cancel`` reaches a task
        whose result is arriving at that moment. On a cluster this run only connected to, the
        tasks must be cancelled, and that rare race remains."""
        ray = self.ray
        if self._own_cluster:
            ray.shutdown()
            self._own_cluster = False
            return
        for ref in pending:
            ray.cancel(ref, force=True)
        ray.wait(list(pending), num_returns=len(pending), timeout=CANCEL_WAIT_S)

    def _checked(self, result: ShardDone, job: ShardJob) -> WrittenShard:
        planned = {o.name for unit in job.units for o in job.outputs[unit]}
        if self._remote is not None:
            return self._remote.check_written(result.shard, result.state, planned)
        return _checked(result.shard, job, planned)

    def _kept_message(self, record: RunRecord) -> str:
        if self._remote is not None:
            return (f"{len(record.done)} finished shard(s) are kept at {record.where} (with its {RUN_RECORD}): rerun the same "
                    "command with --resume to convert only the rest (or with --force to start over)")
        target = Path(record.where).name.removeprefix(".").removesuffix(".quantkit-partial")
        return (f"{len(record.done)} finished shard(s) are kept in {record.where}: rerun the same command with --resume "
                f"to convert only the rest (without --resume the output {target} is started over)")


def _started_a_cluster(ray) -> bool:
    """Whether ``ray.init`` started a local cluster (rather than connecting to a running one,
    given by address, ``RAY_ADDRESS`` or found on this machine). Ray has no public call for
    this; its node object says so. False when that is not there (the tasks are then cancelled)."""
    node = getattr(getattr(ray, "_private", None) and ray._private.worker, "_global_node", None)
    try:
        return bool(node is not None and node.is_head())
    except Exception:  # noqa: BLE001 (another Ray's internals: cancel instead)
        return False


def _shard_in_task(job: ShardJob) -> ShardDone:
    """``convert_shard`` as a Ray task, reporting the GPUs Ray gave it."""
    import ray

    done = convert_shard(job)
    done.gpu_ids = [str(i) for i in ray.get_gpu_ids()]
    return done


def _counts(result: ShardDone) -> dict:
    found = {"fp16_overflow": result.fp16_overflow, "nonfinite": result.nonfinite, "nonfinite_created": result.nonfinite_created}
    return {k: v for k, v in found.items() if v}


def _checked(shard: WrittenShard, job: ShardJob, planned: set[str]) -> WrittenShard:
    """The driver's check of a shard a task wrote: there, on the driver's filesystem, with the
    size the task reported and the planned tensors."""
    path = Path(job.folder) / job.file_name
    try:
        size = path.stat().st_size
        header = read_header(path)
    except Exception:  # noqa: BLE001 (missing or unreadable: said below)
        size, header = -1, None
    if size != shard.file_bytes:
        raise VerificationError(
            f"{path}: the shard a Ray task wrote ({shard.file_bytes} bytes) is not here ({'missing' if size < 0 else f'{size} bytes'}): "
            "the output must be on a filesystem every node of the cluster shares"
        )
    if header is None or set(header.entries) != planned:
        raise VerificationError(f"{path}: the shard's tensors differ from the plan")
    return shard


def _task_reason(exc: Exception) -> str:
    """One line from a failed task: the quantkit error it raised, or what happened to its worker."""
    cause = getattr(exc, "cause", None)
    if cause is not None and not isinstance(cause, type):
        return str(cause).splitlines()[0] if str(cause) else cause.__class__.__name__
    text = str(exc).strip().splitlines()
    return next((line.strip() for line in text if line.strip()), exc.__class__.__name__)
