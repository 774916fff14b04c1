"""The anatomy of a checkpoint: what it holds and where the bytes go."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from .dtypes import short_name
from .groups import GROUPS, group_of
from .sources import CheckpointSource, opened


@dataclass
class GroupStat:
    num_parameters: int = 0
    num_tensors: int = 0
    bytes: int = 0
    parameter_share: float = 0.0
    byte_share: float = 0.0


@dataclass
class TensorRow:
    name: str
    dtype: str
    shape: list[int]
    bytes: int
    group: str


@dataclass
class Anatomy:
    path: str
    format: str
    files: dict[str, int]
    num_tensors: int
    num_parameters: int
    total_bytes: int
    bytes_by_dtype: dict[str, int]
    groups: dict[str, GroupStat]
    largest: list[TensorRow]
    tied: dict[str, str]
    extras: dict[str, str]
    metadata: dict[str, str]
    notes: list[str] = field(default_factory=list)
    quantization: dict | None = None
    memory: dict | None = None  # quantkit.memory.MemoryEstimate as a dict
    bytes_fetched: int | None = None  # a remote checkpoint: bytes fetched over the network (headers, index, config.json)

    def to_dict(self) -> dict:
        return asdict(self)


def inspect_checkpoint(path: str | Path | CheckpointSource, *, top: int = 10, memory_options: dict | None = None) -> Anatomy:
    """Describe a checkpoint without reading its tensor data.

    ``num_parameters`` counts elements of floating-point tensors (tied tensors once; a
    quantized weight counts its original elements). Groups are embeddings, attention, mlp,
    norms, output_head, convolution and other. ``memory`` holds memory estimates for that
    parameter count; ``memory_options`` (gpu_gb, batch_size, seq_len) go to
    ``quantkit.memory.estimate_memory``. ``path`` may be a source already opened with
    ``open_checkpoint`` (it is left open).
    """
    from .memory import ModelShape, estimate_memory, read_config
    from .schemes import describe_quantization

    with opened(path) as source:
        specs = list(source.specs.values())
        quant = describe_quantization(source.specs)
        logical = quant.pop("logical_numel", {}) if quant else {}
        auxiliary = set(quant.pop("auxiliary", ())) if quant else set()
        groups = {g: GroupStat() for g in GROUPS}
        by_dtype: dict[str, int] = {}
        for spec in specs:
            stat = groups[group_of(spec.name, spec.shape)]
            stat.num_tensors += 1
            stat.bytes += spec.nbytes
            if spec.name in logical:
                stat.num_parameters += logical[spec.name]
            elif spec.dtype.is_floating_point and spec.name not in auxiliary:
                stat.num_parameters += spec.numel
            by_dtype[short_name(spec.dtype)] = by_dtype.get(short_name(spec.dtype), 0) + spec.nbytes
        total_params = sum(g.num_parameters for g in groups.values())
        total_bytes = sum(s.nbytes for s in specs)
        for stat in groups.values():
            stat.parameter_share = stat.num_parameters / total_params if total_params else 0.0
            stat.byte_share = stat.bytes / total_bytes if total_bytes else 0.0
        largest = sorted(specs, key=lambda s: s.nbytes, reverse=True)[:top]
        return Anatomy(
            path=str(source.path if isinstance(path, CheckpointSource) else path),
            format=source.info.format,
            files={p.name: p.stat().st_size for p in source.info.files},
            num_tensors=len(specs),
            num_parameters=total_params,
            total_bytes=total_bytes,
            bytes_by_dtype=dict(sorted(by_dtype.items(), key=lambda kv: -kv[1])),
            groups={g: s for g, s in groups.items() if s.num_tensors},
            largest=[TensorRow(s.name, short_name(s.dtype), list(s.shape), s.nbytes, group_of(s.name, s.shape)) for s in largest],
            tied=dict(source.aliases),
            extras=dict(source.info.extras),
            metadata=dict(source.info.metadata),
            notes=list(source.info.notes),
            quantization=quant or None,
            memory=estimate_memory(
                total_params, shape=ModelShape.from_config(read_config(source.info.config_dir)),
                stored_bytes=total_bytes, **(memory_options or {}),
            ).to_dict(),
            bytes_fetched=source.bytes_fetched,
        )
