"""Checks on an output path made before anything is read: what a run would destroy or cannot create."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import OutputError, UsageError
from ..sources.remote import RemoteLocation, check_local_output
from .remote_output import RemoteStage, check_remote_output, s3_output_url, staged_remote_output
from .staging import staged_output

REPORT_SUFFIXES = (".json", ".md", ".markdown", ".html", ".htm")


def output_target(output: str | Path | None, default: Callable[[], Path]) -> Path | RemoteLocation:
    """Where a run writes: an S3 prefix (``s3://bucket/prefix``, also as a ``Path`` that folded
    it), or a local folder (``default()`` when ``output`` is None). Other URLs: UsageError."""
    check_local_output(output)
    url = s3_output_url(output)
    if url is not None:
        return RemoteLocation(url)
    return Path(output) if output is not None else default()


@contextmanager
def output_stage(target: Path | RemoteLocation, *, force: bool, notes: list[str] | None = None) -> Iterator[RemoteStage]:
    """The folder a run writes into, and what to call with each finished shard: a staged local
    folder renamed into place (nothing to call), or a local temporary folder whose shards are
    uploaded to an S3 prefix as they finish (``remote_output``)."""
    if isinstance(target, RemoteLocation):
        with staged_remote_output(target, force=force, notes=notes) as stage:
            yield stage
        return
    with staged_output(target, force=force, notes=notes) as staging:
        yield RemoteStage(staging, None)


def check_output(src: str | Path, target: str | Path | RemoteLocation, *, force: bool, resume: bool = False) -> Path | RemoteLocation:
    """Refuse an output that would destroy the input or cannot be created; return ``target``.

    Compared as real paths (symlinks resolved): an output equal to the input, inside an
    input folder, or a folder holding the input is a UsageError (with or without ``force``:
    replacing it would delete the input); so is the current folder or one holding it. An
    existing output without ``force``, or a parent folder that does not exist, is an
    OutputError. Nothing is created; the staging step checks again under its lock. An S3
    output (``s3://bucket/prefix``) is checked by ``remote_output.check_remote_output``
    (``resume``: one holding an unfinished ``--executor ray`` run is accepted).
    """
    url = s3_output_url(target) if not isinstance(target, RemoteLocation) else target.url
    if url is not None:  # also one a Path folded into s3:/b
        return check_remote_output(src, url, force=force, resume=resume)
    check_local_output(target)  # another URL is not written at all (nor locally, as ./gs:/b)
    target = Path(target)
    local = isinstance(src, (str, Path)) and "://" not in str(src)  # a remote source has nothing local to destroy
    if target.name in ("", ".", ".."):
        raise UsageError(f"{target}: the output must be a new folder's name, not {str(target)!r}; e.g. -o {default_name(src)}-out")
    real_src, real_target = (_real(Path(src)) if local else None), _real(target)
    if local and _within(real_src, real_target):
        what = "is the input" if real_src == real_target else "holds the input"
        raise UsageError(f"{target}: the output {what} ({src}); replacing it would delete the input: choose another output folder")
    if local and Path(src).is_dir() and _within(real_target, real_src):
        raise UsageError(f"{target}: the output lies inside the input folder {src}: choose an output folder outside it")
    if local and _is_sibling_shard(Path(src), real_target):
        raise UsageError(f"{target}: the output is a weight file beside the input index {src}: choose another output folder")
    if _within(Path.cwd().resolve(), real_target):
        raise UsageError(f"{target}: the output is the current folder or holds it: choose a new folder's name")
    if os.path.lexists(target) and not force:
        raise OutputError(f"{target}: already exists; choose another output or pass --force to replace it")
    parent = target.parent
    if not parent.is_dir():
        what = "is not a folder" if parent.exists() else "does not exist"
        raise OutputError(f"{parent}: cannot create {target.name} there: {parent} {what}")
    return target


def check_report_path(path: str | Path, *, src: str | Path | None = None) -> Path:
    """Refuse a report path whose format cannot be told, or which cannot be written, before any work."""
    path = Path(path)
    if path.suffix.lower() not in REPORT_SUFFIXES:
        raise UsageError(f"{path}: cannot tell the report format from the suffix; use .json, .md or .html")
    if src is not None and _within(_real(Path(src)), _real(path)):
        raise UsageError(f"{path}: the report would replace the input ({src}): choose another report path")
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; name a report file")
    if not path.parent.is_dir():
        raise OutputError(f"{path.parent}: cannot write the report {path.name} there: {path.parent} does not exist")
    return path


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _within(inner: Path, outer: Path) -> bool:
    """Whether real path ``inner`` is ``outer`` or lies inside it."""
    return inner == outer or outer in inner.parents


def _is_sibling_shard(src: Path, real_target: Path) -> bool:
    """An index's shards lie beside it: an output replacing one of them destroys the input."""
    if not src.name.endswith(".index.json") or not real_target.is_file():
        return False
    return real_target.parent == _real(src).parent and real_target.name.endswith((".safetensors", ".bin"))


def default_name(src: object) -> str:
    """The last part of a local path or of a remote source's URL, for messages."""
    return str(src).rstrip("/").rsplit("/", 1)[-1] or "model"
