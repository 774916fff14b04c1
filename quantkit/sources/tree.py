"""Walking what a pickle held: bounded, cycle-safe, and without silently merging names.

Everything quantkit does with an unpickled checkpoint's structure (finding tensors, describing
and keeping the other entries) goes through these walks. A pickle can describe a cycle, a
5,000-deep chain or a 1 KB DAG that expands to 2^40 paths; each walk counts the entries it
visits and refuses past a bound instead of recursing or hanging.
"""

from __future__ import annotations

import math
import reprlib
import sys
from collections.abc import Mapping

from ..errors import InputError
from .lazy_unpickle import TensorRef

MAX_DEPTH = 100  # a module tree this deep is not a model
MAX_ENTRIES = 1_000_000  # entries visited while flattening one checkpoint
MAX_JSON_ENTRIES = 10_000  # values kept as JSON per top-level entry
MAX_JSON_CHARS = 1_000_000  # characters of strings kept as JSON per top-level entry
_END = object()


class StructureError(InputError):
    """A pickle's dicts that are not a state dict (a cycle, nesting past MAX_DEPTH, a walk past
    MAX_ENTRIES, two entries giving one name): the same refusal whichever reader unpickled it."""


def is_tensor(value: object) -> bool:
    """A torch tensor, or a tensor of a pickle read without torch (``lazy_unpickle.TensorRef``).

    Does not import torch: where torch is not imported, no torch tensor exists."""
    if isinstance(value, TensorRef):
        return True
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def looks_like_optimizer(value: object) -> bool:
    return isinstance(value, Mapping) and "state" in value and "param_groups" in value


def _nested_module(value: object) -> bool:
    return isinstance(value, Mapping) and not looks_like_optimizer(value) and all(isinstance(k, str) for k in value)


def flatten_tensors(mapping: Mapping, prefix: str = "") -> dict[str, "torch.Tensor"]:  # noqa: F821
    """Tensors of a nested dict by dotted name (``{"a": {"b": t}}`` -> ``{"a.b": t}``).

    Raises InputError when two entries give one name (``{1: t, "1": u}``, or ``{"a": {"b": t},
    "a.b": u}``), a dict holds itself, nesting passes MAX_DEPTH, or the walk passes MAX_ENTRIES.
    """
    if _expanded_entries(mapping) > MAX_ENTRIES:  # a small DAG of shared dicts: refused before the walk, not after a million steps
        raise _too_many_entries()
    out: dict[str, "torch.Tensor"] = {}  # noqa: F821
    paths: dict[str, str] = {}
    stack = [(iter(mapping.items()), prefix, "", id(mapping))]
    on_path = {id(mapping)}
    visited = 0
    while stack:
        items, prefix_here, path_here, ident = stack[-1]
        entry = next(items, _END)
        if entry is _END:
            stack.pop()
            on_path.discard(ident)
            continue
        visited += 1
        if visited > MAX_ENTRIES:
            raise _too_many_entries()
        key, value = entry
        name, path = f"{prefix_here}{key}", f"{path_here}[{key!r}]"
        if is_tensor(value):
            if name in out:
                raise StructureError(
                    f"entries {shown(paths[name])} and {shown(path)} both give the tensor name {name!r}: "
                    "rename one of them and save the checkpoint again"
                )
            out[name], paths[name] = value, path
        elif _nested_module(value):
            if id(value) in on_path:
                raise StructureError(f"entry {shown(path)} contains itself (a reference cycle): not a state dict")
            if len(stack) >= MAX_DEPTH:
                raise StructureError(f"entry {shown(path)} is nested more than {MAX_DEPTH} levels deep: not a state dict")
            stack.append((iter(value.items()), name + ".", path, id(value)))
            on_path.add(id(value))
    return out


def _too_many_entries() -> StructureError:
    return StructureError(f"its dicts hold more than {MAX_ENTRIES:,} entries to walk (shared sub-dicts?): refused")


def _expanded_entries(mapping: Mapping) -> int:
    """How many entries ``flatten_tensors`` would visit (a dict reached by two paths counts
    twice), found by visiting each distinct dict once; past MAX_ENTRIES, some count above it.
    Cycles and nesting past MAX_DEPTH are not followed: the walk reports them."""
    sizes: dict[int, int] = {}
    stack = [[mapping, iter(mapping.values()), len(mapping)]]
    on_path = {id(mapping)}
    while stack:
        frame = stack[-1]
        child = next(frame[1], _END)
        if child is _END:
            stack.pop()
            on_path.discard(id(frame[0]))
            sizes[id(frame[0])] = frame[2]
            if frame[2] > MAX_ENTRIES:
                return frame[2]
            if stack:
                stack[-1][2] += frame[2]
            continue
        if is_tensor(child) or not _nested_module(child):
            continue
        if id(child) in sizes:
            frame[2] += sizes[id(child)]
        elif id(child) not in on_path and len(stack) < MAX_DEPTH:
            stack.append([child, iter(child.values()), len(child)])
            on_path.add(id(child))
    return sizes[id(mapping)]


def shown(path: str, limit: int = 80) -> str:
    """A key path short enough for a one-line message."""
    return path if len(path) <= limit else f"{path[: limit // 2]}...{path[-limit // 4 :]}"


def as_json(value: object) -> tuple[bool, object]:
    """``(True, value)`` when ``value`` is plain JSON (str keys, finite numbers, no tensors),
    within MAX_JSON_ENTRIES values and MAX_JSON_CHARS characters; else ``(False, None)``."""
    budget = [MAX_JSON_ENTRIES, MAX_JSON_CHARS]
    try:
        return True, _to_json(value, budget, 0, set())
    except _NotJson:
        return False, None


class _NotJson(Exception):
    pass


def _to_json(value: object, budget: list[int], depth: int, on_path: set[int]) -> object:
    budget[0] -= 1
    if budget[0] < 0 or depth > 20:
        raise _NotJson
    if value is None or isinstance(value, bool):
        return value
    if type(value) is int:
        if value.bit_length() > 64:
            raise _NotJson
        return value
    if type(value) is float:
        if not math.isfinite(value):
            raise _NotJson
        return value
    if type(value) is str:
        budget[1] -= len(value)
        if budget[1] < 0:
            raise _NotJson
        return value
    if isinstance(value, (list, tuple, dict)):
        if id(value) in on_path:
            raise _NotJson
        on_path.add(id(value))
        if isinstance(value, dict):
            if not all(type(k) is str for k in value):
                raise _NotJson
            result: object = {}
            for k, v in value.items():
                budget[1] -= len(k)
                result[k] = _to_json(v, budget, depth + 1, on_path)
        else:
            result = [_to_json(v, budget, depth + 1, on_path) for v in value]
        on_path.discard(id(value))
        return result
    raise _NotJson


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother = 2, 200, 200


def short_repr(value: object) -> str:
    """A bounded one-line repr: plain values only (other objects' own repr may not be bounded)."""
    if type(value) is int and value.bit_length() > 200:
        return f"an int of {value.bit_length()} bits"
    if value is None or type(value) in (bool, int, float, str, bytes):
        return _SHORT.repr(value)
    return f"a {type(value).__module__}.{type(value).__qualname__} object"
