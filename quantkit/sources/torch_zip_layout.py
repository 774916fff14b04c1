"""Whether a zip is laid out byte for byte as ``torch.save`` writes one.

torch reads its zips with miniz, which refuses things Python's ``zipfile`` lets pass (a disk
number, a flag, a local header that disagrees with the directory). quantkit's torch-free reader
(``lazy_pth``) takes a ``.pth`` only where torch would read it the same, so it takes only the
layout torch's own writer produces: every header, data descriptor and directory byte is
rebuilt from the directory's names, sizes, offsets and CRC-32s and compared. Anything else,
however harmless (a ``zip -0`` repack, a comment), is left to torch. Record data is not
compared here: its CRC-32 is checked as it is read.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from .ziprecords import Record, ZipRecords

_EOCD = struct.Struct("<4s4H2LH")  # end of central directory, 22 bytes
_CENTRAL = struct.Struct("<4s6H3L5H2L")  # central directory header, 46 bytes
_LOCAL = struct.Struct("<4s5H3L2H")  # local file header, 30 bytes
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")  # 56 bytes
_ZIP64_LOCATOR = struct.Struct("<4sLQL")  # 20 bytes
_FLAGS = 0x0808  # sizes in a data descriptor after the data; names in UTF-8
_EMPTY_FLAGS = 0x0800  # an empty record: no data descriptor
_MAX32 = 0xFFFFFFFF
_PADDING_ID = b"FB"  # torch's writer pads local headers so that record data is aligned


def written_by_torch_save(path: Path, records: ZipRecords) -> bool:
    """True when ``path``'s zip structure is exactly what torch's writer makes of ``records``."""
    with open(path, "rb", buffering=0) as f:
        fd = f.fileno()
        directory = _directory(fd, os.fstat(fd).st_size)
        if directory is None:
            return False
        count, cd_offset, cd_size = directory
        entries = _central_entries(os.pread(fd, cd_size, cd_offset), count)
        if entries is None or len(entries) != len(records.by_name) or not _version_as_torch_writes(fd, records):
            return False
        if not all(name.startswith(records.prefix) for name, _ in entries):  # torch reads one folder: the first entry's
            return False
        position = 0
        for name, local_offset in entries:
            record = records.by_name.get(name)
            if record is None or local_offset != position:
                return False
            position = _local_and_descriptor(fd, name, record, local_offset)
            if position is None:
                return False
        return position == cd_offset


def _directory(fd: int, file_bytes: int) -> tuple[int, int, int] | None:
    """(entries, directory offset, directory size) from an end record with no comment at the
    very end of the file (and torch's zip64 end records before it, where used)."""
    if file_bytes < _EOCD.size:
        return None
    sig, disk, cd_disk, here, total, cd_size, cd_offset, comment = _EOCD.unpack(os.pread(fd, _EOCD.size, file_bytes - _EOCD.size))
    if sig != b"PK\x05\x06" or disk or cd_disk or here != total or comment:
        return None
    end = file_bytes - _EOCD.size
    locator_at = end - _ZIP64_LOCATOR.size  # torch's writer always adds the zip64 end records
    if locator_at < _ZIP64_EOCD.size:
        return None
    sig, disk, record_at, disks = _ZIP64_LOCATOR.unpack(os.pread(fd, _ZIP64_LOCATOR.size, locator_at))
    if sig != b"PK\x06\x07" or disk or disks != 1 or record_at != locator_at - _ZIP64_EOCD.size:
        return None
    sig, size, made, needed, disk, cd_disk, here64, total64, cd_size64, cd_offset64 = _ZIP64_EOCD.unpack(
        os.pread(fd, _ZIP64_EOCD.size, record_at))
    if sig != b"PK\x06\x06" or (size, made, needed) != (_ZIP64_EOCD.size - 12, 0x031E, 45) or disk or cd_disk or here64 != total64:
        return None
    for short, wide, saturated in ((total, total64, 0xFFFF), (cd_size, cd_size64, _MAX32), (cd_offset, cd_offset64, _MAX32)):
        if short != min(wide, saturated):
            return None
    return (total64, cd_offset64, cd_size64) if cd_offset64 + cd_size64 == record_at else None


def _central_entries(data: bytes, count: int) -> list[tuple[str, int]] | None:
    """(name, local header offset) of each directory entry, or None where one differs from
    what torch writes (the sizes and CRC are compared with the records later)."""
    entries, at = [], 0
    for _ in range(count):
        if at + _CENTRAL.size > len(data):
            return None
        (sig, made, needed, flags, method, time, date, crc, comp, size, name_len, extra_len, comment_len,
         disk, internal, external, offset) = _CENTRAL.unpack_from(data, at)
        expected_flags = _FLAGS if size else _EMPTY_FLAGS
        if sig != b"PK\x01\x02" or (made, needed, flags, method, time, date) != (0, 0, expected_flags, 0, 0, 0):
            return None
        if comment_len or disk or internal or external:
            return None
        try:
            name = data[at + _CENTRAL.size : at + _CENTRAL.size + name_len].decode("utf-8")
        except UnicodeDecodeError:
            return None
        extra = data[at + _CENTRAL.size + name_len : at + _CENTRAL.size + name_len + extra_len]
        offset = _zip64_offset(extra, comp, size, offset)
        if offset is None:
            return None
        entries.append((name, offset))
        at += _CENTRAL.size + name_len + extra_len
    if at != len(data):
        return None
    return entries


def _zip64_offset(extra: bytes, comp: int, size: int, offset: int) -> int | None:
    """The local header offset, from the zip64 extra field where the 32-bit one is saturated."""
    if not extra:
        return None if _MAX32 in (comp, size, offset) else offset
    wanted = [v == _MAX32 for v in (size, comp, offset)]
    if extra[:2] != b"\x01\x00" or struct.unpack_from("<H", extra, 2)[0] != 8 * sum(wanted) or len(extra) != 4 + 8 * sum(wanted):
        return None
    if not wanted[2]:
        return offset
    return struct.unpack_from("<Q", extra, 4 + 8 * sum(wanted[:2]))[0]


def _local_and_descriptor(fd: int, name: str, record: Record, local_offset: int) -> int | None:
    """Where the next header starts, when the local header before ``record``'s data and the
    data descriptor after it are torch's; None otherwise."""
    name_bytes = name.encode("utf-8")
    head = os.pread(fd, record.data_offset - local_offset, local_offset)
    if len(head) < _LOCAL.size + len(name_bytes):
        return None
    sig, needed, flags, method, time, date, crc, comp, size, name_len, extra_len = _LOCAL.unpack_from(head)
    expected_flags = _FLAGS if record.size else _EMPTY_FLAGS
    if sig != b"PK\x03\x04" or (needed, flags, method, time, date, crc, comp, size) != (0, expected_flags, 0, 0, 0, 0, 0, 0):
        return None
    if record.size >= _MAX32:  # a record of 4 GiB or more: a layout not checked here, left to torch
        return None
    extra = head[_LOCAL.size + name_len :]
    wide = local_offset >= _MAX32  # past 4 GiB the local header holds its own offset (zip64)
    zip64 = struct.pack("<2sHQ", b"\x01\x00", 8, local_offset) if wide else b""
    if head[_LOCAL.size : _LOCAL.size + name_len] != name_bytes or len(extra) != extra_len:
        return None
    if extra[: len(zip64)] != zip64 or not _padding(extra[len(zip64) :]):
        return None
    end = record.data_offset + record.size
    if not record.size:
        return end if record.crc == 0 and not wide else None
    descriptor = struct.pack("<4sLQQ" if wide else "<4sLLL", b"PK\x07\x08", record.crc, record.size, record.size)
    if os.pread(fd, len(descriptor), end) != descriptor:
        return None
    return end + len(descriptor)


def _padding(extra: bytes) -> bool:
    """No extra field, or torch's one alignment padding field (``FB``, its length, ``Z``s)."""
    if not extra:
        return True
    return extra[:2] == _PADDING_ID and len(extra) >= 4 and struct.unpack_from("<H", extra, 2)[0] == len(extra) - 4 and extra[4:] == b"Z" * (len(extra) - 4)


def _version_as_torch_writes(fd: int, records: ZipRecords) -> bool:
    """The archive's format version record (which torch's reader requires and parses) says 3,
    as torch.save writes it; its CRC-32 is checked with the other small records."""
    record = records.by_name.get(f"{records.prefix}.data/version") or records.by_name.get(f"{records.prefix}version")
    return record is not None and record.size == 2 and os.pread(fd, 2, record.data_offset) == b"3\n"
