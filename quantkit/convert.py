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
from .layout import CONFIG, SCHEME_KEY, SOURCE_EXTRAS_KEY, TRANSPOSED_KEY, default_output, provenance
from .planner import DEFAULT_MAX_SHARD_BYTES, plan_shards
from .rules import KEEP, Rule, check_mix, parse_rules
from .schemes import SCHEMES, QuantScheme, SchemeSettings, get_scheme
from .schemes.ct import FAMILY as CT_FAMILY
from .schemes.rowchunks import chunk_rows, quantize_weight
from .selection import Assignment, Kept, check_patterns, layout_for, only_matches, select
from .sources import CheckpointSource, opened
from .sources.remote import check_local_output
from .specs import OutSpec
from .writing import ProgressFn, WriteResult, copy_model_files, staged_output, write_cast_checkpoint, write_checkpoint
from .writing.folder import record_all_files, skipped_notes
from .writing.target import check_output

WEIGHTS_FOUND_UNDER = "weights found under"  # an ``extras`` entry describing where, not content


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
    group_size: int = 128  # compressed-tensors w8a16 / w4a16
    rules: tuple[str, ...] = ()  # "REGEX=SCHEME", first match wins (quantkit.rules)
    auto: dict | None = field(default=None, compare=False)  # set by convert_auto: the target, rules and predictions

    def __post_init__(self):
        # names are case-insensitive (--to BF16): keep the registered spelling; "auto" is made
        # concrete by convert_auto (quantkit.auto)
        if self.scheme.lower() == "auto":
            object.__setattr__(self, "scheme", "auto")
        else:
            object.__setattr__(self, "scheme", get_scheme(self.scheme).name)  # UsageError naming the choices
        object.__setattr__(self, "rest_dtype", self.rest_dtype.lower())
        check_patterns("--skip", self.skip)
        check_patterns("--only", self.only)
        if isinstance(self.rules, str):
            object.__setattr__(self, "rules", (self.rules,))
        object.__setattr__(self, "rules", tuple(self.rules))
        if self.scheme != "auto":
            check_mix(self.scheme, self.parsed_rules)  # before anything is read
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or self.group_size <= 0:
            raise UsageError(f"--group-size must be a positive integer, not {self.group_size!r}")
        rest = rest_choices()
        if self.rest_dtype not in rest:
            raise UsageError(f"unknown --rest-dtype {self.rest_dtype!r}: choose {', '.join(rest[:-1])} or {rest[-1]}")
        if self.blocksize not in (32, 64, 128, 256, 512, 1024, 2048, 4096):
            raise UsageError(f"--blocksize {self.blocksize} is not one bitsandbytes supports (32, 64, ..., 4096)")
        check_device(self.device)

    @property
    def parsed_rules(self) -> tuple[Rule, ...]:
        return parse_rules(self.rules)

    @property
    def quantizing(self) -> bool:
        """Whether any quantizer may be used (``--to`` or a rule)."""
        return get_scheme(self.scheme).quantizes or any(r.scheme != KEEP and get_scheme(r.scheme).quantizes for r in self.parsed_rules)

    @property
    def settings(self) -> SchemeSettings:
        return SchemeSettings(blocksize=self.blocksize, double_quant=self.double_quant, group_size=self.group_size)


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
        self.nonfinite: dict[str, int] = {}
        self.nonfinite_created: dict[str, int] = {}

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
        # any source reads into buffers (read_into: a .pth's mapping too), so the numpy kernels take every CPU weight
        step = None if transpose or self.device != "cpu" else chunk_rows(scheme, self.source.specs[name], self.settings)
        stored = None if step is None else self._produce_chunked(scheme, name, step)  # memory follows the chunk
        if stored is not None:
            return stored
        if self.device == "cpu" and self.source.reads_into_buffer and scheme.quantizes_arrays:
            array = self._read_array(name)
            stored = scheme.quantize_array(name, array, transpose=transpose, settings=self.settings)
            if not _floats_finite(stored):  # rare: a scale overflowed or a NaN spread; counted with torch
                import numpy as np
                import torch

                as_torch = [(n, torch.from_numpy(np.ascontiguousarray(a))) for n, a in stored]
                self._count_created(name, scheme.nonfinite_values(as_torch), int(np.count_nonzero(~np.isfinite(array))))
            return stored
        tensor = self._read_reused(name)
        if scheme.family != CT_FAMILY:  # compressed-tensors kernels are numpy, on the CPU
            tensor = tensor.to(self.device)
        else:  # stored as the reference stores them (quantkit.schemes.compressed); counted
            import torch

            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                self.nonfinite[name] = bad
        stored = scheme.quantize(name, tensor, transpose=transpose, settings=self.settings)
        converted = scheme.nonfinite_values(stored)
        if converted:  # rare: only then is the source counted
            import torch

            self._count_created(name, converted, int((~torch.isfinite(tensor)).sum()))
        return stored

    def _produce_chunked(self, scheme, name: str, step: int) -> list | None:
        quantized = quantize_weight(scheme, self.source.specs[name], self.source.read_into, step, settings=self.settings)
        if quantized is None:  # a bitsandbytes weight holding NaN or inf: quantized whole
            return None
        if scheme.family == CT_FAMILY and quantized.nonfinite_in_source:  # counted as the whole-weight path counts
            self.nonfinite[name] = quantized.nonfinite_in_source
        if quantized.nonfinite_stored:
            self._count_created(name, quantized.nonfinite_stored, quantized.nonfinite_in_source or 0)
        return quantized.stored

    def _count_created(self, name: str, converted: int, in_source: int) -> None:
        if converted - in_source > 0:
            self.nonfinite_created[name] = converted - in_source

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
    """Which scheme each tensor goes through, from specs alone, and why.

    A cast scheme takes every floating-point tensor not excluded by --skip / --only; a
    quantizer takes the linear weights ``select`` picks, and the rest are cast to
    ``--rest-dtype`` (except those --skip / --only exclude) or written as stored. Then the
    rules (``--rule``, first match wins) override: a quantizer rule applies to the weights the
    default policy picks, a cast or ``keep`` to any floating-point tensor. A rule that decides
    no tensor is a UsageError naming it. compressed-tensors schemes store Linear weights only:
    Conv1D weights stay unquantized (``Kept.CONV1D``)."""
    scheme = get_scheme(options.scheme)
    rules = options.parsed_rules
    layout = layout_for(source.info.config_dir) if options.quantizing else None
    selection = select(source, skip=options.skip, only=options.only, layout=layout)
    reasons: dict[str, str] = {}
    if not scheme.quantizes:
        kept = {n: why for n, why in selection.kept.items() if why.by_user or why is Kept.NOT_FLOATING}
        schemes = {n: scheme.name for n in source.specs if n not in kept}
        reasons.update(dict.fromkeys(schemes, f"--to {scheme.name}"))
    else:
        kept = dict(selection.kept)
        schemes = dict.fromkeys(selection.quantize, scheme.name)
        reasons.update(dict.fromkeys(schemes, "linear weight (default policy)"))
        if options.rest_dtype != "keep":
            rest = {n: options.rest_dtype for n, why in selection.kept.items() if not why.by_user and source.specs[n].dtype.is_floating_point}
            schemes.update(rest)
            reasons.update(dict.fromkeys(rest, f"--rest-dtype {options.rest_dtype}"))
    used: set[str] = set()
    for name, spec in source.specs.items():
        why = selection.kept.get(name)
        if not spec.dtype.is_floating_point or (why is not None and why.by_user):
            continue
        for rule in rules:
            if not rule.matches(name):
                continue
            if rule.scheme != KEEP and get_scheme(rule.scheme).quantizes and name not in selection.quantize:
                continue  # a quantizer rule applies to linear weights only; a later rule may apply
            used.add(rule.text)
            if rule.scheme == KEEP:
                schemes.pop(name, None)
                kept[name] = Kept.RULE_KEEP
            else:
                schemes[name] = rule.scheme
                if get_scheme(rule.scheme).quantizes:
                    kept.pop(name, None)
            reasons[name] = f"rule '{rule.text}'"
            break
    unused = [r.text for r in rules if r.text not in used]
    if unused:
        raise UsageError(
            f"rule {unused[0]!r} decides no tensor of {source.path.name} (it matches no name, only tensors it cannot "
            f"apply to, or only tensors an earlier rule decided); fix its regex or drop it (see --dry-run)"
        )
    for name, target in list(schemes.items()):
        if get_scheme(target).family == CT_FAMILY and selection.quantize.get(name):
            del schemes[name]  # a Conv1D weight [in, out]: compressed-tensors loads Linear layers only
            kept[name] = Kept.CONV1D
    quantized = {n for n, s in schemes.items() if get_scheme(s).quantizes}
    for name, spec in source.specs.items():
        if name not in quantized and name not in kept and reasons.get(name, "").startswith("rule") and (options.quantizing or name not in schemes):
            kept[name] = Kept.RULE_KEEP  # a weight a rule cast or kept instead of quantizing, or kept instead of casting
        if kept.get(name) is Kept.CONV1D or name not in reasons:
            reasons[name] = kept[name].value if name in kept else ""
    ignore = tuple(
        n.removesuffix(".weight") for n, spec in source.specs.items()
        if n.endswith(".weight") and spec.dtype.is_floating_point and len(spec.shape) >= 1 and n not in quantized
    )
    transpose = frozenset(n for n in quantized if selection.quantize.get(n))
    for name in quantized:
        kept.pop(name, None)
    return Assignment(schemes, transpose, kept, selection.structure, reasons=reasons, ignore=ignore)


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
    if options.scheme == "auto":
        raise UsageError("--to auto needs a target: use convert_auto (quantkit.auto) or the CLI's --target-bits / --target-size / --min-sqnr / --min-overall-sqnr")
    started = time.perf_counter()
    src_path = src.path if isinstance(src, CheckpointSource) else src  # a URL stays a str
    check_local_output(output)
    target = Path(output) if output is not None else default_output(src_path, options.scheme)
    # casts run on the CPU (they are bound by reading and writing); quantizers where asked
    device = resolve_device(options.device) if options.quantizing else "cpu"
    check_output(src_path, target, force=force)  # before anything is read
    staging_notes: list[str] = []
    with opened(src) as source:
        _check_convertible(source)
        assignment = assign(source, options)
        _check_mix(assignment)
        converter = _Converter(source, assignment, options.settings, device)
        outputs = {name: converter.outputs(name) for name in source.specs}
        with staged_output(target, force=force, notes=staging_notes) as staging:
            write = _write(staging, source, src_path, converter, outputs, options, fsync=fsync, progress=progress)
            skipped: dict[str, str] = {}
            copied = copy_model_files(source.model_files_dir(), staging, target=target, skipped=skipped)
            if source.info.config_dir is not None and (staging / CONFIG).is_file():
                update_hf_config(staging / CONFIG, options, assignment)
            write = record_all_files(write, skipped=skipped)  # the manifest covers every file written
            staging_notes += skipped_notes(skipped)
        return ConvertResult(
            scheme=options.scheme,
            source_format=source.info.format,
            device=device,
            write=write.moved_to(target),
            input_bytes=source.total_bytes,
            num_parameters=sum(s.numel for s in source.specs.values() if s.dtype.is_floating_point),
            quantized=assignment.quantized({s.name for s in SCHEMES.values() if s.quantizes}),
            nonfinite=dict(converter.nonfinite),
            kept=dict(assignment.kept),
            fp16_overflow=dict(write.fp16_overflow),
            nonfinite_created={**write.fp16_overflow, **converter.nonfinite_created},
            source_extras=list(source.info.extras_json),
            dropped_extras=[k for k in source.info.extras if k not in source.info.extras_json and k != WEIGHTS_FOUND_UNDER],
            input_bytes_by_dtype=bytes_by_dtype(source.specs.values()),
            output_bytes_by_dtype=bytes_by_dtype(spec for shard in write.shards for spec in shard.specs),
            elapsed_s=time.perf_counter() - started,
            notes=_notes(source, options, assignment) + staging_notes,
            copied_files=copied,
            auto=options.auto,
        )


def _write(staging: Path, source: CheckpointSource, src_path: Path, converter: _Converter, outputs, options: ConvertOptions, *, fsync, progress) -> WriteResult:
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
    if not options.quantizing:  # every tensor in chunks, with numpy (for safetensors, torch is never imported)
        return write_cast_checkpoint(
            staging, plan, outputs, source, metadata=metadata, manifest=manifest, progress=progress, fsync=fsync, self_checksum=True
        )
    workers = 2 if source.concurrent_reads else 1
    return write_checkpoint(
        staging, plan, outputs, converter.produce, source=source, chunked=lambda unit: not converter.quantized(unit),
        metadata=metadata, manifest=manifest, progress=progress, fsync=fsync, workers=workers, self_checksum=True,
    )


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


def _check_convertible(source: CheckpointSource) -> None:
    if not source.specs:
        raise InputError(f"{source.path}: the checkpoint holds no tensors")
    if not any(s.dtype.is_floating_point for s in source.specs.values()):
        raise InputError(f"{source.path}: no floating-point tensors to convert (all {len(source.specs)} are integer or bool)")


def update_hf_config(path: Path, options: ConvertOptions, assignment: Assignment) -> None:
    """Record the conversion in a copied config.json the way transformers would: the scheme
    asked for (``--to``) writes it."""
    config = json.loads(path.read_text())
    quantizers = [SCHEMES[s] for s in dict.fromkeys(assignment.schemes.values()) if SCHEMES[s].quantizes]
    writer = get_scheme(options.scheme) if not quantizers or get_scheme(options.scheme) in quantizers else quantizers[0]
    writer.update_hf_config(config, assignment, options.settings)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _floats_finite(stored) -> bool:
    """Whether every floating-point array a kernel stored (scales, absmax) is finite."""
    import numpy as np

    return all(bool(np.isfinite(a).all()) for _, a in stored if np.asarray(a).dtype.kind == "f")
