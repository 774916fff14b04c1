"""Output-level accuracy for Hugging Face model folders (needs transformers)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import QuantkitError
from .metrics import ErrorMoments, error_moments
from ..devices import resolve_device
from .outputs import (
    CAUSAL_WINDOW_TOKENS,
    ENCODER_BATCH,
    ENCODER_MAX_TOKENS,
    SAMPLE_TEXT,
    OutputComparison,
    _first_tensor,
    _generic_figures,
    load_model,
    perplexity,
    split_sentences,
)

CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def model_kind(config) -> str:
    """``causal_lm`` (a language-model head), ``generic`` (encoder-decoder) or ``encoder``."""
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith(CAUSAL_SUFFIXES) for a in archs):
        return "causal_lm"
    if getattr(config, "is_encoder_decoder", False):
        return "generic"
    return "encoder"


def compare_hf_outputs(
    original_dir: Path,
    converted: Path,
    *,
    text: str | None = None,
    device: str = "auto",
    max_tokens: int = 1024,
) -> OutputComparison:
    """Run the model described by ``original_dir/config.json`` with each checkpoint's weights.

    The tokenizer comes from ``original_dir``; without one, seeded random token ids are used.
    Causal LMs see ``text`` (default: a built-in sample) in windows of up to 256 tokens, at
    most ``max_tokens`` in all; encoders see it sentence by sentence.
    """
    run = prepare_hf(original_dir, device=device, text=text, max_tokens=max_tokens)
    models = [run.original, run.load(converted)]
    with torch.no_grad():
        num_samples, num_tokens, metrics = run.compare(models)
    return OutputComparison(run.kind, run.model_name, run.device, run.inputs, num_samples, num_tokens, metrics, run.notes)


@dataclass
class HFRun:
    """An HF model folder ready to compare: the original loaded once, a loader for another
    checkpoint of it, and ``compare([original, other])`` giving compare's figures."""

    kind: str
    model_name: str
    device: str
    inputs: str
    notes: list[str]
    original: torch.nn.Module
    load: Callable[[Path], torch.nn.Module]
    compare: Callable[[list[torch.nn.Module]], tuple[int, int, dict[str, float]]]


def prepare_hf(original_dir: Path, *, device: str = "auto", text: str | None = None, max_tokens: int = 1024) -> HFRun:
    """What ``compare_hf_outputs`` runs, apart: the original model, its inputs and its figures."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(original_dir)
    kind = model_kind(config)
    device = resolve_device(device)
    model_class = _model_class(transformers, config, kind)
    tokenizer, notes = _tokenizer(transformers, original_dir)
    text = text if text is not None else SAMPLE_TEXT
    source = "built-in sample text" if text is SAMPLE_TEXT else "--text"
    if tokenizer is None:
        source = "seeded random token ids"

    def build():
        return model_class._from_config(config) if hasattr(model_class, "_from_config") else model_class(config)

    def load(path):
        with _quiet_transformers(transformers):
            return load_model(build, path, device, strict=False)

    runner = {"causal_lm": _causal, "encoder": _encoder, "generic": _generic}[kind]
    return HFRun(kind, model_class.__name__, device, source, notes, load(original_dir), load,
                 lambda models: runner(models, tokenizer, text, config, device, max_tokens))


@contextmanager
def _quiet_transformers(transformers):
    """transformers draws a progress bar while a state dict loads; the library never prints."""
    logging = transformers.utils.logging
    was_enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            logging.enable_progress_bar()


def _model_class(transformers, config, kind: str):
    """The class the checkpoint was saved from (so names match), else the Auto class for the kind."""
    for arch in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, arch, None)
        if cls is not None:
            return cls
    auto = transformers.AutoModelForCausalLM if kind == "causal_lm" else transformers.AutoModel
    return auto._model_mapping[type(config)]


def _tokenizer(transformers, folder: Path):
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        return None, [f"no usable tokenizer in {folder} ({reason[:120]}): inputs are seeded random token ids"]
    # transformers builds an empty tokenizer for a folder without tokenizer files: it gives no tokens
    if len(tokenizer(SAMPLE_TEXT[:200], add_special_tokens=False)["input_ids"]) < 2:
        return None, [f"no usable tokenizer in {folder} (no tokenizer files: it gives no tokens): inputs are seeded random token ids"]
    return tokenizer, []


def _token_ids(tokenizer, text: str, config, max_tokens: int) -> torch.Tensor:
    if tokenizer is not None:
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=True)["input_ids"][0]
        return ids[:max_tokens]
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, config.vocab_size, (min(max_tokens, CAUSAL_WINDOW_TOKENS),), generator=generator)


def _context_length(config) -> int:
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return min(limit, CAUSAL_WINDOW_TOKENS) if limit else CAUSAL_WINDOW_TOKENS


def _causal(models, tokenizer, text, config, device, max_tokens):
    """Perplexity of each model, mean KL(original || converted) and top-1 agreement per position."""
    ids = _token_ids(tokenizer, text, config, max_tokens)
    window = _context_length(config)
    nll, kl, agree, count, windows = [0.0, 0.0], 0.0, 0, 0, 0
    for start in range(0, max(len(ids) - 1, 1), window):
        chunk = ids[start : start + window + 1].to(device)[None]
        if chunk.shape[1] < 2:
            break
        targets = chunk[0, 1:]
        logp = [torch.log_softmax(m(input_ids=chunk[:, :-1]).logits[0].float(), dim=-1) for m in models]
        for i in (0, 1):
            nll[i] += float(-logp[i].gather(1, targets[:, None]).sum())
        kl += float((logp[0].exp() * (logp[0] - logp[1])).sum())
        agree += int((logp[0].argmax(-1) == logp[1].argmax(-1)).sum())
        count += targets.numel()
        windows += 1
    if count == 0:
        raise QuantkitError("the sample text is too short: it gives fewer than two tokens")
    ppl = [perplexity(nll[0], count), perplexity(nll[1], count)]
    metrics = {
        "perplexity_original": ppl[0],
        "perplexity_converted": ppl[1],
        "perplexity_ratio": ppl[1] / ppl[0],
        "mean_kl_divergence": kl / count,
        "top1_agreement": agree / count,
    }
    return windows, count, metrics


def _encoder(models, tokenizer, text, config, device, max_tokens):
    """Cosine similarity of mean-pooled last hidden states, sentence by sentence."""
    batches = list(_sentence_batches(tokenizer, text, config, max_tokens))
    cosines: list[torch.Tensor] = []
    pooled = ErrorMoments()
    num_tokens = 0
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        mask = batch["attention_mask"].unsqueeze(-1).float()
        embeddings = [(_hidden(m(**batch, output_hidden_states=True)) * mask).sum(1) / mask.sum(1).clamp(min=1) for m in models]
        cosines.append(torch.nn.functional.cosine_similarity(embeddings[0].double(), embeddings[1].double(), dim=-1).cpu())
        pooled.add(error_moments(embeddings[0], embeddings[1]))
        num_tokens += int(batch["attention_mask"].sum())
    all_cos = torch.cat(cosines)
    metrics = {"cosine_mean": float(all_cos.mean()), "cosine_min": float(all_cos.min()), "relative_error": pooled.rel_l2}
    return len(all_cos), num_tokens, metrics


def _generic(models, tokenizer, text, config, device, max_tokens):
    """Relative error of the first output tensor (encoder-decoders: decoder fed the same ids)."""
    ids = _token_ids(tokenizer, text, config, min(max_tokens, ENCODER_MAX_TOKENS))[None].to(device)
    kwargs = {"input_ids": ids}
    if getattr(config, "is_encoder_decoder", False):
        kwargs["decoder_input_ids"] = ids
    outputs = [_first_tensor(m(**kwargs)).float() for m in models]
    return 1, ids.numel(), _generic_figures(error_moments(outputs[0], outputs[1]))


def _sentence_batches(tokenizer, text, config, max_tokens):
    if tokenizer is None:
        ids = _token_ids(None, text, config, max_tokens)
        rows = ids[: (len(ids) // 32) * 32].reshape(-1, 32) if len(ids) >= 32 else ids[None]
        for start in range(0, len(rows), ENCODER_BATCH):
            chunk = rows[start : start + ENCODER_BATCH]
            yield {"input_ids": chunk, "attention_mask": torch.ones_like(chunk)}
        return
    sentences = split_sentences(text)
    if not sentences:
        raise QuantkitError("the sample text holds no sentence to embed")
    used = 0
    for start in range(0, len(sentences), ENCODER_BATCH):
        batch = tokenizer(sentences[start : start + ENCODER_BATCH], padding=True, truncation=True,
                          max_length=ENCODER_MAX_TOKENS, return_tensors="pt")
        yield dict(batch)
        used += int(batch["attention_mask"].sum())
        if used >= max_tokens:
            return


def _hidden(output) -> torch.Tensor:
    hidden = getattr(output, "last_hidden_state", None)
    if hidden is None and getattr(output, "hidden_states", None):
        hidden = output.hidden_states[-1]
    return (hidden if hidden is not None else _first_tensor(output)).float()
