"""write_checkpoint's pipeline (produce on worker threads, write in order) changes no byte."""

from __future__ import annotations

import functools
import importlib
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from quantkit.convert import ConvertOptions, convert
from quantkit.writing import write_checkpoint
from quantkit.planner import plan_shards
from quantkit.sources import open_checkpoint
from quantkit.specs import OutSpec

METADATA = {"format": "pt"}


def _tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for i in range(12):
        dtype = [torch.float32, torch.bfloat16, torch.float16, torch.int8][i % 4]
        t = torch.randn((17 + i, 8 + 3 * i), generator=gen)
        out[f"layer.{i}.weight"] = t.to(dtype) if dtype.is_floating_point else (t * 20).to(dtype)
    out["scalar"] = torch.tensor(3.0)
    out["empty"] = torch.zeros((0, 4))
    return out


def _plan_and_outputs(tensors: dict[str, torch.Tensor], max_bytes: int):
    outputs = {n: [OutSpec(n, t.dtype, tuple(t.shape))] for n, t in tensors.items()}
    plan = plan_shards([(n, t.numel() * t.element_size()) for n, t in tensors.items()], max_bytes)
    return plan, outputs


@pytest.mark.parametrize("workers", [0, 1, 2, 4])
def test_shards_are_byte_identical_to_save_file(tmp_path: Path, workers: int):
    tensors = _tensors()
    plan, outputs = _plan_and_outputs(tensors, 2_000)
    assert len(plan.shards) > 3
    folder = tmp_path / "out"
    folder.mkdir()
    result = write_checkpoint(
        folder, plan, outputs, lambda n: [(n, tensors[n])], metadata=METADATA, manifest={}, workers=workers, window=2
    )
    assert [s.path.name for s in result.shards] == plan.file_names()
    for shard, units in zip(result.shards, plan.shards):
        expected = tmp_path / f"expected-{shard.path.name}"
        save_file({n: tensors[n] for n in units}, expected, metadata=METADATA)
        assert shard.path.read_bytes() == expected.read_bytes()


@pytest.mark.parametrize(("window", "ahead_bytes", "most"), [(3, 1 << 20, 3), (8, 600, 2), (3, 1, 1)])
def test_memory_stays_bounded_by_the_window(tmp_path: Path, window: int, ahead_bytes: int, most: int):
    tensors = {f"t{i}": torch.full((64,), float(i)) for i in range(40)}
    plan, outputs = _plan_and_outputs(tensors, 1_000)
    lock = threading.Lock()
    state = {"produced": 0, "written": 0, "most_ahead": 0}

    def produce(name):
        with lock:
            state["produced"] += 1
            state["most_ahead"] = max(state["most_ahead"], state["produced"] - state["written"])
        return [(name, tensors[name])]

    def progress(_):
        with lock:
            state["written"] += 1

    folder = tmp_path / "out"
    folder.mkdir()
    write_checkpoint(
        folder, plan, outputs, produce, metadata={}, manifest={}, progress=progress, workers=2, window=window, ahead_bytes=ahead_bytes
    )
    assert state["written"] == 40
    assert state["most_ahead"] <= most + 1  # `most` produced ahead, plus the one being written


def test_errors_from_produce_propagate(tmp_path: Path):
    tensors = _tensors()
    plan, outputs = _plan_and_outputs(tensors, 2_000)

    def produce(name):
        if name == "layer.7.weight":
            raise RuntimeError("boom in layer 7")
        return [(name, tensors[name])]

    folder = tmp_path / "out"
    folder.mkdir()
    with pytest.raises(RuntimeError, match="boom in layer 7"):
        write_checkpoint(folder, plan, outputs, produce, metadata={}, manifest={}, workers=2)


@pytest.mark.parametrize("kind", ["safetensors", "pth-zip", "pth-legacy"])
def test_concurrent_reads_of_one_source(tmp_path: Path, monkeypatch, kind):
    tensors = _tensors(seed=3)
    path = tmp_path / ("model.safetensors" if kind == "safetensors" else "model.pth")
    if kind == "safetensors":
        save_file(tensors, path)
    else:
        torch.save(tensors, path, _use_new_zipfile_serialization=kind == "pth-zip")
        # re-map the .pth after every tensor: mappings are swapped while other threads hold tensors
        monkeypatch.setattr("quantkit.sources.torch_source.TorchSource.remap_bytes", 1)
    with open_checkpoint(path) as source:
        assert source.concurrent_reads
        names = list(tensors) * 20
        errors = []

        def read(chunk):
            for n in chunk:
                got = source.get_tensor(n)
                if got.dtype != tensors[n].dtype or not torch.equal(got.view(-1).view(torch.uint8), tensors[n].reshape(-1).view(torch.uint8)):
                    errors.append(n)

        threads = [threading.Thread(target=read, args=(names[i::4],)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []


def _hf_folder(tmp_path: Path) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_embd=64, n_layer=2, n_head=2, vocab_size=128, n_positions=32, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    folder = tmp_path / "gpt2-tiny"
    model.save_pretrained(folder, max_shard_size="100KB")
    return folder


@pytest.mark.parametrize("scheme", ["bf16", "int8", "nf4"])
def test_convert_pipelined_equals_sequential(tmp_path: Path, monkeypatch, scheme: str):
    pytest.importorskip("transformers")
    src = _hf_folder(tmp_path)
    options = ConvertOptions(scheme, max_shard_bytes=60_000)
    piped = convert(src, tmp_path / "piped", options=options)
    assert len(piped.write.shards) > 1
    monkeypatch.setattr(importlib.import_module("quantkit.convert"), "write_checkpoint", functools.partial(write_checkpoint, workers=0))
    sequential = convert(src, tmp_path / "sequential", options=options)
    files = sorted(p.name for p in (tmp_path / "piped").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "sequential").iterdir())
    for name in files:
        if name == "quantkit.json":
            continue
        assert (tmp_path / "piped" / name).read_bytes() == (tmp_path / "sequential" / name).read_bytes(), name
    assert [s.sha256 for s in piped.write.shards] == [s.sha256 for s in sequential.write.shards]
