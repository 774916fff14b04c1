"""Streaming safetensors writer: header planned from specs, tensor bytes written one at a time."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import OutputError, VerificationError
from .specs import TensorSpec
from .stformat import HEADER_LENGTH_BYTES, build_header, layout_order, read_header, tensor_bytes


@dataclass(frozen=True)
class OutSpec(TensorSpec):
    """A tensor to write. ``variable`` marks a small U8 tensor whose length is only known once
    computed (a 4-bit quant state's JSON); its ``shape`` is then an upper bound."""

    variable: bool = False


@dataclass(frozen=True)
class WrittenShard:
    path: Path
    file_bytes: int
    tensor_bytes: int
    sha256: str
    names: tuple[str, ...]


class ShardWriter:
    """Writes one safetensors file whose tensors are known in advance.

    Fixed-size tensors are laid out as safetensors' serializer lays them out (so the file is
    byte-identical to ``safetensors.torch.save_file`` of the same tensors) and may arrive in
    any order: each is written straight to its offset, so memory never holds more than the
    tensor being written. Variable-size tensors (bounded, tiny) are kept until ``finish``,
    placed after the rest, and the header, sized for their upper bounds and padded with
    spaces, is written last.
    """

    def __init__(self, path: Path, specs: list[OutSpec], metadata: dict[str, str]):
        self.path = path
        self._metadata = metadata
        self._fixed = layout_order([s for s in specs if not s.variable])
        self._variable = sorted((s for s in specs if s.variable), key=lambda s: s.name)
        self._offsets: dict[str, tuple[int, int]] = {}
        position = 0
        for spec in self._fixed:
            self._offsets[spec.name] = (position, position + spec.nbytes)
            position += spec.nbytes
        self._fixed_bytes = position
        bound_entries = [(s, b, e) for s in self._fixed for b, e in [self._offsets[s.name]]]
        upper = position + sum(s.nbytes for s in self._variable)
        bound_entries += [(s, upper, upper) for s in self._variable]
        self._header_bytes = len(build_header(bound_entries, metadata)) if self._variable else None
        self._specs = {s.name: s for s in specs}
        self._pending: dict[str, bytes] = {}
        self._written: set[str] = set()
        try:
            self._file = open(path, "wb")
        except OSError as exc:
            raise OutputError(f"{path}: cannot create file: {os_reason(exc)}") from None
        self._data_start = HEADER_LENGTH_BYTES + (
            self._header_bytes if self._header_bytes is not None else len(build_header(bound_entries, metadata))
        )

    def write(self, name: str, tensor: torch.Tensor) -> int:
        """Write one tensor; returns its byte count."""
        spec = self._specs.get(name)
        if spec is None or name in self._written:
            raise VerificationError(f"{self.path}: tensor {name!r} is not planned for this shard, or written twice")
        if tensor.dtype != spec.dtype or (not spec.variable and tuple(tensor.shape) != spec.shape):
            raise VerificationError(
                f"{self.path}: tensor {name!r} is {tensor.dtype} {list(tensor.shape)}, planned {spec.dtype} {list(spec.shape)}"
            )
        data = tensor_bytes(tensor.cpu())
        self._written.add(name)
        if spec.variable:
            if tensor.dim() != 1 or len(data) > spec.nbytes:
                raise VerificationError(f"{self.path}: tensor {name!r} is larger than its planned bound of {spec.nbytes} bytes")
            self._pending[name] = bytes(data)
            return len(data)
        begin, _ = self._offsets[name]
        self._write_at(self._data_start + begin, data)
        return len(data)

    def _write_at(self, offset: int, data) -> None:
        try:
            self._file.seek(offset)
            self._file.write(data)
        except OSError as exc:
            raise OutputError(f"{self.path}: write failed: {os_reason(exc)}") from None

    def finish(self) -> WrittenShard:
        """Write the variable tensors and the header, close, and check the file against the plan."""
        missing = set(self._specs) - self._written
        if missing:
            raise VerificationError(f"{self.path}: {len(missing)} planned tensors were never written, e.g. {sorted(missing)[0]!r}")
        entries = [(s, *self._offsets[s.name]) for s in self._fixed]
        position = self._fixed_bytes
        tail = b""
        for spec in self._variable:
            data = self._pending[spec.name]
            entries.append((TensorSpec(spec.name, spec.dtype, (len(data),)), position, position + len(data)))
            position += len(data)
            tail += data
        header = build_header(entries, self._metadata, min_bytes=self._header_bytes or 0)
        if HEADER_LENGTH_BYTES + len(header) != self._data_start:
            raise VerificationError(f"{self.path}: header grew beyond its reserved size")  # a bug, never user input
        self._write_at(self._data_start + self._fixed_bytes, tail)
        self._write_at(0, len(header).to_bytes(8, "little") + header)
        try:
            self._file.truncate(self._data_start + position)
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            raise OutputError(f"{self.path}: write failed: {os_reason(exc)}") from None
        finally:
            self._file.close()
        return self._verify([e[0] for e in entries], position)

    def _verify(self, specs: list[TensorSpec], data_bytes: int) -> WrittenShard:
        try:
            parsed = read_header(self.path)
        except Exception as exc:
            raise VerificationError(f"{self.path}: the file just written does not read back: {exc}") from None
        read_back = {(e.spec.name, e.spec.dtype, e.spec.shape) for e in parsed.entries.values()}
        if read_back != {(s.name, s.dtype, s.shape) for s in specs}:
            raise VerificationError(f"{self.path}: header read back differs from the plan")
        return WrittenShard(self.path, self._data_start + data_bytes, data_bytes, sha256_of(self.path), tuple(s.name for s in specs))

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()


def os_reason(exc: OSError) -> str:
    """``No space left on device`` from an OSError, also when it was raised with an errno only."""
    if exc.strerror:
        return exc.strerror
    code = exc.errno if exc.errno is not None else (exc.args[0] if exc.args and isinstance(exc.args[0], int) else None)
    return os.strerror(code) if code is not None else str(exc) or exc.__class__.__name__


def sha256_of(path: Path, chunk_bytes: int = 8 << 20) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(chunk_bytes)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(view):
            digest.update(view[:n])
    return digest.hexdigest()
