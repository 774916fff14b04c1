"""The ahead-of-time kernel build (``python -m quantkit.kernels.build``): the same bytes as
numba's JIT on every kernel path, used for the calls a conversion makes (numba never
imported), and set aside when stale, for another CPU, damaged or switched off."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest
import torch

from quantkit.kernels import _compiled_table, _jit, ct, finite, halfcast, nested
from quantkit.kernels.build import arg_key_of_type, main
from quantkit.kernels.fourbit import quantize_4bit_codes
from quantkit.kernels.int8 import quantize_int8

from .conftest import as_numpy, hostile

BUILT = _jit.uses_build()
needs_build = pytest.mark.skipif(not BUILT, reason="no usable ahead-of-time kernel build (make setup builds it)")


def test_ci_has_a_usable_build():
    """.ci/run sets QUANTKIT_REQUIRE_BUILD: there the build must exist and be in use."""
    if os.environ.get("QUANTKIT_REQUIRE_BUILD") != "1":
        pytest.skip("QUANTKIT_REQUIRE_BUILD is not set")
    assert BUILT


class Calls:
    """Counts the calls that went to numba's JIT."""

    def __init__(self, monkeypatch):
        self.jit = 0
        original = _jit.Kernel.call_jit

        def counted(kernel, *args):
            self.jit += 1
            return original(kernel, *args)

        monkeypatch.setattr(_jit.Kernel, "call_jit", counted)


def jit_only(monkeypatch):
    monkeypatch.setattr(_jit, "_COMPILED", {})
    for k in _jit._ALL:
        monkeypatch.setattr(k, "_compiled", None)


def flat(result) -> list[bytes]:
    if isinstance(result, dict):
        return [k.encode() + np.ascontiguousarray(v).tobytes() for k, v in sorted(result.items())]
    if isinstance(result, (tuple, list)):
        return [b for r in result for b in flat(r)]
    if isinstance(result, np.ndarray):
        return [result.dtype.str.encode() + str(result.shape).encode() + np.ascontiguousarray(result).tobytes()]
    return [repr(result).encode()]


def paths():
    """(id, call) for every kernel path a conversion takes, on hostile values."""
    cases = []
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        name = str(dtype).split(".")[-1]
        for kind in ("normal", "specials", "subnormal", "ties", "zeros", "f16-edges"):
            w = as_numpy(hostile((96, 256), kind).to(dtype))
            odd = as_numpy(hostile((72, 136), kind, seed=1).to(dtype))
            for transpose in (False, True):
                cases.append((f"int8-{name}-{kind}-t{transpose:d}", lambda w=w, t=transpose: quantize_int8(w, transpose=t)))
                for qt in ("nf4", "fp4"):
                    cases.append((f"{qt}-{name}-{kind}-t{transpose:d}", lambda w=w, t=transpose, qt=qt: quantize_4bit_codes(w, blocksize=64, quant_type=qt, transpose=t)))
            cases.append((f"nf4-partial-{name}-{kind}", lambda odd=odd: quantize_4bit_codes(odd, blocksize=256, quant_type="nf4")))
            for scheme in ("fp8", "fp8-block", "w8a16", "w4a16"):
                cases.append((f"{scheme}-{name}-{kind}", lambda w=w, s=scheme: ct.quantize(w, s, group_size=128)))
                cases.append((f"{scheme}-odd-{name}-{kind}", lambda odd=odd, s=scheme: ct.quantize(odd, s, group_size=8)))
            if dtype != torch.float16:
                cases.append((f"fp16-{name}-{kind}", lambda w=w: (lambda out: (halfcast.to_float16(w.reshape(-1), out), out))(np.empty(w.size, np.float16))))
            cases.append((f"finite-{name}-{kind}", lambda w=w: finite.all_finite(w)))
        cases.append((f"finite-fp8-{name}", lambda w=w: finite.all_finite(w.astype(np.float32).astype(ml_dtypes.float8_e4m3fn))))
    absmax = np.abs(as_numpy(hostile((4096,), "heavy")))
    cases.append(("double-quant", lambda: nested.double_quant(absmax)))
    return cases


PATHS = paths()


@needs_build
@pytest.mark.parametrize("case", [c for _, c in PATHS], ids=[i for i, _ in PATHS])
def test_build_and_jit_write_the_same_bytes(case, monkeypatch):
    calls = Calls(monkeypatch)
    built = flat(case())
    assert calls.jit == 0  # every kernel call of this path went to the build
    jit_only(monkeypatch)
    jitted = flat(case())
    assert calls.jit > 0
    assert built == jitted


CONVERT = r"""
import sys, json, torch
from pathlib import Path
from safetensors.torch import save_file
from quantkit.convert import convert
from quantkit.convert_options import ConvertOptions
root = Path(sys.argv[1])
g = torch.Generator().manual_seed(3)
h = 192
llama = {"model.embed_tokens.weight": torch.randn(96, h, generator=g), "lm_head.weight": torch.randn(96, h, generator=g)}
gpt2 = {"transformer.wte.weight": torch.randn(96, h, generator=g)}
for i in range(2):
    llama |= {f"model.layers.{i}.self_attn.q_proj.weight": torch.randn(h, h, generator=g), f"model.layers.{i}.mlp.down_proj.weight": torch.randn(h, 2 * h, generator=g)}
    gpt2 |= {f"transformer.h.{i}.attn.c_attn.weight": torch.randn(h, 3 * h, generator=g), f"transformer.h.{i}.mlp.c_proj.weight": torch.randn(4 * h, h, generator=g)}
for model_type, state in (("llama", llama), ("gpt2", gpt2)):
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        folder = root / f"{model_type}-{dtype}"
        folder.mkdir()
        save_file({k: v.to(dtype) for k, v in state.items()}, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
        schemes = ["fp16", "int8", "nf4", "fp4"] + (["fp8", "fp8-block", "w8a16", "w4a16"] if model_type == "llama" else [])
        for scheme in schemes:
            convert(folder, root / f"out-{model_type}-{dtype}-{scheme}", options=ConvertOptions(scheme, double_quant=scheme == "nf4", group_size=64))
    torch.save(state, root / f"{model_type}.pth")
    convert(root / f"{model_type}.pth", root / f"out-{model_type}-pth", options=ConvertOptions("nf4"))
print(json.dumps({"numba": "numba" in sys.modules}))
"""


@needs_build
def test_conversions_run_without_numba(tmp_path):
    """Every scheme, dtype and layout of the conversions above: numba is never imported."""
    out = subprocess.run([sys.executable, "-c", CONVERT, str(tmp_path)], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"numba": False}


def test_switched_off_by_the_environment():
    code = "from quantkit.kernels import _jit; print(_jit.uses_build())"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "QUANTKIT_KERNELS": "jit"}, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@needs_build
def test_stale_sources_set_the_build_aside(monkeypatch):
    assert _compiled_table.load()
    monkeypatch.setattr(_compiled_table, "sources_digest", lambda: "0" * 64)
    assert _compiled_table.load() == {}


@pytest.mark.parametrize("text", ["", "{", "[]", '{"format": 1}', '{"format": 99, "sources": "x"}', "\x00\xff"])
def test_a_damaged_table_sets_the_build_aside(tmp_path, monkeypatch, text):
    table = tmp_path / "_compiled.json"
    table.write_bytes(text.encode("latin-1"))
    monkeypatch.setattr(_compiled_table, "TABLE", table)
    assert _compiled_table.load() == {}


def test_a_table_naming_a_missing_module_sets_the_build_aside(tmp_path, monkeypatch):
    table = tmp_path / "_compiled.json"
    record = {"format": _compiled_table.FORMAT, "sources": _compiled_table.sources_digest(), "module": "_aot_missing",
              "cpu": _compiled_table.cpu_identity(), "kernels": {"int8._quantize_rows": [[["array"], "k0"]]}}
    table.write_text(json.dumps(record))
    monkeypatch.setattr(_compiled_table, "TABLE", table)
    assert _compiled_table.load() == {}


def test_a_build_for_another_cpu_is_not_used():
    here = {"machine": "x86_64", "flags": ["avx", "sse2"], "node": None}
    assert _compiled_table.usable_here({"machine": "x86_64", "flags": ["sse2"], "node": None}, here)
    assert not _compiled_table.usable_here({"machine": "x86_64", "flags": ["avx512f", "sse2"], "node": None}, here)
    assert not _compiled_table.usable_here({"machine": "aarch64", "flags": ["sse2"], "node": None}, here)
    assert not _compiled_table.usable_here({"machine": "x86_64", "flags": None, "node": "a"}, {"machine": "x86_64", "flags": None, "node": "b"})
    assert _compiled_table.usable_here({"machine": "x86_64", "flags": None, "node": "a"}, {"machine": "x86_64", "flags": None, "node": "a"})


def test_argument_keys_match_numba_types():
    """The key a value gets at call time is the key its numba type got at build time."""
    import numba

    values = [np.zeros(4, np.float32), np.zeros((3, 4), np.uint8), np.zeros((4, 3), np.float32)[:, :2], np.zeros((3, 4), order="F"),
              np.frombuffer(b"\0" * 16, np.float32), np.zeros(9, np.uint8)[1:].view(np.uint16), 3, True, 2.5, np.float32(1), np.uint16(7),
              np.bool_(False), (1, 2), (np.zeros(2), 1)]
    for value in values:
        assert _jit.arg_key(value) == arg_key_of_type(numba.typeof(value)), value


def test_a_failed_build_says_so_and_leaves_the_jit(monkeypatch, capsys):
    import quantkit.kernels.build as build

    def broken(verbose=True):
        raise OSError("no C compiler")

    monkeypatch.setattr(build, "build", broken)
    assert main([]) == 1
    assert "not built ahead of time (OSError: no C compiler); numba's JIT will run them" in capsys.readouterr().err


def test_check_says_whether_the_build_is_used():
    check = [sys.executable, "-m", "quantkit.kernels.build", "--check"]
    off = subprocess.run(check, env={**os.environ, "QUANTKIT_KERNELS": "jit"}, capture_output=True, text=True)
    assert (off.returncode, off.stdout.strip()) == (1, "quantkit: kernels built ahead of time: set aside by QUANTKIT_KERNELS=jit: numba's JIT runs them")
    env = {k: v for k, v in os.environ.items() if k != "QUANTKIT_KERNELS"}
    on = subprocess.run(check, env=env, capture_output=True, text=True)
    usable = bool(_compiled_table.load())  # whatever this process's QUANTKIT_KERNELS says
    assert on.returncode == (0 if usable else 1)
    assert on.stdout.strip().endswith("in use" if usable else "numba's JIT runs them")
