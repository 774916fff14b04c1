"""Pickled torch checkpoints: finding the weights, shared storage, safety, lazy shards."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from quantkit.sources.torch_source import dedupe_shared, describe, detect_torch_format, find_weights, open_torch_file


def test_find_weights_bare_state_dict():
    sd = {"a": torch.ones(2), "b": torch.zeros(1)}
    where, tensors, rest = find_weights(sd)
    assert (where, list(tensors), rest) == ("", ["a", "b"], {})


def test_find_weights_nested_under_a_wrapper_key():
    sd = {"a": torch.ones(2)}
    where, tensors, rest = find_weights({"state_dict": sd, "epoch": 2, "config": {"lr": 0.1}})
    assert where == "state_dict"
    assert list(tensors) == ["a"]
    assert set(rest) == {"epoch", "config"}


def test_find_weights_flattens_nested_modules():
    _, tensors, _ = find_weights({"model": {"encoder": {"w": torch.ones(1)}, "head": {"b": torch.ones(1)}}})
    assert sorted(tensors) == ["encoder.w", "head.b"]


def test_find_weights_single_tensor():
    assert list(find_weights(torch.ones(3))[1]) == ["tensor"]


def test_dedupe_keeps_the_embedding_name_and_separates_views():
    emb = torch.randn(4, 2)
    base = torch.randn(3, 3)
    specs, aliases = dedupe_shared({"lm_head.weight": emb, "wte.weight": emb, "base": base, "row": base[1], "e1": torch.empty(0), "e2": torch.empty(0)})
    assert aliases == {"lm_head.weight": "wte.weight"}
    assert set(specs) == {"wte.weight", "base", "row", "e1", "e2"}


def test_describe():
    assert describe(3) == "3"
    assert describe(torch.ones(2, dtype=torch.int8)) == "tensor int8 [2]"
    assert describe([1, 2]) == "list of 2 items"
    assert describe("x" * 100).endswith("...")
    assert describe({"a": 1}) == "dict with 1 keys (a)"


def test_detect_format(tmp_path):
    torch.save({"a": torch.ones(1)}, tmp_path / "z.pth")
    torch.save({"a": torch.ones(1)}, tmp_path / "l.pth", _use_new_zipfile_serialization=False)
    (tmp_path / "t.txt").write_text("hello")
    assert detect_torch_format(tmp_path / "z.pth") == "torch-zip"
    assert detect_torch_format(tmp_path / "l.pth") == "torch-legacy"
    assert detect_torch_format(tmp_path / "t.txt") is None


def test_zip_tensors_are_memory_mapped_and_bit_exact(small_pth):
    expected = torch.load(small_pth, weights_only=True)
    with open_torch_file(small_pth) as source:
        for name in source.specs:
            tensor = source.get_tensor(name)
            assert torch.equal(tensor.reshape(-1).view(torch.uint8), expected[name].reshape(-1).contiguous().view(torch.uint8))


def _rss_file_bytes() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("RssFile:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no RssFile")


def _many_tensor_pth(path, count=24, numel=2**20):
    gen = torch.Generator().manual_seed(0)
    tensors = {f"t{i}": torch.randn(numel, generator=gen) for i in range(count)}
    torch.save(tensors, path)
    return tensors


def test_zip_shard_is_mapped_afresh_after_the_byte_budget(tmp_path, monkeypatch):
    from quantkit.sources import torch_source

    expected = _many_tensor_pth(tmp_path / "m.pth", count=10, numel=1000)
    loads = []
    real_load = torch_source.load_pickle
    monkeypatch.setattr(torch_source, "load_pickle", lambda path, mmap: loads.append(mmap) or real_load(path, mmap=mmap))
    with open_torch_file(tmp_path / "m.pth") as source:
        source.remap_bytes = 8000  # two 4000-byte tensors per mapping
        for name in source.specs:
            assert torch.equal(source.get_tensor(name), expected[name])
    assert loads == [True] * 5  # two tensors per mapping; the first mapping (made to list the specs) serves t0, t1


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_reading_a_pth_keeps_file_backed_rss_near_the_budget(tmp_path):
    _many_tensor_pth(tmp_path / "m.pth", count=24)  # 96 MiB of 4 MiB tensors
    with open_torch_file(tmp_path / "m.pth") as source:
        source.remap_bytes = 8 * 2**20
        start = peak = _rss_file_bytes()
        for name in source.specs:
            float(source.get_tensor(name).sum())  # touches every page of the tensor
            peak = max(peak, _rss_file_bytes())
    # one mapping for the whole file would leave all 96 MiB resident
    assert peak - start < 40 * 2**20, f"file-backed RSS grew by {(peak - start) / 2**20:.0f} MiB"


def test_optimizer_only_checkpoint_holds_no_weights():
    model = torch.nn.Linear(4, 4)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    where, tensors, rest = find_weights(optimizer.state_dict())
    assert tensors == {} and list(rest) == ["optimizer"]
    assert describe(rest["optimizer"]).startswith("optimizer state for 2 parameters (6 tensors")
