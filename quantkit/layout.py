"""The names and keys of a checkpoint folder: one place for what readers, writer, verify,
convert and reshard agree on."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import InputError
from .jsonio import BadJson, loads, read_json
from .version import __version__

MANIFEST = "quantkit.json"  # what quantkit wrote: source, operation, per-file sizes and SHA-256
SOURCE_EXTRAS_KEY = "source_extras"  # quantkit.json: a training checkpoint's JSON-representable non-tensor entries
ST_INDEX = "model.safetensors.index.json"
RUN_RECORD = "quantkit-plan.json"  # a resumable (--executor ray) run's record, removed once its shards are in place
BIN_INDEX = "pytorch_model.bin.index.json"
SINGLE_SHARD = "model.safetensors"
CONFIG = "config.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt", ".h5", ".msgpack", ".index.json")
TORCH_FILES = ("pytorch_model.bin", "model.pth", "model.pt")

# safetensors __metadata__ keys
ALIASES_KEY = "quantkit.aliases"  # dropped tied name -> kept name, JSON
TRANSPOSED_KEY = "quantkit.transposed"  # weights quantized transposed (GPT-2 Conv1D), JSON list
SCHEME_KEY = "quantkit.scheme"
# Version 1 (still checked): SHA-256 of the whole shard file as it reads with this value replaced by SELF_SHA256_PLACEHOLDER:
# a checksum that travels with the shard, header included, when quantkit.json is lost
SELF_SHA256_KEY = "quantkit.self_sha256"
# Version 2, written now: SHA-256 of the XXH3-128 of the header (this value as the placeholder)
# and of every 1 MiB slice of every tensor, in file order (writing/selfsum.py says how)
SELF_CHECKSUM_V2_KEY = "quantkit.self_checksum_v2"
SELF_SHA256_PLACEHOLDER = "0" * 64


def default_output(src: Path, suffix: str) -> Path:
    """``model.pth`` -> ``model-<suffix>`` beside it; a folder ``m/`` -> ``m-<suffix>``; a
    remote checkpoint (a URL) -> ``<name>-<suffix>`` in the current folder (``model`` for
    ``hf://org/model@main``)."""
    if "://" in str(src):
        src = Path(str(src).rstrip("/").rsplit("/", 1)[-1].split("@", 1)[0])
    src = Path(src)
    stem = src.name
    for ext in (".index.json", ".safetensors", ".pth", ".pt", ".bin"):
        stem = stem.removesuffix(ext)
    return src.parent / f"{stem}-{suffix}"


def parse_index(index_path, raw: bytes | None = None) -> tuple[dict[str, str], dict]:
    """An index file's ``weight_map`` and ``metadata`` (empty when absent); InputError when
    it is not JSON or has no ``weight_map`` of names to file names. The one index parser.
    ``raw``: the index's bytes where they were read elsewhere (a remote index); ``index_path``
    then only names it in errors."""
    if raw is None:
        index = read_json(index_path, what="index")
    else:
        try:
            index = loads(raw)
        except BadJson as exc:
            raise InputError(f"{index_path}: index is not valid JSON ({exc.kind})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise InputError(f"{index_path}: index has no 'weight_map' mapping tensor names to shard files")
    metadata = index.get("metadata")
    return weight_map, metadata if isinstance(metadata, dict) else {}


def parse_weight_map(raw: bytes, index_path) -> dict[str, str]:
    """The ``weight_map`` of an index's bytes ``raw`` (however read), every shard checked to be
    a plain file name beside the index."""
    weight_map, _ = parse_index(index_path, raw)
    return _shards_beside(weight_map, index_path)


def _shards_beside(weight_map: dict[str, str], index_path) -> dict[str, str]:
    for shard in set(weight_map.values()):
        if "/" in shard or "\\" in shard or shard in ("", ".", ".."):
            raise InputError(f"{index_path}: shard name {shard!r} must be a file name beside the index")
    return weight_map


def read_index(index_path: Path) -> dict[str, str]:
    """The ``weight_map`` of a sharded checkpoint's index, its shards checked to lie beside it."""
    weight_map = _shards_beside(parse_index(index_path)[0], index_path)
    for shard in set(weight_map.values()):
        if not (index_path.parent / shard).is_file():
            raise InputError(f"{index_path}: shard {shard!r} named by the index is missing")
    return weight_map


def safetensors_in(folder: Path) -> Path | None:
    """The safetensors entry point of a folder (its index, ``model.safetensors`` or its only
    ``.safetensors`` file), or None."""
    if (folder / ST_INDEX).is_file():
        return folder / ST_INDEX
    if (folder / SINGLE_SHARD).is_file():
        return folder / SINGLE_SHARD
    singles = sorted(folder.glob("*.safetensors"))
    return singles[0] if len(singles) == 1 else None


def provenance(source, **extra: str) -> dict[str, str]:
    """safetensors ``__metadata__`` for what is written from ``source`` (a ``CheckpointSource``):
    ``format: pt`` (required by loaders) plus quantkit provenance."""
    metadata = {"format": "pt", "quantkit.version": __version__, "quantkit.source": source.path.name, **extra}
    if source.aliases:
        metadata[ALIASES_KEY] = json.dumps(source.aliases, sort_keys=True)
    return metadata
