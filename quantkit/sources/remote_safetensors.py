"""Safetensors checkpoints in object storage, on web servers or on the Hugging Face Hub,
read by byte range: headers first (8 bytes, then exactly the header), tensors when asked.

Opening reads the index (if any), each shard's header and a folder's ``config.json``; the
other small files of a Hugging Face folder (tokenizer, generation config) are fetched only
when a command copies them into its output (``model_files_dir``).
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from ..errors import InputError
from ..safetensors_format import HEADER_LENGTH_BYTES, SafetensorsHeader, header_length, parse_header, tensor_offset
from .remote import RemoteFile, RemoteLocation, RemoteOptions, RemoteStore, display_url
from ..layout import parse_weight_map
from .safetensors_source import SafetensorsSource

ST_INDEX = "model.safetensors.index.json"
TORCH_SUFFIXES = (".pth", ".pt", ".bin")
WEIGHT_SUFFIXES = (".safetensors", ".index.json", *TORCH_SUFFIXES)
MODEL_FILES_TOTAL_BYTES = 64 << 20  # all of a folder's config and tokenizer files together
SKIPPED_FILES = ("quantkit.json",)  # a quantkit output's manifest describes that output, not a new one


class RemoteSafetensorsSource(SafetensorsSource):
    """A safetensors checkpoint read by ranged requests; thread-safe like the local one.

    ``bytes_fetched`` counts every byte fetched from the network so far (headers, index,
    config files, tensor data).
    """

    def __init__(self, location: RemoteLocation, headers: list[SafetensorsHeader], *, format: str, store: RemoteStore,
                 model_files: list[RemoteFile], temp_dir: Path | None):
        config_dir = temp_dir if temp_dir is not None and (temp_dir / "config.json").is_file() else None
        super().__init__(location, headers, format=format, config_dir=config_dir)  # type: ignore[arg-type]
        self._store = store
        self._model_files = model_files
        self._temp_dir = temp_dir
        self._files_lock = threading.Lock()
        self._all_fetched = False

    @property
    def bytes_fetched(self) -> int:
        return self._store.bytes_fetched

    def get_tensor(self, name: str) -> "torch.Tensor":  # noqa: F821
        import torch

        spec = self.specs[name]
        buffer = torch.empty(spec.nbytes, dtype=torch.uint8)
        if spec.nbytes:
            self.read_into(name, 0, memoryview(buffer.numpy()))
        return buffer.view(spec.dtype.torch).reshape(spec.shape)

    def read_into(self, name: str, start: int, view: memoryview) -> None:
        header = self._owner[name]
        self._store.read_into(header.path, tensor_offset(header, name, start, len(view)), view)  # type: ignore[arg-type]

    def mapped(self, name: str, start: int, nbytes: int):
        return None  # ranged requests: every byte is read into the caller's buffer

    def model_files_dir(self) -> Path | None:
        """The folder's config and tokenizer files, fetched on first use (each at most
        ``max_small_file_bytes``, together at most 64 MiB; larger ones are skipped with a note)."""
        with self._files_lock:
            if self.info.config_dir is not None and not self._all_fetched:
                self._all_fetched = True
                total = 0
                for file in self._model_files:
                    if (self.info.config_dir / file.name).exists():
                        continue
                    if file.size > self._store.options.max_small_file_bytes or total + file.size > MODEL_FILES_TOTAL_BYTES:
                        self.info.notes.append(f"{file.url}: not copied ({file.size} bytes, beyond the size cap for config files)")
                        continue
                    total += file.size
                    (self.info.config_dir / file.name).write_bytes(self._store.read(file, 0, file.size))
        return self.info.config_dir

    def close(self) -> None:
        self._store.close()
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None


def open_remote(url: str, *, options: RemoteOptions | None = None) -> RemoteSafetensorsSource:
    """Open a remote safetensors checkpoint for lazy reading; only headers, the index and
    ``config.json`` are fetched.

    Args:
        url: ``s3://bucket/prefix`` (a folder, a ``.safetensors`` file or an index),
            ``https://host/.../model.safetensors`` or ``.../model.safetensors.index.json``
            (a web server cannot list a folder), or ``hf://org/model[@revision]``.
        options: timeouts, retries and size limits (defaults suit most services).

    Example:
        >>> with open_remote("hf://openai-community/gpt2") as source:  # doctest: +SKIP
        ...     print(len(source.specs), source.bytes_fetched)
    """
    store = RemoteStore(url, options or RemoteOptions.from_environment())
    location = RemoteLocation(display_url(url))
    path = url if store.scheme == "http" else url.split("://", 1)[1].rstrip("/")
    if store.scheme == "http":
        source = _open_file(store, location, path, listing=None, folder=None)
    elif store.info(path).get("type") == "directory":
        source = _open_folder(store, location, path)
    else:
        source = _open_file(store, location, path, listing=None, folder=None)
    if not source.specs:
        source.close()
        raise InputError(f"{location}: the checkpoint holds no tensors")
    return source


def _open_folder(store: RemoteStore, location: RemoteLocation, folder: str) -> RemoteSafetensorsSource:
    listing = {}
    for entry in store.ls(folder):
        name = str(entry.get("name", "")).rstrip("/").rsplit("/", 1)[-1]
        if entry.get("type") == "file" and name not in ("", ".", ".."):
            listing[name] = RemoteFile(entry["name"], store.url_of(entry["name"]), _listed_size(entry, store))
    singles = sorted(n for n in listing if n.endswith(".safetensors"))
    if ST_INDEX in listing:
        chosen = ST_INDEX
    elif "model.safetensors" in listing or len(singles) == 1:
        chosen = "model.safetensors" if "model.safetensors" in listing else singles[0]
    elif any(n.endswith(TORCH_SUFFIXES) for n in listing):
        raise _torch_refusal(location.url)
    else:
        found = ", ".join(singles) or "no weight files"
        raise InputError(f"{location}: no safetensors checkpoint found ({found}); pass the file or index URL to use")
    return _open_file(store, location, listing[chosen].path, listing=listing, folder=folder)


def _open_file(store: RemoteStore, location: RemoteLocation, path: str, *, listing: dict[str, RemoteFile] | None,
               folder: str | None) -> RemoteSafetensorsSource:
    name = _name_of(path)
    if name.endswith(TORCH_SUFFIXES):
        raise _torch_refusal(store.url_of(path))
    if not name.endswith((".safetensors", ".index.json")):
        raise InputError(f"{store.url_of(path)}: name a .safetensors file, a .safetensors.index.json or (s3://, hf://) a folder")
    temp_dir = None
    try:
        model_files = []
        if folder is not None and listing is not None:
            model_files = [f for n, f in sorted(listing.items()) if not n.endswith(WEIGHT_SUFFIXES) and not n.startswith(".") and n not in SKIPPED_FILES]
            temp_dir = _fetch_config(store, model_files)
        file, head = _locate(store, path, listing)
        if name.endswith(".index.json"):
            headers, format = _index_headers(store, file, head, listing), "safetensors-sharded"
        else:
            headers, format = [_read_header(store, file, head)], "safetensors"
        # the file opened, as for a local folder: provenance and default output names then match a local run
        return RemoteSafetensorsSource(RemoteLocation(file.url), headers, format=format, store=store, model_files=model_files, temp_dir=temp_dir)
    except BaseException:
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)
        raise


def _locate(store: RemoteStore, path: str, listing: dict[str, RemoteFile] | None) -> tuple[RemoteFile, bytes]:
    """A file and its first 8 bytes, its size taken from the folder listing where there is one."""
    name = _name_of(path)
    if listing is None:
        return store.probe(path)
    if name not in listing:
        raise InputError(f"{store.url_of(path)}: missing (named by the index, not in the folder)")
    file = listing[name]
    return file, store.read(file, 0, min(HEADER_LENGTH_BYTES, file.size))


def read_remote_header(store: RemoteStore, file: RemoteFile) -> SafetensorsHeader:
    """The checked header of a remote safetensors file: its first 8 bytes, then exactly the header."""
    return _read_header(store, file, store.read(file, 0, min(HEADER_LENGTH_BYTES, file.size)))


def _read_header(store: RemoteStore, file: RemoteFile, head: bytes) -> SafetensorsHeader:
    header_bytes = header_length(file, head, file.size)  # checked against the size before fetching it
    raw = bytearray(header_bytes)
    store.read_into(file, HEADER_LENGTH_BYTES, memoryview(raw))
    return parse_header(file, bytes(raw), file.size)


def _index_headers(store: RemoteStore, index: RemoteFile, head: bytes, listing: dict[str, RemoteFile] | None) -> list[SafetensorsHeader]:
    weight_map = parse_weight_map(_read_small(store, index, head), index)
    base = _folder_of(index.path)
    headers = [_read_header(store, *_locate(store, f"{base}/{shard}", listing)) for shard in dict.fromkeys(weight_map.values())]
    by_name = {h.path.name: h for h in headers}
    for name, shard in weight_map.items():
        if name not in by_name[shard].entries:
            raise InputError(f"{index}: the index maps tensor {name!r} to {shard}, which does not hold it")
    return headers


def _read_small(store: RemoteStore, file: RemoteFile, head: bytes) -> bytes:
    if file.size > store.options.max_small_file_bytes:
        raise InputError(f"{file}: {file.size} bytes, more than the {store.options.max_small_file_bytes} read for an index or config file")
    return head + store.read(file, len(head), file.size)


def _fetch_config(store: RemoteStore, model_files: list[RemoteFile]) -> Path | None:
    """A temporary folder holding the remote folder's ``config.json`` (None when it has none)."""
    config = next((f for f in model_files if f.name == "config.json"), None)
    if config is None:
        return None
    data = _read_small(store, config, b"")
    temp_dir = Path(tempfile.mkdtemp(prefix="quantkit-remote-"))
    (temp_dir / "config.json").write_bytes(data)
    return temp_dir


def _name_of(path: str) -> str:
    """The file name of a filesystem path or URL (a URL's query string is no part of it)."""
    return urlsplit(path).path.rstrip("/").rsplit("/", 1)[-1] if "://" in path else path.rstrip("/").rsplit("/", 1)[-1]


def _folder_of(path: str) -> str:
    """The folder of a filesystem path or URL, where an index's shards lie (without the index
    URL's query string: a presigned URL signs one file only)."""
    if "://" not in path:
        return path.rsplit("/", 1)[0]
    parts = urlsplit(path)
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rsplit("/", 1)[0], "", ""))


def _listed_size(entry: dict, store: RemoteStore) -> int:
    size = entry.get("size")
    if type(size) is not int or size < 0:
        raise InputError(f"{store.url_of(entry['name'])}: the listing gives no usable size ({size!r})")
    return size


def _torch_refusal(url: str) -> InputError:
    return InputError(
        f"{url}: PyTorch checkpoints (.pth/.pt/.bin) are not read over the network: quantkit reads them "
        "through torch's loader, which needs a local file; download it first, or convert it to safetensors "
        "once (`quantkit reshard`) and read that remotely"
    )
