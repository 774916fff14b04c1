"""Open any supported checkpoint for lazy, tensor-at-a-time reading."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from ..errors import InputError
from .base import CheckpointSource, SourceInfo, detect_torch_format
from .remote import is_url
from .safetensors_source import open_safetensors_file, open_safetensors_index

__all__ = ["CheckpointSource", "SourceInfo", "open_checkpoint", "opened"]

ST_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"


def opened(src: "str | Path | CheckpointSource") -> "AbstractContextManager[CheckpointSource]":
    """A context giving an open source: ``src`` itself if already open (left open), else opened here."""
    if isinstance(src, CheckpointSource):
        return nullcontext(src)
    return open_checkpoint(src)


def open_checkpoint(path: str | Path) -> CheckpointSource:
    """Open a checkpoint file or folder; nothing but headers and pickle metadata is read.

    Accepts a ``.safetensors`` file, a safetensors or ``.bin`` index, a ``.pth``/``.pt``/``.bin``
    (zip or legacy format), or a folder holding one of these (a Hugging Face model folder:
    safetensors preferred over ``.bin``); or the URL of a remote safetensors checkpoint
    (``s3://``, ``https://``, ``hf://org/model[@revision]``: see ``remote_safetensors.open_remote``).
    """
    if is_url(path):  # s3://, http(s)://, hf://: ranged reads through fsspec (quantkit[remote])
        from .remote_safetensors import open_remote

        return open_remote(path)
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    try:
        source = _open_path(path)
    except OSError as exc:  # unreadable file or folder: a bad input, not a quantkit bug
        raise InputError(f"{exc.filename or path}: cannot read: {exc.strerror or exc}") from None
    if not source.specs:
        source.close()
        held = f" (it holds: {', '.join(source.info.extras)})" if source.info.extras else ""
        raise InputError(f"{path}: the checkpoint holds no tensors{held}")
    return source


def _open_path(path: Path) -> CheckpointSource:
    if path.is_dir():
        return _open_folder(path)
    if path.name.endswith(".index.json"):
        with open(path, "rb") as f:
            if f.read(1) != b"{":
                raise InputError(f"{path}: not a JSON index")
        shard_names = _first_shard_suffix(path)
        if shard_names == ".safetensors":
            return open_safetensors_index(path)
        from .torch_source import open_torch_index  # imports torch: only for torch formats

        return open_torch_index(path)
    return _open_file(path)


def _open_file(path: Path, config_dir: Path | None = None) -> CheckpointSource:
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file, not a checkpoint")
    if detect_torch_format(path) is not None:
        from .torch_source import open_torch_file

        return open_torch_file(path, config_dir=config_dir)
    with open(path, "rb") as f:
        head = f.read(9)
    if (len(head) == 9 and head[8:9] == b"{") or path.suffix == ".safetensors":
        # read_header says precisely what is wrong with a damaged .safetensors file
        return open_safetensors_file(path, config_dir=config_dir)
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise InputError(
            f"{path}: a plain Python pickle, not a PyTorch checkpoint: not unpickled "
            "(unpickling can run code); save the tensors with torch.save or safetensors instead"
        )
    raise InputError(f"{path}: not a checkpoint quantkit can read (neither safetensors nor a PyTorch zip or legacy pickle)")


def _first_shard_suffix(index_path: Path) -> str:
    import json

    try:
        weight_map = json.loads(index_path.read_text()).get("weight_map") or {}
        first = next(iter(weight_map.values()), "")
    except (ValueError, AttributeError, RecursionError):
        raise InputError(f"{index_path}: index is not valid JSON with a 'weight_map'") from None
    return ".safetensors" if str(first).endswith(".safetensors") else ".bin"


def _open_folder(folder: Path) -> CheckpointSource:
    config_dir = folder if (folder / "config.json").is_file() else None
    if (folder / ST_INDEX).is_file():
        return open_safetensors_index(folder / ST_INDEX, config_dir=config_dir)
    singles = sorted(folder.glob("*.safetensors"))
    if (folder / "model.safetensors").is_file():
        return open_safetensors_file(folder / "model.safetensors", config_dir=config_dir)
    if len(singles) == 1:
        return open_safetensors_file(singles[0], config_dir=config_dir)
    if (folder / BIN_INDEX).is_file():
        from .torch_source import open_torch_index

        return open_torch_index(folder / BIN_INDEX, config_dir=config_dir)
    for name in ("pytorch_model.bin", "model.pth", "model.pt"):
        if (folder / name).is_file():
            return _open_file(folder / name, config_dir)
    torch_files = sorted([*folder.glob("*.pth"), *folder.glob("*.pt"), *folder.glob("*.bin")])
    if len(torch_files) == 1:
        return _open_file(torch_files[0], config_dir)
    found = ", ".join(p.name for p in [*singles, *torch_files]) or "no weight files"
    raise InputError(f"{folder}: no checkpoint found to read ({found}); pass the file or index to use")
