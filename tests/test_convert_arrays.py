"""The CPU quantizers on numpy arrays (read_into buffers): the same bytes as on torch tensors,
and a safetensors conversion that never imports torch."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import torch

from quantkit.schemes import SCHEMES, SchemeSettings

NUMPY = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


def _bytes(parts) -> list[tuple[str, str, tuple, bytes]]:
    out = []
    for name, value in parts:
        array = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
        out.append((name, array.dtype.name, tuple(array.shape), np.ascontiguousarray(array).tobytes()))
    return out


@pytest.mark.parametrize("scheme", ["int8", "nf4", "fp4"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("double_quant", [False, True])
def test_quantize_array_matches_quantize(scheme, dtype, transpose, double_quant):
    if scheme == "int8" and double_quant:
        pytest.skip("INT8 has no double quantization")
    rng = np.random.default_rng(7)
    values = (rng.standard_normal((192, 320)) * 0.05).astype(np.float32)
    values[3, :] = 0.0  # an all-zero row and a zero block
    array = values.astype(NUMPY[dtype])
    tensor = torch.from_numpy(values).to(getattr(torch, dtype))
    settings = SchemeSettings(blocksize=64, double_quant=double_quant)
    s = SCHEMES[scheme]
    assert s.quantizes_arrays
    got = s.quantize_array("fc.weight", array, transpose=transpose, settings=settings)
    want = s.quantize("fc.weight", tensor, transpose=transpose, settings=settings)
    assert _bytes(got) == _bytes(want)


def test_quantize_array_of_nan_weight_matches_quantize():
    values = np.linspace(-1, 1, 128 * 64, dtype=np.float32).reshape(128, 64)
    values[5, 7] = np.nan
    for scheme in ("int8", "nf4"):
        s = SCHEMES[scheme]
        got = s.quantize_array("w.weight", values, settings=SchemeSettings())
        want = s.quantize("w.weight", torch.from_numpy(values), settings=SchemeSettings())
        assert _bytes(got) == _bytes(want)


# a fresh interpreter each; int8 (tests marked slow) takes the same torch-free route as nf4
@pytest.mark.parametrize("scheme", [pytest.param("int8", marks=pytest.mark.slow), "nf4", "fp8", "fp8-block"])
def test_safetensors_conversion_imports_no_torch(tmp_path: Path, scheme):
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    weights = {
        "fc1.weight": rng.standard_normal((64, 128)).astype(np.float32),
        "fc1.bias": rng.standard_normal(64).astype(np.float32),
        "fc2.weight": rng.standard_normal((32, 64)).astype(ml_dtypes.bfloat16),
    }
    save_file(weights, str(tmp_path / "model.safetensors"))
    code = textwrap.dedent(f"""
        import json, sys
        from quantkit.convert import ConvertOptions, convert
        result = convert({str(tmp_path / 'model.safetensors')!r}, {str(tmp_path / 'out')!r}, options=ConvertOptions({scheme!r}, device="cpu"))
        print(json.dumps([sorted(result.quantized), "torch" in sys.modules]))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    quantized, imported = json.loads(done.stdout.strip().splitlines()[-1])
    assert quantized == ["fc1.weight", "fc2.weight"]
    assert imported is False


@pytest.mark.parametrize("scheme", ["nf4", "fp4"])
def test_safetensors_double_quant_imports_neither_torch_nor_bitsandbytes(tmp_path: Path, scheme):
    """Double quantization from safetensors stays torch-free, and its stored nested state is
    bitsandbytes' own (``quantize_4bit(compress_statistics=True)`` on one thread)."""
    import bitsandbytes.functional as bnbf
    from safetensors.numpy import load_file, save_file

    rng = np.random.default_rng(1)
    weight = (rng.standard_normal((640, 160)) * 0.02).astype(np.float32)  # 1,600 absmax values: 7 nested blocks
    save_file({"fc.weight": weight, "fc.bias": np.zeros(640, np.float32)}, str(tmp_path / "model.safetensors"))
    code = textwrap.dedent(f"""
        import sys
        from quantkit.convert import ConvertOptions, convert
        convert({str(tmp_path / 'model.safetensors')!r}, {str(tmp_path / 'out')!r}, options=ConvertOptions({scheme!r}, double_quant=True, device="cpu"))
        print(sorted(m for m in ("torch", "bitsandbytes") if m in sys.modules))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"
    stored = {}
    for shard in sorted((tmp_path / "out").glob("*.safetensors")):
        stored.update(load_file(str(shard)))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        packed, state = bnbf.quantize_4bit(torch.from_numpy(weight), blocksize=64, quant_type=scheme, compress_statistics=True)
    finally:
        torch.set_num_threads(before)
    np.testing.assert_array_equal(stored["fc.weight"], packed.numpy())
    for key, want in state.as_dict(packed=True).items():
        np.testing.assert_array_equal(stored[f"fc.weight.{key}"], want.numpy(), err_msg=key)


def test_auto_device_without_torch_agrees_with_torch():
    from quantkit.devices import resolve_device

    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"


@pytest.mark.parametrize("scheme", ["fp8", "fp8-block", "w8a16", "w4a16"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_compressed_tensors_arrays_match_torch_path_with_nan_and_inf(tmp_path: Path, scheme, dtype):
    """A safetensors source (numpy buffers, fused kernels) and the same tensors from a .pth
    (torch path) give the same stored bytes and the same NaN / inf counts."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from quantkit.convert import ConvertOptions, convert

    g = torch.Generator().manual_seed(3)
    sd = {f"layers.{i}.proj.weight": (torch.randn(160, 256, generator=g) * 0.02).to(getattr(torch, dtype)) for i in range(3)}
    sd["layers.0.proj.weight"][3, 5] = float("nan")
    sd["layers.0.proj.weight"][150, 200] = float("inf")
    sd["layers.2.proj.weight"][7] = 0.0
    save_file(sd, str(tmp_path / "model.safetensors"))
    torch.save(sd, tmp_path / "model.pth")
    results, tensors = [], []
    for source in ("model.safetensors", "model.pth"):
        out = tmp_path / f"out-{source}"
        results.append(convert(tmp_path / source, out, options=ConvertOptions(scheme, device="cpu")))
        with safe_open(out / "model.safetensors", "pt") as f:
            tensors.append({k: _bytes([(k, _as_bytes_view(f.get_tensor(k)))]) for k in f.keys()})
    assert tensors[0] == tensors[1]
    assert results[0].nonfinite == results[1].nonfinite == {"layers.0.proj.weight": 2}
    assert results[0].nonfinite_created == results[1].nonfinite_created
    assert results[0].nonfinite_created["layers.0.proj.weight"] > 0


def _as_bytes_view(tensor):
    """A torch tensor's bytes as a uint8 tensor (numpy has no bfloat16 / float8 of torch's)."""
    return tensor.contiguous().view(torch.uint8) if tensor.dim() else tensor.reshape(1).view(torch.uint8)
