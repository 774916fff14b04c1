"""compressed-tensors schemes through the converter and the CLI, without the reference:
every input kind, Conv1D, --rule (every documented form), --dry-run, bad input.
(Byte identity with llm-compressor: tests/schemes/test_ct_model_free.py.)"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from quantkit.convert import ConvertOptions, convert
from quantkit.errors import UsageError
from quantkit.loading import load_into, load_state_dict
from quantkit.schemes.compressed import dequantize
from quantkit.schemes.ct import to_numpy
from quantkit.selection import Kept


def llama_state(seed: int = 0, hidden: int = 128) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {"model.embed_tokens.weight": torch.randn(64, hidden, generator=g), "model.norm.weight": torch.ones(hidden),
          "lm_head.weight": torch.randn(64, hidden, generator=g)}
    for i in range(2):
        p = f"model.layers.{i}"
        for proj in ("q", "k", "v", "o"):
            sd[f"{p}.self_attn.{proj}_proj.weight"] = torch.randn(hidden, hidden, generator=g) * 0.02
        sd[f"{p}.mlp.up_proj.weight"] = torch.randn(2 * hidden, hidden, generator=g) * 0.02
        sd[f"{p}.mlp.down_proj.weight"] = torch.randn(hidden, 2 * hidden, generator=g) * 0.02
        sd[f"{p}.input_layernorm.weight"] = torch.ones(hidden)
    return sd


@pytest.fixture
def llama_folder(tmp_path):
    folder = tmp_path / "llama"
    folder.mkdir()
    save_file(llama_state(), str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "torch_dtype": "float32"}))
    return folder


def stored(folder) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(f, "pt") as handle:
            out.update({k: handle.get_tensor(k) for k in handle.keys()})
    return out


@pytest.mark.parametrize("scheme", ["fp8", "fp8-block", "w8a16", "w4a16"])
def test_bare_pth_writes_the_tensors_and_records_the_scheme(tmp_path, scheme):
    sd = llama_state()
    torch.save(sd, tmp_path / "model.pth")
    out = convert(tmp_path / "model.pth", tmp_path / "out", options=ConvertOptions(scheme)).write.folder
    manifest = json.loads((out / "quantkit.json").read_text())
    assert manifest["scheme"] == scheme
    tensors = stored(out)
    assert "model.layers.0.self_attn.q_proj.weight_scale" in tensors
    assert tensors["model.embed_tokens.weight"].dtype == torch.float32  # kept
    state = load_state_dict(out)
    assert sorted(state) == sorted(sd) and all(state[n].shape == sd[n].shape for n in sd)
    module = "model.layers.1.mlp.down_proj"
    parts = {k.rpartition(".")[2]: to_numpy(v) for k, v in tensors.items() if k.rpartition(".")[0] == module}
    assert to_numpy(state[f"{module}.weight"]).tobytes() == dequantize(parts, scheme).tobytes()
    model = torch.nn.Module()
    with torch.device("meta"):
        for name, tensor in sd.items():
            *path, leaf = name.split(".")
            parent = model
            for part in path:
                if not hasattr(parent, part):
                    parent.add_module(part, torch.nn.Module())
                parent = getattr(parent, part)
            parent.register_parameter(leaf, torch.nn.Parameter(torch.empty_like(tensor)))
    load_into(model, out)
    assert torch.equal(model.get_parameter(f"{module}.weight"), state[f"{module}.weight"])


def test_gpt2_conv1d_weights_stay_unquantized(tmp_path):
    sd = {"transformer.wte.weight": torch.randn(64, 128), "transformer.h.0.attn.c_attn.weight": torch.randn(128, 384),
          "transformer.h.0.mlp.c_fc.weight": torch.randn(128, 512), "transformer.h.0.ln_1.weight": torch.ones(128)}
    torch.save(sd, tmp_path / "gpt2.pth")
    result = convert(tmp_path / "gpt2.pth", tmp_path / "out", options=ConvertOptions("fp8"))
    assert result.kept["transformer.h.0.attn.c_attn.weight"] is Kept.CONV1D
    assert result.quantized == []
    assert torch.equal(stored(result.write.folder)["transformer.h.0.mlp.c_fc.weight"], sd["transformer.h.0.mlp.c_fc.weight"])


def test_a_model_folder_with_nothing_to_quantize_is_refused_before_reading(cli, tmp_path):
    """GPT-2 (Conv1D weights only) to fp8: exit 2 naming the kept reasons, nothing written."""
    folder = tmp_path / "gpt2"
    folder.mkdir()
    sd = {"transformer.wte.weight": torch.randn(64, 128), "transformer.h.0.attn.c_attn.weight": torch.randn(128, 384),
          "transformer.h.0.ln_1.weight": torch.ones(128)}
    save_file(sd, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_embd": 128, "n_layer": 1,
                                                    "n_head": 2, "vocab_size": 64, "n_positions": 32}))
    result = cli("convert", folder, "--to", "fp8", "-o", tmp_path / "out")
    assert result.exit_code == 2, result.stderr
    assert "--to fp8 quantizes no tensor of this checkpoint" in result.stderr and "Conv1D weight" in result.stderr
    assert not (tmp_path / "out").exists()
    assert cli("convert", folder, "--to", "int8", "-o", tmp_path / "int8").exit_code == 0  # bitsandbytes takes Conv1D


def test_folder_config_and_ignore(llama_folder, tmp_path):
    out = convert(llama_folder, tmp_path / "out", options=ConvertOptions("w4a16", group_size=64)).write.folder
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors" and config["quantization_status"] == "compressed"
    assert config["config_groups"]["W4A16"]["weights"]["group_size"] == 64
    assert config["ignore"] == ["lm_head", "model.embed_tokens", "model.layers.0.input_layernorm",
                                "model.layers.1.input_layernorm", "model.norm"]
    assert stored(out)["model.layers.0.mlp.down_proj.weight_scale"].shape == (128, 4)


def test_skip_only_rest_dtype(llama_folder, tmp_path):
    options = ConvertOptions("fp8", skip=("k_proj",), only=("layers\\.0\\.",), rest_dtype="bf16")
    out = convert(llama_folder, tmp_path / "out", options=options).write.folder
    t = stored(out)
    assert t["model.layers.0.q_proj.weight".replace("q_proj", "self_attn.q_proj")].dtype == torch.float8_e4m3fn
    assert t["model.layers.0.self_attn.k_proj.weight"].dtype == torch.float32  # --skip: as stored
    assert t["model.layers.1.self_attn.q_proj.weight"].dtype == torch.float32  # not --only
    assert t["model.layers.0.input_layernorm.weight"].dtype == torch.bfloat16  # --rest-dtype
    assert "model.layers.0.self_attn.k_proj" in json.loads((out / "config.json").read_text())["quantization_config"]["ignore"]


# -- rules ------------------------------------------------------------------------------------

RULE_FORMS = [
    # (rules, tensor, expected stored dtype of the weight or its packed words)
    (["self_attn=w8a16"], "model.layers.0.self_attn.q_proj.weight_packed", torch.int32),
    (["down_proj=keep"], "model.layers.0.mlp.down_proj.weight", torch.float32),
    (["layers\\.1\\.=bf16"], "model.layers.1.mlp.up_proj.weight", torch.bfloat16),
    (["^model\\.layers\\.0\\.mlp\\.up_proj\\.weight$=fp16"], "model.layers.0.mlp.up_proj.weight", torch.float16),
    (["embed_tokens=bf16"], "model.embed_tokens.weight", torch.bfloat16),
    (["q_proj=fp8-block", "proj=w4a16"], "model.layers.0.self_attn.q_proj.weight", torch.float8_e4m3fn),
    (["q_proj=fp8-block", "proj=w4a16"], "model.layers.0.self_attn.k_proj.weight_packed", torch.int32),
]


@pytest.mark.parametrize("rules,tensor,dtype", RULE_FORMS)
def test_every_rule_form_takes_effect(llama_folder, tmp_path, rules, tensor, dtype):
    out = convert(llama_folder, tmp_path / "out", options=ConvertOptions("fp8", rules=tuple(rules))).write.folder
    assert stored(out)[tensor].dtype == dtype


def test_mixed_rules_write_one_group_per_scheme(llama_folder, tmp_path):
    out = convert(llama_folder, tmp_path / "out", options=ConvertOptions("w4a16", rules=("self_attn=w8a16",))).write.folder
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert sorted(config["config_groups"]) == ["W4A16", "W8A16"] and config["format"] == "pack-quantized"
    assert config["config_groups"]["W8A16"]["targets"] == sorted(f"model.layers.{i}.self_attn.{p}_proj" for i in range(2) for p in "qkvo")
    out2 = convert(llama_folder, tmp_path / "out2", options=ConvertOptions("w4a16", rules=("self_attn=fp8",))).write.folder
    assert json.loads((out2 / "config.json").read_text())["quantization_config"]["format"] == "mixed-precision"


def test_rules_with_a_cast_target(llama_folder, tmp_path):
    result = convert(llama_folder, tmp_path / "out", options=ConvertOptions("bf16", rules=("mlp=w8a16",)))
    t = stored(result.write.folder)
    assert t["model.layers.0.mlp.up_proj.weight_packed"].dtype == torch.int32
    assert t["model.layers.0.self_attn.q_proj.weight"].dtype == torch.bfloat16
    assert json.loads((result.write.folder / "config.json").read_text())["quantization_config"]["quant_method"] == "compressed-tensors"


@pytest.mark.parametrize(
    "args,message",
    [
        (["--to", "int8", "--rule", "mlp=nf4"], "int8 cannot be mixed with nf4: bitsandbytes stores one method per model"),
        (["--to", "fp8", "--rule", "mlp=int8"], "cannot share one checkpoint"),
        (["--to", "fp8", "--rule", "mlp(=w4a16"], "rule 'mlp(=w4a16': bad regex"),
        (["--to", "fp8", "--rule", "mlp=w3a16"], "rule 'mlp=w3a16': unknown scheme 'w3a16'"),
        (["--to", "fp8", "--rule", "mlp"], "write it as REGEX=SCHEME"),
    ],
)
def test_rules_refused_before_reading(cli, tmp_path, args, message):
    result = cli("convert", tmp_path / "does-not-exist.pth", *args, "-o", tmp_path / "out")
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("rules", [["nothing_named_so=w8a16"], ["proj=w4a16", "q_proj=w8a16"], ["norm=w8a16"]],
                         ids=["no-name", "shadowed", "not-a-linear-weight"])
def test_a_rule_deciding_nothing_is_an_error(cli, llama_folder, tmp_path, rules):
    args = [a for r in rules for a in ("--rule", r)]
    result = cli("convert", llama_folder, "--to", "fp8", *args, "-o", tmp_path / "out")
    assert result.exit_code == 2
    assert f"rule {rules[-1]!r} decides no tensor" in result.stderr
    assert not (tmp_path / "out").exists()


def test_rules_in_the_python_api(llama_folder, tmp_path):
    with pytest.raises(UsageError, match="nothing_named_so"):
        convert(llama_folder, tmp_path / "out", options=ConvertOptions("fp8", rules=("nothing_named_so=keep",)))


# -- dry run ----------------------------------------------------------------------------------

def test_dry_run_writes_nothing_and_explains(cli, llama_folder, tmp_path):
    before = sorted(p.name for p in tmp_path.rglob("*"))
    result = cli("convert", llama_folder, "--to", "w4a16", "--rule", "self_attn=w8a16", "--rule", "down_proj=bf16", "--dry-run",
                 "--max-size", "100KB", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    lines = result.stdout.splitlines()
    for name in llama_state():
        assert any(line.startswith(name + " ") for line in lines), name
    row = next(line for line in lines if line.startswith("model.layers.0.self_attn.q_proj.weight "))
    assert "w8a16" in row and "rule 'self_attn=w8a16'" in row
    assert "rule 'down_proj=bf16'" in next(line for line in lines if line.startswith("model.layers.1.mlp.down_proj.weight "))
    assert "embeddings" in next(line for line in lines if line.startswith("model.embed_tokens.weight "))
    assert "model-00001-of-" in result.stdout
    js = cli("convert", llama_folder, "--to", "w4a16", "--dry-run", "--json", "-o", tmp_path / "out")
    plan = json.loads(js.stdout)
    assert {t["name"]: t["scheme"] for t in plan["tensors"]}["model.layers.0.mlp.up_proj.weight"] == "w4a16"
    assert plan["shards"][0]["file"] == "model.safetensors" and plan["output_bytes"] == plan["shards"][0]["bytes"]
    assert not (tmp_path / "out").exists()
    real = convert(llama_folder, tmp_path / "out", options=ConvertOptions("w4a16"))
    assert real.output_bytes == plan["output_bytes"]


# -- bad input --------------------------------------------------------------------------------

def test_group_size_not_dividing_is_refused_naming_the_tensor(cli, llama_folder, tmp_path):
    result = cli("convert", llama_folder, "--to", "w4a16", "--group-size", "96", "-o", tmp_path / "out")
    assert result.exit_code == 2
    assert "model.layers.0.mlp.down_proj.weight: w4a16 group size 96 does not divide the input dimension 256" in result.stderr
    assert "--rule" in result.stderr
    assert not (tmp_path / "out").exists()


def test_nan_and_inf_weights_are_counted(cli, tmp_path):
    sd = llama_state()
    sd["model.layers.0.mlp.up_proj.weight"][3, 5] = float("nan")
    sd["model.layers.0.mlp.up_proj.weight"][4, 6] = float("inf")
    torch.save(sd, tmp_path / "m.pth")
    result = cli("convert", tmp_path / "m.pth", "--to", "fp8", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.stderr
    assert "warning: 2 NaN / inf weight values in 1 tensor(s)" in result.stdout
    scale = stored(tmp_path / "out")["model.layers.0.mlp.up_proj.weight_scale"]
    assert torch.isnan(scale[3]).all() and torch.isinf(scale[4]).all()


def test_compare_and_verify_read_the_output(cli, llama_folder, tmp_path):
    convert(llama_folder, tmp_path / "out", options=ConvertOptions("w8a16"))
    assert cli("verify", tmp_path / "out").exit_code == 0
    result = cli("compare", llama_folder, tmp_path / "out", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    text = json.dumps(report)
    assert "model.layers.0.mlp.down_proj.weight" in text and "w8a16" in text


def test_keep_rule_with_a_cast_target(llama_folder, tmp_path):
    result = convert(llama_folder, tmp_path / "out", options=ConvertOptions("bf16", rules=("norm=keep",)))
    t = stored(result.write.folder)
    assert t["model.norm.weight"].dtype == torch.float32 and t["lm_head.weight"].dtype == torch.bfloat16
    assert result.kept["model.norm.weight"] is Kept.RULE_KEEP and "lm_head.weight" not in result.kept


def test_sharded_safetensors_input_gives_the_same_tensors(llama_folder, tmp_path):
    from quantkit.reshard import reshard

    sharded = tmp_path / "sharded"
    reshard(llama_folder / "model.safetensors", sharded, max_shard_bytes=100_000)
    assert len(list(sharded.glob("*.safetensors"))) > 1
    a = stored(convert(llama_folder, tmp_path / "a", options=ConvertOptions("w4a16")).write.folder)
    b = stored(convert(sharded, tmp_path / "b", options=ConvertOptions("w4a16", max_shard_bytes=50_000)).write.folder)
    assert sorted(a) == sorted(b) and all(torch.equal(a[n].view(torch.uint8), b[n].view(torch.uint8)) for n in a)
