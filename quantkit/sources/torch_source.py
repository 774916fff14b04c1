"""PyTorch pickled checkpoints: zip format (mapped lazily), legacy format, sharded `.bin`.

Always loaded with ``weights_only=True``: a pickle that needs any other global is refused
before anything in it runs.
"""

from __future__ import annotations

import argparse
import pathlib
import pickle
import re
import threading
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from ..dtypes import dtype_of
from ..errors import InputError, UnsafeCheckpointError, UsageError
from ..sizes import format_bytes
from ..specs import TensorSpec
from .base import CheckpointSource, SourceInfo, choose_kept_name, detect_torch_format  # noqa: F401 (re-exported)
from ..layout import read_index
from .weights import WRAPPER_KEYS, Found, describe, find_weights, locate_weights, note_found  # noqa: F401 (re-exported)
from .ziprecords import CrcLedger, Record, ZipRecords, crc_of_range, read_zip_records

# Globals a checkpoint may hold beside its weights that are plain values to rebuild (no code
# of the file's choosing runs): opted into by name with ``allow_globals``. Lightning stores
# hyper-parameters as these.
HARMLESS_GLOBALS: dict[str, object] = {
    "pathlib.PosixPath": pathlib.PosixPath,
    "pathlib.PurePosixPath": pathlib.PurePosixPath,
    "pathlib.PureWindowsPath": pathlib.PureWindowsPath,
    "argparse.Namespace": argparse.Namespace,
}
_SMALL_RECORD_BYTES = 1 << 20
_GLOBAL_NAMED = re.compile(r"GLOBAL ([\w.]+)")


@contextmanager
def allowing(names: tuple[str, ...] = ()):
    """Let ``torch.load(weights_only=True)`` rebuild the named HARMLESS_GLOBALS, and nothing else."""
    unknown = [n for n in names if n not in HARMLESS_GLOBALS]
    if unknown:
        raise UsageError(f"allow_globals: {', '.join(unknown)} not in quantkit's list of harmless globals ({', '.join(HARMLESS_GLOBALS)})")
    if not names:
        yield
        return
    with torch.serialization.safe_globals([HARMLESS_GLOBALS[n] for n in names]):
        yield


def load_pickle(path: Path, *, mmap: bool) -> object:
    """``torch.load`` with weights only, errors turned into quantkit's."""
    return _torch_load(path, mmap=mmap, map_location="cpu")


def _torch_load(path: Path, *, mmap: bool, map_location: str) -> object:
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(_refusal(path, exc)) from None
    except NotImplementedError as exc:
        if "Quantized" in str(exc):
            raise InputError(
                f"{path}: holds quantized tensors (torch.qint8 / quint8 / qint32), which quantkit does not convert: "
                "save t.dequantize() instead"
            ) from None
        raise InputError(f"{path}: cannot read this PyTorch checkpoint: {_first_line(exc)} (truncated or damaged?)") from None
    except Exception as exc:  # torch reports damaged files with many types (RuntimeError, EOFError, AttributeError, ...)
        raise InputError(f"{path}: cannot read this PyTorch checkpoint: {_first_line(exc)} (truncated or damaged?)") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else exc.__class__.__name__


def _refusal(path: Path, exc: pickle.UnpicklingError) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # torch's first line is generic advice (retry with weights_only=False); the line naming
    # the refused global is the one worth showing
    specific = [line for line in lines if "GLOBAL" in line or "nsupported" in line]
    reason = (specific or lines or [exc.__class__.__name__])[0]
    # what follows is torch's advice to call its own API, which a quantkit user cannot follow
    reason = reason.split(". Please use", 1)[0].rstrip(".")
    named = _GLOBAL_NAMED.search(reason)
    if named and named.group(1) in HARMLESS_GLOBALS:
        name = named.group(1)
        return (
            f"{path}: refused: this pickle cannot be loaded as plain weights ({reason}). "
            f"{name} is a plain value quantkit can allow: pass allow_globals=({name!r},) (CLI: --allow-global {name})"
        )
    return (
        f"{path}: refused: this pickle cannot be loaded as plain weights ({reason}). "
        "quantkit never runs code from a checkpoint; re-save the state_dict with torch.save from a trusted environment"
    )


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
            key = (_storage_key(tensor), tensor.storage_offset(), tuple(tensor.shape), tensor.stride(), tensor.dtype)
        groups.setdefault(key, []).append(name)
    aliases: dict[str, str] = {}
    for names in groups.values():
        kept = choose_kept_name(names)
        aliases.update({n: kept for n in names if n != kept})
    specs = {n: TensorSpec.of(n, t) for n, t in tensors.items() if n not in aliases}
    return specs, aliases


def _storage_key(tensor: torch.Tensor) -> int:
    """Which stored record a tensor views: its record's offset in the file for tensors loaded
    on the meta device (quantkit's first pass), its data pointer otherwise."""
    storage = tensor.untyped_storage()
    return storage._checkpoint_offset if tensor.is_meta else storage.data_ptr()


def check_kind(path: Path, name: str, tensor: torch.Tensor) -> None:
    """Refuse a tensor quantkit cannot convert: sparse, quantized, or a dtype safetensors lacks."""
    if tensor.layout != torch.strided:
        raise InputError(f"{path}: tensor {name!r} is {tensor.layout}, which quantkit does not convert: save t.to_dense() instead")
    if tensor.is_quantized:  # (torch fails earlier on the meta device; a legacy file gets here)
        raise InputError(f"{path}: tensor {name!r} is quantized ({tensor.dtype}), which quantkit does not convert: save t.dequantize() instead")
    try:
        dtype_of(tensor.dtype)
    except ValueError:
        raise InputError(f"{path}: tensor {name!r} has dtype {tensor.dtype}, which safetensors cannot hold: "
                         "convert it (e.g. to float32) and save again") from None


def check_extent(path: Path, name: str, tensor: torch.Tensor, file_bytes: int, record: Record | None) -> None:
    """Refuse a tensor whose claims do not fit the bytes stored for it."""
    storage_bytes = tensor.untyped_storage().nbytes()
    if record is not None and storage_bytes != record.size:
        raise InputError(f"{path}: tensor {name!r} claims a storage of {storage_bytes} bytes but its record "
                         f"{record.name!r} holds {record.size} (damaged?)")
    if tensor.numel() == 0:
        return
    last = tensor.storage_offset() + sum((size - 1) * stride for size, stride in zip(tensor.shape, tensor.stride()))
    if (last + 1) * tensor.element_size() > storage_bytes:
        raise InputError(f"{path}: tensor {name!r} reaches past the end of its {storage_bytes}-byte storage (damaged?)")
    if tensor.nbytes > storage_bytes and tensor.nbytes > file_bytes:
        raise InputError(f"{path}: tensor {name!r} expands {storage_bytes} stored bytes to {format_bytes(tensor.nbytes)} "
                         f"(overlapping strides {tensor.stride()}), more than the whole file: refused")


def _check_name(path: Path, name: str) -> None:
    if name == "__metadata__":
        raise InputError(f"{path}: a tensor is named '__metadata__', which is the name of safetensors' metadata block: "
                         "rename it and save the checkpoint again")


@dataclass(frozen=True)
class _Plan:
    """Where a tensor's bytes lie: its record, and the span of the record it covers."""

    record: Record | None
    region: tuple[int, int]  # byte span within the record (for contiguous tensors)
    contiguous: bool


class TorchSource(CheckpointSource):
    """One or more pickled torch files; one shard's tensors are mapped at a time.

    Opening loads each shard's pickle on the meta device (no data read) and checks every
    tensor against the zip record holding its bytes: stored uncompressed, the size the pickle
    claims, strides inside it. Every record handed out is checked against its zip CRC-32:
    whole by ``get_tensor``, chunk by chunk by ``read_into`` (the read completing a tensor's
    record raises InputError on a mismatch).

    ``get_tensor`` may be called from several threads: the mapping is swapped under a lock,
    and a tensor already handed out keeps its own mapping alive until it is dropped."""

    concurrent_reads = True

    def __init__(self, path: Path, shards: list[Path], *, format: str, config_dir: Path | None = None,
                 key: str | None = None, allow_globals: tuple[str, ...] = ()):
        self._mmap = format != "torch-legacy"
        self._key = key
        self._allow_globals = tuple(allow_globals)
        self._lock = threading.Lock()
        self._strided: tuple[str | None, torch.Tensor | None] = (None, None)
        info = SourceInfo(format, list(shards), config_dir=config_dir)
        specs: dict[str, TensorSpec] = {}
        aliases: dict[str, str] = {}
        self._shard_of: dict[str, Path] = {}
        self._plans: dict[str, _Plan] = {}
        self._ledgers: dict[Path, CrcLedger] = {}
        self._base: int | None = None  # where the current mapping's file starts in memory
        self._loaded: tuple[Path, dict[str, torch.Tensor]] | None = None
        self._mapped_bytes = 0  # bytes handed out from the current mapping
        with allowing(self._allow_globals):
            for shard in shards:
                found = self._plan_shard(shard)
                shard_specs, shard_aliases = dedupe_shared(found.tensors)
                for name in shard_specs:
                    if name in specs:
                        raise InputError(f"{path}: tensor {name!r} is stored in more than one shard")
                    self._shard_of[name] = shard
                specs.update(shard_specs)
                aliases.update(shard_aliases)
                self._note_rest(info, found)
            if self._mmap:  # the first mapping serves the first tensors read
                self._loaded = (shards[-1], self._load_shard(shards[-1], info)[1])
                self._base = None
        if not self._mmap:
            info.notes.append(
                f"{path.name} is in PyTorch's legacy (pre-1.6) format, which cannot be memory-mapped and records no checksums: "
                "it was read whole into memory. Re-save it with torch.save (or `quantkit reshard`) to read it lazily."
            )
        super().__init__(path, info, specs, aliases)

    def _plan_shard(self, shard: Path) -> Found:
        """Load the shard's structure (tensors on the meta device for a zip: no data read) and check it."""
        file_bytes = shard.stat().st_size
        records = None
        if self._mmap:
            records = read_zip_records(shard)
            self._ledgers[shard] = CrcLedger(shard)
            self._check_small_records(shard, records)
            obj = _torch_load(shard, mmap=False, map_location="meta")
        else:
            obj = load_pickle(shard, mmap=False)
        found = self._locate(shard, obj)
        for name, tensor in found.tensors.items():
            _check_name(shard, name)
            check_kind(shard, name, tensor)
            record = self._record_of(shard, records, name, tensor) if records else None
            check_extent(shard, name, tensor, file_bytes, record)
            start = tensor.storage_offset() * tensor.element_size()
            self._plans[name] = _Plan(record, (start, start + tensor.nbytes), tensor.is_contiguous())
        if not self._mmap:
            self._loaded = (shard, found.tensors)
        return found

    def _check_small_records(self, shard: Path, records: ZipRecords) -> None:
        """The records torch reads at open (the pickle, the small ones beside it) are CRC-checked
        first; tensor records as they are read; any others only by ``verify``."""
        ledger = self._ledgers[shard]
        with open(shard, "rb", buffering=0) as f:
            for record in records.by_name.values():
                tensor_data = record.name.startswith(f"{records.prefix}data/")
                if record.name == records.pickle_name() or (not tensor_data and record.size <= _SMALL_RECORD_BYTES):
                    ledger.mark(record, crc_of_range(f.fileno(), shard, record.data_offset, record.size))
        byteorder = records.by_name.get(f"{records.prefix}byteorder")
        if byteorder is not None and _read_record(shard, byteorder) != b"little":
            raise InputError(f"{shard}: a big-endian checkpoint: quantkit reads little-endian ones; re-save it on a little-endian machine")

    @staticmethod
    def _record_of(shard: Path, records: ZipRecords, name: str, tensor: torch.Tensor) -> Record:
        record = records.by_offset.get(tensor.untyped_storage()._checkpoint_offset)
        if record is None or not record.name.startswith(f"{records.prefix}data/"):
            raise InputError(f"{shard}: tensor {name!r} has no data record in the zip (damaged?)")
        return record

    def _locate(self, shard: Path, obj: object) -> Found:
        try:
            return locate_weights(obj, key=self._key)
        except InputError as exc:
            raise InputError(f"{shard}: {exc}") from None

    def _note_rest(self, info: SourceInfo, found: Found) -> None:
        note_found(info, found)

    def _load_shard(self, shard: Path, info: SourceInfo):
        with allowing(self._allow_globals):
            obj = load_pickle(shard, mmap=self._mmap)
        found = self._locate(shard, obj)
        return found.where, found.tensors, found.rest

    # Pages of a memory-mapped file count in the process's RSS as long as the mapping lives,
    # even once the tensors read from them are gone, so reading a whole .pth through one
    # mapping grows RSS to the file's size. Mapping the shard afresh after this many bytes
    # unmaps the pages already read (once nothing else holds their tensors).
    remap_bytes = 256 * 2**20

    def get_tensor(self, name: str) -> torch.Tensor:
        tensor = self._mapped(name, None)
        self._check_whole_record(name, tensor)
        return tensor

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
                    self._check_whole_record(name, tensor)
                    self._strided = (name, tensor.contiguous().reshape(-1).view(torch.uint8))
                flat = self._strided[1]
        if start + len(view) > flat.numel():
            raise ValueError(f"bytes {start}..{start + len(view)} lie beyond tensor {name!r}")
        torch.frombuffer(view, dtype=torch.uint8).copy_(flat[start : start + len(view)])
        plan = self._plans[name]
        if plan.record is not None and plan.contiguous:
            self._ledgers[self._shard_of[name]].add(plan.record, plan.region[0] + start, view, plan.region)

    def _check_whole_record(self, name: str, tensor: torch.Tensor) -> None:
        plan = self._plans[name]
        ledger = self._ledgers.get(self._shard_of[name])
        if plan.record is None or ledger is None or ledger.verified(plan.record) or not plan.record.size:
            return
        stored = torch.empty(0, dtype=torch.uint8).set_(tensor.untyped_storage())
        ledger.mark(plan.record, zlib.crc32(memoryview(stored.numpy())))

    def _mapped(self, name: str, nbytes: int | None) -> torch.Tensor:
        shard = self._shard_of[name]
        with self._lock:
            stale = self._mmap and self._mapped_bytes >= self.remap_bytes
            if self._loaded is None or self._loaded[0] != shard or stale:
                self._loaded = None  # drop the previous mapping first
                self._loaded = (shard, self._load_shard(shard, self.info)[1])
                self._mapped_bytes = 0
                self._base = None
            tensor = self._loaded[1].get(name)
            self._check_mapping(shard, name, tensor)
            self._mapped_bytes += tensor.nbytes if nbytes is None else nbytes
            return tensor

    def _check_mapping(self, shard: Path, name: str, tensor: torch.Tensor | None) -> None:
        """The mapped tensor is the one planned: same record (by its place in the mapping), size and layout."""
        plan = self._plans[name]
        if tensor is None:
            raise InputError(f"{shard}: tensor {name!r} is gone (the file changed while being read)")
        if plan.record is None or not self._mmap:
            return
        storage = tensor.untyped_storage()
        base = storage.data_ptr() - plan.record.data_offset
        if storage.nbytes() != plan.record.size or (tensor.storage_offset() * tensor.element_size()) != plan.region[0]:
            raise InputError(f"{shard}: tensor {name!r} changed while being read")
        if not storage.nbytes():  # an empty storage's address says nothing
            return
        if self._base is None:
            self._base = base
        elif self._base != base:
            raise InputError(f"{shard}: tensor {name!r} is not where the zip directory says (the file changed while being read?)")

    def close(self) -> None:
        self._loaded = None


def _read_record(path: Path, record: Record) -> bytes:
    with open(path, "rb", buffering=0) as f:
        f.seek(record.data_offset)
        return f.read(record.size)


def open_torch_file(path: Path, *, config_dir: Path | None = None, **options) -> TorchSource:
    """Open a ``.pth``/``.pt``/``.bin``; ``options``: ``key``, ``allow_globals`` (see TorchSource)."""
    fmt = detect_torch_format(path)
    if fmt is None:
        raise InputError(f"{path}: not a checkpoint quantkit can read (neither safetensors nor a PyTorch zip or legacy pickle)")
    return TorchSource(path, [path], format=fmt, config_dir=config_dir, **options)


def open_torch_index(index_path: Path, *, config_dir: Path | None = None, **options) -> TorchSource:
    weight_map = read_index(index_path)
    shards = [index_path.parent / s for s in dict.fromkeys(weight_map.values())]
    for shard in shards:
        if detect_torch_format(shard) is None:
            raise InputError(f"{shard}: not a PyTorch checkpoint")
    formats = {detect_torch_format(s) for s in shards}
    source = TorchSource(index_path, shards, format="torch-sharded" if formats == {"torch-zip"} else "torch-legacy", config_dir=config_dir, **options)
    for name, shard in weight_map.items():
        if name not in source.specs and name not in source.aliases:
            raise InputError(f"{index_path}: the index maps tensor {name!r} to {shard}, which does not hold it")
    return source
