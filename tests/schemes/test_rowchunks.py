"""Quantizing a Linear weight a run of rows at a time gives the whole weight's bytes, for every
chunked scheme, source dtype and special value, on shapes cut into several chunks with a
ragged last one; and a conversion with a tiny chunk bound writes the same files."""

from __future__ import annotations

import hashlib
import json
import sys

import ml_dtypes
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from quantkit.convert import ConvertOptions, convert
from quantkit.dtypes import dtype_of
from quantkit.schemes import SCHEMES, SchemeSettings
from quantkit.schemes import rowchunks
from quantkit.schemes.ct import to_torch
from quantkit.schemes.rowchunks import chunk_rows, quantize_in_chunks, rows_multiple
from quantkit.specs import TensorSpec

NUMPY = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
CHUNKED = ["int8", "nf4", "fp4", "fp8", "fp8-block", "w8a16", "w4a16"]


def _weight(rows: int, cols: int, dtype: str, special: str) -> np.ndarray:
    values = (np.random.default_rng(3).standard_normal((rows, cols)) * 0.05).astype(np.float32)
    values[1, :] = 0.0  # an all-zero row
    if special == "nan":
        values[rows - 2, 5] = np.nan  # in the last chunk
        values[2, 0] = np.nan
    elif special == "inf":
        values[rows // 2, 3] = np.inf
        values[4, 1] = -np.inf
    elif special == "large":  # beyond float16: INT8's scale overflows
        values[rows - 1, 0] = 1e6
    return values.astype(NUMPY[dtype])


def _whole(scheme: str, array: np.ndarray, settings: SchemeSettings) -> list:
    s = SCHEMES[scheme]
    if s.quantizes_arrays:
        return s.quantize_array("m.fc.weight", array, settings=settings)
    tensor = torch.from_numpy(array.view(np.int16)).view(torch.bfloat16) if array.dtype == ml_dtypes.bfloat16 else torch.from_numpy(array)
    return s.quantize("m.fc.weight", tensor, settings=settings)


def _bytes(parts) -> list[tuple[str, tuple, bytes]]:
    out = []
    for name, value in parts:
        if isinstance(value, torch.Tensor):
            value = value.contiguous().view(torch.uint8) if value.dtype.itemsize == 1 and value.is_floating_point() else value
            value = value.view(torch.int16) if value.dtype == torch.bfloat16 else value
            value = value.numpy()
        array = np.ascontiguousarray(value)
        out.append((name, tuple(array.shape), array.tobytes()))
    return out


def _chunked(scheme: str, array: np.ndarray, settings: SchemeSettings, chunk_bytes: int):
    spec = TensorSpec("m.fc.weight", dtype_of(array.dtype), array.shape)
    step = chunk_rows(SCHEMES[scheme], spec, settings, chunk_bytes)
    assert step is not None and -(-array.shape[0] // step) >= 3, "the shape must be cut into several chunks"
    assert step % rows_multiple(SCHEMES[scheme], spec, settings) == 0
    reads = []

    def read_rows(first, count, buffer):
        reads.append((first, count))
        data = buffer[: count * array.shape[1] * array.itemsize]
        data[:] = array[first : first + count].reshape(-1).view(np.uint8)
        return data.view(array.dtype).reshape(count, array.shape[1])

    stored, in_source = quantize_in_chunks(SCHEMES[scheme], spec, read_rows, step, settings=settings)
    assert reads == [(f, min(step, array.shape[0] - f)) for f in range(0, array.shape[0], step)]
    return stored, in_source


@pytest.mark.parametrize("scheme", CHUNKED)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("special", ["none", "nan", "inf", "large"])
def test_chunked_equals_whole(scheme, dtype, special):
    if special == "large" and dtype == "float16":
        pytest.skip("float16 cannot hold the value")
    array = _weight(300, 256, dtype, special)  # fp8-block: chunks of 128 rows, the last one 44
    settings = SchemeSettings(blocksize=64)
    stored, in_source = _chunked(scheme, array, settings, chunk_bytes=128 * 256 * array.itemsize // 3)
    ct = scheme in ("fp8", "fp8-block", "w8a16", "w4a16")
    if ct:  # the reference path stores torch tensors: compared through the same bytes
        stored = [(n, to_torch(a)) for n, a in stored]
    if not (special == "nan" and not ct):  # bitsandbytes' NaN payloads depend on the place in the
        assert _bytes(stored) == _bytes(_whole(scheme, array, settings))  # whole tensor: convert quantizes it whole
    if special in ("nan", "inf"):
        assert in_source == int(np.count_nonzero(~np.isfinite(array.astype(np.float32))))
    elif special == "none":
        assert in_source == (0 if ct else None)  # compressed-tensors counts always, as its whole path


@pytest.mark.parametrize("scheme", ["nf4", "fp4"])
@pytest.mark.parametrize("blocksize", [64, 256])
@pytest.mark.parametrize("double_quant", [False, True])
def test_fourbit_chunks_of_whole_blocks_across_rows(scheme, blocksize, double_quant):
    """96 columns: a block spans rows, so a chunk holds a multiple of blocksize/32 rows; 301
    rows leave a partial last block, only in the last chunk."""
    array = _weight(301, 96, "float32", "none")
    settings = SchemeSettings(blocksize=blocksize, double_quant=double_quant)
    assert rows_multiple(SCHEMES[scheme], TensorSpec("w", dtype_of(np.float32), (301, 96)), settings) == blocksize // 32
    stored, _ = _chunked(scheme, array, settings, chunk_bytes=96 * 4 * 20)
    assert _bytes(stored) == _bytes(_whole(scheme, array, settings))


def test_no_chunks_where_the_weight_fits_or_the_scheme_is_not_row_local():
    spec = TensorSpec("w", dtype_of(np.float32), (64, 256))
    assert chunk_rows(SCHEMES["nf4"], spec, SchemeSettings(), 64 * 256 * 4) is None  # one chunk: whole
    assert chunk_rows(SCHEMES["nf4"], spec, SchemeSettings(), 1) == 1  # at least one multiple of rows
    assert chunk_rows(SCHEMES["fp8-block"], spec, SchemeSettings(), 1) == 64  # one chunk of all its rows (numpy, no torch)
    assert chunk_rows(SCHEMES["fp8"], spec, SchemeSettings(), 64 * 256 * 4) == 64
    assert chunk_rows(SCHEMES["int8"], TensorSpec("b", dtype_of(np.float32), (256,)), SchemeSettings(), 1) is None


def _llama_folder(tmp_path, *, nan: bool = True):
    g = torch.Generator().manual_seed(1)
    sd = {"model.embed_tokens.weight": torch.randn(96, 128, generator=g), "model.norm.weight": torch.ones(128),
          "lm_head.weight": torch.randn(96, 128, generator=g)}
    for proj in ("q", "k", "v", "o"):
        sd[f"model.layers.0.self_attn.{proj}_proj.weight"] = torch.randn(128, 128, generator=g) * 0.02
    sd["model.layers.0.mlp.up_proj.weight"] = torch.randn(384, 128, generator=g) * 0.02
    if nan:
        sd["model.layers.0.mlp.up_proj.weight"][7, 3] = float("nan")
    sd["model.layers.0.mlp.down_proj.weight"] = torch.randn(128, 384, generator=g).to(torch.bfloat16)
    folder = tmp_path / "llama"
    folder.mkdir()
    save_file(sd, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"], "torch_dtype": "float32"}))
    return folder


@pytest.mark.parametrize("source", ["safetensors", "pth"])
@pytest.mark.parametrize("scheme,double_quant", [("int8", False), ("nf4", False), ("nf4", True), ("fp8", False), ("fp8-block", False), ("w4a16", False)])
def test_convert_with_a_tiny_chunk_bound_writes_the_same_files(tmp_path, monkeypatch, scheme, double_quant, source):
    """From a .pth the whole weights go through torch's kernels, the chunks through numpy's."""
    src = _llama_folder(tmp_path)
    if source == "pth":
        from safetensors.torch import load_file

        (src / "model.pth").write_bytes(b"")
        torch.save(load_file(str(src / "model.safetensors")), src / "model.pth")
        (src / "model.safetensors").unlink()
        src = src / "model.pth"
    converting = sys.modules["quantkit.convert"]  # the package exports the function under the same name

    results, calls = [], []
    real = converting.quantize_weight
    monkeypatch.setattr(converting, "quantize_weight", lambda *a, **k: calls.append(a[1].name) or real(*a, **k))
    for label, chunk_bytes in (("whole", 1 << 30), ("chunked", 2048)):
        monkeypatch.setattr(rowchunks, "CHUNK_BYTES", chunk_bytes)
        result = convert(src, tmp_path / label, options=ConvertOptions(scheme, double_quant=double_quant))
        files = sorted(p for p in result.write.folder.iterdir() if p.suffix == ".safetensors")
        results.append(([p.name for p in files], [hashlib.sha256(p.read_bytes()).hexdigest() for p in files], result.nonfinite_created, result.nonfinite))
    assert results[0] == results[1]
    assert results[0][0]
    # every Linear weight went through the chunks (2048 bytes: 4 rows of 128); fp8-block only the one over 128 rows
    assert len(calls) >= (1 if scheme == "fp8-block" else 6)


def test_compressed_tensors_convert_from_safetensors_imports_no_torch(tmp_path):
    """Every Linear weight goes through the numpy row chunks: torch is never imported (a NaN
    would import it, to count what it spread to)."""
    import subprocess
    import textwrap

    src = _llama_folder(tmp_path, nan=False)
    code = textwrap.dedent(f"""
        import sys
        from quantkit.convert import ConvertOptions, convert
        convert({str(src)!r}, {str(tmp_path / 'out')!r}, options=ConvertOptions("fp8"))
        print("torch" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_floats_finite_sees_float8_and_bfloat16_past_the_first_slice():
    weight = np.zeros(3 * (1 << 14) + 5, dtype=ml_dtypes.float8_e4m3fn)
    scale = np.ones(3, dtype=ml_dtypes.bfloat16)
    assert rowchunks.floats_finite([("w", weight), ("s", scale), ("i", np.arange(4))])
    weight[-1] = np.nan
    assert not rowchunks.floats_finite([("w", weight), ("s", scale)])
    scale[1] = np.inf
    assert not rowchunks.floats_finite([("w", np.zeros(4, np.float32)), ("s", scale)])
