"""Microbenchmark: quantkit.kernels (numba, numpy in and out) against the current torch
kernels and a plain numpy version, on real weight shapes; side by side in one process,
alternating, median of ``--repeat``. Prints MB/s of input and ratios.

    .venv/bin/python benchmarks/bench_kernels.py                  # all schemes, dtypes, shapes
    .venv/bin/python benchmarks/bench_kernels.py --schemes int8 --dtypes float32 --repeat 7
    .venv/bin/python benchmarks/bench_kernels.py --estimate-from benchmarks/cache/gpt2-large

``--estimate-from DIR`` also times reading every ``*.safetensors`` byte in DIR and writing
the bytes an nf4 / int8 output would hold (the I/O floor), and sets against it the time
each kernel takes for all of GPT-2-large's quantized weights (36 layers x 4 Conv1D).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import ml_dtypes
import numpy as np
import torch

from quantkit.kernels import quantize_4bit_codes, quantize_int8
from quantkit.schemes import fourbit_cpu as fast4bit
from quantkit.schemes import int8 as current_int8

SHAPES = {  # name: (stored shape, transposed as GPT-2 Conv1D)
    "c_attn_1280x3840_T": ((1280, 3840), True),
    "attn_proj_1280x1280_T": ((1280, 1280), True),
    "c_fc_1280x5120_T": ((1280, 5120), True),
    "mlp_proj_5120x1280_T": ((5120, 1280), True),
    "llama_4096x11008": ((4096, 11008), False),
}
GPT2_LARGE_LAYERS = 36


def numpy_int8(w: np.ndarray, transpose: bool) -> tuple[np.ndarray, np.ndarray]:
    """A plain numpy INT8 (same arithmetic; NaN payloads aside): the non-numba peer."""
    half = (w.T if transpose else w).astype(np.float16)
    absmax = np.abs(half).max(axis=1).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = np.float32(127) * (np.float32(1) / absmax)
        scaled = np.rint(half * factor[:, None])
    return np.nan_to_num(scaled, nan=0).astype(np.int8), absmax


def numpy_4bit(w: np.ndarray, blocksize: int, quant_type: str, transpose: bool) -> tuple[np.ndarray, np.ndarray]:
    """A plain numpy NF4/FP4 for whole blocks (searchsorted = bucketize): the non-numba peer."""
    flat = np.ascontiguousarray(w.T if transpose else w).astype(np.float32).reshape(-1, blocksize)
    absmax = np.abs(flat).max(axis=1)
    table = fast4bit.code_table(quant_type).numpy()
    order = np.argsort(table, kind="stable")
    mids = (table[order[:-1]] + table[order[1:]]) / np.float32(2)
    scaled = np.clip(flat * (np.float32(1) / np.maximum(absmax, np.float32(1e-38)))[:, None], -1, 1)
    codes = order[np.searchsorted(mids, scaled.reshape(-1))].astype(np.uint8)
    return (codes[::2] << 4) | codes[1::2], absmax


def contenders(scheme: str, w: torch.Tensor, a: np.ndarray, transpose: bool) -> dict:
    if scheme == "int8":
        return {
            "kernels": lambda: quantize_int8(a, transpose=transpose),
            "current": lambda: current_int8.quantize_int8(w, transpose=transpose),
            "numpy": lambda: numpy_int8(a, transpose),
        }
    view = w.t() if transpose else w
    return {
        "kernels": lambda: quantize_4bit_codes(a, blocksize=64, quant_type=scheme, transpose=transpose),
        "current": lambda: fast4bit.quantize_4bit_codes(view, 64, scheme),
        "numpy": lambda: numpy_4bit(a, 64, scheme, transpose),
    }


def as_numpy(w: torch.Tensor) -> np.ndarray:
    return w.view(torch.int16).numpy().view(ml_dtypes.bfloat16) if w.dtype == torch.bfloat16 else w.numpy()


def time_side_by_side(fns: dict, repeat: int) -> dict[str, float]:
    for fn in fns.values():
        fn()  # compile / warm
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def two_threads(fn, seconds_one: float) -> float:
    """Speed-up of running ``fn`` in two threads at once over running it twice in one."""
    threads = [threading.Thread(target=fn) for _ in range(2)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return 2 * seconds_one / (time.perf_counter() - start)


def raw_io_seconds(folder: Path, out_bytes: int) -> tuple[float, int]:
    """Read every safetensors byte in ``folder`` (8 MB chunks) and write ``out_bytes``."""
    files = sorted(folder.glob("*.safetensors"))
    buffer = bytearray(8 << 20)
    start = time.perf_counter()
    read = 0
    for f in files:
        with open(f, "rb", buffering=0) as handle:
            while n := handle.readinto(buffer):
                read += n
    with tempfile.NamedTemporaryFile() as out:
        for _ in range(out_bytes // len(buffer)):
            out.write(buffer)
    return time.perf_counter() - start, read


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--schemes", default="int8,nf4,fp4")
    parser.add_argument("--dtypes", default="float32,bfloat16,float16")
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--estimate-from", type=Path, help="a GPT-2-large safetensors folder, for the I/O floor")
    args = parser.parse_args()
    torch.set_num_threads(1)  # each of the converter's two workers runs on one core
    per_layer: dict[tuple[str, str, str], float] = {}
    print(f"{'scheme':6s} {'dtype':9s} {'shape':26s} {'MB':>5s} {'kernels MB/s':>12s} {'current MB/s':>12s} {'numpy MB/s':>10s} {'vs current':>10s} {'vs numpy':>8s} {'2 threads':>9s}")
    for scheme in args.schemes.split(","):
        for dtype in args.dtypes.split(","):
            for shape_name in args.shapes.split(","):
                shape, transpose = SHAPES[shape_name]
                w = (torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 0.02).to(getattr(torch, dtype))
                a = as_numpy(w)
                seconds = time_side_by_side(contenders(scheme, w, a, transpose), args.repeat)
                mb = a.nbytes / 1e6
                speedup = two_threads(contenders(scheme, w, a, transpose)["kernels"], seconds["kernels"])
                for contender in ("kernels", "current"):
                    if shape_name != "llama_4096x11008":
                        per_layer[(scheme, dtype, contender)] = per_layer.get((scheme, dtype, contender), 0.0) + seconds[contender]
                print(
                    f"{scheme:6s} {dtype:9s} {shape_name:26s} {mb:5.0f} {mb / seconds['kernels']:12.0f} {mb / seconds['current']:12.0f} "
                    f"{mb / seconds['numpy']:10.0f} {seconds['current'] / seconds['kernels']:9.2f}x {seconds['numpy'] / seconds['kernels']:7.2f}x {speedup:8.2f}x",
                    flush=True,
                )
    if args.estimate_from:
        estimate(args.estimate_from, per_layer)


def estimate(folder: Path, per_layer: dict[tuple[str, str, str], float]) -> None:
    in_bytes = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    if not in_bytes:
        raise SystemExit(f"{folder}: no safetensors files (build it with bench_convert.py --sizes large)")
    out_bytes = in_bytes // 3  # int8 output of a float32 model is ~1/3 of it with the embeddings kept
    raw = statistics.median(raw_io_seconds(folder, out_bytes)[0] for _ in range(3))
    print(f"\nraw I/O: read {in_bytes / 1e9:.2f} GB + write {out_bytes / 1e9:.2f} GB: {raw:.2f} s")
    print("quantize time for GPT-2-large's 144 Conv1D weights (one core; two workers halve it):")
    for (scheme, dtype, contender), seconds in sorted(per_layer.items()):
        if dtype == "float32":
            total = seconds * GPT2_LARGE_LAYERS
            print(f"  {scheme:5s} {contender:8s} {total:6.2f} s = {total / raw:4.2f}x raw, {total / 2 / raw:4.2f}x on two workers")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
