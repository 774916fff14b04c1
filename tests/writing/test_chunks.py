"""The chunked, torch-free BF16 / FP16 cast of safetensors inputs: bit for bit what torch's cast
gives, whatever the chunk size, with checksums, overflow counts and errors intact."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from quantkit.writing import chunks as streamcast
from quantkit.writing import pipeline
from quantkit.convert import ConvertOptions, convert
from quantkit.dtypes import BY_ST, dtype_of
from quantkit.errors import VerificationError
from quantkit.schemes.cast import cast
from quantkit.verify import verify_checkpoint
from quantkit.specs import OutSpec
from quantkit.writing.shard import ShardWriter, sha256_of

from conftest import build_checkpoint

TARGETS = {"bf16": torch.bfloat16, "fp16": torch.float16}
FLOATS = [torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.float8_e4m3fn, torch.float8_e5m2]


def special_values(dtype: torch.dtype) -> torch.Tensor:
    """Values where casts go wrong: ties for BF16 rounding, subnormals, FP16's edge, inf, NaN."""
    ties = (torch.arange(-64, 64, dtype=torch.int32) << 16 | 0x8000).view(torch.float32)  # exactly halfway
    near = torch.tensor([65504.0, 65519.99, 65520.0, 70000.0, -1e6, 6.1e-5, 5.96e-8, 2.98e-8, 1e-40, 1.4e-45, 3.4e38])
    edge = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan"), -float("nan")])
    gen = torch.Generator().manual_seed(0)
    spread = torch.randn(4096, generator=gen) * torch.logspace(-30, 30, 4096)
    values = torch.cat([ties, near, edge, spread])
    return values.to(torch.float64).to(dtype) if dtype != torch.float32 else values


def assert_cast_equal(ours: torch.Tensor, source: torch.Tensor, target: torch.dtype) -> None:
    """Bit-equal to torch's cast, except NaN payloads (torch's own CPU kernels differ on them):
    NaN must stay NaN with its sign."""
    expected = source.to(target)
    nan = torch.isnan(source.float())
    bits = lambda t: t.view(torch.int16)  # noqa: E731
    assert torch.equal(bits(ours)[~nan], bits(expected)[~nan])
    assert torch.isnan(ours.float()[nan]).all()
    assert torch.equal(torch.signbit(ours.float()[nan]), torch.signbit(source.float()[nan]))


@pytest.mark.parametrize("target", TARGETS.values(), ids=TARGETS.keys())
@pytest.mark.parametrize("source", FLOATS, ids=str)
def test_cast_into_is_torch_cast(source, target):
    values = special_values(source)
    out = np.zeros(values.numel(), dtype_of(target).numpy)
    src = values.view(torch.uint8).numpy().view(dtype_of(source).numpy)
    overflowed = streamcast.cast_into(src, out)
    ours = torch.from_numpy(out.view(np.int16)).view(target)
    assert_cast_equal(ours, values, target)
    _, expected_overflow = cast(values, target)
    assert overflowed == expected_overflow
    if target == torch.float16 and source in (torch.float32, torch.float64, torch.bfloat16):
        assert overflowed > 0  # 65520, 70000, -1e6, 3.4e38 and the large random values


@given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=300))
def test_bf16_cast_of_any_float32_bits(words):
    values = torch.tensor(np.array(words, dtype=np.uint32).view(np.int32)).view(torch.float32)
    out = np.zeros(len(words), dtype_of(torch.bfloat16).numpy)
    streamcast.cast_into(values.numpy(), out)
    assert_cast_equal(torch.from_numpy(out.view(np.int16)).view(torch.bfloat16), values, torch.bfloat16)


def mixed_state_dict() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    sd = {f"layers.{i}.{str(d).removeprefix('torch.')}": special_values(d)[: 700 + i].reshape(-1) for i, d in enumerate(FLOATS)}
    sd["layers.big"] = torch.randn(37, 129, generator=gen) * 1e5  # overflows FP16 in places
    sd["ints"] = torch.arange(-50, 50, dtype=torch.int32).reshape(10, 10)
    sd["mask"] = torch.rand(33, generator=gen) > 0.5
    sd["scalar"] = torch.tensor(3.140625)
    sd["empty"] = torch.empty(0, 4)
    sd["skipped"] = torch.randn(5, 7, generator=gen)
    return sd


@pytest.mark.parametrize("scheme", ["bf16", "fp16"])
@pytest.mark.parametrize("chunk_bytes", [6, 64, 4 << 20])
def test_chunked_convert_is_torch_cast(tmp_path, monkeypatch, scheme, chunk_bytes):
    monkeypatch.setattr(streamcast, "CHUNK_BYTES", chunk_bytes)
    sd = mixed_state_dict()
    save_file(sd, str(tmp_path / "in.safetensors"))
    result = convert(tmp_path / "in.safetensors", tmp_path / "out", options=ConvertOptions(scheme, skip=("^skipped$",)))
    out = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert sorted(out) == sorted(sd)
    for name, tensor in sd.items():
        if tensor.is_floating_point() and name != "skipped":
            assert out[name].dtype == TARGETS[scheme], name
            assert_cast_equal(out[name], tensor, TARGETS[scheme])
        else:  # integers, bools and --skip: untouched, byte for byte
            assert out[name].dtype == tensor.dtype and torch.equal(out[name].view(torch.uint8), tensor.view(torch.uint8)), name
    expected_overflow = {n: c for n, t in sd.items() if n != "skipped" for c in [cast(t, TARGETS[scheme])[1]] if c}
    assert result.fp16_overflow == expected_overflow
    assert (scheme == "fp16") == bool(expected_overflow)
    manifest = json.loads((tmp_path / "out" / "quantkit.json").read_text())
    assert manifest["files"]["model.safetensors"]["sha256"] == sha256_of(tmp_path / "out" / "model.safetensors")
    assert verify_checkpoint(tmp_path / "out").ok


@pytest.mark.parametrize("kind", ["safetensors", "pth-zip", "pth-legacy"])
def test_chunked_shards_from_every_file_kind(tmp_path, monkeypatch, kind):
    """safetensors and .pth (zip, mapped; legacy, read whole) inputs cast in chunks into several
    shards: torch's cast, bit for bit, and self-consistent files; a .pth tensor saved as a
    strided view is read in C order."""
    monkeypatch.setattr(streamcast, "CHUNK_BYTES", 100)
    monkeypatch.setattr("quantkit.sources.torch_source.TorchSource.remap_bytes", 300)  # re-map mid-run
    sd = {k: v for k, v in mixed_state_dict().items() if k != "skipped" and (kind != "pth-legacy" or v.dtype.itemsize > 1 or not v.is_floating_point())}
    src = tmp_path / ("in.safetensors" if kind == "safetensors" else "in.pth")
    if kind == "safetensors":
        save_file(sd, str(src))
    else:
        sd["strided"] = torch.randn(40, 30).t()  # saved as a view of a transposed storage
        torch.save(sd, src, _use_new_zipfile_serialization=kind == "pth-zip")
    calls = []
    real = pipeline.write_cast_checkpoint
    monkeypatch.setattr(sys.modules["quantkit.convert"], "write_cast_checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    out = tmp_path / "out"
    convert(src, out, options=ConvertOptions("bf16", max_shard_bytes=4000))
    assert calls == [1]
    shards = sorted(out.glob("*.safetensors"))
    assert len(shards) > 1 and verify_checkpoint(out).ok
    loaded = {k: v for shard in shards for k, v in load_file(str(shard)).items()}
    assert sorted(loaded) == sorted(sd)
    for name, tensor in sd.items():
        if tensor.is_floating_point():
            assert_cast_equal(loaded[name], tensor, torch.bfloat16)
        else:
            assert torch.equal(loaded[name], tensor), name


@pytest.mark.parametrize("kind", ["safetensors-sharded", "hf-folder"])
def test_every_safetensors_kind_casts_in_chunks(tmp_path, monkeypatch, kind):
    monkeypatch.setattr(streamcast, "CHUNK_BYTES", 16)
    calls = []
    real = pipeline.write_cast_checkpoint
    monkeypatch.setattr(sys.modules["quantkit.convert"], "write_cast_checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    ckpt = build_checkpoint(kind, tmp_path / "src")
    convert(ckpt.path, tmp_path / "out", options=ConvertOptions("bf16"))
    assert calls == [1]
    out = {}
    for shard in (tmp_path / "out").glob("*.safetensors"):
        out.update(load_file(str(shard)))
    for name, tensor in ckpt.expected.items():
        if tensor.is_floating_point():
            assert_cast_equal(out[name], tensor, torch.bfloat16)
        else:
            assert torch.equal(out[name], tensor), name


def test_progress_adds_up_to_the_input_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(streamcast, "CHUNK_BYTES", 256)
    sd = mixed_state_dict()
    save_file(sd, str(tmp_path / "in.safetensors"))
    seen = []
    convert(tmp_path / "in.safetensors", tmp_path / "out", options=ConvertOptions("bf16"), progress=seen.append)
    assert sum(seen) == sum(t.nbytes for t in sd.values())
    assert len(seen) > len(sd)  # reported chunk by chunk


def test_casting_safetensors_never_imports_torch(tmp_path):
    save_file({"w": torch.randn(300, 200), "n": torch.arange(5)}, str(tmp_path / "in.safetensors"))
    code = (
        "import sys\n"
        "from quantkit import convert, ConvertOptions, inspect_checkpoint\n"
        "from quantkit.verify import verify_checkpoint\n"
        f"convert({str(tmp_path / 'in.safetensors')!r}, {str(tmp_path / 'out')!r}, options=ConvertOptions('fp16'))\n"
        f"inspect_checkpoint({str(tmp_path / 'out')!r}); assert verify_checkpoint({str(tmp_path / 'out')!r}).ok\n"
        "print(sorted(m for m in ('torch', 'transformers', 'bitsandbytes') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert torch.equal(load_file(str(tmp_path / "out" / "model.safetensors"))["n"], torch.arange(5))


def test_cli_help_and_version_do_not_import_torch():
    code = "import sys\nfrom quantkit_cli.main import app\nprint('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_writer_pieces_are_checked(tmp_path):
    spec = OutSpec("w", BY_ST["F32"], (4,))
    writer = ShardWriter(tmp_path / "x.safetensors", [spec], {})
    data = memoryview(np.arange(4, dtype=np.float32).view(np.uint8))
    with pytest.raises(VerificationError, match="outside tensor 'w'"):
        writer.write_piece("w", 8, data[:12])
    with pytest.raises(VerificationError, match="not planned"):
        writer.write_piece("v", 0, data[:4])
    writer.write_piece("w", 0, data[:8])
    writer.wrote_piece("w", 0, data[:8])
    with pytest.raises(VerificationError, match="never written"):
        writer.finish()  # half of w is missing
    writer = ShardWriter(tmp_path / "y.safetensors", [spec], {})
    for start in (8, 0):  # out of order: hashed once the gap is filled
        writer.write_piece("w", start, data[start : start + 8])
        writer.wrote_piece("w", start, data[start : start + 8])
    shard = writer.finish()
    assert shard.sha256 == sha256_of(tmp_path / "y.safetensors")
    assert torch.equal(load_file(str(tmp_path / "y.safetensors"))["w"], torch.arange(4, dtype=torch.float32))
    with pytest.raises(VerificationError, match="written twice"):
        writer.wrote_piece("w", 0, data[:4])


def test_dtype_equals_torch_dtype_both_ways():
    for d in BY_ST.values():
        t = d.torch
        assert d == t and t == d and not (d != t) and dtype_of(t) is d and dtype_of(d.st) is d and dtype_of(d.name) is d
        assert str(d) == str(t) and d.itemsize == t.itemsize and d.is_floating_point == t.is_floating_point
        assert dtype_of(d.numpy) is d
    assert BY_ST["F32"] != torch.float16 and BY_ST["F32"] != "F32"
    with pytest.raises(ValueError, match="no safetensors equivalent"):
        dtype_of(torch.complex64)

