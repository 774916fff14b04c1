"""Staging: an output folder is written beside its target and renamed into place when complete."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import OutputError
from .shard import os_reason


@contextmanager
def staged_output(target: Path, *, force: bool) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it replaces ``target`` atomically.

    An existing ``target`` is refused unless ``force``; with ``force`` it is replaced only after
    the new folder is complete. On any error or interrupt the temporary folder is removed.
    """
    target = Path(target)
    if target.exists() and not force:
        raise OutputError(f"{target}: already exists; choose another output or pass --force to replace it")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        what = "is not a folder" if parent.exists() else "does not exist"
        raise OutputError(f"{parent}: cannot create {target.name} there: {parent} {what}")
    staging = parent / f".{target.name}.quantkit-tmp-{uuid.uuid4().hex[:8]}"
    try:
        staging.mkdir()
    except OSError as exc:
        raise OutputError(f"{parent}: cannot write here: {os_reason(exc)}") from None
    try:
        yield staging
        _swap_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _swap_into_place(staging: Path, target: Path) -> None:
    if not target.exists():
        os.replace(staging, target)
        return
    old = target.parent / f".{target.name}.quantkit-old-{uuid.uuid4().hex[:8]}"
    os.replace(target, old)
    try:
        os.replace(staging, target)
    except BaseException:  # interrupted or failed between the two renames: put the old output back
        if not target.exists():
            os.replace(old, target)
        raise
    if old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink(missing_ok=True)
