"""Ranged reads of files in object storage (``s3://``), on web servers (``https://``) and on
the Hugging Face Hub (``hf://org/model[@revision]``), through fsspec (``quantkit[remote]``).

quantkit reads a remote file only by byte range, each range once, with no read-ahead cache
between it and the network: it knows exactly which bytes it needs (a header, then a tensor
chunk), so a cache could only fetch bytes twice or bytes never used.

- S3 (s3fs): ``cat_file(path, start=, end=)`` is one ranged GetObject. Transient failures are
  retried by s3fs itself (``retries``, exponential backoff on timeouts, resets and truncated
  bodies) and by botocore (``standard`` retry mode: 5xx and throttling); credentials come from
  botocore's usual chain (environment, AWS profile, instance role).
- Hub (``HfFileSystem``): a file opened with ``cache_type="none"`` fetches exactly the range
  read, with huggingface_hub's ``http_backoff`` retrying 5xx answers and network errors; its
  API calls (revision, listing) have no retry there, so quantkit retries them. The token comes
  from ``HF_TOKEN`` or the saved login, the endpoint from ``HF_ENDPOINT``.
- HTTP(S): fsspec's ``cat_file`` reads the whole body before looking at the status, so a server
  that ignores ``Range`` would have it download the whole file into memory. quantkit sends its
  own ranged GETs on fsspec's aiohttp session instead: it checks for ``206`` and the exact
  ``Content-Range`` before reading a byte of the body, reads at most the bytes it asked for,
  and retries 5xx answers, resets and timeouts with backoff a bounded number of times.

Every failure becomes one ``InputError`` line naming the URL (without credentials or query
string) and what to check.
"""

from __future__ import annotations

import functools
import re
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import SimpleNamespace
from urllib.parse import urlsplit

from ..errors import InputError, QuantkitError, UsageError
from .remote_http import RangeIgnored, Transient, display_url, http_range

_URL = re.compile(r"^(s3|https?|hf)://", re.IGNORECASE)
_FIX = {
    "s3": "check the bucket and key, and the AWS credentials (environment or AWS profile)",
    "hf": "check the repository id and revision; for a private or gated model log in (HF_TOKEN or `hf auth login`)",
    "http": "check the URL and that the server is reachable",
}


def is_url(value: object) -> bool:
    """True for the URLs quantkit reads remotely (a ``Path`` never is one)."""
    return isinstance(value, str) and bool(_URL.match(value))


_OUTPUT_URL = re.compile(r"^(gs|gcs|az|abfs|https?|hf):/", re.IGNORECASE)


def check_local_output(output: object) -> None:
    """Refuse a URL other than ``s3://`` as an output: quantkit writes local folders and S3
    prefixes. Also catches a URL made a ``Path`` (which folds ``gs://b`` into ``gs:/b``), so it
    is not written to ``./gs:/b``."""
    if output is not None and _OUTPUT_URL.match(str(output)):
        scheme = str(output).split(":", 1)[0].lower()
        shown = re.sub(r"^(\w+):/+", r"\1://", str(output))  # as typed, where a Path folded it
        raise UsageError(f"{shown}: quantkit does not write to {scheme}:// (outputs are local folders or s3://bucket/prefix); "
                         "write a local folder (-o DIR) and upload it")


@dataclass(frozen=True)
class RemoteOptions:
    """How remote files are read."""

    timeout_s: float = 60.0  # connecting, and waiting for each piece of a body
    retries: int = 4  # further attempts after a transient failure (5xx, reset, timeout)
    backoff_s: float = 0.5  # wait before the first retry; doubles with each one
    request_bytes: int = 16 << 20  # the most one ranged request asks for: bounds memory per reading thread
    max_small_file_bytes: int = 16 << 20  # an index, config.json, tokenizer files

    @classmethod
    def from_environment(cls, environ: dict[str, str] | None = None) -> "RemoteOptions":
        """Defaults, with ``QUANTKIT_REMOTE_TIMEOUT_S``, ``QUANTKIT_REMOTE_RETRIES`` and
        ``QUANTKIT_REMOTE_BACKOFF_S`` where set (the CLI has no flags for them)."""
        import os

        environ = os.environ if environ is None else environ
        values = {}
        for field_name, key, kind in (("timeout_s", "QUANTKIT_REMOTE_TIMEOUT_S", float), ("retries", "QUANTKIT_REMOTE_RETRIES", int),
                                      ("backoff_s", "QUANTKIT_REMOTE_BACKOFF_S", float)):
            raw = environ.get(key)
            if raw is None or raw == "":
                continue
            try:
                values[field_name] = kind(raw)
            except ValueError:
                raise UsageError(f"{key}={raw!r}: not a number") from None
            if not 0 <= values[field_name] <= 3600 or (field_name == "timeout_s" and values[field_name] == 0):
                raise UsageError(f"{key}={raw!r}: out of range")
        return cls(**values)


@dataclass(frozen=True)
class RemoteLocation:
    """Where a remote checkpoint lies: what ``CheckpointSource.path`` is for a local one."""

    url: str  # as shown: no credentials

    def __str__(self) -> str:
        return self.url

    @property
    def name(self) -> str:
        """The last part of the path (``model`` for ``hf://org/model@main``)."""
        return self.url.rstrip("/").rsplit("/", 1)[-1].split("@", 1)[0]

    def __truediv__(self, name: str) -> "RemoteLocation":
        """A file in this folder (an output prefix's shards, as a local folder's ``folder / name``)."""
        return RemoteLocation(f"{self.url.rstrip('/')}/{name}")


@dataclass
class RemoteFile:
    """One remote file: its path for the filesystem, its URL for messages, its size.

    ``name`` and ``stat().st_size`` let it stand where a local ``Path`` is listed
    (``SourceInfo.files``), so ``inspect`` and ``verify`` describe it the same way.
    """

    path: str
    url: str
    size: int

    def __str__(self) -> str:
        return self.url

    @property
    def name(self) -> str:
        return urlsplit(self.url).path.rstrip("/").rsplit("/", 1)[-1]

    def stat(self) -> SimpleNamespace:
        return SimpleNamespace(st_size=self.size)


class RemoteStore:
    """The filesystem of one remote checkpoint, with a count of the bytes fetched from it.

    Thread-safe: s3fs and fsspec's HTTP filesystem run every request on their one event-loop
    thread, the Hub's reads open a file object per request, and the count is kept under a lock.
    """

    def __init__(self, url: str, options: RemoteOptions):
        self.scheme = "http" if url.lower().startswith(("http://", "https://")) else url.split(":", 1)[0].lower()
        self.options = options
        self.bytes_fetched = 0
        self._lock = threading.Lock()
        self.fs = _filesystem(self.scheme, options)

    def url_of(self, path: str) -> str:
        return display_url(path if self.scheme == "http" else f"{self.scheme}://{path}")

    @contextmanager
    def errors(self, url: str) -> Iterator[None]:
        """Turn any failure of the network or the service into one InputError line about ``url``."""
        try:
            yield
        except QuantkitError:
            raise
        except RangeIgnored:
            raise InputError(
                f"{url}: the server ignores HTTP Range requests (it answered with the whole file): "
                "not read, to keep it from downloading the whole file into memory; download it first, "
                "or serve it from a server that supports ranges"
            ) from None
        except Exception as exc:  # noqa: BLE001 - whatever the network library raised: one line, no credentials
            raise InputError(f"{url}: {describe_failure(exc)}; {_FIX[self.scheme]}") from None

    def info(self, path: str) -> dict:
        with self.errors(self.url_of(path)):
            return self._metadata(lambda: self.fs.info(path))

    def ls(self, path: str) -> list[dict]:
        with self.errors(self.url_of(path)):
            return self._metadata(lambda: self.fs.ls(path, detail=True))

    def read(self, file: RemoteFile, start: int, end: int) -> bytes:
        """Bytes ``start..end`` of ``file``: one ranged request (retried where transient), checked
        to be exactly what was asked."""
        if not 0 <= start <= end <= file.size:
            raise InputError(f"{file.url}: bytes {start}..{end} lie outside the file ({file.size} bytes)")
        if start == end:
            return b""
        with self.errors(file.url):
            data = self._fetch(file, start, end)
        if len(data) != end - start:
            raise InputError(f"{file.url}: asked for bytes {start}..{end}, got {len(data)} bytes; the file changed or the server is broken")
        with self._lock:
            self.bytes_fetched += len(data)
        return data

    def read_into(self, file: RemoteFile, offset: int, view: memoryview) -> None:
        """Fill ``view`` from byte ``offset`` of ``file``, in requests of at most ``request_bytes``."""
        step = self.options.request_bytes
        for first in range(0, len(view), step):
            last = min(first + step, len(view))
            view[first:last] = self.read(file, offset + first, offset + last)

    def probe(self, path: str) -> tuple[RemoteFile, bytes]:
        """A file and its first 8 bytes; over HTTP one ranged GET that also tells the size and
        refuses a server that ignores ``Range``."""
        url = self.url_of(path)
        if self.scheme != "http":
            info = self.info(path)
            if info.get("type") != "file":
                raise InputError(f"{url}: not a file")
            file = RemoteFile(path, url, _size_of(info, url))
            return file, self.read(file, 0, min(8, file.size))
        with self.errors(url):
            data, total = self._again(lambda: sync(self.fs.loop, http_range, self.fs, path, 0, 8))
        with self._lock:
            self.bytes_fetched += len(data)
        return RemoteFile(path, url, total), data

    def close(self) -> None:
        """Nothing to release: fsspec closes its sessions when the filesystem goes away."""

    def _fetch(self, file: RemoteFile, start: int, end: int) -> bytes:
        if self.scheme == "s3":
            return self.fs.cat_file(file.path, start=start, end=end)  # s3fs and botocore retry
        if self.scheme == "hf":
            with self.fs.open(file.path, "rb", cache_type="none", block_size=self.options.request_bytes) as f:
                f.seek(start)
                return f.read(end - start)  # one GET of exactly this range, retried by http_backoff
        data, total = self._again(lambda: sync(self.fs.loop, http_range, self.fs, file.path, start, end))
        if total != file.size:
            raise InputError(f"{file.url}: the file changed while it was read (it had {file.size} bytes, now {total}); run again")
        return data

    def _metadata(self, call):
        """A listing or size lookup: s3fs retries its own; huggingface_hub does not retry API calls."""
        return self._again(call) if self.scheme == "hf" else call()

    def _again(self, call):
        """``call()``, again after a transient failure (5xx, reset, timeout), at most ``retries``
        more times, waiting ``backoff_s`` and then twice as long each time. Used where the
        library has no retry of its own: quantkit's HTTP reads and the Hub's API calls."""
        wait = self.options.backoff_s
        for remaining in range(self.options.retries, -1, -1):
            try:
                return call()
            except Exception as exc:  # noqa: BLE001 - sorted by _is_transient; the rest go on unchanged
                if not _is_transient(exc):
                    raise
                if not remaining:
                    raise Transient(f"{describe_failure(exc)}; gave up after {self.options.retries + 1} attempts") from exc
            time.sleep(wait)
            wait *= 2


def sync(loop, coroutine_function, *args):
    """Run a coroutine function on fsspec's event loop (fsspec is imported only when used)."""
    from fsspec.asyn import sync as fsspec_sync

    return fsspec_sync(loop, coroutine_function, *args)


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, Transient):
        return True
    if _status_of(exc) in (429, 500, 502, 503, 504):
        return True
    return isinstance(exc, (ConnectionError, TimeoutError)) or _is(exc, "httpx", "TimeoutException", "NetworkError", "RemoteProtocolError")


def _size_of(info: dict, url: str) -> int:
    size = info.get("size")
    if type(size) is not int or size < 0:
        raise InputError(f"{url}: the service reports no usable size ({size!r})")
    return size


@functools.cache
def _botocore_loader(data_path: str | None):
    """botocore's loader of its service data (``AWS_DATA_PATH``: ``data_path``), shared by the
    process's S3 sessions. Each new session's own loader parses that JSON again (endpoints and
    the S3 model: 0.1-0.2 s of CPU per store here); the shared one parses it once."""
    from botocore.loaders import create_loader

    return create_loader(data_path)


def _filesystem(scheme: str, options: RemoteOptions):
    try:
        import fsspec  # noqa: F401
    except ImportError:
        raise UsageError("reading remote checkpoints needs the remote extra: pip install 'quantkit[remote]'") from None
    try:
        if scheme == "s3":
            from aiobotocore.session import AioSession
            from s3fs import S3FileSystem

            session = AioSession()  # a session per store (credentials are resolved and kept per session)
            session.register_component("data_loader", _botocore_loader(session.get_config_variable("data_path")))
            fs = S3FileSystem(
                session=session,
                skip_instance_cache=True,
                config_kwargs={
                    "connect_timeout": options.timeout_s,
                    "read_timeout": options.timeout_s,
                    "retries": {"max_attempts": options.retries + 1, "mode": "standard"},
                },
            )
            fs.retries = options.retries + 1  # s3fs' own retries (resets, cut bodies): a class attribute, 5 by default
            return fs
        if scheme == "hf":
            import os

            from huggingface_hub import HfFileSystem

            return HfFileSystem(skip_instance_cache=True, endpoint=os.environ.get("HF_ENDPOINT") or None)
        import aiohttp
        from fsspec.implementations.http import HTTPFileSystem

        timeout = aiohttp.ClientTimeout(total=None, sock_connect=options.timeout_s, sock_read=options.timeout_s)
        return HTTPFileSystem(skip_instance_cache=True, client_kwargs={"timeout": timeout})
    except ImportError as exc:
        raise UsageError(f"reading {scheme}:// needs the remote extra ({exc.name} is missing): pip install 'quantkit[remote]'") from None


def describe_failure(exc: BaseException) -> str:
    """What went wrong, from the exception's type and status only: messages of network
    libraries may repeat a URL with its credentials."""
    if isinstance(exc, Transient):
        return str(exc)
    status = _status_of(exc)
    if isinstance(exc, FileNotFoundError) or status in (404, 410):
        return "not found (no such bucket, key, repository, revision or file)"
    if isinstance(exc, PermissionError) or status in (401, 403):
        return "access denied"
    if status:
        return f"the server answered HTTP {status}"
    if _is(exc, "botocore.exceptions", "NoCredentialsError"):
        return "no AWS credentials found (set them in the environment or an AWS profile)"
    if isinstance(exc, TimeoutError) or _is(exc, "asyncio", "TimeoutError") or _is(exc, "httpx", "TimeoutException") or _is(
        exc, "botocore.exceptions", "ConnectTimeoutError", "ReadTimeoutError"
    ) or _is(exc, "fsspec.exceptions", "FSTimeoutError"):
        return "timed out"
    if isinstance(exc, ConnectionError) or _is(exc, "aiohttp", "ClientConnectionError", "ClientPayloadError") or _is(
        exc, "httpx", "NetworkError", "RemoteProtocolError"
    ) or _is(exc, "botocore.exceptions", "EndpointConnectionError", "ConnectionClosedError"):
        return "the connection failed or was reset"
    return f"cannot read it ({exc.__class__.__name__})"


def _status_of(exc: BaseException) -> int | None:
    for candidate in (exc, exc.__cause__):
        status = getattr(candidate, "status", None)  # aiohttp, _HttpStatus
        response = getattr(candidate, "response", None)
        if status is None and response is not None:
            status = getattr(response, "status_code", None)  # huggingface_hub / httpx
        if type(status) is int:
            return status
    return None


def _is(exc: BaseException, module: str, *names: str) -> bool:
    """isinstance against classes of a library only if it is imported already (each is optional)."""
    loaded = sys.modules.get(module)
    return loaded is not None and any(isinstance(exc, getattr(loaded, n, ())) for n in names)
