"""Throughput of the compressed-tensors kernels on one weight: the fused numba kernels
(``quantkit.kernels.ct``, what ``quantize`` runs) against the numpy reference
(``quantkit.schemes.compressed``) and a plain copy of the weight.

    .venv/bin/python benchmarks/bench_ct_kernels.py [--rows 5632 --cols 2048]

Prints MB/s of input weight bytes per scheme and dtype, best of 3, in the thread's CPU time
(``time.thread_time``: other processes on a shared machine do not inflate it), and the
kernel's speed-up over the reference; ``np.copy`` is the floor no kernel can beat.
"""

from __future__ import annotations

import argparse
import time

import ml_dtypes
import numpy as np

from quantkit.schemes import compressed


def best_seconds(fn, repeats: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.thread_time()
        fn()
        times.append(time.thread_time() - start)
    return min(times)


def reference(weight: np.ndarray, scheme: str) -> dict:
    if scheme == "fp8":
        return compressed.quantize_fp8_channel(weight)
    if scheme == "fp8-block":
        return compressed.quantize_fp8_block(weight)
    return compressed.quantize_int_group(weight, bits=8 if scheme == "w8a16" else 4)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=5632)
    parser.add_argument("--cols", type=int, default=2048)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    base = rng.standard_normal((args.rows, args.cols), dtype=np.float32) * 0.02
    for dtype in (np.float32, ml_dtypes.bfloat16, np.float16):
        weight = base.astype(dtype)
        copy_mb_s = weight.nbytes / best_seconds(lambda: weight.copy()) / 1e6
        print(f"{np.dtype(dtype).name:<9} {'copy':<10} {copy_mb_s:>7.0f} MB/s")
        for scheme in compressed.SCHEMES:
            fused = best_seconds(lambda: compressed.quantize(weight, scheme))
            numpy_s = best_seconds(lambda: reference(weight, scheme), repeats=1)
            print(
                f"{np.dtype(dtype).name:<9} {scheme:<10} {weight.nbytes / fused / 1e6:>7.0f} MB/s fused, "
                f"{weight.nbytes / numpy_s / 1e6:>6.0f} MB/s numpy reference: {numpy_s / fused:4.1f}x"
            )


if __name__ == "__main__":
    main()
