"""Rewrite any checkpoint as safetensors shards, bit-exact."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .output import ProgressFn, WriteResult, copy_model_files, staged_output
from .planner import plan_shards
from .sources import CheckpointSource, opened
from .sources.remote import RemoteLocation, check_local_output, is_url
from .sources.safetensors_source import ALIASES_KEY
from .streamcast import write_cast_checkpoint
from .writer import OutSpec

DEFAULT_MAX_SHARD_BYTES = 2 * 10**9


@dataclass
class ReshardResult:
    source_format: str
    write: WriteResult
    aliases: dict[str, str]
    copied_files: list[str]
    notes: list[str]


def default_output(src: Path, suffix: str) -> Path:
    """``model.pth`` -> ``model-<suffix>`` beside it; a folder ``m/`` -> ``m-<suffix>``; a
    remote checkpoint (a URL) -> ``<name>-<suffix>`` in the current folder."""
    if is_url(str(src)):
        src = Path(RemoteLocation(str(src)).name)
    src = Path(src)
    stem = src.name
    for ext in (".index.json", ".safetensors", ".pth", ".pt", ".bin"):
        stem = stem.removesuffix(ext)
    return src.parent / f"{stem}-{suffix}"


def provenance(source: CheckpointSource, **extra: str) -> dict[str, str]:
    """safetensors ``__metadata__``: ``format: pt`` (required by loaders) plus quantkit provenance."""
    metadata = {"format": "pt", "quantkit.version": __version__, "quantkit.source": source.path.name, **extra}
    if source.aliases:
        metadata[ALIASES_KEY] = json.dumps(source.aliases, sort_keys=True)
    return metadata


def reshard(
    src: str | Path | CheckpointSource,
    output: str | Path | None = None,
    *,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    force: bool = False,
    durable: bool = False,
    progress: ProgressFn | None = None,
) -> ReshardResult:
    """Rewrite ``src`` (any supported format) as safetensors shards with an index, bit-exact.

    Args:
        src: checkpoint file, index or Hugging Face folder, or a source already opened
            with ``open_checkpoint`` (it is left open).
        output: folder to create (default: ``<src stem>-safetensors`` beside ``src``).
        max_shard_bytes: shard size limit in bytes.
        force: replace an existing output (only once the new one is complete).
        durable: fsync every shard before the folder is renamed into place.
        progress: called with byte counts as tensors (or chunks of them) are written.

    Returns:
        A ReshardResult describing the files written.

    Example:
        >>> reshard("model.pth", "model-st", max_shard_bytes=500 * 10**6)  # doctest: +SKIP
    """
    src_path = src.path if isinstance(src, CheckpointSource) else src  # a URL stays a str
    check_local_output(output)
    target = Path(output) if output is not None else default_output(src_path, "safetensors")
    with opened(src) as source, staged_output(target, force=force) as staging:
        plan = plan_shards([(n, s.nbytes) for n, s in source.specs.items()], max_shard_bytes)
        outputs = {n: [OutSpec(n, s.dtype, s.shape)] for n, s in source.specs.items()}
        manifest = {"source": str(src_path), "source_format": source.info.format, "operation": "reshard", "aliases": source.aliases}
        # copied in chunks into reused buffers (for safetensors, without torch)
        result, _ = write_cast_checkpoint(
            staging, plan, outputs, source, metadata=provenance(source), manifest=manifest, progress=progress, durable=durable
        )
        copied = copy_model_files(source.model_files_dir(), staging, target=target)
        notes = list(source.info.notes)
    return ReshardResult(source.info.format, result.moved_to(target), dict(source.aliases), copied, notes)
