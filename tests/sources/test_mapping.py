"""Mapped reads (sources.mapping): the same bytes as positioned reads, copy-on-write, checked
against the file's size, the .pth CRC still applied, and switched off by QUANTKIT_MAP_READS=0."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from bad_files import flip_data_byte
from quantkit.convert import ConvertOptions, convert
from quantkit.errors import InputError
from quantkit.sources import mapping, open_checkpoint
from quantkit.sources.lazy_pth import LazyPthSource


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    # sizes across the 64 KiB mapping granule, so windows start mid-page and mid-granule
    return {
        "a": torch.randn(7, generator=g),
        "b": torch.randn(300, 131, generator=g).to(torch.bfloat16),
        "c": torch.randn(40000, generator=g),
        "d": torch.arange(5, dtype=torch.int64),
    }


@pytest.fixture(params=["safetensors", "pth"])
def checkpoint(request, tmp_path):
    tensors = _tensors()
    if request.param == "safetensors":
        path = tmp_path / "model.safetensors"
        save_file(tensors, str(path))
    else:
        path = tmp_path / "model.pth"
        torch.save(tensors, path)
    return path, tensors


def _ranges(nbytes: int) -> list[tuple[int, int]]:
    rng = np.random.default_rng(nbytes)
    picks = [(0, nbytes), (0, 0), (nbytes, 0), (nbytes - 1, 1) if nbytes else (0, 0)]
    for _ in range(6):
        start = int(rng.integers(0, nbytes + 1))
        picks.append((start, int(rng.integers(0, nbytes - start + 1))))
    return picks


def test_mapped_bytes_equal_positioned_reads(checkpoint):
    path, _ = checkpoint
    with open_checkpoint(path) as source:
        for name, spec in source.specs.items():
            for start, n in _ranges(spec.nbytes):
                read = bytearray(n)
                source.read_into(name, start, memoryview(read))
                data = source.mapped(name, start, n)
                assert data is not None and data.dtype == np.uint8
                assert data.tobytes() == bytes(read), (name, start, n)


def test_a_write_into_a_mapped_array_never_reaches_the_file(checkpoint):
    path, _ = checkpoint
    before = path.read_bytes()
    with open_checkpoint(path) as source:
        data = source.mapped("c", 0, source.specs["c"].nbytes)
        data[:] = 0xFF  # a kernel working in place changes its own copy only
        assert source.mapped("c", 0, 16).tobytes() != b"\xff" * 16
    assert path.read_bytes() == before


def test_a_file_that_shrank_is_refused_when_mapped(checkpoint):
    path, _ = checkpoint
    with open_checkpoint(path) as source:
        nbytes = source.specs["c"].nbytes
        with open(path, "r+b") as f:
            f.truncate(100)  # every tensor's bytes now lie past the end
        with pytest.raises(InputError, match="data ended early while reading tensor 'c'"):
            source.mapped("c", 0, nbytes)


def test_bytes_of_falls_back_to_a_read_where_mapping_is_off(checkpoint, monkeypatch):
    path, tensors = checkpoint
    monkeypatch.setattr(mapping, "MAP_READS", False)
    with open_checkpoint(path) as source:
        assert source.mapped("c", 0, 8) is None
        buffer = np.zeros(1 << 20, dtype=np.uint8)
        data = source.bytes_of("c", 0, source.specs["c"].nbytes, buffer)
        assert data.base is buffer or np.shares_memory(data, buffer)
        assert data.view(np.float32).tolist() == tensors["c"].tolist()


def test_a_damaged_pth_record_fails_its_crc_through_mapped_reads(tmp_path):
    torch.save(_tensors(), tmp_path / "model.pth")
    flip_data_byte(tmp_path / "model.pth")  # the largest record: "c"
    with open_checkpoint(tmp_path / "model.pth") as source:
        assert isinstance(source, LazyPthSource)
        with pytest.raises(InputError, match="fails its CRC-32 check"):
            source.mapped("c", 0, source.specs["c"].nbytes)


@pytest.mark.parametrize("scheme", ["bf16", "nf4", "fp8"])
def test_mapped_and_read_conversions_write_the_same_bytes(tmp_path, scheme):
    g = torch.Generator().manual_seed(5)
    sd = {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(256, 192, generator=g) for i in range(3)}
    sd["model.norm.weight"] = torch.randn(192, generator=g)
    torch.save(sd, tmp_path / "model.pth")
    outputs = {}
    for setting in ("1", "0"):  # a fresh process each: the switch is read at import
        out = tmp_path / f"out-{setting}"
        code = "import sys; from quantkit.convert import convert, ConvertOptions; convert(sys.argv[1], sys.argv[2], options=ConvertOptions(scheme=sys.argv[3]))"
        subprocess.run([sys.executable, "-c", code, str(tmp_path / "model.pth"), str(out), scheme], check=True,
                       env={**os.environ, "QUANTKIT_MAP_READS": setting})
        outputs[setting] = {p.name: p.read_bytes() for p in sorted(out.glob("*.safetensors"))}
    assert outputs["1"] == outputs["0"] and outputs["1"]
    convert(tmp_path / "model.pth", tmp_path / "in-process", options=ConvertOptions(scheme=scheme))
    assert {p.name: p.read_bytes() for p in sorted((tmp_path / "in-process").glob("*.safetensors"))} == outputs["1"]


def _unaligned_safetensors(path) -> None:
    """A float32 weight at data offset 1 (legal in the format: safetensors itself writes aligned
    offsets, other writers need not), so the mapped array's address is not 4-byte aligned."""
    import json
    import struct

    g = np.random.default_rng(9)
    weight = g.standard_normal((64, 128), dtype=np.float32)
    header = {"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
              "model.layers.0.mlp.up_proj.weight": {"dtype": "F32", "shape": [64, 128], "data_offsets": [1, 1 + weight.nbytes]}}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-aligned, so the weight's address is 1 mod 4
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\x07" + weight.tobytes())


@pytest.mark.parametrize("scheme", ["bf16", "int8", "nf4", "w4a16"])
def test_an_unaligned_tensor_converts_to_the_same_bytes_mapped_or_read(tmp_path, scheme):
    _unaligned_safetensors(tmp_path / "model.safetensors")
    with open_checkpoint(tmp_path / "model.safetensors") as source:
        assert source.mapped("model.layers.0.mlp.up_proj.weight", 0, 4).ctypes.data % 4 == 1
    outputs = {}
    for setting in ("1", "0"):
        out = tmp_path / f"out-{setting}"
        code = "import sys; from quantkit.convert import convert, ConvertOptions; convert(sys.argv[1], sys.argv[2], options=ConvertOptions(scheme=sys.argv[3]))"
        subprocess.run([sys.executable, "-c", code, str(tmp_path / "model.safetensors"), str(out), scheme], check=True,
                       env={**os.environ, "QUANTKIT_MAP_READS": setting})
        outputs[setting] = (out / "model.safetensors").read_bytes()
    assert outputs["1"] == outputs["0"]
