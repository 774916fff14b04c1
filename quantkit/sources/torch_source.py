"""PyTorch pickled checkpoints: zip format (mapped lazily), legacy format, sharded `.bin`.

Always loaded with ``weights_only=True``: a pickle that needs any other global is refused
before anything in it runs.
"""

from __future__ import annotations

import pickle
import threading
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from ..dtypes import dtype_of
from ..errors import InputError, UnsafeCheckpointError
from ..sizes import format_bytes
from ..specs import TensorSpec
from .base import CheckpointSource, SourceInfo, choose_kept_name, detect_torch_format  # noqa: F401 (re-exported)
from ..layout import read_index

# Keys under which training scripts commonly nest the model's weights.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network", "weights", "params", "ema")
def load_pickle(path: Path, *, mmap: bool) -> object:
    """``torch.load`` with weights only, errors turned into quantkit's."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        # torch's first line is generic advice (retry with weights_only=False); the line naming
        # the refused global is the one worth showing
        specific = [line for line in lines if "GLOBAL" in line or "nsupported" in line]
        reason = (specific or lines or [exc.__class__.__name__])[0].rstrip(".")
        raise UnsafeCheckpointError(
            f"{path}: refused: this pickle cannot be loaded as plain weights ({reason}). "
            "quantkit never runs code from a checkpoint; re-save the state_dict with torch.save from a trusted environment"
        ) from None
    except Exception as exc:  # torch reports damaged files with many types (RuntimeError, EOFError, AttributeError, ...)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise InputError(f"{path}: cannot read this PyTorch checkpoint: {reason} (truncated or damaged?)") from None


def find_weights(obj: object) -> tuple[str, dict[str, torch.Tensor], dict[str, object]]:
    """Locate the state dict inside what ``torch.load`` returned.

    Returns (where it was found, tensors by name, the other top-level entries).
    A bare state dict is found at ``""``; ``{"model_state_dict": ..., "epoch": 3}`` at
    ``"model_state_dict"`` with ``{"epoch": 3}`` as the rest.
    """
    if isinstance(obj, torch.Tensor):
        return "", {"tensor": obj}, {}
    if not isinstance(obj, Mapping):
        raise InputError(f"the checkpoint holds a {type(obj).__name__}, not a dict of tensors")
    if _looks_like_optimizer(obj):
        return "", {}, {"optimizer": obj}
    direct = [k for k, v in obj.items() if isinstance(v, torch.Tensor)]
    candidates = [(k, v) for k, v in obj.items() if isinstance(v, Mapping) and _flatten_tensors(v)]
    if direct and len(direct) >= max((len(_flatten_tensors(v)) for _, v in candidates), default=0):
        rest = {k: v for k, v in obj.items() if not isinstance(v, (torch.Tensor, Mapping)) or _looks_like_optimizer(v)}
        return "", _flatten_tensors(obj), rest
    preferred = [kv for kv in candidates if kv[0] in WRAPPER_KEYS and not _looks_like_optimizer(kv[1])]
    pool = preferred or [kv for kv in candidates if not _looks_like_optimizer(kv[1])]
    if not pool:
        return "", {}, dict(obj)
    key, value = max(pool, key=lambda kv: sum(t.nbytes for t in _flatten_tensors(kv[1]).values()))
    rest = {k: v for k, v in obj.items() if k != key}
    return str(key), _flatten_tensors(value), rest


def _flatten_tensors(mapping: Mapping, prefix: str = "") -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, torch.Tensor):
            out[name] = value
        elif isinstance(value, Mapping) and not _looks_like_optimizer(value) and all(isinstance(k, str) for k in value):
            out.update(_flatten_tensors(value, name + "."))
    return out


def _looks_like_optimizer(value: object) -> bool:
    return isinstance(value, Mapping) and "state" in value and "param_groups" in value


def describe(value: object) -> str:
    """A one-line description of a non-weight entry (optimizer state, epoch, config...)."""
    if _looks_like_optimizer(value):
        tensors = [t for s in value["state"].values() if isinstance(s, Mapping) for t in s.values() if isinstance(t, torch.Tensor)]
        groups = value["param_groups"]
        lrs = sorted({g.get("lr") for g in groups if isinstance(g, Mapping) and "lr" in g})
        lr = f", lr={lrs[0]}" if len(lrs) == 1 else ""
        return (
            f"optimizer state for {len(value['state'])} parameters ({len(tensors)} tensors, "
            f"{format_bytes(sum(t.nbytes for t in tensors))}), {len(groups)} param group(s){lr}"
        )
    if isinstance(value, torch.Tensor):
        return f"tensor {str(value.dtype).removeprefix('torch.')} {list(value.shape)}"
    if isinstance(value, Mapping):
        keys = ", ".join(map(str, list(value)[:8])) + (", ..." if len(value) > 8 else "")
        return f"dict with {len(value)} keys ({keys})"
    if isinstance(value, (list, tuple)):
        return f"{type(value).__name__} of {len(value)} items"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_dtypes(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """InputError naming the first tensor whose dtype safetensors cannot store (complex, qint8, ...)."""
    for name, tensor in tensors.items():
        try:
            dtype_of(tensor.dtype)
        except ValueError:
            raise InputError(
                f"{path}: tensor {name!r} is {tensor.dtype}, which safetensors cannot store; "
                "convert it to a real dtype (or drop it) and save the checkpoint again"
            ) from None


def dedupe_shared(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, TensorSpec], dict[str, str]]:
    """Specs of the distinct tensors, and dropped alias -> kept name for tensors saved once.

    Two names are the same tensor when they view the same storage at the same offset with
    the same shape, stride and dtype (tied weights). Partial views of one storage stay separate.
    """
    groups: dict[tuple, list[str]] = {}
    for name, tensor in tensors.items():
        if tensor.numel() == 0:
            key: tuple = ("empty", name)
        else:
            key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.stride(), tensor.dtype)
        groups.setdefault(key, []).append(name)
    aliases: dict[str, str] = {}
    for names in groups.values():
        kept = choose_kept_name(names)
        aliases.update({n: kept for n in names if n != kept})
    specs = {n: TensorSpec.of(n, t) for n, t in tensors.items() if n not in aliases}
    return specs, aliases


class TorchSource(CheckpointSource):
    """One or more pickled torch files; one shard's tensors are mapped at a time.

    ``get_tensor`` may be called from several threads: the mapping is swapped under a lock,
    and a tensor already handed out keeps its own mapping alive until it is dropped."""

    concurrent_reads = True

    def __init__(self, path: Path, shards: list[Path], *, format: str, config_dir: Path | None = None):
        self._mmap = format != "torch-legacy"
        self._lock = threading.Lock()
        self._strided: tuple[str | None, torch.Tensor | None] = (None, None)
        info = SourceInfo(format, list(shards), config_dir=config_dir)
        specs: dict[str, TensorSpec] = {}
        aliases: dict[str, str] = {}
        self._shard_of: dict[str, Path] = {}
        self._loaded: tuple[Path, dict[str, torch.Tensor]] | None = None
        self._mapped_bytes = 0  # bytes handed out from the current mapping
        for shard in shards:
            where, tensors, rest = self._load_shard(shard, info)
            _check_dtypes(shard, tensors)
            shard_specs, shard_aliases = dedupe_shared(tensors)
            for name in shard_specs:
                if name in specs:
                    raise InputError(f"{path}: tensor {name!r} is stored in more than one shard")
                self._shard_of[name] = shard
            specs.update(shard_specs)
            aliases.update(shard_aliases)
            if where:
                info.extras.setdefault("weights found under", repr(where))
            for key, value in rest.items():
                info.extras[str(key)] = describe(value)
            self._loaded = (shard, tensors)
        if not self._mmap:
            info.notes.append(
                f"{path.name} is in PyTorch's legacy (pre-1.6) format, which cannot be memory-mapped: "
                "it was read whole into memory. Re-save it with torch.save (or `quantkit reshard`) to read it lazily."
            )
        super().__init__(path, info, specs, aliases)

    def _load_shard(self, shard: Path, info: SourceInfo):
        obj = load_pickle(shard, mmap=self._mmap)
        try:
            return find_weights(obj)
        except InputError as exc:
            raise InputError(f"{shard}: {exc}") from None

    # Pages of a memory-mapped file count in the process's RSS as long as the mapping lives,
    # even once the tensors read from them are gone, so reading a whole .pth through one
    # mapping grows RSS to the file's size. Mapping the shard afresh after this many bytes
    # unmaps the pages already read (once nothing else holds their tensors).
    remap_bytes = 256 * 2**20

    def get_tensor(self, name: str) -> torch.Tensor:
        return self._mapped(name, None)

    def read_into(self, name: str, start: int, view: memoryview) -> None:
        """Fill ``view`` with tensor ``name``'s bytes (C order) from byte ``start`` on; thread-safe."""
        if not len(view):
            return
        tensor = self._mapped(name, len(view))
        if tensor.is_contiguous():
            flat = tensor.reshape(-1).view(torch.uint8)
        else:  # saved as a strided view: made contiguous once, kept while its chunks are read
            with self._lock:
                if self._strided[0] != name:
                    self._strided = (name, tensor.contiguous().reshape(-1).view(torch.uint8))
                flat = self._strided[1]
        if start + len(view) > flat.numel():
            raise ValueError(f"bytes {start}..{start + len(view)} lie beyond tensor {name!r}")
        torch.frombuffer(view, dtype=torch.uint8).copy_(flat[start : start + len(view)])

    def _mapped(self, name: str, nbytes: int | None) -> torch.Tensor:
        shard = self._shard_of[name]
        with self._lock:
            stale = self._mmap and self._mapped_bytes >= self.remap_bytes
            if self._loaded is None or self._loaded[0] != shard or stale:
                self._loaded = None  # drop the previous mapping first
                self._loaded = (shard, self._load_shard(shard, self.info)[1])
                self._mapped_bytes = 0
            tensor = self._loaded[1][name]
            self._mapped_bytes += tensor.nbytes if nbytes is None else nbytes
            return tensor

    def close(self) -> None:
        self._loaded = None


def open_torch_file(path: Path, *, config_dir: Path | None = None) -> TorchSource:
    fmt = detect_torch_format(path)
    if fmt is None:
        raise InputError(f"{path}: not a checkpoint quantkit can read (neither safetensors nor a PyTorch zip or legacy pickle)")
    return TorchSource(path, [path], format=fmt, config_dir=config_dir)


def open_torch_index(index_path: Path, *, config_dir: Path | None = None) -> TorchSource:
    weight_map = read_index(index_path)
    shards = [index_path.parent / s for s in dict.fromkeys(weight_map.values())]
    for shard in shards:
        if detect_torch_format(shard) is None:
            raise InputError(f"{shard}: not a PyTorch checkpoint")
    formats = {detect_torch_format(s) for s in shards}
    source = TorchSource(index_path, shards, format="torch-sharded" if formats == {"torch-zip"} else "torch-legacy", config_dir=config_dir)
    for name, shard in weight_map.items():
        if name not in source.specs and name not in source.aliases:
            raise InputError(f"{index_path}: the index maps tensor {name!r} to {shard}, which does not hold it")
    return source
