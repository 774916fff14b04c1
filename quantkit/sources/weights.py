"""Finding the weights in what a PyTorch pickle held, and describing everything else."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import InputError
from .base import SourceInfo
from ..sizes import format_bytes
from .tree import as_json, flatten_tensors, is_tensor, looks_like_optimizer, short_repr

if TYPE_CHECKING:
    import torch

# Keys under which training scripts commonly nest the model's weights.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network", "weights", "params", "ema")

MAX_DESCRIBED = 100_000  # optimizer states and param groups looked at when describing one


@dataclass
class Found:
    """Where the weights of an unpickled checkpoint are, and what else it holds."""

    where: str
    tensors: dict[str, torch.Tensor]
    rest: dict[object, object]
    notes: list[str] = field(default_factory=list)


def find_weights(obj: object, *, key: str | None = None) -> tuple[str, dict[str, torch.Tensor], dict[str, object]]:
    """Locate the state dict inside what ``torch.load`` returned.

    Returns (where it was found, tensors by name, the other top-level entries).
    A bare state dict is found at ``""``; ``{"model_state_dict": ..., "epoch": 3}`` at
    ``"model_state_dict"`` with ``{"epoch": 3}`` as the rest.
    """
    found = locate_weights(obj, key=key)
    return found.where, found.tensors, found.rest


def locate_weights(obj: object, *, key: str | None = None) -> Found:
    """find_weights, with notes saying which of several candidate dicts was taken.

    ``key`` names the top-level entry holding the weights (a training checkpoint may hold
    several: ``state_dict``, ``ema``...); without it the rules of find_weights choose.
    """
    if is_tensor(obj):
        if key is not None:
            raise InputError(f"key={key!r}: the checkpoint is a single tensor, not a dict")
        return Found("", {"tensor": obj}, {})
    if not isinstance(obj, Mapping):
        raise InputError(f"the checkpoint holds a {type(obj).__name__}, not a dict of tensors")
    if key is not None:
        return _at_key(obj, key)
    if _looks_like_optimizer(obj):
        return Found("", {}, {"optimizer": obj})
    counts = {k: _flatten_tensors(v) for k, v in obj.items() if isinstance(v, Mapping) and not _looks_like_optimizer(v)}
    candidates = [(k, v) for k, v in counts.items() if v]
    direct = [k for k, v in obj.items() if is_tensor(v)]
    if direct and len(direct) >= max((len(v) for _, v in candidates), default=0):
        rest = {k: v for k, v in obj.items() if not (is_tensor(v) or isinstance(v, Mapping)) or _looks_like_optimizer(v)}
        return Found("", _flatten_tensors(obj), rest)
    pool = [kv for kv in candidates if kv[0] in WRAPPER_KEYS] or candidates
    if not pool:
        return Found("", {}, dict(obj))
    chosen, tensors = max(pool, key=lambda kv: sum(t.nbytes for t in kv[1].values()))
    found = Found(str(chosen), tensors, {k: v for k, v in obj.items() if k != chosen})
    others = [f"{k!r} ({len(v)} tensors)" for k, v in candidates if k != chosen]
    if others:
        found.notes.append(
            f"weights taken from {chosen!r} ({len(tensors)} tensors); other entries holding tensors: {', '.join(others)}; "
            "choose one with key=NAME (CLI: --key NAME)"
        )
    return found


def _at_key(obj: Mapping, key: str) -> Found:
    matches = [k for k in obj if str(k) == key]
    holders = [repr(k) for k, v in obj.items() if (isinstance(v, Mapping) or is_tensor(v))]
    if not matches:
        raise InputError(f"key={key!r} is not in the checkpoint; entries holding tensors: {', '.join(holders) or 'none'}")
    value = obj[matches[0]]
    if is_tensor(value):
        tensors = {key: value}
    elif isinstance(value, Mapping):
        tensors = _flatten_tensors(value)
    else:
        raise InputError(f"key={key!r} holds a {type(value).__name__}, not a dict of tensors")
    return Found(key, tensors, {k: v for k, v in obj.items() if k != matches[0]})


def _flatten_tensors(mapping: Mapping, prefix: str = "") -> dict[str, torch.Tensor]:
    return flatten_tensors(mapping, prefix)


_looks_like_optimizer = looks_like_optimizer


def describe(value: object) -> str:
    """A one-line description of a non-weight entry (optimizer state, epoch, config...)."""
    if _looks_like_optimizer(value):
        states = value["state"] if isinstance(value["state"], Mapping) else {}
        tensors = [t for s in list(states.values())[:MAX_DESCRIBED] if isinstance(s, Mapping) for t in list(s.values())[:64] if is_tensor(t)]
        groups = value["param_groups"] if isinstance(value["param_groups"], list) else []
        lrs = sorted({g.get("lr") for g in groups[:MAX_DESCRIBED] if isinstance(g, Mapping) and type(g.get("lr")) in (int, float)})
        lr = f", lr={lrs[0]}" if len(lrs) == 1 else ""
        return (
            f"optimizer state for {len(states)} parameters ({len(tensors)} tensors, "
            f"{format_bytes(sum(t.nbytes for t in tensors))}), {len(groups)} param group(s){lr}"
        )
    if is_tensor(value):
        return f"tensor {str(value.dtype).removeprefix('torch.')} {list(value.shape)}"
    if isinstance(value, Mapping):
        keys = ", ".join(short_repr(k).strip("'") for k in list(value)[:8]) + (", ..." if len(value) > 8 else "")
        return f"dict with {len(value)} keys ({keys})"
    if isinstance(value, (list, tuple)):
        return f"{type(value).__name__} of {len(value)} items"
    text = short_repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def note_found(info: SourceInfo, found: Found) -> None:
    """Record on ``info`` where the weights were found, the notes, and the other entries
    (described; kept as they are where plain JSON)."""
    if found.where:
        info.extras.setdefault("weights found under", repr(found.where))
    for note in found.notes:
        if note not in info.notes:
            info.notes.append(note)
    for key, value in found.rest.items():
        info.extras[str(key)] = describe(value)
        ok, as_value = (False, None) if looks_like_optimizer(value) else as_json(value)
        if ok:
            info.extras_json[str(key)] = as_value
