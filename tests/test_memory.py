"""Memory estimates: the standard formulas, config reading, and their place in `inspect`."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from quantkit.anatomy import inspect_checkpoint
from quantkit.memory import ModelShape, activation_bytes, estimate_memory
from quantkit_cli.main import app
from report_helpers import save, tiny_state_dict

GIB = 2**30


def test_weights_at_each_precision():
    m = estimate_memory(7_000_000_000)
    assert m.weights_bytes == {"fp32": 28e9, "bf16": 14e9, "fp16": 14e9, "int8": 7e9, "int4": 3.5e9}
    assert estimate_memory(3).weights_bytes["int4"] == 2  # half bytes round up


def test_training_model_states_are_16_bytes_per_parameter_in_mixed_precision():
    m = estimate_memory(1_000_000)
    assert m.training["bytes_per_parameter"] == 2 + 2 + 12
    assert m.training["model_states_bytes"] == 16_000_000
    fp32 = estimate_memory(1_000_000, weight_bytes=4, gradient_bytes=4)
    assert fp32.training["model_states_bytes"] == 20_000_000


def test_activations_follow_the_formula():
    # p = 2 bytes: L*b*s*h*(34 + 5*a*s/h) (Korthikanti et al.)
    L, b, s, h, a = 24, 4, 2048, 2048, 16
    expected = L * b * s * h * (34 + 5 * a * s / h)
    assert activation_bytes(ModelShape(L, h, a), batch_size=b, seq_len=s) == pytest.approx(expected)
    # p = 4: the general form
    p = 4
    general = L * b * s * h * p * (16 + 2 / p + (a * s / h) * (2 + 1 / p))
    assert activation_bytes(ModelShape(L, h, a), batch_size=b, seq_len=s, bytes_per_value=p) == pytest.approx(general)


def test_gpus_needed_round_up_per_workload():
    m = estimate_memory(10 * GIB, gpu_gb=24, shape=ModelShape(2, 64, 4), seq_len=16)
    assert m.gpu_memory_bytes == 24 * GIB
    assert m.gpus_needed["fp32"] == 2  # 40 GiB / 24 GiB
    assert m.gpus_needed["int8"] == 1
    assert m.gpus_needed["training"] == -(-m.training_total_bytes // (24 * GIB))
    assert m.training_total_bytes == m.training["model_states_bytes"] + m.activations.bytes


@pytest.mark.parametrize(
    "config, shape",
    [
        ({"num_hidden_layers": 6, "hidden_size": 384, "num_attention_heads": 12, "max_position_embeddings": 512}, ModelShape(6, 384, 12, 512)),
        ({"n_layer": 12, "n_embd": 768, "n_head": 12, "n_positions": 1024}, ModelShape(12, 768, 12, 1024)),
        ({"model_type": "llava", "text_config": {"num_hidden_layers": 2, "hidden_size": 8, "num_attention_heads": 2}}, ModelShape(2, 8, 2)),
        ({"hidden_size": 8}, None),
    ],
)
def test_shape_from_config(config, shape):
    assert ModelShape.from_config(config) == shape


def test_seq_len_defaults_to_model_context_capped():
    assert estimate_memory(10, shape=ModelShape(1, 8, 2, 512)).activations.seq_len == 512
    assert estimate_memory(10, shape=ModelShape(1, 8, 2, 131072)).activations.seq_len == 2048
    assert estimate_memory(10, shape=ModelShape(1, 8, 2), seq_len=100).activations.seq_len == 100
    assert "activations not estimated" in estimate_memory(10).notes[0]


@pytest.fixture
def hf_folder(tmp_path):
    folder = tmp_path / "hf"
    save(tiny_state_dict(), folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"num_hidden_layers": 2, "hidden_size": 16, "num_attention_heads": 4, "max_position_embeddings": 64}))
    return folder


def test_inspect_carries_memory(hf_folder):
    anatomy = inspect_checkpoint(hf_folder, memory_options={"gpu_gb": 24})
    memory = anatomy.to_dict()["memory"]
    assert memory["num_parameters"] == anatomy.num_parameters
    assert memory["weights_bytes"]["stored"] == anatomy.total_bytes
    assert memory["activations"]["num_layers"] == 2 and memory["activations"]["seq_len"] == 64
    assert memory["gpus_needed"]["fp32"] == 1


def test_inspect_cli_json_and_text(hf_folder):
    runner = CliRunner()
    result = runner.invoke(app, ["inspect", str(hf_folder), "--json", "--gpu-gb", "8", "--seq-len", "32", "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    memory = json.loads(result.stdout)["memory"]
    assert set(memory) == {"num_parameters", "weights_bytes", "training", "activations", "training_total_bytes",
                           "gpu_memory_bytes", "gpus_needed", "notes"}
    assert (memory["activations"]["seq_len"], memory["activations"]["batch_size"]) == (32, 2)
    assert memory["gpu_memory_bytes"] == 8 * GIB
    text = runner.invoke(app, ["inspect", str(hf_folder)])
    assert "memory estimate: weights fp32" in text.stdout and "16 bytes/param" in text.stdout
