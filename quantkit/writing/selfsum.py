"""A shard's own checksum, kept in its header so that it travels with the file.

Version 2 (``layout.SELF_CHECKSUM_V2_KEY``, written now): the SHA-256 of a list of XXH3-128
digests (16 bytes each, big-endian as ``xxhash`` gives them): first that of the header (the
8-byte length and the JSON, this value read as 64 ``0`` characters), then that of every
``LEAF_BYTES`` slice of every tensor's bytes, tensors in file order, each sliced from its own
first byte (the last slice of a tensor may be shorter; an empty tensor has none). The slices
are hashed by the threads that cast and write them, from memory, so the record costs no pass
over the file of its own: the one pass left is the plain SHA-256 of the finished file that
``quantkit.json`` records. XXH3 (about 20x SHA-256's speed here) because a record kept inside
the file it checks guards against damage, not against tampering (whoever can change the data
can rewrite the record): a 128-bit hash misses a random change with probability 2**-128, and
the cryptographic check stays ``quantkit.json``'s SHA-256.

Version 1 (``layout.SELF_SHA256_KEY``, written before): the SHA-256 of the whole file with
the value read as 64 zeros; ``verify`` still checks it.
"""

from __future__ import annotations

import hashlib
import mmap
import os
from dataclasses import dataclass
from collections.abc import Iterator
from pathlib import Path

import xxhash

from ..errors import VerificationError
from ..layout import SELF_SHA256_KEY, SELF_SHA256_PLACEHOLDER, SELF_CHECKSUM_V2_KEY
from ..safetensors_format import HEADER_LENGTH_BYTES, SafetensorsHeader

LEAF_BYTES = 1 << 20  # part of the version 2 format: changing it needs a new key
HASH_WINDOW_BYTES = 4 << 20  # mapped (resident) at once while hashing a finished file
_leaf = xxhash.xxh3_128_digest  # one leaf's digest (part of the version 2 format too)


@dataclass(frozen=True)
class PieceSums:
    """The leaves of one written piece of a tensor: ``head`` bytes that end a leaf begun in an
    earlier piece, the digests of the leaves wholly inside, and ``tail`` bytes that begin a
    leaf ending in a later piece."""

    head: int
    digests: tuple[bytes, ...]
    tail: int


def piece_sums(data, start: int, total: int) -> PieceSums:
    """Hash the leaves wholly inside bytes ``start..start+len(data)`` of a tensor of ``total``
    bytes (any thread: hashlib releases the GIL on large buffers)."""
    view = memoryview(data).cast("B")
    end = len(view)
    head = min((-start) % LEAF_BYTES, end)
    digests = []
    at = head
    while at < end:
        leaf_end = min(at + LEAF_BYTES, total - start)
        if leaf_end > end:
            break
        digests.append(_leaf(view[at:leaf_end]))
        at = leaf_end
    return PieceSums(head, tuple(digests), end - at)


class TensorLeaves:
    """One tensor's leaf digests, assembled from its pieces passed in order (one thread);
    bytes of leaves split across pieces are hashed here."""

    def __init__(self, name: str, total: int):
        self.name, self.total = name, total
        self.digests: list[bytes] = []
        self._at = 0  # bytes of the tensor passed so far
        self._partial = xxhash.xxh3_128()
        self._partial_bytes = 0

    def add(self, start: int, data, sums: PieceSums | None = None) -> None:
        view = memoryview(data).cast("B")
        if start != self._at or start + len(view) > self.total:
            raise VerificationError(f"tensor {self.name!r}: bytes {start}..{start + len(view)} passed out of order")  # a bug
        sums = sums if sums is not None else piece_sums(view, start, self.total)
        self._feed(view[: sums.head], start)
        self.digests.extend(sums.digests)
        self._feed(view[len(view) - sums.tail :], start + len(view) - sums.tail)
        self._at = start + len(view)

    def _feed(self, view: memoryview, start: int) -> None:
        if not len(view):
            return
        self._partial.update(view)
        self._partial_bytes += len(view)
        leaf_start = start + len(view) - self._partial_bytes
        if self._partial_bytes == min(LEAF_BYTES, self.total - leaf_start):
            self.digests.append(self._partial.digest())
            self._partial, self._partial_bytes = xxhash.xxh3_128(), 0

    @property
    def complete(self) -> bool:
        return self._at == self.total and not self._partial_bytes


def tree_root(header: bytes, leaves: list[bytes]) -> str:
    """The version 2 record of a file whose header (length prefix included, record as zeros)
    is ``header`` and whose leaf digests, in file order, are ``leaves``."""
    root = hashlib.sha256(_leaf(header))
    root.update(b"".join(leaves))
    return root.hexdigest()


def record_offset(header: bytes, key: str, value: str = SELF_SHA256_PLACEHOLDER) -> int:
    """Where, in ``header`` (the JSON after the length), the value of ``key`` starts.
    ValueError unless it occurs exactly once (JSON escapes any quote inside another string)."""
    pattern = f'"{key}":"{value}"'.encode()
    at = header.find(pattern)
    if at < 0 or header.find(pattern, at + 1) >= 0:
        raise ValueError(f"{key} is not in the header exactly once")
    return at + len(pattern) - len(value) - 1


def sha256_of(path: Path, *, skip: bytes = b"", chunk_bytes: int = HASH_WINDOW_BYTES) -> str:
    """SHA-256 of a file; ``skip``: its first bytes, already in memory (not read again). The
    file is mapped a window at a time, not copied: hashlib reads the page cache directly, and
    no more than one window is mapped (resident) at once."""
    digest = hashlib.sha256(skip)
    with open(path, "rb", buffering=0) as f:
        size = f.seek(0, 2)
        if size < len(skip):
            return hashlib.sha256(skip[:size]).hexdigest()
        for view in _mapped(f.fileno(), len(skip), size, chunk_bytes):
            digest.update(view)
    return digest.hexdigest()


def _mapped(fd: int, begin: int, end: int, window_bytes: int) -> Iterator[memoryview]:
    """Bytes ``begin..end`` of a file, as views of successive mapped windows (each unmapped
    once the next is asked for)."""
    window_bytes = max(mmap.ALLOCATIONGRANULARITY, window_bytes - window_bytes % mmap.ALLOCATIONGRANULARITY)
    at = begin
    while at < end:
        base = at - at % mmap.ALLOCATIONGRANULARITY
        length = min(base + window_bytes, end) - base
        with mmap.mmap(fd, length, offset=base, access=mmap.ACCESS_READ) as mapped:
            view = memoryview(mapped)
            part = view[at - base :]
            try:
                yield part
            finally:
                part.release()
                view.release()
        at = base + length


def file_digests(path: Path, header: SafetensorsHeader, window_bytes: int = HASH_WINDOW_BYTES) -> tuple[str, str | None]:
    """The plain SHA-256 of a shard and, when its header carries a record, the value that
    record should hold ("" when the record is not in the header exactly once); one read,
    through mapped windows."""
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        return stream_digests(lambda begin, end: _mapped(f.fileno(), begin, end, window_bytes), size, header)


def stream_digests(blocks, size: int, header: SafetensorsHeader) -> tuple[str, str | None]:
    """``file_digests`` of a file of ``size`` bytes given by ``blocks(begin, end)``: bytes
    ``begin..end`` as successive buffers (mapped windows of a local file, ranged requests to a
    remote one), each used before the next is asked for."""
    head = b"".join(bytes(block) for block in blocks(0, min(header.data_start, size)))
    whole = hashlib.sha256(head)
    key = SELF_CHECKSUM_V2_KEY if SELF_CHECKSUM_V2_KEY in header.metadata else SELF_SHA256_KEY
    zeroed = None
    if key in header.metadata:
        try:
            at = HEADER_LENGTH_BYTES + record_offset(head[HEADER_LENGTH_BYTES:], key, header.metadata[key])
            zeroed = head[:at] + SELF_SHA256_PLACEHOLDER.encode() + head[at + len(SELF_SHA256_PLACEHOLDER) :]
        except ValueError:
            zeroed = b""
    own = hashlib.sha256(zeroed) if zeroed and key == SELF_SHA256_KEY else None  # version 1: the whole file over zeros
    entries = list(header.entries.values())  # in file order, tiling the data (read_header checked)
    leaves = [TensorLeaves(name, entry.end - entry.begin) for name, entry in header.entries.items()] if zeroed and own is None else None
    offset, index = 0, 0  # into the data
    for block in blocks(len(head), size):
        whole.update(block)
        if own is not None:
            own.update(block)
        view = memoryview(block)
        while leaves is not None and index < len(entries) and len(view):
            take = min(len(view), entries[index].end - offset)
            if take > 0:
                leaves[index].add(offset - entries[index].begin, view[:take])
                view, offset = view[take:], offset + take
            if offset >= entries[index].end:
                index += 1
            elif take <= 0:
                break
        offset += len(view)  # bytes past the last tensor (none in a well-formed shard)
        view.release()
    if zeroed is None:
        return whole.hexdigest(), None
    if not zeroed:
        return whole.hexdigest(), ""
    if own is not None:
        return whole.hexdigest(), own.hexdigest()
    return whole.hexdigest(), tree_root(zeroed, [digest for tensor in leaves for digest in tensor.digests])
