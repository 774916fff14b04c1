"""Ranged GETs over HTTP(S) that never read more than they asked for.

fsspec's HTTP ``cat_file`` reads the whole body before it looks at the status, so a server
that ignores ``Range`` would have it download the whole file into memory. quantkit sends its
GETs on fsspec's aiohttp session itself: the status and ``Content-Range`` are checked before a
byte of the body is read, and the body is read up to the bytes asked for and no further.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

from ..errors import InputError

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


def display_url(url: str) -> str:
    """``url`` as shown to the user: no user name, password or query string (a presigned
    URL carries its signature there)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class Transient(Exception):
    """A failure worth retrying: 5xx, a reset, a body cut short."""


class RangeIgnored(Exception):
    """The server answered a ranged GET with the whole file (status 200)."""


async def http_range(fs, url: str, start: int, end: int) -> tuple[bytes, int]:
    """Bytes ``start..end`` of ``url`` and the file's size, from one GET with a ``Range``
    header. The body is read only once the status and ``Content-Range`` say it is exactly that
    range, and never beyond it."""
    import asyncio  # here, not at the top: every quantkit command imports this module, few read URLs

    import aiohttp

    session = await fs.set_session()
    headers = {"Range": f"bytes={start}-{end - 1}", "Accept-Encoding": "identity"}
    try:
        async with session.get(fs.encode_url(url), headers=headers) as r:
            if r.status == 416 and start == 0:  # an empty file has no byte 0
                return b"", _total_of_empty(r.headers.get("Content-Range", ""), url)
            _check_status(r.status, url)
            if r.status != 206:
                raise RangeIgnored()
            match = _CONTENT_RANGE.match(r.headers.get("Content-Range", ""))
            if match is None or match.group(3) == "*":
                raise InputError(f"{display_url(url)}: partial answer without a usable Content-Range header")
            first, last, total = int(match.group(1)), int(match.group(2)), int(match.group(3))
            if first != start or last >= total or (last != end - 1 and last != total - 1):
                raise InputError(f"{display_url(url)}: asked for bytes {start}-{end - 1}, the server sent {first}-{last}")
            return await _read_at_most(r.content, last + 1 - first), total
    except asyncio.TimeoutError as exc:
        raise Transient("timed out") from exc
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
        raise Transient(f"connection reset ({exc.__class__.__name__})") from exc


def _total_of_empty(content_range: str, url: str) -> int:
    """An answer of 416 to ``bytes=0-...``: the file must be empty (``Content-Range: bytes */0``)."""
    if content_range == "bytes */0":
        return 0
    raise InputError(f"{display_url(url)}: the server refused the range (HTTP 416)")


def _check_status(status: int, url: str) -> None:
    if status in (404, 410):
        raise FileNotFoundError(url)
    if status in (401, 403):
        raise PermissionError(url)
    if status == 429 or status >= 500:
        raise Transient(f"the server answered HTTP {status}")
    if status not in (200, 206):
        raise _HttpStatus(status)


class _HttpStatus(Exception):
    def __init__(self, status: int):
        super().__init__(status)
        self.status = status


async def _read_at_most(stream, expected: int) -> bytes:
    """Exactly ``expected`` bytes of a body: a shorter one is a cut connection (retried), a
    longer one is never read past ``expected``."""
    chunks, got = [], 0
    while got < expected:
        chunk = await stream.read(min(1 << 20, expected - got))
        if not chunk:
            raise Transient("connection reset (body cut short)")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)
