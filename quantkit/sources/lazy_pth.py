"""PyTorch zip checkpoints read without torch: the tensor table by ``lazy_unpickle``, the bytes
by positioned reads at the offsets of the zip's own directory, each record checked against its
CRC-32 as it is read.

Only what is plainly a state dict is read this way: every tensor a view of a stored record
that holds exactly the bytes its pickle claims (a strided view no larger than its record is
made C-ordered once, as torch_source does). For anything else (a global, opcode or argument
``lazy_unpickle`` does not handle, a record that does not fit, any damage) :func:`open_lazy_pth` returns None and the caller loads the file with torch
(``torch_source``), which reads it or refuses it exactly as before. So every check of
``torch_source`` still decides what is refused and with which message; this path only takes
the files that pass them all.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..layout import read_index
from ..specs import TensorSpec
from .base import CheckpointSource, SourceInfo, choose_kept_name, detect_torch_format
from .lazy_unpickle import NotUnderstood, TensorRef, load_table
from .mapping import map_range
from .torch_zip_layout import written_by_torch_save
from .tree import StructureError
from .weights import Found, locate_weights, note_found
from .ziprecords import CrcLedger, Record, ZipRecords, crc32, crc_mismatch, crc_of_range, pread_exact, read_zip_records

FORCE_TORCH_ENV = "QUANTKIT_PTH_READER"  # "torch": read every .pth with torch.load (the reference path)
_SMALL_RECORD_BYTES = 1 << 20  # as torch_source: the records beside the pickle checked at open
_STORAGE_KEY = re.compile(r"[0-9A-Za-z_]+")


@dataclass(frozen=True)
class _Plan:
    """Where a tensor's bytes lie: its shard, its record, and the span of the record it covers."""

    shard: Path
    record: Record
    region: tuple[int, int]  # the bytes of the record the tensor's elements lie in
    strided: TensorRef | None = None  # a view that is not C-ordered: made contiguous to read


class LazyPthSource(CheckpointSource):
    """One or more PyTorch zip files, read with positioned reads (no torch, no mapping).

    ``read_into`` is thread-safe and needs no torch; ``get_tensor`` imports torch to hand out
    a tensor. Every record handed out is checked against its zip CRC-32, chunk by chunk: the
    read completing a tensor's part of a record raises InputError on a mismatch."""

    concurrent_reads = True
    reads_into_buffer = True

    def __init__(self, path: Path, shards: list[Path], *, format: str, config_dir: Path | None = None, key: str | None = None):
        info = SourceInfo(format, list(shards), config_dir=config_dir)
        specs: dict[str, TensorSpec] = {}
        aliases: dict[str, str] = {}
        self._plans: dict[str, _Plan] = {}
        self._ledgers: dict[Path, CrcLedger] = {}
        self._lock = threading.Lock()
        self._strided: tuple[str | None, bytes] = (None, b"")  # the last strided tensor, C-ordered
        for shard in shards:
            found = self._plan_shard(shard, key)
            shard_specs, shard_aliases = dedupe_refs(found.tensors, self._plans)
            for name in shard_specs:
                if name in specs:
                    raise InputError(f"{path}: tensor {name!r} is stored in more than one shard")
            specs.update(shard_specs)
            aliases.update(shard_aliases)
            note_found(info, found)
        super().__init__(path, info, specs, aliases)

    def _plan_shard(self, shard: Path, key: str | None) -> Found:
        records = read_zip_records(shard)
        if not written_by_torch_save(shard, records):
            raise NotUnderstood(f"{shard}: not laid out as torch.save writes")
        ledger = self._ledgers[shard] = CrcLedger(shard)
        table = load_table(check_small_records(shard, records, ledger))
        try:
            found = locate_weights(table, key=key)
        except StructureError as exc:  # torch's reader would unpickle the same dicts and refuse them alike
            raise StructureError(f"{shard}: {exc}") from None
        for name, tensor in found.tensors.items():
            self._plans[name] = _plan(shard, records, name, tensor)
        return found

    def get_tensor(self, name: str) -> "torch.Tensor":  # noqa: F821
        import torch

        spec = self.specs[name]
        data = torch.empty(spec.nbytes, dtype=torch.uint8)
        self.read_into(name, 0, memoryview(data.numpy()))
        return data.view(spec.dtype.torch).reshape(spec.shape)

    def read_into(self, name: str, start: int, view: memoryview) -> None:
        """Fill ``view`` with tensor ``name``'s bytes (C order) from byte ``start`` on; thread-safe, no torch."""
        if not len(view):
            return
        plan = self._checked_plan(name, start, len(view))
        if plan.strided:
            view[:] = memoryview(self._contiguous(name, plan))[start : start + len(view)]
            return
        self._read(plan, plan.region[0] + start, view)

    def mapped(self, name: str, start: int, nbytes: int):
        """Non-strided tensors only; each window's CRC-32 is noted as for a read."""
        plan = self._checked_plan(name, start, nbytes)
        if plan.strided:
            return None
        offset = plan.region[0] + start
        data = map_range(plan.shard, plan.record.data_offset + offset, nbytes, f"tensor {name!r}")
        if data is not None and nbytes:
            self._ledgers[plan.shard].add(plan.record, offset, memoryview(data), plan.region)
        return data

    def _checked_plan(self, name: str, start: int, nbytes: int) -> _Plan:
        """Tensor ``name``'s plan; ValueError unless bytes ``start .. start + nbytes`` are its."""
        plan = self._plans[name]
        size = self.specs[name].nbytes if plan.strided else plan.region[1] - plan.region[0]
        if start < 0 or start + nbytes > size:
            raise ValueError(f"bytes {start}..{start + nbytes} lie beyond tensor {name!r}")
        return plan

    def _read(self, plan: _Plan, offset: int, view: memoryview) -> None:
        with open(plan.shard, "rb", buffering=0) as f:
            pread_exact(f.fileno(), view, plan.record.data_offset + offset, plan.shard)
        self._ledgers[plan.shard].add(plan.record, offset, view, plan.region)

    def _contiguous(self, name: str, plan: _Plan) -> bytes:
        """A strided tensor's bytes in C order, made once and kept while its chunks are read."""
        import numpy as np

        with self._lock:
            if self._strided[0] != name:
                span = np.empty(plan.region[1] - plan.region[0], dtype=np.uint8)
                self._read(plan, plan.region[0], memoryview(span))
                t = plan.strided
                size = t.dtype.itemsize
                elements = span.view(np.dtype(f"V{size}"))
                strided = np.lib.stride_tricks.as_strided(elements, t.shape, tuple(s * size for s in t.stride))
                self._strided = (name, np.ascontiguousarray(strided).tobytes())
            return self._strided[1]


def _plan(shard: Path, records: ZipRecords, name: str, tensor: TensorRef) -> _Plan:
    """Where ``tensor`` lies, or NotUnderstood for anything torch_source checks (its message then)."""
    if name == "__metadata__" or not _STORAGE_KEY.fullmatch(tensor.storage.key):
        raise NotUnderstood(f"tensor {name!r}")
    record = records.by_name.get(f"{records.prefix}data/{tensor.storage.key}")
    if record is None or record.size != tensor.storage.nbytes:
        raise NotUnderstood(f"tensor {name!r}: record")
    size = tensor.dtype.itemsize
    start = tensor.storage_offset * size
    if tensor.is_contiguous():
        if start + tensor.nbytes > record.size:
            raise NotUnderstood(f"tensor {name!r}: extent")
        return _Plan(shard, record, (start, start + tensor.nbytes))
    end = (tensor.storage_offset + sum((n - 1) * s for n, s in zip(tensor.shape, tensor.stride)) + 1) * size
    if end > record.size or tensor.nbytes > record.size:  # torch_source's checks for a strided view, and stricter
        raise NotUnderstood(f"tensor {name!r}: strided extent")
    return _Plan(shard, record, (start, end), tensor)


def dedupe_refs(tensors: dict[str, TensorRef], plans: dict[str, _Plan]) -> tuple[dict[str, TensorSpec], dict[str, str]]:
    """Specs of the distinct tensors, and dropped alias -> kept name: ``torch_source.dedupe_shared``
    for TensorRefs (one tensor: the same record, offset, shape, stride and dtype)."""
    groups: dict[tuple, list[str]] = {}
    for name, t in tensors.items():
        key = ("empty", name) if t.numel == 0 else (plans[name].record.name, t.storage_offset, t.shape, t.stride, t.dtype.st)
        groups.setdefault(key, []).append(name)
    aliases: dict[str, str] = {}
    for names in groups.values():
        kept = choose_kept_name(names)
        aliases.update({n: kept for n in names if n != kept})
    specs = {n: TensorSpec(n, t.dtype, t.shape) for n, t in tensors.items() if n not in aliases}
    return specs, aliases


def check_small_records(shard: Path, records: ZipRecords, ledger: CrcLedger) -> bytes:
    """The pickle's bytes, read once and checked against their CRC-32 (what is unpickled is
    what was checked), and the other small records checked as ``torch_source`` checks them."""
    pickle_record = records.by_name[records.pickle_name()]
    with open(shard, "rb", buffering=0) as f:
        data = bytearray(pickle_record.size)
        pread_exact(f.fileno(), memoryview(data), pickle_record.data_offset, shard)
        if crc32(data) != pickle_record.crc:
            raise InputError(crc_mismatch(shard, pickle_record))
        ledger.mark(pickle_record, pickle_record.crc)
        for record in records.by_name.values():
            if record is not pickle_record and not record.name.startswith(f"{records.prefix}data/") and record.size <= _SMALL_RECORD_BYTES:
                ledger.mark(record, crc_of_range(f.fileno(), shard, record.data_offset, record.size))
        byteorder = records.by_name.get(f"{records.prefix}byteorder")
        if byteorder is not None and os.pread(f.fileno(), byteorder.size, byteorder.data_offset) != b"little":
            raise InputError(f"{shard}: not a little-endian checkpoint")
    return bytes(data)


def _torch_forced() -> bool:
    return os.environ.get(FORCE_TORCH_ENV, "").strip().lower() == "torch"


def open_lazy_pth(path: Path, *, config_dir: Path | None = None, key: str | None = None, allow_globals: tuple[str, ...] = ()) -> LazyPthSource | None:
    """A zip ``.pth``/``.pt``/``.bin`` opened without torch, or None where torch must read it
    (anything not understood or not valid, the legacy format, globals opted into by name)."""
    if allow_globals or _torch_forced() or detect_torch_format(path) != "torch-zip":
        return None
    try:
        return LazyPthSource(path, [path], format="torch-zip", config_dir=config_dir, key=key)
    except StructureError:  # not a state dict: torch would refuse it alike, after its import
        raise
    except Exception:  # noqa: BLE001 - torch_source reads it again and says what is wrong
        return None


def open_lazy_index(index_path: Path, *, config_dir: Path | None = None, key: str | None = None,
                    allow_globals: tuple[str, ...] = ()) -> LazyPthSource | None:
    """``torch_source.open_torch_index`` without torch, or None where torch must read it."""
    if allow_globals or _torch_forced():
        return None
    try:
        weight_map = read_index(index_path)
        shards = [index_path.parent / s for s in dict.fromkeys(weight_map.values())]
        if any(detect_torch_format(s) != "torch-zip" for s in shards):
            return None
        source = LazyPthSource(index_path, shards, format="torch-sharded", config_dir=config_dir, key=key)
        if any(name not in source.specs and name not in source.aliases for name in weight_map):
            return None
        return source
    except StructureError:
        raise
    except Exception:  # noqa: BLE001 - torch_source reads it again and says what is wrong
        return None
