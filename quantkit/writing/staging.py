"""Staging: an output folder is written beside its target and renamed into place when complete.

The target is taken atomically: a lock file ``.X.quantkit-lock`` beside it, held with
``flock`` for the whole run (the kernel releases it when the process dies, however it dies).
A second quantkit writing the same target is refused at once. Under the lock, folders left
beside the target by a run that died (``.X.quantkit-tmp-*``, ``.X.quantkit-old-*``) are
cleaned, and a previous output moved aside by an interrupted replacement is put back.

Into place: without ``force``, ``renameat2(RENAME_NOREPLACE)``, so a folder that appeared at
the target during the run (even an empty one, which a plain rename would replace) is never
replaced. With ``force``, ``renameat2(RENAME_EXCHANGE)`` swaps the new folder and the old
output in one step, so the target always holds one complete output, whatever kills the
process; the old one is then removed. Where renameat2 is missing (not Linux, old glibc, a
file system without it), the lock guards a check-then-rename and a two-rename replacement.

A resumable run (the Ray executor) stages into ``.X.quantkit-partial`` instead, and keeps it
when it fails or is interrupted, so that a rerun with ``resume`` finds the shards already
written there. Any run of the same target without ``resume`` (resumable or not) removes it
with the other leftovers.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import os
import shutil
import signal
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import OutputError
from .shard import os_reason

_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


class InterruptedAfterOutput(KeyboardInterrupt):
    """An interrupt that arrived while a complete output was being put into place: the
    output is in place, and the message says so."""


@contextmanager
def staged_output(
    target: Path, *, force: bool, notes: list[str] | None = None, resumable: bool = False, resume: bool = False
) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it replaces ``target`` atomically.

    An existing ``target`` is refused unless ``force``; with ``force`` it is replaced only after
    the new folder is complete. On any error or interrupt the temporary folder is removed,
    except for a ``resumable`` run: its folder (``partial_folder(target)``) is kept, and a
    later run with ``resume`` is given it back as it was left (or a new one if there is none).
    ``notes``: gets one line when leftovers of an interrupted run were cleaned.
    """
    target = Path(target)
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        what = "is not a folder" if parent.exists() else "does not exist"
        raise OutputError(f"{parent}: cannot create {target.name} there: {parent} {what}")
    with _target_lock(parent, target):
        cleaned = _clean_leftovers(parent, target, keep_partial=resume)
        if cleaned and notes is not None:
            notes.append(cleaned)
        if os.path.lexists(target) and not force:
            raise OutputError(f"{target}: already exists; choose another output or pass --force to replace it")
        staging = partial_folder(target) if resumable else parent / f".{target.name}.quantkit-tmp-{uuid.uuid4().hex[:8]}"
        try:
            staging.mkdir(exist_ok=resumable and resume)
        except OSError as exc:
            raise OutputError(f"{parent}: cannot write here: {os_reason(exc)}") from None
        try:
            yield staging
            with _signals_deferred(target):
                _swap_into_place(staging, target, force=force)
        except BaseException:
            if not resumable:
                shutil.rmtree(staging, ignore_errors=True)
            raise


def partial_folder(target: Path) -> Path:
    """Where a resumable run of ``target`` stages its output (kept when the run fails)."""
    target = Path(target)
    return target.parent / f".{target.name}.quantkit-partial"


@contextmanager
def _target_lock(parent: Path, target: Path) -> Iterator[None]:
    lock_path = parent / f".{target.name}.quantkit-lock"
    fd = _acquire(lock_path, target)
    try:
        yield
    finally:
        try:
            os.unlink(lock_path)  # unlinked while still held: a waiter re-checks the inode
        except OSError:
            pass
        os.close(fd)


def _acquire(lock_path: Path, target: Path) -> int:
    for _ in range(20):
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise OutputError(f"{lock_path}: cannot create the lock for {target.name}: {os_reason(exc)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise OutputError(
                f"{target}: another quantkit{holder} is writing this output now; wait for it to finish or choose another output"
            ) from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock_path, follow_symlinks=False))
        except FileNotFoundError:
            same = False
        if same:  # not a lock file its previous holder removed meanwhile
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)
    raise OutputError(f"{lock_path}: could not take the lock for {target.name}; try again")


def _read_pid(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


def _leftovers(parent: Path, target: Path, *, keep_partial: bool) -> tuple[list[Path], list[Path]]:
    prefix = f".{target.name}.quantkit-"
    found = [p for p in parent.iterdir() if p.name.startswith(prefix)]
    temporary = [p for p in found if p.name.startswith(prefix + "tmp-") or (p.name == prefix + "partial" and not keep_partial)]
    return sorted(temporary), sorted(p for p in found if p.name.startswith(prefix + "old-"))


def _clean_leftovers(parent: Path, target: Path, *, keep_partial: bool = False) -> str:
    """Under the lock, every staging or old folder of ``target`` belongs to a run that died:
    put back an old output the target lost, remove the rest (a resumable run's partial folder
    too, unless ``keep_partial``); one line saying what was done."""
    temporary, old = _leftovers(parent, target, keep_partial=keep_partial)
    if not temporary and not old:
        return ""
    done = []
    if old and not os.path.lexists(target):  # died between the two renames of a replacement
        os.rename(old[-1], target)
        old = old[:-1]
        done.append(f"put the previous output back at {target}")
    for path in temporary + old:
        _remove(path)
    if temporary or old:
        done.append(f"removed {len(temporary) + len(old)} leftover folder(s) beside it ({', '.join(p.name for p in temporary + old)})")
    return f"an interrupted quantkit run had left {target} unfinished: " + "; ".join(done)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _swap_into_place(staging: Path, target: Path, *, force: bool) -> None:
    if not os.path.lexists(target) and _rename_noreplace(staging, target):
        return
    if not force:
        raise OutputError(f"{target}: appeared while quantkit was writing; not replaced: choose another output or pass --force to replace it")
    if _exchange(staging, target):  # staging now holds the old output
        _remove(staging)
        return
    old = target.parent / f".{target.name}.quantkit-old-{uuid.uuid4().hex[:8]}"
    os.replace(target, old)
    try:
        os.replace(staging, target)
    except BaseException:  # failed between the two renames: put the old output back
        if not target.exists():
            os.replace(old, target)
        raise
    _remove(old)


def _rename_noreplace(staging: Path, target: Path) -> bool:
    """Rename unless something is at ``target``; False when something is (checked atomically
    where the OS can)."""
    result = _renameat2(staging, target, _RENAME_NOREPLACE)
    if result is None:  # no renameat2: the lock keeps other quantkit runs out of this window
        if os.path.lexists(target):
            return False
        os.rename(staging, target)
        return True
    if result in (errno.EEXIST, errno.ENOTEMPTY):
        return False
    if result:
        raise OutputError(f"{target}: cannot rename the new output into place: {os.strerror(result)}")
    return True


def _exchange(staging: Path, target: Path) -> bool:
    result = _renameat2(staging, target, _RENAME_EXCHANGE)
    if result is None:
        return False
    if result:
        raise OutputError(f"{target}: cannot swap the new output into place: {os.strerror(result)}")
    return True


def _renameat2(src: Path, dst: Path, flags: int) -> int | None:
    """0, an errno, or None where renameat2 or the flag is not available."""
    call = _renameat2_function()
    if call is None:
        return None
    if call(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return 0
    code = ctypes.get_errno()
    return None if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP) else code


@functools.cache
def _renameat2_function():
    try:
        call = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    call.restype = ctypes.c_int
    return call


@contextmanager
def _signals_deferred(target: Path) -> Iterator[None]:
    """Hold SIGINT / SIGTERM while the complete output goes into place (so the target is never
    left between two states by them), then raise the interrupt, saying the output is in place."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: received.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if received:
        raise InterruptedAfterOutput(f"the output was already complete and is in place: {target}")
