"""Which tensors get quantized: name rules vs transformers' own module structure."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from quantkit.selection import NAME_RULES_MATCH_TRANSFORMERS, hf_linear_layout, layout_for, select
from quantkit.sources import open_checkpoint

transformers = pytest.importorskip("transformers")

SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=256, max_position_embeddings=64)


def configs():
    no_kv = dict(SMALL)
    yield "gpt2", "GPT2LMHeadModel", transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=256, n_positions=64)
    yield "bert", "BertModel", transformers.BertConfig(**no_kv)
    yield "roberta", "RobertaModel", transformers.RobertaConfig(**no_kv)
    yield "distilbert", "DistilBertModel", transformers.DistilBertConfig(dim=64, hidden_dim=128, n_layers=2, n_heads=4, vocab_size=256)
    yield "llama", "LlamaForCausalLM", transformers.LlamaConfig(**SMALL, num_key_value_heads=2)
    yield "mistral", "MistralForCausalLM", transformers.MistralConfig(**SMALL, num_key_value_heads=2)
    yield "qwen2", "Qwen2ForCausalLM", transformers.Qwen2Config(**SMALL, num_key_value_heads=2)
    yield "gemma", "GemmaForCausalLM", transformers.GemmaConfig(**SMALL, num_key_value_heads=2, head_dim=16)
    yield "phi", "PhiForCausalLM", transformers.PhiConfig(**SMALL)
    yield "gpt_neox", "GPTNeoXForCausalLM", transformers.GPTNeoXConfig(**no_kv)
    yield "opt", "OPTForCausalLM", transformers.OPTConfig(
        hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=256, word_embed_proj_dim=64, max_position_embeddings=64
    )
    yield "bloom", "BloomForCausalLM", transformers.BloomConfig(hidden_size=64, n_layer=2, n_head=4, vocab_size=256)
    yield "gptj", "GPTJForCausalLM", transformers.GPTJConfig(n_embd=64, n_layer=2, n_head=4, vocab_size=256, rotary_dim=8)
    yield "mpt", "MptForCausalLM", transformers.MptConfig(d_model=64, n_layers=2, n_heads=4, vocab_size=256)


CASES = list(configs())


def test_every_trusted_model_type_is_checked():
    assert {name for name, _, _ in CASES} == NAME_RULES_MATCH_TRANSFORMERS


@pytest.mark.hf
@pytest.mark.parametrize("name,arch,config", CASES, ids=[c[0] for c in CASES])
def test_name_rules_select_what_transformers_quantizes(tmp_path, name, arch, config):
    torch.manual_seed(0)
    config.architectures = [arch]
    getattr(transformers, arch)(config).save_pretrained(tmp_path)
    assert layout_for(tmp_path) is None  # trusted: no model is built
    layout = hf_linear_layout(tmp_path)
    assert layout is not None
    with open_checkpoint(tmp_path) as source:
        by_names = select(source, layout=None)
        by_model = select(source, layout=layout)
    assert by_names.quantize == by_model.quantize and by_model.quantize


@pytest.mark.hf
def test_untrusted_model_type_is_introspected(tmp_path):
    """T5's relative_attention_bias is an nn.Embedding named like attention: names alone would quantize it."""
    config = transformers.T5Config(d_model=64, d_ff=128, num_layers=2, num_heads=4, vocab_size=256, d_kv=16)
    config.architectures = ["T5ForConditionalGeneration"]
    transformers.T5ForConditionalGeneration(config).save_pretrained(tmp_path)
    layout = layout_for(tmp_path)
    assert layout is not None
    with open_checkpoint(tmp_path) as source:
        selection = select(source, layout=layout)
        by_names = select(source, layout=None)
    bias = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    assert bias not in selection.quantize and bias in by_names.quantize
    assert "encoder.block.0.layer.0.SelfAttention.q.weight" in selection.quantize


def test_bare_checkpoint_rules(tmp_path):
    save_file(
        {
            "tok_embeddings.weight": torch.zeros(10, 4),
            "layers.0.attention.wq.weight": torch.zeros(4, 4),
            "layers.0.attention_norm.weight": torch.zeros(4),
            "layers.0.feed_forward.w1.weight": torch.zeros(8, 4),
            "conv.weight": torch.zeros(2, 2, 3, 3),
            "output.weight": torch.zeros(10, 4),
            "steps": torch.zeros((), dtype=torch.int64),
        },
        tmp_path / "m.safetensors",
    )
    with open_checkpoint(tmp_path / "m.safetensors") as source:
        s = select(source)
    assert sorted(s.quantize) == ["layers.0.attention.wq.weight", "layers.0.feed_forward.w1.weight"]
    assert s.kept == {
        "tok_embeddings.weight": "embeddings",
        "layers.0.attention_norm.weight": "bias or norm",
        "conv.weight": "convolution kernel or other shape",
        "output.weight": "output head",
        "steps": "not floating point",
    }
