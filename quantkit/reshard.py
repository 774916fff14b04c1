"""Rewrite any checkpoint as safetensors shards, bit-exact."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .layout import default_output, provenance  # noqa: F401 (default_output re-exported)
from .planner import DEFAULT_MAX_SHARD_BYTES, plan_shards
from .sources import CheckpointSource, opened
from .specs import OutSpec
from .writing import ProgressFn, WriteResult, copy_model_files, write_cast_checkpoint
from .writing.folder import record_all_files, skipped_notes
from .writing.target import check_output, output_stage, output_target


@dataclass
class ReshardResult:
    source_format: str
    write: WriteResult
    aliases: dict[str, str]
    copied_files: list[str]
    notes: list[str]


def reshard(
    src: str | Path | CheckpointSource,
    output: str | Path | None = None,
    *,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    force: bool = False,
    fsync: bool = False,
    progress: ProgressFn | None = None,
) -> ReshardResult:
    """Rewrite ``src`` (any supported format) as safetensors shards with an index, bit-exact.

    Args:
        src: checkpoint file, index or Hugging Face folder, or a source already opened
            with ``open_checkpoint`` (it is left open).
        output: folder to create (default: ``<src stem>-safetensors`` beside ``src``).
        max_shard_bytes: shard size limit in bytes.
        force: replace an existing output (only once the new one is complete).
        fsync: fsync every shard before the folder is renamed into place.
        progress: called with byte counts as tensors (or chunks of them) are written.

    Returns:
        A ReshardResult describing the files written.

    Example:
        >>> reshard("model.pth", "model-st", max_shard_bytes=500 * 10**6)  # doctest: +SKIP
    """
    src_path = src.path if isinstance(src, CheckpointSource) else src  # a URL stays a str
    target = output_target(output, lambda: default_output(src_path, "safetensors"))  # a folder, or an s3:// prefix
    check_output(src_path, target, force=force)  # before anything is read
    staging_notes: list[str] = []
    with opened(src) as source, output_stage(target, force=force, notes=staging_notes) as stage:
        staging = stage.folder
        plan = plan_shards([(n, s.nbytes) for n, s in source.specs.items()], max_shard_bytes)
        outputs = {n: [OutSpec(n, s.dtype, s.shape)] for n, s in source.specs.items()}
        manifest = {"source": str(src_path), "source_format": source.info.format, "operation": "reshard", "aliases": source.aliases}
        # copied in chunks into reused buffers (for safetensors, without torch)
        result = write_cast_checkpoint(
            staging, plan, outputs, source, metadata=provenance(source), manifest=manifest, progress=progress, fsync=fsync,
            self_checksum=True, shard_done=stage.shard_done,
        )
        skipped: dict[str, str] = {}
        copied = copy_model_files(source.model_files_dir(), staging, target=target, skipped=skipped)
        result = record_all_files(result, skipped=skipped)  # the manifest covers every file written
        notes = list(source.info.notes) + skipped_notes(skipped)
    return ReshardResult(source.info.format, result.moved_to(target), dict(source.aliases), copied, notes + staging_notes)
