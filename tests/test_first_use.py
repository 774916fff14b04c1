"""Issue 11, first use: a training checkpoint's other entries kept, load_into on a tied
Hugging Face model, one dtype back, double quantization without bitsandbytes, compare
without tokenizer files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from quantkit.loading import load_into, load_state_dict

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tied_gpt2(tmp_path_factory) -> tuple[Path, object]:
    """A GPT-2-like FP16 model whose output head is tied to its embeddings, saved without tokenizer files."""
    folder = tmp_path_factory.mktemp("gpt2") / "gpt2"
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=128, n_positions=32, bos_token_id=0, eos_token_id=0)
    transformers.GPT2LMHeadModel(config).to(torch.float16).save_pretrained(folder)
    return folder, config


def test_training_checkpoint_extras_are_kept_and_the_rest_listed(cli, tmp_path):
    ckpt = tmp_path / "train.pth"
    g = torch.Generator().manual_seed(0)
    model = {"fc.weight": torch.randn(8, 16, generator=g), "fc.bias": torch.zeros(8)}
    optimizer = {"state": {0: {"exp_avg": torch.zeros(8, 16)}}, "param_groups": [{"lr": 0.01}]}
    torch.save({"model": model, "char2idx": {"a": 0, "b": 1}, "epoch": 7, "metrics": {"cer": 0.12}, "optimizer": optimizer}, ckpt)
    result = cli("convert", ckpt, "--to", "bf16", "--key", "model", "-o", tmp_path / "out", "-q")
    assert result.exit_code == 0, result.stderr
    assert "kept in quantkit.json (source_extras): char2idx, epoch, metrics" in result.stdout.splitlines()
    assert "not kept (not JSON): optimizer" in result.stdout.splitlines()
    manifest = json.loads((tmp_path / "out" / "quantkit.json").read_text())
    assert manifest["source_extras"] == {"char2idx": {"a": 0, "b": 1}, "epoch": 7, "metrics": {"cer": 0.12}}
    summary = json.loads(cli("convert", ckpt, "--to", "bf16", "--key", "model", "-o", tmp_path / "o2", "-q", "--json").stdout)
    assert (summary["source_extras"], summary["dropped_extras"]) == (["char2idx", "epoch", "metrics"], ["optimizer"])
    assert cli("verify", tmp_path / "out").exit_code == 0


@pytest.mark.parametrize("scheme", ["int8", "nf4", "bf16"])
def test_load_into_a_tied_hf_model_as_the_readme_shows(cli, tied_gpt2, tmp_path, scheme):
    folder, config = tied_gpt2
    out = tmp_path / scheme
    assert cli("convert", folder, "--to", scheme, "-o", out, "-q").exit_code == 0
    with torch.device("meta"):
        model = transformers.GPT2LMHeadModel(config)
    load_into(model, out)
    assert model.lm_head.weight is model.transformer.wte.weight
    dtypes = {p.dtype for p in model.parameters()}
    assert dtypes == {torch.bfloat16 if scheme == "bf16" else torch.float16}
    logits = model(input_ids=torch.tensor([[1, 2, 3]])).logits  # the forward pass runs in one dtype
    assert logits.shape == (1, 3, 128) and bool(torch.isfinite(logits).all())


@pytest.mark.parametrize("source_dtype", [torch.float16, torch.bfloat16])
def test_int8_comes_back_in_the_dtype_of_the_rest(cli, tmp_path, source_dtype):
    g = torch.Generator().manual_seed(0)
    sd = {"layers.0.fc.weight": torch.randn(16, 32, generator=g).to(source_dtype), "layers.0.fc.bias": torch.zeros(16, dtype=source_dtype)}
    torch.save(sd, tmp_path / "m.pth")
    assert cli("convert", tmp_path / "m.pth", "--to", "int8", "-o", tmp_path / "o", "-q").exit_code == 0
    back = load_state_dict(tmp_path / "o")
    assert {t.dtype for t in back.values()} == {source_dtype}
    assert load_state_dict(tmp_path / "o", dtype=torch.float32)["layers.0.fc.weight"].dtype == torch.float32


def test_double_quant_on_the_cpu_does_not_import_bitsandbytes(tmp_path):
    code = (
        "import sys, torch; from quantkit.schemes.fourbit import apply_fourbit;"
        "apply_fourbit('w', torch.randn(64, 64), quant_type='nf4', blocksize=64, double_quant=True);"
        "print('bitsandbytes' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


@pytest.mark.slow  # a GPT-2 converted and compared; the fallback itself: tests/reports/test_outputs.py (without tokenizer)
def test_compare_without_tokenizer_files_falls_back_to_random_tokens(cli, tied_gpt2, tmp_path):
    folder, _ = tied_gpt2
    assert cli("convert", folder, "--to", "int8", "-o", tmp_path / "int8", "-q").exit_code == 0
    result = cli("compare", folder, tmp_path / "int8", "--json", "-q")
    assert result.exit_code == 0, result.stderr
    outputs = json.loads(result.stdout)["outputs"]
    assert outputs["kind"] == "causal_lm" and outputs["inputs"] == "seeded random token ids"
    assert outputs["notes"] == [f"no usable tokenizer in {folder} (no tokenizer files: it gives no tokens): inputs are seeded random token ids"]
    assert outputs["metrics"]["top1_agreement"] > 0.5
