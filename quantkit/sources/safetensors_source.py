"""Single and sharded safetensors checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import InputError
from ..stformat import StHeader, read_header, read_range, read_tensor
from .base import CheckpointSource, SourceInfo

ALIASES_KEY = "quantkit.aliases"


def _aliases_from(metadata: dict[str, str], path: Path) -> dict[str, str]:
    raw = metadata.get(ALIASES_KEY)
    if not raw:
        return {}
    try:
        aliases = json.loads(raw)
    except (json.JSONDecodeError, RecursionError):
        raise InputError(f"{path}: metadata {ALIASES_KEY!r} is not JSON") from None
    if not isinstance(aliases, dict) or not all(isinstance(v, str) for v in aliases.values()):
        raise InputError(f"{path}: metadata {ALIASES_KEY!r} must map dropped names to kept names")
    return dict(aliases)


class SafetensorsSource(CheckpointSource):
    """One or more safetensors files; a file is open only while a tensor is read from it."""

    concurrent_reads = True  # get_tensor uses positioned reads only

    def __init__(self, path: Path, headers: list[StHeader], *, format: str, config_dir: Path | None = None):
        specs = {}
        owner: dict[str, StHeader] = {}
        for header in headers:
            for name, entry in header.entries.items():
                if name in owner:
                    raise InputError(
                        f"{path}: tensor {name!r} is stored twice, in {owner[name].path.name} and {header.path.name}"
                    )
                owner[name] = header
                specs[name] = entry.spec
        metadata = headers[0].metadata if headers else {}
        info = SourceInfo(format, [h.path for h in headers], metadata=dict(metadata), config_dir=config_dir)
        aliases = {}
        for header in headers:
            aliases.update(_aliases_from(header.metadata, header.path))
        super().__init__(path, info, specs, aliases)
        self._owner = owner

    def get_tensor(self, name: str) -> "torch.Tensor":  # noqa: F821
        """Thread-safe: each call opens its shard and reads with positioned reads (no shared state)."""
        header = self._owner[name]
        with open(header.path, "rb", buffering=0) as f:
            return read_tensor(f, header, name)

    def read_into(self, name: str, start: int, view: memoryview) -> None:
        """Fill ``view`` with tensor ``name``'s bytes from byte ``start`` on; thread-safe, no torch."""
        header = self._owner[name]
        with open(header.path, "rb", buffering=0) as f:
            read_range(f, header, name, start, view)


def open_safetensors_file(path: Path, *, config_dir: Path | None = None) -> SafetensorsSource:
    return SafetensorsSource(path, [read_header(path)], format="safetensors", config_dir=config_dir)


def read_index(index_path: Path) -> dict[str, str]:
    """The ``weight_map`` of a sharded checkpoint's index, checked for shape."""
    weight_map = parse_weight_map(index_path.read_bytes(), index_path)
    for shard in set(weight_map.values()):
        if not (index_path.parent / shard).is_file():
            raise InputError(f"{index_path}: shard {shard!r} named by the index is missing")
    return weight_map


def parse_weight_map(raw: bytes, index_path) -> dict[str, str]:
    """The ``weight_map`` of an index's bytes ``raw`` (however read), checked for shape: every
    shard a plain file name beside the index. ``index_path`` names the index in errors."""
    try:
        index = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InputError(f"{index_path}: index is not valid JSON ({exc.__class__.__name__})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise InputError(f"{index_path}: index has no 'weight_map' mapping tensor names to shard files")
    for shard in set(weight_map.values()):
        if "/" in shard or "\\" in shard or shard in ("", ".", ".."):
            raise InputError(f"{index_path}: shard name {shard!r} must be a file name beside the index")
    return weight_map


def open_safetensors_index(index_path: Path, *, config_dir: Path | None = None) -> SafetensorsSource:
    weight_map = read_index(index_path)
    shard_names = list(dict.fromkeys(weight_map.values()))
    headers = [read_header(index_path.parent / shard) for shard in shard_names]
    by_name = {h.path.name: h for h in headers}
    for name, shard in weight_map.items():
        if name not in by_name[shard].entries:
            raise InputError(f"{index_path}: the index maps tensor {name!r} to {shard}, which does not hold it")
    return SafetensorsSource(index_path, headers, format="safetensors-sharded", config_dir=config_dir)
