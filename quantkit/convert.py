"""Convert a checkpoint to any registered scheme (BF16 / FP16 / INT8 / NF4 / FP4, ...), streamed tensor by tensor."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .assign import assign, check_assignment_mix, check_convertible, check_quantizes_something
from .convert_options import ConvertOptions
from .devices import conversion_device
from .dtypes import short_name
from .errors import UsageError
from .layout import CONFIG, SCHEME_KEY, SOURCE_EXTRAS_KEY, TRANSPOSED_KEY, default_output, provenance
from .nonfinite import NonFiniteCounts
from .planner import plan_shards
from .schemes import SCHEMES, QuantScheme, SchemeSettings, get_scheme
from .schemes.rowchunks import chunk_rows, quantize_weight
from .schemes.warmup import Kind, warming
from .selection import Assignment, Kept, only_matches
from .sources import CheckpointSource, opened
from .specs import OutSpec
from .writing import ProgressFn, WriteResult, copy_model_files, write_cast_checkpoint, write_checkpoint
from .writing.folder import record_all_files, skipped_notes
from .writing.target import check_output, output_stage, output_target

WEIGHTS_FOUND_UNDER = "weights found under"  # an ``extras`` entry describing where, not content


@dataclass
class ConvertResult:
    scheme: str
    source_format: str
    device: str
    write: WriteResult
    input_bytes: int
    num_parameters: int
    quantized: list[str]
    kept: dict[str, Kept]
    fp16_overflow: dict[str, int] = field(default_factory=dict)
    nonfinite: dict[str, int] = field(default_factory=dict)  # compressed-tensors: NaN / inf values per weight
    # values the conversion made NaN or inf, by tensor: a quantized weight's non-finite values
    # beyond its source's (an overflowed scale, a NaN spread to its row or block), a cast's overflow
    nonfinite_created: dict[str, int] = field(default_factory=dict)
    source_extras: list[str] = field(default_factory=list)  # non-tensor entries kept in quantkit.json
    dropped_extras: list[str] = field(default_factory=list)  # non-tensor entries not JSON: not kept
    input_bytes_by_dtype: dict[str, int] = field(default_factory=dict)
    output_bytes_by_dtype: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    copied_files: list[str] = field(default_factory=list)
    auto: dict | None = None  # --to auto: target, family, rules, predicted_* (quantkit.auto.auto_record)

    @property
    def output_bytes(self) -> int:
        return self.write.total_bytes

    @property
    def bits_per_weight(self) -> float:
        return self.output_bytes * 8 / self.num_parameters if self.num_parameters else 0.0


class _Converter:
    """Per-tensor outputs (from specs) and the conversion itself (one tensor at a time)."""

    def __init__(self, source: CheckpointSource, assignment: Assignment, settings: SchemeSettings, device: str):
        self.source, self.assignment, self.settings, self.device = source, assignment, settings, device
        self._local = threading.local()
        self.nonfinite = NonFiniteCounts()

    def outputs(self, name: str) -> list[OutSpec]:
        spec = self.source.specs[name]
        scheme = self.assignment.schemes.get(name)
        if scheme is None:
            return [OutSpec(name, spec.dtype, spec.shape)]
        return SCHEMES[scheme].outputs(spec, transpose=name in self.assignment.transpose, settings=self.settings)

    def quantized(self, name: str) -> bool:
        """Whether ``name`` is a whole-tensor unit (quantized); the others are copied or cast in chunks."""
        return isinstance(SCHEMES.get(self.assignment.schemes.get(name, "")), QuantScheme)

    def kernel_kinds(self) -> list[Kind]:
        """How the CPU kernels will meet this conversion's weights (``produce``'s choice for each)."""
        kinds = []
        for name, scheme_name in self.assignment.schemes.items():
            scheme = SCHEMES[scheme_name]
            if not isinstance(scheme, QuantScheme) or not scheme.warms_up:
                continue
            transpose, step = self._route(scheme, name)
            if step is not None or self._whole_on_arrays(scheme):
                kinds.append(Kind(scheme, self.source.specs[name].dtype, transpose, step is not None))
        return kinds

    def _route(self, scheme: QuantScheme, name: str) -> tuple[bool, int | None]:
        """Whether ``name`` is stored transposed, and the rows per chunk where it is quantized in
        row chunks (None: whole). Any source reads into buffers (read_into: a .pth's mapping
        too), so the numpy kernels take every CPU weight."""
        transpose = name in self.assignment.transpose
        step = None if transpose or self.device != "cpu" else chunk_rows(scheme, self.source.specs[name], self.settings)
        return transpose, step

    def _whole_on_arrays(self, scheme: QuantScheme) -> bool:
        """Whether a weight quantized whole goes to ``quantize_array`` (numpy), not ``quantize`` (torch)."""
        return self.device == "cpu" and self.source.reads_into_buffer and scheme.quantizes_arrays

    def produce(self, name: str) -> list:
        """The stored tensors of one quantized weight (on a worker thread)."""
        scheme = SCHEMES[self.assignment.schemes[name]]
        transpose, step = self._route(scheme, name)
        stored = None if step is None else self._produce_chunked(scheme, name, step)  # memory follows the chunk
        if stored is not None:
            return stored
        if self._whole_on_arrays(scheme):
            weight = self._read_array(name)
            stored = scheme.quantize_array(name, weight, transpose=transpose, settings=self.settings)
        else:
            weight = self._read_reused(name)
            if scheme.quantizes_on_device:
                weight = weight.to(self.device)
            stored = scheme.quantize(name, weight, transpose=transpose, settings=self.settings)
        self.nonfinite.record(name, scheme, weight, stored, report_source=scheme.stores_source_nonfinite)
        return stored

    def _produce_chunked(self, scheme, name: str, step: int) -> list | None:
        quantized = quantize_weight(scheme, self.source.specs[name], self.source, step, settings=self.settings)
        if quantized is None:  # a weight holding NaN or inf that the scheme does not chunk: quantized whole
            return None
        self.nonfinite.add(name, quantized.nonfinite_in_source or 0, quantized.nonfinite_stored, report_source=scheme.stores_source_nonfinite)
        return quantized.stored

    def _read_array(self, name: str):
        """A weight as a numpy array, mapped or in this thread's reused buffer (no torch)."""
        import numpy as np

        spec = self.source.specs[name]
        buffer = getattr(self._local, "array", None)
        if buffer is None or buffer.size < spec.nbytes:  # never written where the source maps
            buffer = self._local.array = np.empty(spec.nbytes, dtype=np.uint8)
        return self.source.bytes_of(name, 0, spec.nbytes, buffer).view(spec.dtype.numpy).reshape(spec.shape)

    def _read_reused(self, name: str):
        """A weight to quantize, read into this thread's reused buffer where the source copies
        on reading: the quantizers never return views of their input, and a fresh buffer per
        tensor costs a page fault per 4 KiB of it."""
        if not self.source.reads_into_buffer:  # a mapped .pth: the tensor is there already
            return self.source.get_tensor(name)
        import torch

        spec = self.source.specs[name]
        buffer = getattr(self._local, "buffer", None)
        if buffer is None or buffer.numel() < spec.nbytes:
            buffer = self._local.buffer = torch.empty(spec.nbytes, dtype=torch.uint8)
        data = buffer[: spec.nbytes]
        if spec.nbytes:
            self.source.read_into(name, 0, memoryview(data.numpy()))
        return data.view(spec.dtype.torch).reshape(spec.shape)


def convert(
    src: str | Path | CheckpointSource,
    output: str | Path | None = None,
    *,
    options: ConvertOptions,
    force: bool = False,
    fsync: bool = False,
    progress: ProgressFn | None = None,
    executor=None,
) -> ConvertResult:
    """Convert ``src`` into a folder of safetensors shards in the layout transformers loads.

    Args:
        src: any checkpoint quantkit reads (file, index or Hugging Face folder), or one
            already opened with ``open_checkpoint`` (it is left open).
        output: folder to create (default ``<src stem>-<scheme>`` beside ``src``).
        options: the scheme and its settings.
        force: replace an existing output, only once the new one is complete.
        fsync: flush every shard to disk before the folder is renamed into place.
        progress: called with input byte counts as tensors (for casts, chunks of them) are
            converted, possibly from worker threads; the calls add up to the input's tensor bytes.
        executor: where the shards are written: None, here (threads of this process); or an
            object with ``task_device``, ``staged`` and ``write`` (``quantkit.executors``, e.g. on Ray).

    Example:
        >>> convert("model.pth", options=ConvertOptions("nf4", double_quant=True))  # doctest: +SKIP
    """
    if options.is_auto:
        raise UsageError("--to auto needs a target: use convert_auto (quantkit.auto) or the CLI's --target-bits / --target-size / --min-sqnr / --min-overall-sqnr")
    started = time.perf_counter()
    src_path = src.path if isinstance(src, CheckpointSource) else src  # a URL stays a str
    target = output_target(output, lambda: default_output(src_path, options.scheme))  # a folder, or an s3:// prefix
    # casts run on the CPU (they are bound by reading and writing); quantizers where asked
    # (an executor's tasks resolve the device where they run: the driver needs no GPU)
    if not options.quantizing:
        device = "cpu"
    else:
        device = executor.task_device(options.device) if executor is not None else conversion_device(options.device)
    check_output(src_path, target, force=force, resume=getattr(executor, "resume", False))  # before anything is read
    staging_notes: list[str] = []
    with opened(src) as source:
        check_convertible(source)
        assignment = assign(source, options)
        check_assignment_mix(assignment)
        check_quantizes_something(source, assignment, options)
        converter = _Converter(source, assignment, options.settings, device)
        stage_context = executor.staged(target, force=force, notes=staging_notes) if executor is not None else output_stage(target, force=force, notes=staging_notes)
        with warming(converter.kernel_kinds() if executor is None else (), options.settings), stage_context as stage:
            staging, shard_done = (stage, None) if isinstance(stage, Path) else (stage.folder, stage.shard_done)
            write = _write(staging, source, src_path, converter, options, fsync=fsync, progress=progress, executor=executor, shard_done=shard_done)
            write, copied = _add_model_files(staging, write, source, target, options, assignment, notes=staging_notes)
        return ConvertResult(
            scheme=options.scheme,
            source_format=source.info.format,
            device=device,
            write=write.moved_to(target),
            input_bytes=source.total_bytes,
            num_parameters=sum(s.numel for s in source.specs.values() if s.dtype.is_floating_point),
            quantized=assignment.quantized({s.name for s in SCHEMES.values() if s.quantizes}),
            nonfinite=dict(converter.nonfinite.in_source),
            kept=dict(assignment.kept),
            fp16_overflow=dict(write.fp16_overflow),
            nonfinite_created={**write.fp16_overflow, **converter.nonfinite.created},
            source_extras=list(source.info.extras_json),
            dropped_extras=[k for k in source.info.extras if k not in source.info.extras_json and k != WEIGHTS_FOUND_UNDER],
            input_bytes_by_dtype=bytes_by_dtype(source.specs.values()),
            output_bytes_by_dtype=bytes_by_dtype(spec for shard in write.shards for spec in shard.specs),
            elapsed_s=time.perf_counter() - started,
            notes=_notes(source, options, assignment) + staging_notes,
            copied_files=copied,
            auto=options.auto,
        )


def _write(staging: Path, source: CheckpointSource, src_path: Path, converter: _Converter, options: ConvertOptions, *, fsync, progress,
           executor=None, shard_done=None) -> WriteResult:
    outputs = {name: converter.outputs(name) for name in source.specs}
    plan = plan_shards([(n, sum(o.nbytes for o in outs)) for n, outs in outputs.items()], options.max_shard_bytes)
    extra = {SCHEME_KEY: options.scheme}
    if converter.assignment.transpose:
        extra[TRANSPOSED_KEY] = json.dumps(sorted(converter.assignment.transpose))
    metadata = provenance(source, **extra)
    manifest = {"source": str(src_path), "source_format": source.info.format, "operation": "convert", "scheme": options.scheme, "aliases": source.aliases}
    if source.info.extras_json:  # a training checkpoint's vocabulary, epoch, metrics: kept beside the weights
        manifest[SOURCE_EXTRAS_KEY] = source.info.extras_json
    if options.auto is not None:
        manifest["auto"] = options.auto
    if executor is not None:
        return executor.write(staging, plan, outputs, converter, metadata=metadata, manifest=manifest, quantizing=options.quantizing, fsync=fsync, progress=progress)
    if not options.quantizing:  # every tensor in chunks, with numpy (for safetensors, torch is never imported)
        return write_cast_checkpoint(
            staging, plan, outputs, source, metadata=metadata, manifest=manifest, progress=progress, fsync=fsync, self_checksum=True,
            shard_done=shard_done,
        )
    workers = 2 if source.concurrent_reads else 1
    return write_checkpoint(
        staging, plan, outputs, converter.produce, source=source, chunked=lambda unit: not converter.quantized(unit),
        metadata=metadata, manifest=manifest, progress=progress, fsync=fsync, workers=workers, self_checksum=True, shard_done=shard_done,
    )


def _add_model_files(staging: Path, write: WriteResult, source: CheckpointSource, target: Path, options: ConvertOptions,
                     assignment: Assignment, *, notes: list[str]) -> tuple[WriteResult, list[str]]:
    """Copy the model's config and tokenizer files beside the shards (config.json records the
    conversion); the manifest then covers every file written. Returns it and the copied names."""
    skipped: dict[str, str] = {}
    copied = copy_model_files(source.model_files_dir(), staging, target=target, skipped=skipped)
    if source.info.config_dir is not None and (staging / CONFIG).is_file():
        update_hf_config(staging / CONFIG, options, assignment)
    notes += skipped_notes(skipped)
    return record_all_files(write, skipped=skipped), copied


def _notes(source: CheckpointSource, options: ConvertOptions, assignment: Assignment) -> list[str]:
    notes = list(source.info.notes)
    if options.quantizing and not assignment.quantized({s.name for s in SCHEMES.values() if s.quantizes}):
        notes.append("no tensor matched the quantization rules: every tensor was kept (see the kept list)")
    unquantizable = [f"{n} ({why})" for n, why in assignment.kept.items()
                     if options.only and not why.by_user and why is not Kept.NOT_FLOATING and only_matches(n, options.only)]
    if options.quantizing and unquantizable:
        shown = ", ".join(unquantizable[:5]) + (f", ... ({len(unquantizable)} in all)" if len(unquantizable) > 5 else "")
        notes.append(f"--only matches tensors that stay unquantized: {shown}; only 2-D .weight tensors not tied to another name can be quantized")
    return notes


def bytes_by_dtype(specs) -> dict[str, int]:
    """Tensor bytes per dtype name, largest first."""
    totals: dict[str, int] = {}
    for spec in specs:
        totals[short_name(spec.dtype)] = totals.get(short_name(spec.dtype), 0) + spec.nbytes
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def update_hf_config(path: Path, options: ConvertOptions, assignment: Assignment) -> None:
    """Record the conversion in a copied config.json the way transformers would: the scheme
    asked for (``--to``) writes it."""
    config = json.loads(path.read_text())
    quantizers = [SCHEMES[s] for s in dict.fromkeys(assignment.schemes.values()) if SCHEMES[s].quantizes]
    writer = get_scheme(options.scheme) if not quantizers or get_scheme(options.scheme) in quantizers else quantizers[0]
    writer.update_hf_config(config, assignment, options.settings)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
