"""The safetensors file layout: parse and validate a header, build one.

safetensors' own ``safe_open`` reads these files too, but it maps the whole file, so every
page it touches stays in the process's RSS until the file is closed, and its errors do not
say which tensor or offset is wrong. quantkit parses the (small, JSON) header itself, checks
it completely, and then reads each tensor with one plain ``readinto``; the files it writes are
byte-identical to ``safetensors.torch.save_file`` (tested).
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from . import jsonio
from .dtypes import BY_ST, st_name
from .errors import InputError
from .specs import TensorSpec

HEADER_LENGTH_BYTES = 8
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit
MAX_COUNT = 2**62  # past this no dimension, element count or offset is real (and int64 overflows)


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors file: its spec and where its bytes lie in the data buffer."""

    spec: TensorSpec
    begin: int
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    path: Path
    header_bytes: int  # length of the JSON header, padding included
    entries: dict[str, TensorEntry]  # in file order
    metadata: dict[str, str]

    @property
    def data_start(self) -> int:
        return HEADER_LENGTH_BYTES + self.header_bytes


def read_header(path: Path) -> SafetensorsHeader:
    """Read and fully validate the header of a safetensors file.

    Raises InputError naming the file and what is wrong: too short, a header length beyond
    the file, a header that is not JSON, unknown dtypes, offsets that overlap, leave holes,
    disagree with the shape, or run past the end of the file.
    """
    file_bytes = path.stat().st_size
    with open(path, "rb") as f:
        header_bytes = header_length(path, f.read(HEADER_LENGTH_BYTES), file_bytes)
        raw = f.read(header_bytes)
    return parse_header(path, raw, file_bytes)


def header_length(path, head: bytes, file_bytes: int) -> int:
    """The JSON header's length from a file's first 8 bytes ``head``, checked against the
    file's size before any more of it is read. ``path`` only names the file in errors."""
    if len(head) < HEADER_LENGTH_BYTES:
        raise InputError(f"{path}: not a safetensors file ({file_bytes} bytes, shorter than its 8-byte header length)")
    (header_bytes,) = struct.unpack("<Q", head[:HEADER_LENGTH_BYTES])
    if header_bytes > file_bytes - HEADER_LENGTH_BYTES:
        raise InputError(
            f"{path}: header length {header_bytes} runs past the end of the file ({file_bytes} bytes): "
            "the file is truncated or not a safetensors file"
        )
    if header_bytes > MAX_HEADER_BYTES:
        raise InputError(f"{path}: header length {header_bytes} exceeds the safetensors limit of {MAX_HEADER_BYTES}")
    return header_bytes


def parse_header(path, raw: bytes, file_bytes: int) -> SafetensorsHeader:
    """Parse and fully validate the JSON header ``raw`` (the bytes after the length) of a
    safetensors file of ``file_bytes`` bytes, however they were read (a local file, a ranged
    request). ``path`` names the file in errors and in the returned header."""
    header_bytes = len(raw)
    try:
        header = jsonio.loads(raw)
    except jsonio.BadJson as exc:
        raise InputError(f"{path}: header is not valid JSON ({exc.kind}): not a safetensors file, or damaged") from None
    if not isinstance(header, dict):
        raise InputError(f"{path}: header is JSON but not an object")
    metadata = _check_metadata(path, header.pop("__metadata__", {}))
    entries = [_parse_entry(path, name, value) for name, value in header.items()]
    entries.sort(key=lambda e: (e.begin, e.end))
    _check_coverage(path, entries, file_bytes - HEADER_LENGTH_BYTES - header_bytes)
    return SafetensorsHeader(path, header_bytes, {e.spec.name: e for e in entries}, metadata)


def _check_metadata(path: Path, metadata: object) -> dict[str, str]:
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise InputError(f"{path}: __metadata__ must map strings to strings")
    return metadata


def _parse_entry(path: Path, name: str, value: object) -> TensorEntry:
    if not isinstance(value, dict):
        raise InputError(f"{path}: entry {name!r} is not an object")
    dtype_name = value.get("dtype")
    if not isinstance(dtype_name, str) or dtype_name not in BY_ST:
        raise InputError(f"{path}: tensor {name!r} has unknown dtype {dtype_name!r}")
    shape = value.get("shape")
    offsets = value.get("data_offsets")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise InputError(f"{path}: tensor {name!r} has an invalid shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_count(o) for o in offsets)
        or offsets[1] < offsets[0]
    ):
        raise InputError(f"{path}: tensor {name!r} has invalid data_offsets {offsets!r}")
    if any(d >= MAX_COUNT for d in (*shape, *offsets)) or math.prod(max(d, 1) for d in shape) >= MAX_COUNT:
        raise InputError(f"{path}: tensor {name!r} has an impossible shape {shape} or data_offsets {offsets} (beyond 2**62)")
    spec = TensorSpec(name, BY_ST[dtype_name], tuple(shape))
    if offsets[1] - offsets[0] != spec.nbytes:
        raise InputError(
            f"{path}: tensor {name!r} spans {offsets[1] - offsets[0]} bytes but its shape {shape} "
            f"and dtype {dtype_name} need {spec.nbytes}"
        )
    return TensorEntry(spec, offsets[0], offsets[1])


def _is_count(value: object) -> bool:
    return type(value) is int and value >= 0  # JSON true/false are bools, which isinstance(_, int) accepts


def _check_coverage(path: Path, entries: list[TensorEntry], buffer_bytes: int) -> None:
    position = 0
    for entry in entries:
        if entry.begin < position:
            raise InputError(f"{path}: tensor {entry.spec.name!r} overlaps the tensor before it (offset {entry.begin} < {position})")
        if entry.begin > position:
            raise InputError(f"{path}: hole in the data buffer before tensor {entry.spec.name!r} (bytes {position}..{entry.begin} unused)")
        position = entry.end
    if position > buffer_bytes:
        raise InputError(
            f"{path}: data truncated: the header needs {position} bytes of tensor data, the file holds {buffer_bytes}"
        )
    if position < buffer_bytes:
        raise InputError(f"{path}: {buffer_bytes - position} unexpected bytes after the last tensor")


def layout_order(specs: list[TensorSpec]) -> list[TensorSpec]:
    """The order safetensors' serializer lays tensors out: wider dtypes first, then by name.

    Every tensor then starts at a multiple of its element size.
    """
    return sorted(specs, key=lambda s: (-s.dtype.rank, s.name))


def build_header(entries: list[tuple[TensorSpec, int, int]], metadata: dict[str, str], *, min_bytes: int = 0) -> bytes:
    """The header JSON for entries in file order, padded with spaces to a multiple of 8 and at least ``min_bytes``."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = metadata
    for spec, begin, end in entries:
        header[spec.name] = {"dtype": st_name(spec.dtype), "shape": list(spec.shape), "data_offsets": [begin, end]}
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    padded = max(len(raw), min_bytes)
    padded = math.ceil(padded / 8) * 8
    return raw + b" " * (padded - len(raw))


def read_tensor(f, header: SafetensorsHeader, name: str):
    """Read one tensor (a torch tensor) from an open file (object or descriptor) with
    positioned reads (no mmap, one copy).

    ``os.preadv`` uses no shared file position, so threads may read tensors from the same
    open file at once.
    """
    import torch

    entry = header.entries[name]
    buffer = torch.empty(entry.end - entry.begin, dtype=torch.uint8)
    if buffer.numel():
        read_range(f, header, name, 0, memoryview(buffer.numpy()))
    return buffer.view(entry.spec.dtype.torch).reshape(entry.spec.shape)


def tensor_offset(header: SafetensorsHeader, name: str, start: int, nbytes: int) -> int:
    """Where in the file bytes ``start .. start + nbytes`` of tensor ``name`` begin;
    ValueError where they are not all the tensor's."""
    entry = header.entries[name]
    if start < 0 or start + nbytes > entry.end - entry.begin:
        raise ValueError(f"bytes {start}..{start + nbytes} lie beyond tensor {name!r}")
    return header.data_start + entry.begin + start


def read_range(f, header: SafetensorsHeader, name: str, start: int, view: memoryview) -> None:
    """Fill ``view`` with tensor ``name``'s bytes from byte ``start`` on (positioned reads)."""
    offset = tensor_offset(header, name, start, len(view))
    fd = f if isinstance(f, int) else f.fileno()
    got = 0
    while got < len(view):  # reads may come back short on some filesystems
        more = _pread_into(f, fd, view[got:], offset + got)
        if not more:
            raise InputError(f"{header.path}: data ended early while reading tensor {name!r}")
        got += more


def _pread_into(f, fd: int, view: memoryview, offset: int) -> int:
    if hasattr(os, "preadv"):
        return os.preadv(fd, [view], offset)
    # No preadv (Windows): seek + readinto, safe only while one thread uses ``f``
    # (SafetensorsSource.get_tensor opens a file per call, so it still is).
    if isinstance(f, int):
        with os.fdopen(os.dup(f), "rb", buffering=0) as own:
            own.seek(offset)
            return own.readinto(view) or 0
    f.seek(offset)
    return f.readinto(view) or 0


def tensor_bytes(tensor) -> memoryview:
    """A view of a CPU tensor's (or numpy array's) bytes in C order (copies only if it is
    not contiguous)."""
    if not hasattr(tensor, "detach"):  # a numpy array
        import numpy as np

        flat = np.ascontiguousarray(tensor).reshape(-1)
        return memoryview(flat.view(np.uint8)) if flat.size else memoryview(b"")
    import torch

    flat = tensor.detach().contiguous().reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return memoryview(flat.view(torch.uint8).numpy())
