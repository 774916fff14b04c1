"""The kernels run without torch, and numba's JIT compiles them wherever it can or cannot keep
a cache (the ahead-of-time build is set aside here: ``QUANTKIT_KERNELS=jit``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

USE_KERNELS = (
    "import sys, numpy as np, ml_dtypes;"
    "from quantkit.kernels import quantize_int8, quantize_4bit_codes;"
    "w = np.linspace(-1, 1, 4096, dtype=np.float32).reshape(64, 64);"
    "quantize_int8(w); quantize_int8(w.astype(ml_dtypes.bfloat16), transpose=True);"
    "quantize_4bit_codes(w.astype(np.float16), blocksize=64, quant_type='nf4');"
    "print('torch' in sys.modules, 'bitsandbytes' in sys.modules)"
)


def run(env_changes: dict[str, str]) -> str:
    env = {**os.environ, "QUANTKIT_KERNELS": "jit", **env_changes}
    env.pop("NUMBA_CACHE_DIR", None) if "NUMBA_CACHE_DIR" not in env_changes else None
    return subprocess.run([sys.executable, "-c", USE_KERNELS], env=env, capture_output=True, text=True, check=True).stdout.strip()


def cache_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.suffix in (".nbi", ".nbc")]


def test_quantizing_imports_neither_torch_nor_bitsandbytes():
    assert run({}) == "False False"


@pytest.mark.slow  # compiles every kernel afresh
def test_unwritable_package_and_home_fall_back_to_the_temporary_folder(tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("")  # a folder below a file cannot be made, even by root
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    # numba's own places, in this order, all unusable: its user-wide folder (the package's
    # own __pycache__ is left out, as on a read-only install)
    env = {"NUMBA_CACHE_LOCATOR_CLASSES": "UserWideCacheLocator,UserProvidedCacheLocator", "XDG_CACHE_HOME": str(blocked / "c"), "HOME": str(blocked / "h"), "TMPDIR": str(scratch)}
    assert run(env) == "False False"
    assert cache_files(scratch)


@pytest.mark.slow
def test_no_cache_anywhere_still_compiles(tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    env = {"NUMBA_CACHE_LOCATOR_CLASSES": "UserWideCacheLocator", "XDG_CACHE_HOME": str(blocked / "c"), "HOME": str(blocked / "h")}
    assert run(env) == "False False"
