"""convert: schemes, tensor selection, layouts, errors; transformers parity on real small models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from quantkit import load_into, load_state_dict
from quantkit.convert import ConvertOptions, convert
from quantkit.errors import InputError, UsageError
from quantkit.schemes.cast import cast
from quantkit_cli.main import app

runner = CliRunner()


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(50, 64)
        self.fc1 = torch.nn.Linear(64, 128)
        self.norm = torch.nn.LayerNorm(128)
        self.fc2 = torch.nn.Linear(128, 64)
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.lm_head = torch.nn.Linear(64, 50, bias=False)
        self.lm_head.weight = self.embed.weight


@pytest.fixture
def tiny_pth(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "tiny.pth"
    torch.save({"model_state_dict": TinyNet().state_dict(), "epoch": 7}, path)
    return path


def stored(folder: Path) -> dict[str, torch.Tensor]:
    return load_state_dict(folder, dequantize=False)


@pytest.mark.parametrize("scheme", ["int8", "nf4", "fp4"])
def test_bare_pth_quantizes_linear_weights_only(tiny_pth, tmp_path, scheme):
    result = convert(tiny_pth, tmp_path / "out", options=ConvertOptions(scheme))
    assert result.quantized == ["fc1.weight", "fc2.weight"]
    assert result.kept["embed.weight"] == "tied weights"
    assert result.kept["conv.weight"] == "convolution kernel or other shape"
    assert result.kept["norm.weight"] == "bias or norm"
    s = stored(tmp_path / "out")
    if scheme == "int8":
        assert s["fc1.weight"].dtype == torch.int8 and s["fc1.SCB"].shape == (128,)
        assert s["fc1.weight_format"].item() == 0 and s["fc1.weight_format"].shape == ()
    else:
        assert s["fc1.weight"].dtype == torch.uint8 and s["fc1.weight"].shape == (64 * 128 // 2, 1)
        state = json.loads(bytes(s[f"fc1.weight.quant_state.bitsandbytes__{scheme}"].tolist()))
        assert state == {"quant_type": scheme, "blocksize": 64, "dtype": "float32", "shape": [128, 64]}
    assert s["conv.weight"].dtype == torch.float32 and "lm_head.weight" in s  # tied name restored


@pytest.mark.parametrize("scheme,tolerance", [("int8", 0.02), ("nf4", 0.15), ("fp4", 0.2), ("bf16", 0.01), ("fp16", 0.001)])
def test_dequantized_load_returns_original_names_and_shapes(tiny_pth, tmp_path, scheme, tolerance):
    original = load_state_dict(tiny_pth)
    convert(tiny_pth, tmp_path / "out", options=ConvertOptions(scheme, double_quant=scheme == "nf4"))
    back = load_state_dict(tmp_path / "out", dtype=torch.float32)
    assert set(back) == set(original)
    for name, tensor in original.items():
        assert back[name].shape == tensor.shape, name
        rel = (back[name].float() - tensor.float()).norm() / tensor.float().norm().clamp_min(1e-12)
        assert rel < tolerance, (name, float(rel))
    assert back["lm_head.weight"] is back["embed.weight"]


def test_load_into_meta_module_with_quantized_checkpoint(tiny_pth, tmp_path):
    convert(tiny_pth, tmp_path / "out", options=ConvertOptions("nf4"))
    with torch.device("meta"):
        model = TinyNet()
    load_into(model, tmp_path / "out")
    assert model.fc1.weight.device.type == "cpu" and model.fc1.weight.dtype == torch.float32
    assert model.lm_head.weight is model.embed.weight


def test_skip_only_and_rest_dtype(tiny_pth, tmp_path):
    r = convert(tiny_pth, tmp_path / "a", options=ConvertOptions("int8", skip=(r"fc2",), rest_dtype="bf16"))
    assert r.quantized == ["fc1.weight"] and r.kept["fc2.weight"] == "--skip"
    s = stored(tmp_path / "a")
    assert s["fc2.weight"].dtype == torch.float32  # --skip leaves a tensor exactly as it was
    assert s["norm.weight"].dtype == torch.bfloat16  # the rest follow --rest-dtype
    r = convert(tiny_pth, tmp_path / "b", options=ConvertOptions("nf4", only=(r"fc2\.",)))
    assert r.quantized == ["fc2.weight"] and r.kept["fc1.weight"] == "not matched by --only"


def test_cast_counts_fp16_overflow():
    t = torch.tensor([1.0, 70000.0, -1e6, float("inf"), 65504.0])
    out, overflow = cast(t, torch.float16)
    assert overflow == 2 and out.dtype == torch.float16
    ints, overflow = cast(torch.arange(3), torch.float16)
    assert overflow == 0 and ints.dtype == torch.int64


def test_fp16_overflow_reported_by_convert(tmp_path):
    save_file({"w": torch.tensor([[1.0, 1e5], [2.0, 3.0]])}, tmp_path / "m.safetensors")
    r = convert(tmp_path / "m.safetensors", tmp_path / "o", options=ConvertOptions("fp16"))
    assert r.fp16_overflow == {"w": 1}


def test_integer_tensors_untouched_by_casts(tmp_path):
    save_file({"w": torch.randn(4, 4), "ids": torch.arange(5)}, tmp_path / "m.safetensors")
    convert(tmp_path / "m.safetensors", tmp_path / "o", options=ConvertOptions("bf16"))
    s = stored(tmp_path / "o")
    assert s["ids"].dtype == torch.int64 and torch.equal(s["ids"], torch.arange(5))
    assert s["w"].dtype == torch.bfloat16


def test_double_quant_layout_and_sharding(tiny_pth, tmp_path):
    r = convert(tiny_pth, tmp_path / "o", options=ConvertOptions("nf4", double_quant=True, max_shard_bytes=8000))
    assert len(r.write.shards) > 1
    index = json.loads((tmp_path / "o" / "model.safetensors.index.json").read_text())
    s = stored(tmp_path / "o")
    assert set(index["weight_map"]) == set(s) - {"lm_head.weight"}
    assert s["fc1.weight.absmax"].dtype == torch.uint8 and s["fc1.weight.nested_quant_map"].shape == (256,)
    # a quantized weight's parts are planned together, in one shard
    assert len({index["weight_map"][k] for k in index["weight_map"] if k.startswith("fc1.weight")}) == 1


def test_errors_are_clear_and_nothing_is_written(tmp_path):
    save_file({"ids": torch.arange(4)}, tmp_path / "ints.safetensors")
    with pytest.raises(InputError, match="no floating-point tensors"):
        convert(tmp_path / "ints.safetensors", tmp_path / "o", options=ConvertOptions("int8"))
    with pytest.raises(UsageError, match="unknown scheme 'int3'"):
        ConvertOptions("int3")
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.*"))
    result = runner.invoke(app, ["convert", str(tmp_path / "ints.safetensors"), "--to", "nf4", "-o", str(tmp_path / "o")])
    assert result.exit_code == 3 and "no floating-point tensors" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["convert", str(tmp_path / "ints.safetensors"), "--to", "int3"])
    assert result.exit_code == 2 and "unknown scheme 'int3'" in result.output


def test_cli_convert_summary_json(tiny_pth, tmp_path):
    result = runner.invoke(app, ["convert", str(tiny_pth), "--to", "int8", "-o", str(tmp_path / "o"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["num_quantized"] == 2 and summary["output_bytes"] < summary["input_bytes"]
    on_disk = sum(p.stat().st_size for p in (tmp_path / "o").glob("*.safetensors"))
    assert summary["output_file_bytes"] == on_disk
    assert summary["bits_per_weight"] == pytest.approx(summary["output_bytes"] * 8 / summary["num_parameters"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("scheme", ["int8", "nf4", "fp4"])
def test_cpu_and_gpu_outputs_agree(tiny_pth, tmp_path, scheme):
    convert(tiny_pth, tmp_path / "cpu", options=ConvertOptions(scheme, device="cpu"))
    convert(tiny_pth, tmp_path / "gpu", options=ConvertOptions(scheme, device="cuda"))
    a, b = stored(tmp_path / "cpu"), stored(tmp_path / "gpu")
    assert set(a) == set(b)
    for name in a:
        if a[name].dtype in (torch.int8, torch.uint8) and a[name].numel() > 16:
            # codes may differ by one step where a value sits on a rounding boundary
            assert (a[name].float() - b[name].float()).abs().gt(0).float().mean() < 0.01, name
        else:
            torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)


def test_progress_counts_every_input_byte_once(tiny_pth, tmp_path):
    from quantkit import open_checkpoint

    seen: list[int] = []
    with open_checkpoint(tiny_pth) as source:
        convert(source, tmp_path / "o", options=ConvertOptions("nf4"), progress=seen.append)
        assert sum(seen) == source.total_bytes and len(seen) == len(source.specs)


@pytest.mark.parametrize("suffix", [".json", ".md", ".html"])
def test_cli_convert_writes_a_report(tiny_pth, tmp_path, suffix):
    report = tmp_path / f"report{suffix}"
    result = runner.invoke(app, ["convert", str(tiny_pth), "--to", "int8", "-o", str(tmp_path / "o"), "-q", "--report", str(report)])
    assert result.exit_code == 0, result.output
    text = report.read_text()
    if suffix == ".json":
        data = json.loads(text)
        assert data["size"]["converted"]["tensor_bytes"] < data["size"]["original"]["tensor_bytes"]
        assert {t["name"] for t in data["tensors"]["tensors"] if t["quantized"]} == {"fc1.weight", "fc2.weight"}
    elif suffix == ".md":
        assert text.startswith("#") and "fc1.weight" in text
    else:
        assert text.lstrip().lower().startswith("<!doctype html") and "<svg" in text


def test_conversion_quantizes_on_the_cpu_unless_cuda_is_named(tiny_pth, tmp_path):
    from quantkit.devices import conversion_device

    assert conversion_device("auto") == "cpu" and conversion_device("cpu") == "cpu"
    r = convert(tiny_pth, tmp_path / "o", options=ConvertOptions("int8"))  # device defaults to auto
    assert r.device == "cpu"


def test_options_accept_every_device_resolve_device_accepts():
    assert ConvertOptions("int8", device="cuda:1").device == "cuda:1"
    for bad in ("cuda:", "cuda:x", "gpu"):
        with pytest.raises(UsageError, match="choose auto, cpu, cuda or cuda:N"):
            ConvertOptions("int8", device=bad)
