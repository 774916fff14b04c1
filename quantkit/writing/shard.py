"""One safetensors shard, written as planned: header from specs, tensor bytes at their offsets."""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from ..dtypes import dtype_of
from ..errors import OutputError, VerificationError
from ..layout import SELF_SHA256_PLACEHOLDER, SELF_CHECKSUM_V2_KEY
from ..specs import OutSpec, TensorSpec
from ..safetensors_format import HEADER_LENGTH_BYTES, build_header, layout_order, read_header, tensor_bytes
from .selfsum import PieceSums, TensorLeaves, piece_sums, record_offset, sha256_of, tree_root

__all__ = ["ShardWriter", "ShardWriters", "WrittenShard", "os_reason", "sha256_of", "units_in_file_order"]


@dataclass(frozen=True)
class WrittenShard:
    path: Path
    file_bytes: int
    tensor_bytes: int
    sha256: str
    names: tuple[str, ...]
    specs: tuple[TensorSpec, ...] = ()  # as written (a variable-size tensor at its final length)


class ShardWriter:
    """Writes one safetensors file whose tensors are known in advance.

    Fixed-size tensors are laid out as safetensors' serializer lays them out (so the file is
    byte-identical to ``safetensors.torch.save_file`` of the same tensors) and may arrive in
    any order: each is written straight to its offset, so memory never holds more than the
    tensor being written. Variable-size tensors (bounded, tiny) are kept until ``finish``,
    placed after the rest, and the header, sized for their upper bounds and padded with
    spaces, is written last.
    """

    def __init__(self, path: Path, specs: list[OutSpec], metadata: dict[str, str], *, fsync: bool = False, self_checksum: bool = False):
        self.path = path
        # self_checksum: the header carries the file's own record (SELF_CHECKSUM_V2_KEY, see
        # selfsum.py), written as a placeholder of 64 zeros and filled in once the data is
        # written: same length, so the header can still go first and the data stream to its
        # offsets. Its leaves are hashed by the threads writing the bytes (write_piece).
        self._metadata = {**metadata, SELF_CHECKSUM_V2_KEY: SELF_SHA256_PLACEHOLDER} if self_checksum else metadata
        self._fsync = fsync
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
        self._header_bytes = len(build_header(bound_entries, self._metadata)) if self._variable else None
        self._specs = {s.name: s for s in specs}
        self._pending: dict[str, bytes] = {}
        self._written: set[str] = set()
        self._piece_bytes: dict[str, int] = {}
        try:
            self._file = open(path, "wb", buffering=0)  # tensors are written whole: no buffer to flush
        except OSError as exc:
            raise OutputError(f"{path}: cannot create file: {os_reason(exc)}") from None
        self._data_start = HEADER_LENGTH_BYTES + (
            self._header_bytes if self._header_bytes is not None else len(build_header(bound_entries, self._metadata))
        )
        self._leaves = {s.name: TensorLeaves(s.name, s.nbytes) for s in self._fixed} if self_checksum else None
        self._hasher: _InlineHasher | None = None
        self._header_written: bytes | None = None
        if not self._variable:
            # The header is final already (but for the record's value): write it now, and
            # without a record hash the file as it is written.
            header = build_header(bound_entries, self._metadata)
            self._header_written = len(header).to_bytes(8, "little") + header
            self._write_at(0, self._header_written)
            if self._leaves is None:
                self._hasher = _InlineHasher(path, self._header_written)

    def file_order(self) -> list[str]:
        """Names of the fixed-size tensors in the order they lie in the file."""
        return [s.name for s in self._fixed]

    def write_unhashed(self, name: str, tensor) -> tuple[memoryview, PieceSums | None] | None:
        """Write a fixed-size tensor at its offset and return its bytes and their leaf sums,
        which must then go to ``wrote_piece(name, 0, data, sums)`` (from one thread);
        thread-safe. Returns None, writing nothing, for a variable-size tensor: that one goes
        to ``write``."""
        spec = self._checked(name, tensor)
        if spec.variable:
            return None
        data = tensor_bytes(tensor.cpu() if hasattr(tensor, "cpu") else tensor)
        return data, self.write_piece(name, 0, data)

    def _checked(self, name: str, tensor) -> OutSpec:
        spec = self._specs.get(name)
        if spec is None or name in self._written:
            raise VerificationError(f"{self.path}: tensor {name!r} is not planned for this shard, or written twice")
        if dtype_of(tensor) != spec.dtype or (not spec.variable and tuple(tensor.shape) != spec.shape):
            raise VerificationError(
                f"{self.path}: tensor {name!r} is {dtype_of(tensor)} {list(tensor.shape)}, planned {spec.dtype} {list(spec.shape)}"
            )
        return spec

    def write(self, name: str, tensor) -> int:
        """Write one tensor (torch tensor or numpy array); returns its byte count."""
        spec = self._checked(name, tensor)
        data = tensor_bytes(tensor.cpu() if hasattr(tensor, "cpu") else tensor)
        self._written.add(name)
        if spec.variable:
            if len(tensor.shape) != 1 or len(data) > spec.nbytes:
                raise VerificationError(f"{self.path}: tensor {name!r} is larger than its planned bound of {spec.nbytes} bytes")
            self._pending[name] = bytes(data)
            return len(data)
        begin, _ = self._offsets[name]
        self._write_at(self._data_start + begin, data)
        if self._leaves is not None:
            self._leaves[name].add(0, data)
        elif self._hasher is not None:
            self._hasher.wrote(self._data_start + begin, data)
        return len(data)

    def write_piece(self, name: str, start: int, data) -> PieceSums | None:
        """Write bytes ``start..start+len(data)`` of fixed-size tensor ``name`` and, for a shard
        carrying its own record, hash the record's leaves inside them. Positioned and
        stateless, so threads may write pieces at once; each piece must then be passed, with
        the sums returned, to ``wrote_piece`` (from one thread) for hashing and bookkeeping."""
        begin, end = self._piece_range(name, start, data)
        self._write_at(self._data_start + begin + start, data)
        return piece_sums(data, start, end - begin) if self._leaves is not None else None

    def wrote_piece(self, name: str, start: int, data, sums: PieceSums | None = None) -> None:
        """Record a piece written by ``write_piece``; the tensor counts as written once all its
        bytes are. A tensor's pieces come in order; without a record, pieces passed in file
        order are hashed from memory."""
        begin, end = self._piece_range(name, start, data)
        if self._leaves is not None:
            self._leaves[name].add(start, data, sums)
        elif self._hasher is not None:
            self._hasher.wrote(self._data_start + begin + start, data)
        done = self._piece_bytes.get(name, 0) + len(data)
        self._piece_bytes[name] = done
        if done == end - begin:
            self._written.add(name)

    def _piece_range(self, name: str, start: int, data) -> tuple[int, int]:
        spec = self._specs.get(name)
        if spec is None or spec.variable or name in self._written:
            raise VerificationError(f"{self.path}: tensor {name!r} is not planned for this shard, or written twice")
        begin, end = self._offsets[name]
        if start < 0 or begin + start + len(data) > end:
            raise VerificationError(f"{self.path}: bytes {start}..{start + len(data)} lie outside tensor {name!r}")
        return begin, end

    def _write_at(self, offset: int, data) -> None:
        view = memoryview(data).cast("B")
        try:
            while view:  # one write() moves at most ~2 GiB, and raw writes may be short
                written = os.pwrite(self._file.fileno(), view, offset)
                view, offset = view[written:], offset + written
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
        prefix = len(header).to_bytes(8, "little") + header
        if self._header_written is not None and prefix != self._header_written:
            raise VerificationError(f"{self.path}: header differs from the one written first")  # a bug, never user input
        if self._leaves is not None:
            prefix = self._with_record(prefix, [spec for spec, _, _ in entries])
        if self._header_written is None or self._leaves is not None:
            self._write_at(0, prefix)
        self._prefix = prefix
        try:
            self._file.truncate(self._data_start + position)
            if self._fsync:
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
        if self._hasher is not None:
            digest = self._hasher.finish(self._data_start + data_bytes)
        else:  # the one pass over the file: the header is in memory, the data in the page cache
            digest = sha256_of(self.path, skip=self._prefix)
        return WrittenShard(self.path, self._data_start + data_bytes, data_bytes, digest, tuple(s.name for s in specs), tuple(specs))

    def _with_record(self, prefix: bytes, specs: list[TensorSpec]) -> bytes:
        """``prefix`` (length and header, the record as zeros) with the record's value."""
        leaves = []
        for spec in specs:
            tensor_leaves = self._leaves.get(spec.name)
            if tensor_leaves is None:  # a variable-size tensor, written here in finish
                tensor_leaves = TensorLeaves(spec.name, spec.nbytes)
                tensor_leaves.add(0, self._pending[spec.name])
            if not tensor_leaves.complete:
                raise VerificationError(f"{self.path}: tensor {spec.name!r} was not hashed whole")  # a bug
            leaves += tensor_leaves.digests
        at = HEADER_LENGTH_BYTES + record_offset(prefix[HEADER_LENGTH_BYTES:], SELF_CHECKSUM_V2_KEY)
        root = tree_root(prefix, leaves).encode("ascii")
        return prefix[:at] + root + prefix[at + len(root) :]

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc_info) -> None:
        self.abort()  # closes the file; a finished shard is closed already


class ShardWriters:
    """A plan's shard writers, each opened by whichever thread first needs it: the main thread
    starting the shard, or a worker that wrote one of its tensors ahead of time."""

    def __init__(self, paths: list[Path], specs: list[list[OutSpec]], metadata: dict[str, str], fsync: bool, self_checksum: bool = False):
        self._paths, self._specs, self._metadata, self._fsync = paths, specs, metadata, fsync
        self._self_checksum = self_checksum
        self._open: dict[int, ShardWriter] = {}
        self._lock = threading.Lock()

    def get(self, index: int) -> ShardWriter:
        with self._lock:
            writer = self._open.get(index)
            if writer is None:
                writer = self._open[index] = ShardWriter(
                    self._paths[index], self._specs[index], self._metadata, fsync=self._fsync, self_checksum=self._self_checksum
                )
            return writer

    def pop(self, index: int) -> ShardWriter:
        with self._lock:
            return self._open.pop(index)

    def abort_all(self) -> None:
        with self._lock:
            for writer in self._open.values():
                writer.abort()


def os_reason(exc: OSError) -> str:
    """``No space left on device`` from an OSError, also when it was raised with an errno only."""
    if exc.strerror:
        return exc.strerror
    code = exc.errno if exc.errno is not None else (exc.args[0] if exc.args and isinstance(exc.args[0], int) else None)
    return os.strerror(code) if code is not None else str(exc) or exc.__class__.__name__


class _InlineHasher:
    """SHA-256 of a file computed while it is written: bytes written at the hashed prefix's end
    are hashed from memory at once; bytes written further on are read back (from the page
    cache) when the prefix reaches them, at the latest in ``finish``."""

    def __init__(self, path: Path, head: bytes):
        self._path = path
        self._digest = hashlib.sha256(head)
        self._hashed = len(head)  # bytes of the file hashed so far
        self._later: dict[int, int] = {}  # offset -> length of written bytes not yet hashed

    def wrote(self, offset: int, data) -> None:
        if offset == self._hashed:
            self._digest.update(data)
            self._hashed += len(data)
            self._drain()
        elif len(data):
            self._later[offset] = len(data)

    def _drain(self, read_back=None) -> None:
        while self._hashed in self._later:
            length = self._later.pop(self._hashed)
            if read_back is None:
                with open(self._path, "rb", buffering=0) as f:
                    self._hash_range(f, self._hashed, length)
            else:
                self._hash_range(read_back, self._hashed, length)
            self._hashed += length

    def _hash_range(self, f, offset: int, length: int, chunk_bytes: int = 8 << 20) -> None:
        f.seek(offset)
        while length:
            block = f.read(min(chunk_bytes, length))
            if not block:
                raise VerificationError(f"{self._path}: file shorter than the bytes written to it")
            self._digest.update(block)
            length -= len(block)

    def finish(self, file_bytes: int) -> str:
        with open(self._path, "rb", buffering=0) as f:
            self._drain(f)
            if self._hashed < file_bytes:  # the tail written last (variable tensors)
                self._hash_range(f, self._hashed, file_bytes - self._hashed)
        return self._digest.hexdigest()


def units_in_file_order(units: tuple[str, ...], outputs: dict[str, list[OutSpec]]) -> list[str]:
    """A shard's units in the order their first tensor lies in the file, so that writing them in
    this order writes the file front to back (and it can be hashed as it is written)."""
    fixed = layout_order([spec for unit in units for spec in outputs[unit] if not spec.variable])
    position = {spec.name: i for i, spec in enumerate(fixed)}
    first = {unit: min((position[s.name] for s in outputs[unit] if s.name in position), default=len(fixed)) for unit in units}
    return sorted(units, key=first.__getitem__)
