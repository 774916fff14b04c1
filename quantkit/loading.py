"""Load what quantkit reads (or wrote) into a state dict or a module."""

from __future__ import annotations

from pathlib import Path

import torch

from .sources import open_checkpoint


def load_state_dict(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    dequantize: bool = True,
) -> dict[str, torch.Tensor]:
    """Read any supported checkpoint into a state dict with its original names.

    Tied names dropped on writing come back, sharing the kept tensor. Checkpoints quantkit
    quantized (INT8, NF4, FP4, in the layout transformers uses) come back dequantized to the
    original names and shapes unless ``dequantize=False``, which returns the stored tensors.

    Args:
        path: checkpoint file, index or folder.
        device: where the tensors go.
        dtype: cast floating-point tensors to this dtype (integer and bool tensors are kept).
        dequantize: turn quantized weights back into floating point.

    Example:
        >>> sd = load_state_dict("model-nf4", dtype=torch.bfloat16)  # doctest: +SKIP
    """
    with open_checkpoint(path) as source:
        if dequantize:
            from .schemes import iter_dequantized

            state = {name: tensor for name, tensor, _ in iter_dequantized(source)}
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


def load_into(model: torch.nn.Module, path: str | Path, *, strict: bool = True, **kwargs) -> torch.nn.Module:
    """Load a checkpoint into ``model`` with ``assign=True`` (build it on the meta device first).

    The module takes the loaded tensors as they are, so weights are held once. ``assign``
    unties tied parameters; they are re-tied afterwards (``model.tie_weights()`` where the
    module has it, else every pair of names that shared a tensor in the checkpoint).

    Example:
        >>> with torch.device("meta"):
        ...     model = MyNet()
        >>> load_into(model, "model-int8")  # doctest: +SKIP
    """
    state = load_state_dict(path, **kwargs)
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
