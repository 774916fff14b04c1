"""Single and sharded safetensors checkpoints."""

from __future__ import annotations

from pathlib import Path

from .. import jsonio
from ..errors import InputError
from ..layout import ALIASES_KEY, read_index
from ..safetensors_format import SafetensorsHeader, read_header, read_range, read_tensor, tensor_offset
from .base import CheckpointSource, SourceInfo
from .mapping import map_range

def _aliases_from(metadata: dict[str, str], path: Path) -> dict[str, str]:
    raw = metadata.get(ALIASES_KEY)
    if not raw:
        return {}
    try:
        aliases = jsonio.loads(raw)
    except jsonio.BadJson:
        raise InputError(f"{path}: metadata {ALIASES_KEY!r} is not JSON") from None
    if not isinstance(aliases, dict) or not all(isinstance(v, str) for v in aliases.values()):
        raise InputError(f"{path}: metadata {ALIASES_KEY!r} must map dropped names to kept names")
    return dict(aliases)


def _check_aliases(path: Path, aliases: dict[str, str], specs: dict) -> None:
    for alias, kept in aliases.items():
        if kept not in specs:
            raise InputError(f"{path}: metadata {ALIASES_KEY!r} ties {alias!r} to {kept!r}, which no file holds (damaged metadata)")
        if alias in specs:
            raise InputError(f"{path}: metadata {ALIASES_KEY!r} ties {alias!r} to {kept!r}, but {alias!r} is stored too (damaged metadata)")


class SafetensorsSource(CheckpointSource):
    """One or more safetensors files; a file is open only while a tensor is read from it."""

    concurrent_reads = True  # get_tensor uses positioned reads only
    reads_into_buffer = True

    def __init__(self, path: Path, headers: list[SafetensorsHeader], *, format: str, config_dir: Path | None = None):
        specs = {}
        owner: dict[str, SafetensorsHeader] = {}
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
        _check_aliases(path, aliases, specs)
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

    def mapped(self, name: str, start: int, nbytes: int):
        header = self._owner[name]
        return map_range(header.path, tensor_offset(header, name, start, nbytes), nbytes, f"tensor {name!r}")


def open_safetensors_file(path: Path, *, config_dir: Path | None = None) -> SafetensorsSource:
    return SafetensorsSource(path, [read_header(path)], format="safetensors", config_dir=config_dir)


def open_safetensors_index(index_path: Path, *, config_dir: Path | None = None) -> SafetensorsSource:
    weight_map = read_index(index_path)
    shard_names = list(dict.fromkeys(weight_map.values()))
    headers = [read_header(index_path.parent / shard) for shard in shard_names]
    by_name = {h.path.name: h for h in headers}
    for name, shard in weight_map.items():
        if name not in by_name[shard].entries:
            raise InputError(f"{index_path}: the index maps tensor {name!r} to {shard}, which does not hold it")
    return SafetensorsSource(index_path, headers, format="safetensors-sharded", config_dir=config_dir)
