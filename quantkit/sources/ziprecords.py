"""The zip container of a PyTorch checkpoint: where each record's bytes lie, and their CRC-32.

quantkit reads tensor bytes from a ``.pth`` itself, with positioned reads at offsets taken
from the zip's own directory, so every record it uses is checked here first: stored (not
compressed), inside the file, and, as its bytes are read, against the CRC-32 the zip records
for it. A byte flipped in a record fails the read instead of flowing into an output.
"""

from __future__ import annotations

import os
import struct
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError

try:  # ISA-L's CRC-32 gives zlib's values about 5x faster (quantkit[fast-crc]); zlib's otherwise
    from isal.isal_zlib import crc32
except ImportError:
    from zlib import crc32

_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # zip local file header, 30 bytes
_LOCAL_MAGIC = b"PK\x03\x04"
MAX_PICKLE_BYTES = 1 << 30  # a data.pkl past this is not a state dict's metadata
_CHUNK_BYTES = 8 << 20


@dataclass(frozen=True)
class Record:
    """One zip member: its name, where its bytes start in the file, its size and CRC-32."""

    name: str
    data_offset: int
    size: int
    crc: int


@dataclass
class ZipRecords:
    """The members of a PyTorch zip checkpoint, by name and by data offset."""

    path: Path
    prefix: str  # the folder every member lies in (``archive/`` for torch.save's default)
    by_name: dict[str, Record]
    by_offset: dict[int, Record] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.by_offset = {r.data_offset: r for r in self.by_name.values()}

    def pickle_name(self) -> str:
        return f"{self.prefix}data.pkl"


def read_zip_records(path: Path) -> ZipRecords:
    """Parse a torch zip's directory and check every member can be read in place.

    Refuses compressed members (a ``.pth`` re-packed by a zip tool: its bytes cannot be mapped
    or read by offset), members that run past the end of the file, and a missing ``data.pkl``.
    """
    file_bytes = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, NotImplementedError) as exc:
        raise InputError(f"{path}: cannot read this PyTorch checkpoint: damaged zip ({exc}) (truncated or damaged?)") from None
    records: dict[str, Record] = {}
    with open(path, "rb", buffering=0) as f:
        for info in infos:
            if info.compress_type != zipfile.ZIP_STORED:
                raise InputError(
                    f"{path}: zip member {info.filename!r} is compressed (method {info.compress_type}): "
                    "quantkit reads PyTorch checkpoints in place and cannot read compressed records; "
                    "re-save the state_dict with torch.save (or repack with `zip -0`)"
                )
            records[info.filename] = _record(path, f, info, file_bytes)
    pickles = [n for n in records if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
        raise InputError(f"{path}: cannot read this PyTorch checkpoint: no single '<name>/data.pkl' record (truncated or damaged?)")
    prefix = pickles[0][: -len("data.pkl")]
    if records[pickles[0]].size > MAX_PICKLE_BYTES:
        raise InputError(f"{path}: data.pkl holds {records[pickles[0]].size} bytes, more than the {MAX_PICKLE_BYTES} quantkit reads")
    return ZipRecords(path, prefix, records)


def _record(path: Path, f, info: zipfile.ZipInfo, file_bytes: int) -> Record:
    if not 0 <= info.header_offset <= file_bytes - _LOCAL_HEADER.size:
        raise InputError(f"{path}: zip member {info.filename!r} starts outside the file (truncated or damaged?)")
    head = os.pread(f.fileno(), _LOCAL_HEADER.size, info.header_offset)
    if len(head) < _LOCAL_HEADER.size or head[:4] != _LOCAL_MAGIC:
        raise InputError(f"{path}: zip member {info.filename!r} has no local header where the directory says (damaged?)")
    name_len, extra_len = _LOCAL_HEADER.unpack(head)[-2:]
    data_offset = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
    if data_offset + info.file_size > file_bytes or info.compress_size != info.file_size:
        raise InputError(f"{path}: zip member {info.filename!r} runs past the end of the file (truncated or damaged?)")
    return Record(info.filename, data_offset, info.file_size, info.CRC)


def pread_exact(fd: int, view: memoryview, offset: int, path: Path) -> None:
    """Fill ``view`` from ``offset`` of an open file (positioned reads: thread-safe)."""
    got = 0
    while got < len(view):
        more = os.preadv(fd, [view[got:]], offset + got) if hasattr(os, "preadv") else _pread_fallback(fd, view[got:], offset + got)
        if not more:
            raise InputError(f"{path}: data ended early (the file shrank while being read?)")
        got += more


def _pread_fallback(fd: int, view: memoryview, offset: int) -> int:
    data = os.pread(fd, len(view), offset)
    view[: len(data)] = data
    return len(data)


def crc_of_range(fd: int, path: Path, offset: int, size: int, crc: int = 0) -> int:
    """CRC-32 of ``size`` bytes of a file from ``offset``, read in chunks."""
    buffer = bytearray(min(size, _CHUNK_BYTES))
    view = memoryview(buffer)
    done = 0
    while done < size:
        n = min(len(buffer), size - done)
        pread_exact(fd, view[:n], offset + done, path)
        crc = crc32(view[:n], crc)
        done += n
    return crc


def check_all_crcs(path: Path) -> list[str]:
    """Every member's CRC-32 checked against the zip directory; the problems found (``verify``)."""
    records = read_zip_records(path)
    problems = []
    with open(path, "rb", buffering=0) as f:
        for record in records.by_name.values():
            if crc_of_range(f.fileno(), path, record.data_offset, record.size) != record.crc:
                problems.append(crc_mismatch(path, record))
    return problems


def crc_mismatch(path: Path, record: Record) -> str:
    return f"{path}: zip member {record.name!r} fails its CRC-32 check: the file is damaged; re-download or re-save it"


# crc32_combine from zlib (crc32.c, multmodp / x2nmodp): zlib's Python binding lacks it. It lets
# chunks of one record be checksummed by whichever thread reads them, in any order.
_POLY = 0xEDB88320


def _multmodp(a: int, b: int) -> int:
    m, p = 1 << 31, 0
    while True:
        if a & m:
            p ^= b
            if not a & (m - 1):
                return p
        m >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1


_X2N = [1 << 30]
for _ in range(31):
    _X2N.append(_multmodp(_X2N[-1], _X2N[-1]))


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """The CRC-32 of A + B from crc32(A), crc32(B) and len(B)."""
    p, k = 1 << 31, 3
    while len2:
        if len2 & 1:
            p = _multmodp(_X2N[k & 31], p)
        len2 >>= 1
        k += 1
    return _multmodp(p, crc1) ^ crc2


class CrcLedger:
    """Per record, the CRC-32 of the chunks read so far; a record is checked once fully covered.

    ``add`` is called with each chunk a reader hands out; when the chunks of a tensor cover
    its part of the record, the rest of the record (usually nothing) is read, the CRCs are
    combined in offset order and compared. A mismatch raises InputError in the read that
    completed the record, so a conversion fails before it can report success.
    """

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._verified: set[str] = set()
        self._chunks: dict[str, dict[int, tuple[int, int]]] = {}

    def verified(self, record: Record) -> bool:
        return record.name in self._verified

    def mark(self, record: Record, crc: int) -> None:
        if crc != record.crc:
            raise InputError(crc_mismatch(self.path, record))
        with self._lock:
            self._verified.add(record.name)

    def add(self, record: Record, offset: int, data: memoryview, region: tuple[int, int]) -> None:
        """Note the chunk of ``record`` read at record offset ``offset``; ``region`` is the span
        of the record the tensor being read covers."""
        if record.name in self._verified:
            return
        crc = crc32(data)
        with self._lock:
            chunks = self._chunks.setdefault(record.name, {})
            chunks[offset] = (len(data), crc)
            covered = sum(n for o, (n, _) in chunks.items() if region[0] <= o < region[1])
            if covered < region[1] - region[0]:
                return
            del self._chunks[record.name]
        with open(self.path, "rb", buffering=0) as f:  # for the bytes of the record outside the tensor
            self.mark(record, self._combined(f.fileno(), record, chunks))

    def _combined(self, fd: int, record: Record, chunks: dict[int, tuple[int, int]]) -> int:
        crc, position = 0, 0
        for offset in sorted(chunks):
            length, chunk_crc = chunks[offset]
            if offset < position:  # a chunk read twice: the first covers it
                continue
            if offset > position:
                crc = crc_of_range(fd, self.path, record.data_offset + position, offset - position, crc)
            crc = crc32_combine(crc, chunk_crc, length)
            position = offset + length
        if position < record.size:
            crc = crc_of_range(fd, self.path, record.data_offset + position, record.size - position, crc)
        return crc
