"""Tensor names with a wrapper's prefix removed (``module.`` from DDP, ``_orig_mod.`` from
``torch.compile``, ``model.`` from Lightning)."""

from __future__ import annotations

from ..errors import InputError
from ..specs import TensorSpec
from .base import CheckpointSource

KNOWN_PREFIXES = ("module.", "_orig_mod.", "model.")


class RenamedSource(CheckpointSource):
    """Another source under new names; reads go to the source it wraps."""

    def __init__(self, inner: CheckpointSource, new_name: dict[str, str]):
        self._inner = inner
        self._old_name = {new: old for old, new in new_name.items()}
        specs = {new_name[n]: TensorSpec(new_name[n], s.dtype, s.shape) for n, s in inner.specs.items()}
        aliases = {new_name[a]: new_name[k] for a, k in inner.aliases.items()}
        self.concurrent_reads = inner.concurrent_reads
        super().__init__(inner.path, inner.info, specs, aliases)

    def get_tensor(self, name: str):
        return self._inner.get_tensor(self._old_name[name])

    def read_into(self, name: str, start: int, view: memoryview) -> None:
        self._inner.read_into(self._old_name[name], start, view)

    def mapped(self, name: str, start: int, nbytes: int):
        return self._inner.mapped(self._old_name[name], start, nbytes)

    def close(self) -> None:
        self._inner.close()


def renamed(source: CheckpointSource, prefix: str) -> CheckpointSource:
    """``source`` with ``prefix`` removed from every name that starts with it."""
    names = [*source.specs, *source.aliases]
    new_name: dict[str, str] = {}
    taken: dict[str, str] = {}
    for name in names:
        new = name.removeprefix(prefix)
        if not new or new == "__metadata__" or new in taken:
            source.close()
            other = f" and {taken[new]!r}" if new in taken else ""
            raise InputError(f"{source.path}: strip_prefix={prefix!r} turns {name!r}{other} into {new!r}: keep the prefix")
        new_name[name], taken[new] = new, name
    if all(new == old for old, new in new_name.items()):
        source.info.notes.append(f"no tensor name starts with {prefix!r}: nothing was stripped")
    return RenamedSource(source, new_name)


def suggest_prefix(source: CheckpointSource) -> None:
    """Add a note when every tensor name starts with a known wrapper prefix."""
    names = [*source.specs, *source.aliases]
    for prefix in KNOWN_PREFIXES:
        if names and all(n.startswith(prefix) for n in names):
            source.info.notes.append(
                f"every tensor name starts with {prefix!r}; strip it with strip_prefix={prefix!r} (CLI: --strip-prefix {prefix})"
            )
            return
