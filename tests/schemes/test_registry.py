"""Adding a scheme is its module plus one registry line: a toy scheme converts and loads back."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from quantkit import inspect_checkpoint, load_state_dict
from quantkit.convert import ConvertOptions, convert
from quantkit.errors import UsageError
from quantkit.dtypes import FLOAT32
from quantkit.schemes import SCHEMES, SchemeSettings, get_scheme, register, rowchunks
from quantkit.schemes.registry import schemes_help
from quantkit.specs import TensorSpec

from toy_scheme import TOY, TOY_ROWS, ToyRowInt8


@pytest.fixture
def toy_registered():
    register(TOY)  # the one line a new scheme adds to quantkit/schemes/registry.py
    yield TOY
    SCHEMES.pop(TOY.name)


@pytest.fixture
def toy_rows_registered():
    register(TOY_ROWS)
    yield TOY_ROWS
    SCHEMES.pop(TOY_ROWS.name)


def _model(tmp_path):
    gen = torch.Generator().manual_seed(0)
    sd = {"layer.0.fc.weight": torch.randn(16, 8, generator=gen), "layer.0.fc.bias": torch.randn(16, generator=gen),
          "layer.0.norm.weight": torch.ones(8)}
    folder = tmp_path / "model"
    folder.mkdir()
    save_file(sd, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "torch_dtype": "float32"}))
    return folder, sd


def test_builtin_schemes_are_registered():
    assert list(SCHEMES) == ["bf16", "fp16", "int8", "nf4", "fp4", "fp8", "fp8-block", "w8a16", "w4a16"]
    assert {s.family for s in SCHEMES.values()} == {"cast", "bitsandbytes", "compressed-tensors"}
    assert all(name in schemes_help() for name in SCHEMES)
    with pytest.raises(UsageError, match="choose one of bf16, fp16, int8, nf4, fp4, fp8, fp8-block, w8a16, w4a16"):
        get_scheme("fp6")


def test_a_registered_scheme_converts_and_loads_back(tmp_path, toy_registered):
    folder, sd = _model(tmp_path)
    result = convert(folder, tmp_path / "out", options=ConvertOptions("toy-int8"))
    assert result.quantized == ["layer.0.fc.weight"]
    assert result.kept["layer.0.fc.bias"] == "bias or norm"
    assert result.output_bytes_by_dtype == {"float32": 16 * 4 + 8 * 4 + 4, "int8": 16 * 8}
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["quantization_config"] == {"quant_method": "toy-int8"}
    loaded = load_state_dict(tmp_path / "out")
    assert sorted(loaded) == sorted(sd)
    weight = sd["layer.0.fc.weight"]
    assert (loaded["layer.0.fc.weight"] - weight).abs().max() <= weight.abs().max() / 127
    assert torch.equal(loaded["layer.0.fc.bias"], sd["layer.0.fc.bias"])
    anatomy = inspect_checkpoint(tmp_path / "out")
    assert anatomy.quantization["scheme"] == "toy-int8"


def test_the_cli_offers_registered_schemes(cli):
    result = cli("convert", "--help")
    assert result.exit_code == 0
    for name in SCHEMES:
        assert name in result.stdout


def _shards(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.safetensors"))}


def test_a_scheme_quantized_whole_opts_out_of_row_chunks(tmp_path, monkeypatch, toy_registered):
    """The per-tensor toy declares no row multiple: with any chunk bound it is quantized whole."""
    assert rowchunks.chunk_rows(TOY, TensorSpec("w", FLOAT32, (16, 8)), SchemeSettings(), 1) is None
    folder, _ = _model(tmp_path)
    outputs = []
    for label, chunk_bytes in (("whole", 1 << 30), ("tiny", 1)):
        monkeypatch.setattr(rowchunks, "CHUNK_BYTES", chunk_bytes)
        convert(folder, tmp_path / label, options=ConvertOptions("toy-int8"))
        outputs.append(_shards(tmp_path / label))
    assert outputs[0] == outputs[1] and outputs[0]


def test_a_registered_scheme_opts_in_to_row_chunks(tmp_path, monkeypatch, toy_rows_registered):
    """The per-row toy declares its row multiple, chunk quantizer and merge: convert reads and
    quantizes its weight 5 rows at a time (numpy) and writes the bytes its whole-weight torch
    path writes."""
    folder, sd = _model(tmp_path)  # layer.0.fc.weight: 16 rows of 8 float32
    chunks = []
    real = ToyRowInt8.quantize_rows
    monkeypatch.setattr(ToyRowInt8, "quantize_rows", lambda self, name, rows, settings: chunks.append((name, rows.shape)) or real(self, name, rows, settings))
    outputs = []
    for label, chunk_bytes in (("whole", 1 << 30), ("chunked", 5 * 8 * 4)):
        monkeypatch.setattr(rowchunks, "CHUNK_BYTES", chunk_bytes)
        result = convert(folder, tmp_path / label, options=ConvertOptions("toy-rows"))
        assert result.quantized == ["layer.0.fc.weight"]
        outputs.append(_shards(tmp_path / label))
    assert chunks == [("layer.0.fc.weight", (5, 8))] * 3 + [("layer.0.fc.weight", (1, 8))]  # only the chunked run
    assert outputs[0] == outputs[1] and outputs[0]
    weight = sd["layer.0.fc.weight"]
    loaded = load_state_dict(tmp_path / "chunked")["layer.0.fc.weight"]
    assert ((loaded - weight).abs().amax(dim=1) <= weight.abs().amax(dim=1) / 254 + 1e-6).all()
