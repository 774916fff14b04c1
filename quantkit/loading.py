"""Load what quantkit reads (or wrote) into a state dict or a module."""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import InputError
from .sources import open_checkpoint
from .sources.renamed import KNOWN_PREFIXES


def load_state_dict(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    dequantize: bool = True,
    key: str | None = None,
    strip_prefix: str | None = None,
    allow_globals: tuple[str, ...] = (),
) -> dict[str, torch.Tensor]:
    """Read any supported checkpoint into a state dict with its original names.

    Tied names dropped on writing come back, sharing the kept tensor. Checkpoints quantkit
    quantized (INT8, NF4, FP4, in the layout transformers uses) come back dequantized to the
    original names and shapes unless ``dequantize=False``, which returns the stored tensors.
    Dequantized weights take one floating dtype with the rest of the checkpoint: the dtype
    of most of its unquantized floating-point bytes (float32 when there are none), so an
    INT8 model of an FP16 source comes back all FP16.

    Args:
        path: checkpoint file, index or folder.
        device: where the tensors go.
        dtype: cast floating-point tensors to this dtype (integer and bool tensors are kept).
        dequantize: turn quantized weights back into floating point.
        key, strip_prefix, allow_globals: as for ``open_checkpoint``.

    Example:
        >>> sd = load_state_dict("model-nf4", dtype=torch.bfloat16)  # doctest: +SKIP
    """
    with open_checkpoint(path, key=key, strip_prefix=strip_prefix, allow_globals=allow_globals) as source:
        if dequantize:
            from .schemes import iter_dequantized

            items = list(iter_dequantized(source))
            state = {name: tensor for name, tensor, _ in items}
            quantized = [name for name, _, info in items if info.quantized]
            if dtype is None and quantized:
                common = dominant_float_dtype(t for n, t, info in items if not info.quantized)
                state.update({n: state[n].to(common) for n in quantized})
        else:
            state = {name: source.get_tensor(name) for name in source.specs}
        aliases = dict(source.aliases)
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        out[name] = tensor.to(device)
    for alias, kept in aliases.items():
        if kept in out:
            out[alias] = out[kept]
    return out


def dominant_float_dtype(tensors) -> torch.dtype:
    """The floating dtype holding most bytes among ``tensors``; float32 when none is floating."""
    totals: dict[torch.dtype, int] = {}
    for tensor in tensors:
        if tensor.is_floating_point():
            totals[tensor.dtype] = totals.get(tensor.dtype, 0) + tensor.numel() * tensor.element_size()
    return max(totals, key=totals.__getitem__) if totals else torch.float32


def load_into(model: torch.nn.Module, path: str | Path, *, strict: bool = True, **kwargs) -> torch.nn.Module:
    """Load a checkpoint into ``model`` with ``assign=True`` (build it on the meta device first).

    The module takes the loaded tensors as they are, so weights are held once. ``assign``
    unties tied parameters; they are re-tied afterwards (``model.tie_weights()`` where the
    module has it, else every pair of names that shared a tensor in the checkpoint). A
    parameter the checkpoint lacks but the model ties to one it holds (a Hugging Face output
    head saved once with the embeddings) takes that tensor. With ``strict``, names that still
    do not match raise an ``InputError`` naming the first of each side and, when a wrapper
    prefix explains them, the ``strip_prefix`` to use. ``kwargs`` go to ``load_state_dict``.

    Example:
        >>> with torch.device("meta"):
        ...     model = MyNet()
        >>> load_into(model, "model-int8")  # doctest: +SKIP
    """
    state = load_state_dict(path, **kwargs)
    _fill_tied(model, state)
    if strict:
        _check_names(model, state, path)
    shared: dict[int, list[str]] = {}
    for name, tensor in state.items():
        shared.setdefault(id(tensor), []).append(name)
    model.load_state_dict(state, strict=strict, assign=True)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    params = dict(model.named_parameters(remove_duplicate=False))
    for names in shared.values():
        kept = next((n for n in names if n in params), None)
        for name in names:
            if kept is not None and name != kept and name in params:
                module_name, _, attr = name.rpartition(".")
                setattr(model.get_submodule(module_name), attr, params[kept])
    return model


def _fill_tied(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Give each parameter missing from ``state`` the tensor of a name the model ties it to."""
    by_param: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        by_param.setdefault(id(param), []).append(name)
    for names in by_param.values():
        present = next((n for n in names if n in state), None)
        if present is not None:
            for name in names:
                state.setdefault(name, state[present])


def _check_names(model: torch.nn.Module, state: dict[str, torch.Tensor], path) -> None:
    expected = set(model.state_dict(keep_vars=True))
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if not missing and not unexpected:
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} of the model's names are not in the checkpoint (first: {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} of its names are not in the model (first: {unexpected[0]})")
    raise InputError(f"{path}: {'; '.join(parts)}{prefix_hint(list(state), expected)}")


def prefix_hint(names: list[str], wanted: set[str]) -> str:
    """``"; ... pass strip_prefix=..."`` when removing a wrapper prefix from ``names`` makes
    them match ``wanted`` better; "" otherwise."""
    matched = len(wanted.intersection(names))
    for prefix in KNOWN_PREFIXES:
        stripped = {n.removeprefix(prefix) for n in names}
        if len(wanted & stripped) > matched:
            return f"; the checkpoint's names start with {prefix!r}: strip it with strip_prefix={prefix!r} (CLI: --strip-prefix {prefix})"
    return ""
