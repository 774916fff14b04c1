"""Build the kernels ahead of time: ``python -m quantkit.kernels.build`` (``make setup`` runs it).

Why: numba's JIT costs every process its import and first call (0.6-1.0 s on the
development machine, cache or not), a fixed cost that a small conversion feels as much as a
large one. An extension module built once loads in about a millisecond.

How: numba's ``pycc`` compiles the same kernel functions, with the JIT's options (GIL
released, numpy's error model, no bounds checks) and for this machine's CPU, as the JIT
does. A kernel called from Python takes several argument types (dtypes, layouts); the build
learns which by converting small seeded checkpoints of every quantizing scheme and dtype
through the JIT and recording each kernel call's argument types (``_jit.harvest``), then
exports one function per kernel and argument types. A call whose types the build lacks runs
by the JIT, so the build only ever makes calls faster. It needs a C compiler (numba's
``pycc`` compiles its small runtime helpers); without one, or if it fails for any reason, it
says so, exits 1 and leaves any earlier build in place: the JIT still serves.

Output, in this package: ``_aot_<digest>.<extension suffix>`` and ``_compiled.json`` (see
``_compiled_table``); ``python -m quantkit.kernels.build --check`` says whether the build
present is the one these sources and this CPU use.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from . import _compiled_table, _jit


def arg_key_of_type(numba_type):
    """``_jit.arg_key`` of a value numba types as ``numba_type`` (None where not exported)."""
    from numba.core import types
    from numba.np.numpy_support import as_dtype

    if isinstance(numba_type, types.Array):
        return ("array", as_dtype(numba_type.dtype).str, numba_type.ndim, numba_type.layout, bool(numba_type.mutable))
    if isinstance(numba_type, types.Boolean):
        return "?"
    if isinstance(numba_type, (types.Integer, types.Float)):
        return as_dtype(numba_type).str
    if isinstance(numba_type, types.BaseTuple):
        keys = tuple(arg_key_of_type(t) for t in numba_type.types)
        return None if None in keys else ("tuple", keys)
    return None


def _tiny_folders(root: Path) -> list[tuple[Path, tuple[str, ...]]]:
    """Seeded GPT-2- and Llama-shaped folders in float32, bfloat16 and float16 (odd widths
    too: partial blocks, groups and tiles), each with the schemes that quantize it."""
    import torch
    from safetensors.torch import save_file

    from ..schemes.registry import SCHEMES

    quantizing = tuple(name for name, s in SCHEMES.items() if getattr(s, "warms_up", False))
    g = torch.Generator().manual_seed(0)
    h, vocab = 256, 200
    gpt2 = {"transformer.wte.weight": torch.randn(vocab, h, generator=g), "transformer.wpe.weight": torch.randn(64, h, generator=g)}
    llama = {"model.embed_tokens.weight": torch.randn(vocab, h, generator=g), "lm_head.weight": torch.randn(vocab, h, generator=g)}
    for i in range(2):
        p = f"transformer.h.{i}"
        gpt2 |= {f"{p}.attn.c_attn.weight": torch.randn(h, 3 * h, generator=g) * 0.02, f"{p}.attn.c_proj.weight": torch.randn(h, h, generator=g),
                 f"{p}.mlp.c_fc.weight": torch.randn(h, 4 * h, generator=g), f"{p}.mlp.c_proj.weight": torch.randn(4 * h, h, generator=g),
                 f"{p}.ln_1.weight": torch.ones(h), f"{p}.ln_1.bias": torch.zeros(h)}
        p = f"model.layers.{i}"
        llama |= {f"{p}.self_attn.{x}_proj.weight": torch.randn(h, h, generator=g) * 0.02 for x in "qkvo"}
        llama |= {f"{p}.mlp.up_proj.weight": torch.randn(3 * h - 8, h, generator=g), f"{p}.mlp.down_proj.weight": torch.randn(h, 3 * h - 8, generator=g),
                  f"{p}.input_layernorm.weight": torch.ones(h)}
    llama["model.layers.1.mlp.odd_proj.weight"] = torch.randn(72, 136, generator=g)  # partial tiles and blocks
    folders = []
    for model_type, state in (("gpt2", gpt2), ("llama", llama)):
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            folder = root / f"{model_type}-{str(dtype).split('.')[-1]}"
            folder.mkdir()
            save_file({k: v.to(dtype).contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
            (folder / "config.json").write_text(json.dumps({"model_type": model_type, "torch_dtype": str(dtype).split(".")[-1]}))
            folders.append((folder, ("fp16", *quantizing)))
        pth = root / f"{model_type}.pth"
        torch.save(state, pth)
        folders.append((pth, ("fp16", *quantizing)))
    return folders


def _kernel_paths() -> None:
    """The public kernels on every dtype, layout and shape class (whole and partial blocks,
    groups and tiles; rows a multiple of the 4-bit block or not), an inf and a value beyond
    float16 among the values."""
    import ml_dtypes
    import numpy as np

    from . import ct, finite, halfcast, nested
    from .fourbit import quantize_4bit_codes
    from .int8 import quantize_int8

    rng = np.random.default_rng(0)
    for shape in ((256, 192), (96, 256), (72, 136)):
        values = rng.standard_normal(shape, dtype=np.float32)
        values[0, 1] = np.inf
        values[1, 0] = 1e5  # beyond float16
        for dtype in (np.float32, ml_dtypes.bfloat16, np.float16):
            with np.errstate(over="ignore"):  # the value beyond float16 is meant
                w = values.astype(dtype)
            for transpose in (False, True):
                quantize_int8(w, transpose=transpose)
                for quant_type in ("nf4", "fp4"):
                    quantize_4bit_codes(w, blocksize=64, quant_type=quant_type, transpose=transpose)
            for scheme in ("fp8", "fp8-block", "w8a16", "w4a16"):
                ct.quantize(w, scheme, group_size=8)
            if dtype != np.float16:
                halfcast.to_float16(w.reshape(-1), np.empty(w.size, np.float16))
        for dtype in finite._MASKS:
            with np.errstate(over="ignore"):
                finite.all_finite(values.astype(dtype))
    nested.double_quant(np.abs(rng.standard_normal(4096, dtype=np.float32)))


def harvest_calls() -> dict:
    """Run the public kernels and convert the tiny folders with every scheme, all through
    the JIT; the argument types each kernel was called with from Python."""
    from ..convert import convert
    from ..convert_options import ConvertOptions
    from ..errors import QuantkitError

    _jit._COMPILED = {}  # every call through the JIT, where it is recorded
    _jit.harvest = {}
    _kernel_paths()
    with tempfile.TemporaryDirectory(prefix="quantkit-kernel-build-") as tmp:
        root = Path(tmp)
        for n, (src, schemes) in enumerate(_tiny_folders(root)):
            for scheme in schemes:
                variants = [{}, {"double_quant": True}] if scheme in ("nf4", "fp4") else [{}]
                for extra in variants:
                    out = root / f"out-{n}-{scheme}-{len(extra)}"
                    try:
                        convert(src, out, options=ConvertOptions(scheme, **extra))
                    except QuantkitError:
                        pass  # a scheme that does not apply to this model (e.g. nothing to quantize)
                    shutil.rmtree(out, ignore_errors=True)
    calls, _jit.harvest = _jit.harvest, None
    return calls


def _set_jit_flags() -> None:
    """pycc compiles with numba's default flags (GIL held, Python's error model); the kernels'
    JIT options (``_jit._OPTIONS``) are set instead."""
    from numba.pycc import compiler

    base = compiler.Flags
    options = _jit._OPTIONS

    class KernelFlags(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.release_gil = options["nogil"]
            self.error_model = options["error_model"]
            self.boundscheck = options["boundscheck"]

    compiler.Flags = KernelFlags


def build(verbose: bool = True) -> Path:
    from numba.pycc import CC

    started = time.perf_counter()
    digest = _compiled_table.sources_digest()
    calls = harvest_calls()
    _set_jit_flags()
    module_name = f"_aot_{digest[:16]}"
    cc = CC(module_name)
    cc.target_cpu = "host"  # as the JIT: this machine's CPU (the table records its features)
    cc.verbose = False
    table: dict[str, list] = {}
    count = 0
    for k, argtype_sets in sorted(calls.items(), key=lambda item: item[0].key):
        for argtypes in sorted(argtype_sets, key=str):
            key = tuple(arg_key_of_type(t) for t in argtypes)
            if None in key:
                continue
            k.dispatcher.compile(argtypes)
            signature = k.dispatcher.overloads[argtypes].signature
            export = f"k{count}"
            count += 1
            cc.export(export, signature)(k.dispatcher.py_func)
            table.setdefault(k.key, []).append([key, export])
    with tempfile.TemporaryDirectory(prefix="quantkit-kernel-build-") as tmp:
        cc.output_dir = tmp
        cc.compile()
        built = next(Path(tmp).glob(f"{module_name}.*"))
        target = _compiled_table.HERE / built.name
        shutil.copyfile(built, target.with_name(target.name + ".tmp"))
        os.replace(target.with_name(target.name + ".tmp"), target)
    record = {"format": _compiled_table.FORMAT, "sources": digest, "module": module_name, "cpu": _compiled_table.cpu_identity(), "kernels": table}
    partial = _compiled_table.TABLE.with_name(_compiled_table.TABLE.name + ".tmp")
    partial.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(partial, _compiled_table.TABLE)
    for old in _compiled_table.HERE.glob("_aot_*"):
        if not old.name.startswith(module_name + "."):
            old.unlink(missing_ok=True)
    if verbose:
        print(f"quantkit: {count} kernel functions built ahead of time into {target} in {time.perf_counter() - started:.0f} s")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quantkit.kernels.build", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="say whether the build present is used here; exit 1 if not")
    args = parser.parse_args(argv)
    if args.check:
        if _jit.build_set_aside():
            print(f"quantkit: kernels built ahead of time: set aside by {_jit.KERNELS_ENV}=jit: numba's JIT runs them")
            return 1
        usable = _jit.uses_build()
        print("quantkit: kernels built ahead of time: " + ("in use" if usable else "none usable here (missing, stale or for another CPU): numba's JIT runs them"))
        return 0 if usable else 1
    try:
        build()
    except Exception as exc:  # noqa: BLE001 - any failure leaves the JIT, which always works
        print(f"quantkit: the kernels were not built ahead of time ({type(exc).__name__}: {exc}); numba's JIT will run them", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
