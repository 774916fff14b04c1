"""``quantkit profile --outputs``: each decided tensor quantized alone, its effect on the model's outputs.

For every tensor of a profile (the quantizable weights and the castable ones) and each of its
candidate schemes, the model is run with that one tensor replaced by what the scheme stores,
read back as ``load_state_dict`` reads it, every other tensor original: the figures are the
ones ``compare`` reports for a conversion that quantizes that tensor alone (compare's own
runner is called, on the same inputs). Causal LMs: ``mean_kl_divergence`` (KL(original ||
converted) per token, compare's) and ``top1_agreement``; encoders: ``cosine_mean`` /
``cosine_min`` of the mean-pooled embeddings; a ``--model module:factory``: compare's generic
figures on the first output tensor.

Cost: two forward passes (compare runs the original again) per tensor and candidate.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch

from .errors import UsageError
from .profile import KEEP, Profile, reconstruct
from .schemes import SchemeSettings, get_scheme
from .sources import open_checkpoint

OUTPUTS_VERSION = 1


def profile_outputs(profile: Profile, src: str | Path, *, device: str = "cpu", text: str | None = None, max_tokens: int = 1024,
                    factory: str | None = None, inputs: str | None = None, progress=None) -> dict:
    """Measure every candidate of every tensor of ``profile`` on the model's outputs; the result
    is ``profile.outputs`` (also returned): ``{kind, metric, model, inputs, num_tokens, tensors:
    {name: {scheme: {figure: value}}}}``."""
    started = time.perf_counter()
    original, compare, about = _runner(Path(src), device=device, text=text, max_tokens=max_tokens, factory=factory, inputs=inputs)
    variant = copy.deepcopy(original)
    params = dict(variant.named_parameters(remove_duplicate=False))
    settings = SchemeSettings(**{k: v for k, v in profile.settings.items() if k in ("blocksize", "double_quant", "group_size")})
    tensors: dict[str, dict[str, dict[str, float]]] = {}
    with open_checkpoint(src) as source, torch.no_grad():
        for t in profile.tensors + profile.castable:
            if t.name not in params:
                continue  # not a parameter of the model built (a buffer, or a name it does not use)
            param, value = params[t.name], source.get_tensor(t.name)
            saved = param.data
            figures = {}
            for scheme in t.candidates:
                if scheme == KEEP:
                    continue
                approx, _ = reconstruct(get_scheme(scheme), t.name, value, transpose=t.transpose, settings=settings)
                param.data = approx.to(device=saved.device, dtype=saved.dtype).reshape(saved.shape)
                figures[scheme] = compare([original, variant])[2]
                param.data = saved
            tensors[t.name] = figures
            if progress is not None:
                progress(t.original_bytes)
    profile.outputs = {**about, "version": OUTPUTS_VERSION, "tensors": tensors, "elapsed_s": time.perf_counter() - started}
    return profile.outputs


def _runner(src: Path, *, device, text, max_tokens, factory, inputs):
    """The original model, ``compare(models) -> (samples, tokens, figures)`` and what to record."""
    if factory is not None:
        from .reports.outputs import _call, _first_tensor, _generic_figures, _to_device, import_callable, load_model
        from .devices import resolve_device
        from .reports.metrics import error_moments

        if inputs is None:
            raise UsageError("--model needs --inputs module:function (the sample inputs, as for compare)")
        build, make_inputs = import_callable(factory, "--model"), import_callable(inputs, "--inputs")
        device = resolve_device(device)
        sample = _to_device(make_inputs(), device)
        original = load_model(build, src, device, strict=True)

        def compare(models):
            outs = [_first_tensor(_call(m, sample)).float() for m in models]
            return 1, 0, _generic_figures(error_moments(outs[0], outs[1]))

        return original, compare, {"kind": "generic", "metric": "relative_error", "model": factory, "inputs": inputs}
    if not (src / "config.json").is_file():
        raise UsageError(f"--outputs runs the model: {src} has no config.json (give an HF folder, or --model module:factory with --inputs)")
    from .reports.hf_outputs import prepare_hf

    run = prepare_hf(src, device=device, text=text, max_tokens=max_tokens)
    metric = {"causal_lm": "mean_kl_divergence", "encoder": "cosine_mean"}.get(run.kind, "relative_error")
    return run.original, run.compare, {"kind": run.kind, "metric": metric, "model": run.model_name, "inputs": run.inputs}
