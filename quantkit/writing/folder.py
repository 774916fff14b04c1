"""The files of an output folder beside its shards: index, manifest, copied config and tokenizer files."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import OutputError
from ..layout import MANIFEST, ST_INDEX, WEIGHT_SUFFIXES
from ..version import __version__
from .shard import WrittenShard, os_reason, sha256_of


@dataclass
class WriteResult:
    folder: Path
    shards: list[WrittenShard]
    weight_map: dict[str, str]
    total_bytes: int
    manifest: dict = field(default_factory=dict)
    fp16_overflow: dict[str, int] = field(default_factory=dict)  # chunked casts: finite values that became inf

    @property
    def file_bytes(self) -> int:
        return sum(s.file_bytes for s in self.shards)

    def moved_to(self, folder: Path) -> "WriteResult":
        """The same result once the staged folder was renamed to ``folder``."""
        shards = [replace(s, path=folder / s.path.name) for s in self.shards]
        return replace(self, folder=folder, shards=shards)


def write_index(folder: Path, shards: list[WrittenShard], weight_map: dict[str, str], manifest: dict) -> WriteResult:
    """Write the index (for more than one shard) and the manifest; the result of the write."""
    total = sum(s.tensor_bytes for s in shards)
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": total, "quantkit_version": __version__, "sha256": {s.path.name: s.sha256 for s in shards}},
            "weight_map": dict(sorted(weight_map.items())),
        }
        _write_json(folder / ST_INDEX, index)
    manifest = {
        **manifest,
        "quantkit_version": __version__,
        "total_size": total,
        "files": {s.path.name: {"bytes": s.file_bytes, "sha256": s.sha256} for s in shards},
    }
    _write_json(folder / MANIFEST, manifest)
    return WriteResult(folder, shards, weight_map, total, manifest)


def _write_json(path: Path, value: object) -> None:
    try:
        path.write_text(json.dumps(value, indent=2) + "\n")
    except OSError as exc:
        raise OutputError(f"{path}: write failed: {os_reason(exc)}") from None


MAX_COPIED_FILE_BYTES = 100 * 10**6  # per file: tokenizer files run to ~30 MB
MAX_COPIED_TOTAL_BYTES = 500 * 10**6  # all of a folder's non-weight files together
MAX_COPIED_FILES = 10_000
MAX_COPIED_DEPTH = 8  # subfolders below the model folder


@dataclass
class _CopyBudget:
    bytes_left: int = field(default_factory=lambda: MAX_COPIED_TOTAL_BYTES)
    files_left: int = field(default_factory=lambda: MAX_COPIED_FILES)


def copy_model_files(
    config_dir: Path | None, folder: Path, *, target: Path | None = None, skipped: dict[str, str] | None = None
) -> list[str]:
    """Copy a Hugging Face folder's non-weight files (config, tokenizer, ...) into ``folder``;
    the names copied at its top level.

    Only regular files and real subfolders inside ``config_dir`` are copied: symbolic links
    are never followed (a link to ``/dev/zero``, to a secret outside the folder, or a loop),
    FIFOs, devices and sockets are never opened for reading, and each file is opened with
    ``O_NOFOLLOW`` and checked with ``fstat`` (so nothing swapped in after the listing is
    copied). A file over ``MAX_COPIED_FILE_BYTES`` (100 MB), or past ``MAX_COPIED_TOTAL_BYTES``
    (500 MB in all), is not copied. Each file not copied for these reasons goes into
    ``skipped`` (relative path -> why). Weight files and hidden entries are left out silently.

    ``target``: where ``folder`` will end up; when that is inside ``config_dir`` (an output
    written into the model's own folder), an older output there is not copied into the new one.
    """
    if config_dir is None:
        return []
    skipped = skipped if skipped is not None else {}
    skip_real = os.path.realpath(target) if isinstance(target, (str, Path)) else None  # not for an S3 output
    try:
        dir_fd = os.open(config_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise OutputError(f"{config_dir}: cannot read the model folder: {os_reason(exc)}") from None
    try:
        return _copy_dir(dir_fd, config_dir, folder, "", skipped, _CopyBudget(), skip_real=skip_real, depth=0)
    finally:
        os.close(dir_fd)


def _copy_dir(dir_fd: int, src: Path, dst: Path, rel: str, skipped: dict[str, str], budget: _CopyBudget, *, skip_real, depth: int) -> list[str]:
    copied = []
    with os.scandir(dir_fd) as listing:
        entries = sorted(listing, key=lambda e: e.name)
    for entry in entries:
        name = entry.name
        if name.startswith(".") or name == MANIFEST or name.endswith(WEIGHT_SUFFIXES):
            continue
        if skip_real is not None and depth == 0 and os.path.realpath(src / name) == skip_real:
            continue
        why = _copy_entry(dir_fd, entry, src, dst, rel + name, skipped, budget, skip_real=skip_real, depth=depth)
        if why:
            skipped[rel + name] = why
        else:
            copied.append(name)
    return copied


def _copy_entry(dir_fd: int, entry: os.DirEntry, src: Path, dst: Path, rel: str, skipped, budget: _CopyBudget, *, skip_real, depth: int) -> str:
    """Copy one entry; '' when copied, else why not."""
    kind = entry.stat(follow_symlinks=False).st_mode
    if stat.S_ISLNK(kind):
        return "a symbolic link (quantkit does not follow links)"
    if stat.S_ISDIR(kind):
        if depth >= MAX_COPIED_DEPTH:
            return f"a folder nested more than {MAX_COPIED_DEPTH} levels deep"
        try:
            sub_fd = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError as exc:
            return f"cannot open: {os_reason(exc)}"
        try:
            (dst / entry.name).mkdir()
            _copy_dir(sub_fd, src / entry.name, dst / entry.name, rel + "/", skipped, budget, skip_real=skip_real, depth=depth + 1)
        except OSError as exc:
            raise OutputError(f"{dst / entry.name}: copy failed: {os_reason(exc)}") from None
        finally:
            os.close(sub_fd)
        return ""
    if not stat.S_ISREG(kind):
        return "not a regular file (a FIFO, device or socket)"
    return _copy_file(dir_fd, entry.name, dst / entry.name, budget)


def _copy_file(dir_fd: int, name: str, dst: Path, budget: _CopyBudget) -> str:
    try:  # O_NONBLOCK: a FIFO swapped in after the listing does not block the open
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as exc:
        return f"cannot open: {os_reason(exc)}"
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return "not a regular file (a FIFO, device or socket)"
        if info.st_size > MAX_COPIED_FILE_BYTES:
            return f"{info.st_size} bytes, more than the {MAX_COPIED_FILE_BYTES // 10**6} MB quantkit copies per file"
        if info.st_size > budget.bytes_left or budget.files_left <= 0:
            return f"past the {MAX_COPIED_TOTAL_BYTES // 10**6} MB or {MAX_COPIED_FILES} files quantkit copies from a model folder"
        budget.bytes_left -= info.st_size
        budget.files_left -= 1
        _copy_bytes(fd, dst, info.st_size, info.st_mode)
        return ""
    finally:
        os.close(fd)


def _copy_bytes(fd: int, dst: Path, size: int, mode: int) -> None:
    """Copy ``size`` bytes (no more: a file growing meanwhile is cut at the size checked)."""
    try:
        with open(dst, "xb") as out:
            left = size
            while left:
                block = os.read(fd, min(left, 8 << 20))
                if not block:
                    break
                out.write(block)
                left -= len(block)
        os.chmod(dst, stat.S_IMODE(mode) | stat.S_IRUSR | stat.S_IWUSR)
    except OSError as exc:
        raise OutputError(f"{dst}: copy failed: {os_reason(exc)}") from None


def record_all_files(result: WriteResult, *, skipped: dict[str, str] | None = None) -> WriteResult:
    """Add every other file in the output folder (index, config, tokenizer, ...) to the
    manifest with its size and SHA-256, and the files not copied, and rewrite it: ``verify``
    then covers every file quantkit wrote or copied."""
    files = dict(result.manifest.get("files", {}))
    for path in sorted(p for p in result.folder.rglob("*") if p.is_file() and not p.is_symlink()):
        rel = path.relative_to(result.folder).as_posix()
        if rel not in (MANIFEST, ST_INDEX) and rel not in files:  # verify checks the index entry by entry against the shards
            files[rel] = {"bytes": path.stat().st_size, "sha256": sha256_of(path)}
    manifest = {**result.manifest, "files": files}
    if skipped:
        manifest["skipped_files"] = dict(skipped)
    _write_json(result.folder / MANIFEST, manifest)
    return replace(result, manifest=manifest)


def skipped_notes(skipped: dict[str, str]) -> list[str]:
    """One line per file of the model folder left out of the output (also in quantkit.json)."""
    return [f"not copied from the model folder: {name} ({why})" for name, why in skipped.items()]
