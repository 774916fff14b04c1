"""The files of an output folder beside its shards: index, manifest, copied config and tokenizer files."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import OutputError
from ..layout import MANIFEST, ST_INDEX, WEIGHT_SUFFIXES
from ..version import __version__
from .shard import WrittenShard, os_reason


@dataclass
class WriteResult:
    folder: Path
    shards: list[WrittenShard]
    weight_map: dict[str, str]
    total_bytes: int
    manifest: dict = field(default_factory=dict)
    fp16_overflow: dict[str, int] = field(default_factory=dict)  # chunked casts: finite values that became inf

    @property
    def file_bytes(self) -> int:
        return sum(s.file_bytes for s in self.shards)

    def moved_to(self, folder: Path) -> "WriteResult":
        """The same result once the staged folder was renamed to ``folder``."""
        shards = [replace(s, path=folder / s.path.name) for s in self.shards]
        return replace(self, folder=folder, shards=shards)


def write_index(folder: Path, shards: list[WrittenShard], weight_map: dict[str, str], manifest: dict) -> WriteResult:
    """Write the index (for more than one shard) and the manifest; the result of the write."""
    total = sum(s.tensor_bytes for s in shards)
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": total, "quantkit_version": __version__, "sha256": {s.path.name: s.sha256 for s in shards}},
            "weight_map": dict(sorted(weight_map.items())),
        }
        _write_json(folder / ST_INDEX, index)
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
