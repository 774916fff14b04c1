"""Convert a checkpoint to BF16 / FP16 / INT8 / NF4 / FP4, streamed tensor by tensor."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .devices import resolve_device
from .dtypes import BFLOAT16, FLOAT16, short_name
from .errors import InputError, OutputError, UsageError
from .output import ProgressFn, WriteResult, copy_model_files, staged_output, write_checkpoint
from .planner import plan_shards
from .reshard import DEFAULT_MAX_SHARD_BYTES, default_output, provenance
from .schemes import CAST_DTYPES, SCHEMES, TRANSPOSED_KEY
from .schemes.policy import Selection, layout_for, select
from .sources import CheckpointSource, open_checkpoint, opened
from .sources.remote import check_local_output
from .sources.safetensors_source import SafetensorsSource
from .streamcast import write_cast_checkpoint
from .writer import OutSpec

REST_DTYPES = {"keep": None, "bf16": BFLOAT16, "fp16": FLOAT16}


@dataclass(frozen=True)
class ConvertOptions:
    """How to convert. ``scheme`` is one of bf16, fp16, int8, nf4, fp4."""

    scheme: str
    blocksize: int = 64
    double_quant: bool = False
    rest_dtype: str = "keep"
    skip: tuple[str, ...] = ()
    only: tuple[str, ...] = ()
    device: str = "auto"
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES

    def __post_init__(self):
        if self.scheme not in SCHEMES:
            raise UsageError(f"unknown scheme {self.scheme!r}: choose one of {', '.join(SCHEMES)}")
        if self.rest_dtype not in REST_DTYPES:
            raise UsageError(f"unknown --rest-dtype {self.rest_dtype!r}: choose keep, bf16 or fp16")
        if self.blocksize not in (32, 64, 128, 256, 512, 1024, 2048, 4096):
            raise UsageError(f"--blocksize {self.blocksize} is not one bitsandbytes supports (32, 64, ..., 4096)")
        if self.device not in ("auto", "cpu", "cuda"):
            raise UsageError(f"unknown --device {self.device!r}: choose auto, cpu or cuda")

    @property
    def quantizing(self) -> bool:
        return self.scheme in ("int8", "nf4", "fp4")


@dataclass
class ConvertResult:
    scheme: str
    source_format: str
    device: str
    write: WriteResult
    input_bytes: int
    num_parameters: int
    quantized: list[str]
    kept: dict[str, str]
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

    def __init__(self, source: CheckpointSource, options: ConvertOptions, selection: Selection, device: str, progress=None):
        self.source, self.options, self.selection, self.device = source, options, selection, device
        self.progress = progress
        self.rest = CAST_DTYPES.get(options.scheme) if not options.quantizing else REST_DTYPES[options.rest_dtype]
        self.overflow: dict[str, int] = {}
        self._local = threading.local()
        # --skip / --only exclusions stay exactly as they are, even from --rest-dtype
        self._cast_exempt = {n for n, why in selection.kept.items() if why in ("--skip", "not matched by --only")}

    def outputs(self, name: str) -> list[OutSpec]:
        spec = self.source.specs[name]
        if name in self.selection.quantize:
            transpose = self.selection.quantize[name]
            if self.options.scheme == "int8":
                from .schemes.int8 import int8_outputs

                return int8_outputs(spec, transpose=transpose)
            from .schemes.fourbit import fourbit_outputs

            o = self.options
            return fourbit_outputs(spec, quant_type=o.scheme, blocksize=o.blocksize, double_quant=o.double_quant, transpose=transpose)
        dtype = self.rest if (self.rest is not None and spec.dtype.is_floating_point and name not in self._cast_exempt) else spec.dtype
        return [OutSpec(name, dtype, spec.shape)]

    def produce(self, name: str) -> list:
        produced = self._convert(name)
        if self.progress is not None:
            self.progress(self.source.specs[name].nbytes)
        return produced

    def _convert(self, name: str) -> list:
        from .schemes.cast import cast  # these import torch

        if name in self.selection.quantize:
            tensor = self._read_reused(name)
            transpose = self.selection.quantize[name]
            tensor = tensor.to(self.device)
            if self.options.scheme == "int8":
                from .schemes.int8 import apply_int8

                return apply_int8(name, tensor, transpose=transpose)
            from .schemes.fourbit import apply_fourbit

            o = self.options
            return apply_fourbit(name, tensor, quant_type=o.scheme, blocksize=o.blocksize, double_quant=o.double_quant, transpose=transpose)
        tensor = self.source.get_tensor(name)  # may be written as it is: a buffer of its own
        target = self.outputs(name)[0].dtype
        out, overflow = cast(tensor, target)
        if overflow:
            self.overflow[name] = overflow
        return [(name, out)]

    def _read_reused(self, name: str):
        """A weight to quantize, read into this thread's reused buffer where the source allows:
        the quantizers never return views of their input, and a fresh buffer per tensor costs
        a page fault per 4 KiB of it."""
        if not isinstance(self.source, SafetensorsSource):  # a mapped .pth: the tensor is there already
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


def _selection_for(source: CheckpointSource, options: ConvertOptions) -> Selection:
    if options.quantizing:
        return select(source, skip=options.skip, only=options.only, layout=layout_for(source.info.config_dir))
    selection = select(source, skip=options.skip, only=options.only, layout=None)
    # Cast schemes touch every floating-point tensor not excluded by --skip/--only.
    kept = {n: why for n, why in selection.kept.items() if why in ("--skip", "not matched by --only", "not floating point")}
    return Selection(quantize={}, kept=kept, structure=selection.structure)


def convert(
    src: str | Path | CheckpointSource,
    output: str | Path | None = None,
    *,
    options: ConvertOptions,
    force: bool = False,
    durable: bool = False,
    progress: ProgressFn | None = None,
) -> ConvertResult:
    """Convert ``src`` into a folder of safetensors shards in the layout transformers loads.

    Args:
        src: any checkpoint quantkit reads (file, index or Hugging Face folder), or one
            already opened with ``open_checkpoint`` (it is left open).
        output: folder to create (default ``<src stem>-<scheme>`` beside ``src``).
        options: the scheme and its settings.
        force: replace an existing output, only once the new one is complete.
        durable: fsync every shard before the folder is renamed into place.
        progress: called with input byte counts as tensors (for casts, chunks of them) are
            converted, possibly from worker threads; the calls add up to the input's tensor bytes.

    Example:
        >>> convert("model.pth", options=ConvertOptions("nf4", double_quant=True))  # doctest: +SKIP
    """
    started = time.perf_counter()
    src_path = src.path if isinstance(src, CheckpointSource) else src  # a URL stays a str
    check_local_output(output)
    target = Path(output) if output is not None else default_output(src_path, options.scheme)
    # casts run on the CPU (they are bound by reading and writing); quantizers where asked
    device = resolve_device(options.device) if options.quantizing else "cpu"
    if target.exists() and not force:
        raise OutputError(f"{target}: already exists; choose another output or pass --force to replace it")
    with opened(src) as source:
        _check_convertible(source)
        selection = _selection_for(source, options)
        converter = _Converter(source, options, selection, device, progress)
        outputs = {name: converter.outputs(name) for name in source.specs}
        plan = plan_shards([(n, sum(o.nbytes for o in outs)) for n, outs in outputs.items()], options.max_shard_bytes)
        extra = {"quantkit.scheme": options.scheme}
        transposed = sorted(n for n, t in selection.quantize.items() if t)
        if transposed:
            extra[TRANSPOSED_KEY] = json.dumps(transposed)
        manifest = {"source": str(src_path), "source_format": source.info.format, "operation": "convert", "scheme": options.scheme, "aliases": source.aliases}
        with staged_output(target, force=force) as staging:
            metadata = provenance(source, **extra)
            if not options.quantizing:
                # cast chunk by chunk with numpy (for safetensors, torch is never imported)
                write, overflow = write_cast_checkpoint(
                    staging, plan, outputs, source, metadata=metadata, manifest=manifest, progress=progress, durable=durable
                )
                converter.overflow.update(overflow)
            else:
                write = write_checkpoint(
                    staging, plan, outputs, converter.produce, metadata=metadata, manifest=manifest,
                    durable=durable, workers=2 if source.concurrent_reads else 1,
                )
            copied = copy_model_files(source.model_files_dir(), staging, target=target)
            if source.info.config_dir is not None and (staging / "config.json").is_file():
                update_hf_config(staging / "config.json", options, selection)
            with open_checkpoint(staging) as written:
                output_by_dtype = bytes_by_dtype(written.specs.values())
        write = write.moved_to(target)
        notes = list(source.info.notes)
        if options.quantizing and not selection.quantize:
            notes.append("no tensor matched the quantization rules: every tensor was kept (see the kept list)")
        return ConvertResult(
            scheme=options.scheme,
            source_format=source.info.format,
            device=device,
            write=write,
            input_bytes=source.total_bytes,
            num_parameters=sum(s.numel for s in source.specs.values() if s.dtype.is_floating_point),
            quantized=sorted(selection.quantize),
            kept=dict(selection.kept),
            fp16_overflow=dict(converter.overflow),
            input_bytes_by_dtype=bytes_by_dtype(source.specs.values()),
            output_bytes_by_dtype=output_by_dtype,
            elapsed_s=time.perf_counter() - started,
            notes=notes,
            copied_files=copied,
        )


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


def quantization_config(options: ConvertOptions, selection: Selection) -> dict:
    """The ``quantization_config`` block transformers writes for the same settings."""
    eight = options.scheme == "int8"
    return {
        "_load_in_4bit": not eight,
        "_load_in_8bit": eight,
        "bnb_4bit_compute_dtype": "float32",
        "bnb_4bit_quant_storage": "uint8",
        "bnb_4bit_quant_type": options.scheme if not eight else "fp4",
        "bnb_4bit_use_double_quant": options.double_quant and not eight,
        "llm_int8_enable_fp32_cpu_offload": False,
        "llm_int8_has_fp16_weight": False,
        "llm_int8_skip_modules": selection.kept_modules() or None,
        "llm_int8_threshold": 6.0,
        "load_in_4bit": not eight,
        "load_in_8bit": eight,
        "quant_method": "bitsandbytes",
    }


def update_hf_config(path: Path, options: ConvertOptions, selection: Selection) -> None:
    """Record the conversion in a copied config.json the way transformers would."""
    config = json.loads(path.read_text())
    if options.quantizing:
        config["quantization_config"] = quantization_config(options, selection)
    else:
        dtype = {"bf16": "bfloat16", "fp16": "float16"}[options.scheme]
        keys = [k for k in ("torch_dtype", "dtype") if k in config] or ["dtype"]
        for key in keys:
            config[key] = dtype
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
