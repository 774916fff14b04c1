"""Open any supported checkpoint for lazy, tensor-at-a-time reading."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from ..errors import InputError, UsageError
from ..layout import BIN_INDEX, ST_INDEX, TORCH_FILES, parse_index, safetensors_in
from .base import CheckpointSource, SourceInfo, detect_torch_format
from .hfconfig import check_config, too_large_to_build
from .lazy_pth import open_lazy_index, open_lazy_pth
from .renamed import renamed, suggest_prefix as _suggest_prefix
from .remote import is_url
from .safetensors_source import open_safetensors_file, open_safetensors_index

__all__ = ["CheckpointSource", "SourceInfo", "open_checkpoint", "opened"]



def opened(src: "str | Path | CheckpointSource") -> "AbstractContextManager[CheckpointSource]":
    """A context giving an open source: ``src`` itself if already open (left open), else opened here."""
    if isinstance(src, CheckpointSource):
        return nullcontext(src)
    return open_checkpoint(src)


def open_checkpoint(
    path: str | Path,
    *,
    key: str | None = None,
    strip_prefix: str | None = None,
    allow_globals: tuple[str, ...] = (),
) -> CheckpointSource:
    """Open a checkpoint file or folder; nothing but headers and pickle metadata is read.

    Accepts a ``.safetensors`` file, a safetensors or ``.bin`` index, a ``.pth``/``.pt``/``.bin``
    (zip or legacy format), or a folder holding one of these (a Hugging Face model folder:
    safetensors preferred over ``.bin``); or the URL of a remote safetensors checkpoint
    (``s3://``, ``https://``, ``hf://org/model[@revision]``: see ``remote_safetensors.open_remote``).

    Args:
        path: the file or folder.
        key: for a training checkpoint holding several dicts of tensors, the top-level entry
            whose tensors are the weights (without it quantkit picks one and says so in
            ``info.notes``).
        strip_prefix: a prefix (``module.``, ``_orig_mod.``, ``model.``) removed from every
            tensor name that has it; when all names share such a prefix and none is given,
            ``info.notes`` suggests it.
        allow_globals: names from ``torch_source.HARMLESS_GLOBALS`` (``pathlib.PosixPath``,
            ``argparse.Namespace``...) a PyTorch pickle may hold beside its weights.

    Example:
        >>> with open_checkpoint("train.ckpt", key="state_dict", strip_prefix="model.") as src:  # doctest: +SKIP
        ...     names = list(src.specs)
    """
    if is_url(path):  # s3://, http(s)://, hf://: ranged reads through fsspec (quantkit[remote])
        from .remote_safetensors import open_remote

        if key or allow_globals:
            raise UsageError(f"{path}: key and allow_globals apply to PyTorch pickles only, and remote sources are safetensors")
        source = open_remote(path)
        return renamed(source, strip_prefix) if strip_prefix else source
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    options = {k: v for k, v in (("key", key), ("allow_globals", tuple(allow_globals))) if v}
    try:
        source = _open_path(path, options)
    except OSError as exc:  # unreadable file or folder: a bad input, not a quantkit bug
        raise InputError(f"{exc.filename or path}: cannot read: {exc.strerror or exc}") from None
    if not source.specs:
        source.close()
        held = f" (it holds: {', '.join(source.info.extras)})" if source.info.extras else ""
        raise InputError(f"{path}: the checkpoint holds no tensors{held}")
    if strip_prefix:
        return renamed(source, strip_prefix)
    _suggest_prefix(source)
    return source


def _open_path(path: Path, options: dict) -> CheckpointSource:
    if path.is_dir():
        return _open_folder(path, options)
    if path.name.endswith(".index.json"):
        with open(path, "rb") as f:
            if f.read(1) != b"{":
                raise InputError(f"{path}: not a JSON index")
        shard_names = _first_shard_suffix(path)
        if shard_names == ".safetensors":
            _no_torch_options(path, options)
            return open_safetensors_index(path)
        return _open_torch_index(path, options)
    return _open_file(path, options)


def _open_torch_index(index_path: Path, options: dict, config_dir: Path | None = None) -> CheckpointSource:
    """A ``.bin`` index: read without torch where every shard allows it (``lazy_pth``), else with torch."""
    lazy = open_lazy_index(index_path, config_dir=config_dir, **options)
    if lazy is not None:
        return lazy
    from .torch_source import open_torch_index  # imports torch: only for what the lazy reader leaves

    return open_torch_index(index_path, config_dir=config_dir, **options)


def _no_torch_options(path: Path, options: dict) -> None:
    if options:
        raise UsageError(f"{path}: {' and '.join(options)} apply to PyTorch pickles only, and this is safetensors")


def _open_file(path: Path, options: dict, config_dir: Path | None = None) -> CheckpointSource:
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file, not a checkpoint")
    if detect_torch_format(path) is not None:
        lazy = open_lazy_pth(path, config_dir=config_dir, **options)
        if lazy is not None:
            return lazy
        from .torch_source import open_torch_file  # imports torch: what the lazy reader leaves

        return open_torch_file(path, config_dir=config_dir, **options)
    with open(path, "rb") as f:
        head = f.read(9)
    if (len(head) == 9 and head[8:9] == b"{") or path.suffix == ".safetensors":
        # read_header says precisely what is wrong with a damaged .safetensors file
        _no_torch_options(path, options)
        return open_safetensors_file(path, config_dir=config_dir)
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise InputError(
            f"{path}: a plain Python pickle, not a PyTorch checkpoint: not unpickled "
            "(unpickling can run code); save the tensors with torch.save or safetensors instead"
        )
    raise InputError(f"{path}: not a checkpoint quantkit can read (neither safetensors nor a PyTorch zip or legacy pickle)")


def _first_shard_suffix(index_path: Path) -> str:
    weight_map, _ = parse_index(index_path)
    first = next(iter(weight_map.values()), "")
    return ".safetensors" if str(first).endswith(".safetensors") else ".bin"


def _open_folder(folder: Path, options: dict) -> CheckpointSource:
    config = check_config(folder / "config.json") if (folder / "config.json").is_file() else None
    source = _open_folder_weights(folder, options, folder if config is not None else None)
    if config is not None:
        too_large = too_large_to_build(config)
        if too_large:
            source.info.notes.append(
                f"config.json describes a model of {too_large}: quantkit does not build it to look at its layers; "
                "4/8-bit schemes choose the layers to quantize by name rules"
            )
    return source


def _open_folder_weights(folder: Path, options: dict, config_dir: Path | None) -> CheckpointSource:
    found = safetensors_in(folder)
    if found is not None:
        _no_torch_options(folder, options)
        if found.name == ST_INDEX:
            return open_safetensors_index(found, config_dir=config_dir)
        return open_safetensors_file(found, config_dir=config_dir)
    singles = sorted(folder.glob("*.safetensors"))
    if (folder / BIN_INDEX).is_file():
        return _open_torch_index(folder / BIN_INDEX, options, config_dir)
    for name in TORCH_FILES:
        if (folder / name).is_file():
            return _open_file(folder / name, options, config_dir)
    torch_files = sorted([*folder.glob("*.pth"), *folder.glob("*.pt"), *folder.glob("*.bin")])
    if len(torch_files) == 1:
        return _open_file(torch_files[0], options, config_dir)
    found = ", ".join(p.name for p in [*singles, *torch_files]) or "no weight files"
    raise InputError(f"{folder}: no checkpoint found to read ({found}); pass the file or index to use")
