"""load_state_dict and load_into: original names, tied tensors shared again, modules built on meta."""

from __future__ import annotations

import torch
from torch import nn

from conftest import assert_same_state
from quantkit.loading import load_into, load_state_dict
from quantkit.reshard import reshard


class TinyLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.proj = nn.Linear(4, 4)
        self.lm_head = nn.Linear(4, 10, bias=False)
        self.lm_head.weight = self.embed.weight  # tied


def _saved_model(tmp_path):
    torch.manual_seed(0)
    model = TinyLM()
    torch.save(model.state_dict(), tmp_path / "tiny.pth")
    reshard(tmp_path / "tiny.pth", tmp_path / "out")
    return model


def test_load_state_dict_restores_tied_names_as_one_object(make_checkpoint, tmp_path):
    ckpt = make_checkpoint("pth-zip")
    reshard(ckpt.path, tmp_path / "out")
    state = load_state_dict(tmp_path / "out")
    assert_same_state(state, ckpt.expected)
    assert state["lm_head.weight"] is state["model.embed_tokens.weight"]


def test_load_state_dict_reads_sources_directly(make_checkpoint):
    ckpt = make_checkpoint("pth-zip")
    state = load_state_dict(ckpt.path)
    assert_same_state(state, ckpt.expected)
    assert state["lm_head.weight"] is state["model.embed_tokens.weight"]


def test_load_state_dict_casts_only_floating_point(make_checkpoint, tmp_path):
    ckpt = make_checkpoint("safetensors")
    state = load_state_dict(ckpt.path, dtype=torch.float16)
    for name, tensor in ckpt.expected.items():
        expected_dtype = torch.float16 if tensor.is_floating_point() else tensor.dtype
        assert state[name].dtype == expected_dtype, name


def test_load_into_meta_module_reties_weights(tmp_path):
    original = _saved_model(tmp_path)
    with torch.device("meta"):
        model = TinyLM()
    load_into(model, tmp_path / "out")
    assert model.lm_head.weight is model.embed.weight
    assert not any(p.is_meta for p in model.parameters())
    for name, tensor in original.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    x = torch.tensor([[1, 2, 3]])
    assert torch.equal(model.lm_head(model.proj(model.embed(x))), original.lm_head(original.proj(original.embed(x))))


def test_load_into_uses_tie_weights_when_the_module_has_it(tmp_path):
    _saved_model(tmp_path)
    calls = []

    class WithTie(TinyLM):
        def tie_weights(self):
            calls.append(True)
            self.lm_head.weight = self.embed.weight

    with torch.device("meta"):
        model = WithTie()
    load_into(model, tmp_path / "out")
    assert calls == [True]
    assert model.lm_head.weight is model.embed.weight
