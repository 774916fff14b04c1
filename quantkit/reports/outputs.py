"""Accuracy on the model's outputs: run the original and the converted model on the same inputs.

Both models are built from the ORIGINAL's description (config.json, or a user factory) with
parameters on the meta device, then take their weights from quantkit's own loader, which
dequantizes: no bitsandbytes layers are needed, and each model is held once, in float32.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..devices import resolve_device
from ..errors import QuantkitError, UsageError
from ..loading import load_into
from .metrics import ErrorMoments, error_moments

SAMPLE_TEXT = """\
The history of the printing press begins in the fifteenth century, when movable type changed how knowledge travelled.
Before it, books were copied by hand, slowly and at great cost, and only a few people could own them.
Within fifty years, presses were running in more than two hundred cities across Europe.
Prices fell, literacy rose, and ideas that once took decades to spread now crossed a continent in months.
Rivers shape the land they flow through, carving valleys and carrying soil to the sea.
A healthy river supports fish, birds and the farms along its banks, but pollution can undo that balance quickly.
The recipe calls for two cups of flour, a pinch of salt, one egg and enough milk to make a smooth batter.
Let the dough rest for an hour before rolling it out on a lightly floured table.
In mathematics, a prime number has exactly two divisors: one and itself.
There are infinitely many primes, a fact Euclid proved more than two thousand years ago.
The train to the coast leaves at seven in the morning and arrives shortly before noon.
Passengers are asked to keep their luggage in the racks above the seats and to mind the gap when leaving.
Computers store numbers in binary, and the precision of each number depends on how many bits it is given.
Reducing that precision saves memory and time, but every bit removed adds a little error to the result.
The old lighthouse stood on the cliff for two centuries, guiding ships away from the rocks below.
Today it is a museum, and visitors climb its spiral stairs to look out over the grey and restless water.
"""

CAUSAL_WINDOW_TOKENS = 256  # tokens per forward pass (less when the model's context is shorter)
ENCODER_MAX_TOKENS = 128  # per sentence
ENCODER_BATCH = 8


@dataclass
class OutputComparison:
    """Figures on the two models' outputs for the same inputs.

    ``metrics`` keys by ``kind``:
    causal_lm: perplexity_original, perplexity_converted, perplexity_ratio, mean_kl_divergence, top1_agreement;
    encoder: cosine_mean, cosine_min, relative_error (of the mean-pooled embeddings);
    generic: relative_error, cosine, max_abs_error, sqnr_db (of the first output tensor).
    """

    kind: str
    model: str
    device: str
    inputs: str
    num_samples: int
    num_tokens: int
    metrics: dict[str, float]
    notes: list[str] = field(default_factory=list)


@contextmanager
def params_on_meta() -> Iterator[None]:
    """Build modules with parameters on the meta device but real buffers.

    Buffers such as position ids or rotary frequencies are not saved in checkpoints (they
    are computed in ``__init__``), so they must be real; parameters come from the checkpoint.
    accelerate's ``init_empty_weights`` (the ``hf`` extra) does exactly this; without
    accelerate, the same patch of ``register_parameter`` is applied here, for the block only.
    """
    try:
        from accelerate import init_empty_weights
    except ImportError:
        init_empty_weights = None
    if init_empty_weights is not None:
        with init_empty_weights(include_buffers=False):
            yield
        return
    register = torch.nn.Module.register_parameter

    def on_meta(module, name, param):
        register(module, name, param)
        if param is not None:
            module._parameters[name] = type(param)(param.to("meta"), requires_grad=param.requires_grad)

    torch.nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register


def load_model(build: Callable[[], torch.nn.Module], path: str | Path, device: str, *, strict: bool, **open_options) -> torch.nn.Module:
    """Build a module with meta parameters and fill it from ``path`` in float32 on ``device``
    (``open_options``: ``key``, ``strip_prefix``, ``allow_globals``)."""
    with params_on_meta():
        model = build()
    load_into(model, path, strict=strict, dtype=torch.float32, **open_options)
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    if missing:
        raise QuantkitError(
            f"{path}: {len(missing)} parameter(s) of the model are not in the checkpoint "
            f"(first: {missing[0]}); the names must match the model built from the original's description"
        )
    return model.to(device).eval()


def import_callable(spec: str, what: str) -> Callable:
    """``"package.module:name"`` or ``"path/to/file.py:name"`` -> the callable."""
    module_name, _, attr = spec.rpartition(":")
    if not module_name or not attr:
        raise UsageError(f"{what} {spec!r}: write it as module:function or path/to/file.py:function")
    try:
        if module_name.endswith(".py"):
            loader_spec = importlib.util.spec_from_file_location(Path(module_name).stem, module_name)
            if loader_spec is None or loader_spec.loader is None:
                raise ImportError(f"cannot load {module_name}")
            module = importlib.util.module_from_spec(loader_spec)
            loader_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
        func = getattr(module, attr)
    except (ImportError, AttributeError, OSError) as exc:
        raise UsageError(f"{what} {spec!r}: cannot import it ({exc})") from None
    if not callable(func):
        raise UsageError(f"{what} {spec!r} is not callable")
    return func


def compare_module_outputs(
    original: Path, converted: Path, *, factory: str, inputs: str, device: str = "auto", original_options: dict | None = None
) -> OutputComparison:
    """Run the module ``factory()`` builds, loaded once from each checkpoint, on ``inputs()``
    (``original_options``: how the original is opened, as for ``open_checkpoint``)."""
    build, make_inputs = import_callable(factory, "--model"), import_callable(inputs, "--inputs")
    device = resolve_device(device)
    sample = _to_device(make_inputs(), device)
    outputs = []
    for path, options in ((original, original_options or {}), (converted, {})):  # one model at a time: only its output is kept
        model = load_model(build, path, device, strict=True, **options)
        with torch.no_grad():
            outputs.append(_first_tensor(_call(model, sample)).float().cpu())
        del model
    figures = _generic_figures(error_moments(outputs[0], outputs[1]))
    batch = outputs[0].shape[0] if outputs[0].dim() else 1
    return OutputComparison("generic", factory, device, inputs, batch, 0, figures)


def _call(model: torch.nn.Module, sample):
    if isinstance(sample, dict):
        return model(**sample)
    if isinstance(sample, (tuple, list)):
        return model(*sample)
    return model(sample)


def _to_device(sample, device: str):
    if isinstance(sample, torch.Tensor):
        return sample.to(device)
    if isinstance(sample, dict):
        return {k: _to_device(v, device) for k, v in sample.items()}
    if isinstance(sample, (tuple, list)):
        return type(sample)(_to_device(v, device) for v in sample)
    return sample


def _first_tensor(output) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    values = output.values() if isinstance(output, dict) else output if isinstance(output, (tuple, list)) else ()
    for value in values:
        if isinstance(value, torch.Tensor):
            return value
    raise QuantkitError(f"the model returned {type(output).__name__}, with no tensor to compare")


def _generic_figures(m: ErrorMoments) -> dict[str, float]:
    return {"relative_error": m.rel_l2, "cosine": m.cosine, "max_abs_error": m.max_abs, "sqnr_db": m.sqnr_db}


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n+", text) if s.strip()]


def perplexity(total_nll: float, count: int) -> float:
    return math.exp(total_nll / count) if count else math.nan
