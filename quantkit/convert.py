"""Convert a checkpoint to any registered scheme (BF16 / FP16 / INT8 / NF4 / FP4, ...), streamed tensor by tensor."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .devices import check_device, resolve_device
from .dtypes import short_name
from .errors import InputError, OutputError, UsageError
from .layout import CONFIG, SCHEME_KEY, TRANSPOSED_KEY, default_output, provenance
from .planner import DEFAULT_MAX_SHARD_BYTES, plan_shards
from .schemes import SCHEMES, QuantScheme, SchemeSettings, get_scheme
from .selection import Assignment, Kept, layout_for, select
from .sources import CheckpointSource, opened
from .specs import OutSpec
from .writing import ProgressFn, WriteResult, copy_model_files, staged_output, write_cast_checkpoint, write_checkpoint



@dataclass(frozen=True)
class ConvertOptions:
    """How to convert. ``scheme``: a registered scheme name (bf16, fp16, int8, nf4, fp4, ...)."""

    scheme: str
    blocksize: int = 64
    double_quant: bool = False
    rest_dtype: str = "keep"
    skip: tuple[str, ...] = ()
    only: tuple[str, ...] = ()
    device: str = "auto"
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES

    def __post_init__(self):
        get_scheme(self.scheme)  # UsageError naming the choices
        rest = rest_choices()
        if self.rest_dtype not in rest:
            raise UsageError(f"unknown --rest-dtype {self.rest_dtype!r}: choose {', '.join(rest[:-1])} or {rest[-1]}")
        if self.blocksize not in (32, 64, 128, 256, 512, 1024, 2048, 4096):
            raise UsageError(f"--blocksize {self.blocksize} is not one bitsandbytes supports (32, 64, ..., 4096)")
        check_device(self.device)

    @property
    def quantizing(self) -> bool:
        return get_scheme(self.scheme).quantizes

    @property
    def settings(self) -> SchemeSettings:
        return SchemeSettings(blocksize=self.blocksize, double_quant=self.double_quant)


def rest_choices() -> list[str]:
    """``--rest-dtype``: keep, or a registered cast scheme for the tensors a quantizer leaves."""
    return ["keep", *(s.name for s in SCHEMES.values() if not s.quantizes)]


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
    input_bytes_by_dtype: dict[str, int] = field(default_factory=dict)
    output_bytes_by_dtype: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    copied_files: list[str] = field(default_factory=list)

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

    def outputs(self, name: str) -> list[OutSpec]:
        spec = self.source.specs[name]
        scheme = self.assignment.schemes.get(name)
        if scheme is None:
            return [OutSpec(name, spec.dtype, spec.shape)]
        return SCHEMES[scheme].outputs(spec, transpose=name in self.assignment.transpose, settings=self.settings)

    def quantized(self, name: str) -> bool:
        """Whether ``name`` is a whole-tensor unit (quantized); the others are copied or cast in chunks."""
        return isinstance(SCHEMES.get(self.assignment.schemes.get(name, "")), QuantScheme)

    def produce(self, name: str) -> list:
        """The stored tensors of one quantized weight (on a worker thread)."""
        scheme = SCHEMES[self.assignment.schemes[name]]
        transpose = name in self.assignment.transpose
        if self.device == "cpu" and self.source.reads_into_buffer and scheme.quantizes_arrays:
            return scheme.quantize_array(name, self._read_array(name), transpose=transpose, settings=self.settings)
        tensor = self._read_reused(name).to(self.device)
        return scheme.quantize(name, tensor, transpose=transpose, settings=self.settings)

    def _read_array(self, name: str):
        """A weight as a numpy array in this thread's reused buffer (no torch)."""
        import numpy as np

        spec = self.source.specs[name]
        buffer = getattr(self._local, "array", None)
        if buffer is None or buffer.size < spec.nbytes:
            buffer = self._local.array = np.empty(spec.nbytes, dtype=np.uint8)
        data = buffer[: spec.nbytes]
        if spec.nbytes:
            self.source.read_into(name, 0, memoryview(data))
        return data.view(spec.dtype.numpy).reshape(spec.shape)

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


def assign(source: CheckpointSource, options: ConvertOptions) -> Assignment:
    """Which scheme each tensor goes through, from specs alone.

    A cast scheme takes every floating-point tensor not excluded by --skip / --only; a
    quantizer takes the linear weights ``select`` picks, and the rest are cast to
    ``--rest-dtype`` (except those --skip / --only exclude) or written as stored."""
    scheme = get_scheme(options.scheme)
    if not scheme.quantizes:
        selection = select(source, skip=options.skip, only=options.only, layout=None)
        kept = {n: why for n, why in selection.kept.items() if why.by_user or why is Kept.NOT_FLOATING}
        schemes = {n: scheme.name for n in source.specs if n not in kept}
        return Assignment(schemes, frozenset(), kept, selection.structure)
    selection = select(source, skip=options.skip, only=options.only, layout=layout_for(source.info.config_dir))
    schemes = dict.fromkeys(selection.quantize, scheme.name)
    if options.rest_dtype != "keep":
        rest = {n: options.rest_dtype for n, why in selection.kept.items() if not why.by_user and source.specs[n].dtype.is_floating_point}
        schemes.update(rest)
    transpose = frozenset(n for n, t in selection.quantize.items() if t)
    return Assignment(schemes, transpose, dict(selection.kept), selection.structure)


def _check_mix(assignment: Assignment) -> None:
    """Refuse quantizers a stored format cannot mix (bitsandbytes: one method per model)."""
    used = [SCHEMES[s] for s in sorted(set(assignment.schemes.values())) if SCHEMES[s].quantizes]
    for scheme in used:
        others = [o.name for o in used if o.family == scheme.family and o is not scheme]
        if others and not scheme.mixes_within_family:
            raise UsageError(f"{scheme.name} cannot be mixed with {', '.join(others)} in one {scheme.family} checkpoint")


def convert(
    src: str | Path | CheckpointSource,
    output: str | Path | None = None,
    *,
    options: ConvertOptions,
    force: bool = False,
    fsync: bool = False,
    progress: ProgressFn | None = None,
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

    Example:
        >>> convert("model.pth", options=ConvertOptions("nf4", double_quant=True))  # doctest: +SKIP
    """
    started = time.perf_counter()
    src_path = src.path if isinstance(src, CheckpointSource) else Path(src)
    target = Path(output) if output is not None else default_output(src_path, options.scheme)
    # casts run on the CPU (they are bound by reading and writing); quantizers where asked
    device = resolve_device(options.device) if options.quantizing else "cpu"
    if target.exists() and not force:
        raise OutputError(f"{target}: already exists; choose another output or pass --force to replace it")
    with opened(src) as source:
        _check_convertible(source)
        assignment = assign(source, options)
        _check_mix(assignment)
        converter = _Converter(source, assignment, options.settings, device)
        outputs = {name: converter.outputs(name) for name in source.specs}
        with staged_output(target, force=force) as staging:
            write = _write(staging, source, src_path, converter, outputs, options, fsync=fsync, progress=progress)
            copied = copy_model_files(source.info.config_dir, staging, target=target)
            if source.info.config_dir is not None and (staging / CONFIG).is_file():
                update_hf_config(staging / CONFIG, options, assignment)
        return ConvertResult(
            scheme=options.scheme,
            source_format=source.info.format,
            device=device,
            write=write.moved_to(target),
            input_bytes=source.total_bytes,
            num_parameters=sum(s.numel for s in source.specs.values() if s.dtype.is_floating_point),
            quantized=assignment.quantized({options.scheme}),
            kept=dict(assignment.kept),
            fp16_overflow=dict(write.fp16_overflow),
            input_bytes_by_dtype=bytes_by_dtype(source.specs.values()),
            output_bytes_by_dtype=bytes_by_dtype(spec for shard in write.shards for spec in shard.specs),
            elapsed_s=time.perf_counter() - started,
            notes=_notes(source, options, assignment),
            copied_files=copied,
        )


def _write(staging: Path, source: CheckpointSource, src_path: Path, converter: _Converter, outputs, options: ConvertOptions, *, fsync, progress) -> WriteResult:
    plan = plan_shards([(n, sum(o.nbytes for o in outs)) for n, outs in outputs.items()], options.max_shard_bytes)
    extra = {SCHEME_KEY: options.scheme}
    if converter.assignment.transpose:
        extra[TRANSPOSED_KEY] = json.dumps(sorted(converter.assignment.transpose))
    metadata = provenance(source, **extra)
    manifest = {"source": str(src_path), "source_format": source.info.format, "operation": "convert", "scheme": options.scheme, "aliases": source.aliases}
    if not options.quantizing:  # every tensor in chunks, with numpy (for safetensors, torch is never imported)
        return write_cast_checkpoint(staging, plan, outputs, source, metadata=metadata, manifest=manifest, progress=progress, fsync=fsync)
    workers = 2 if source.concurrent_reads else 1
    return write_checkpoint(
        staging, plan, outputs, converter.produce, source=source, chunked=lambda unit: not converter.quantized(unit),
        metadata=metadata, manifest=manifest, progress=progress, fsync=fsync, workers=workers,
    )


def _notes(source: CheckpointSource, options: ConvertOptions, assignment: Assignment) -> list[str]:
    notes = list(source.info.notes)
    if options.quantizing and not assignment.quantized({options.scheme}):
        notes.append("no tensor matched the quantization rules: every tensor was kept (see the kept list)")
    return notes


def bytes_by_dtype(specs) -> dict[str, int]:
    """Tensor bytes per dtype name, largest first."""
    totals: dict[str, int] = {}
    for spec in specs:
        totals[short_name(spec.dtype)] = totals.get(short_name(spec.dtype), 0) + spec.nbytes
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def _check_convertible(source: CheckpointSource) -> None:
    if not source.specs:
        raise InputError(f"{source.path}: the checkpoint holds no tensors")
    if not any(s.dtype.is_floating_point for s in source.specs.values()):
        raise InputError(f"{source.path}: no floating-point tensors to convert (all {len(source.specs)} are integer or bool)")


def update_hf_config(path: Path, options: ConvertOptions, assignment: Assignment) -> None:
    """Record the conversion in a copied config.json the way transformers would: the scheme
    asked for (``--to``) writes it."""
    config = json.loads(path.read_text())
    get_scheme(options.scheme).update_hf_config(config, assignment, options.settings)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
