"""Throughput of the compressed-tensors kernels on one weight, against a plain copy of it.

    .venv/bin/python benchmarks/bench_ct_kernels.py [--rows 5120 --cols 1280]

Prints MB/s of input weight bytes per scheme and dtype (best of 5), and the same for
``np.copy`` of the weight as the floor a kernel cannot beat.
"""

from __future__ import annotations

import argparse
import time

import ml_dtypes
import numpy as np

from quantkit.schemes.compressed import SCHEMES, quantize


def best_seconds(fn, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=5120)
    parser.add_argument("--cols", type=int, default=1280)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    base = rng.standard_normal((args.rows, args.cols), dtype=np.float32) * 0.02
    for dtype in (np.float32, ml_dtypes.bfloat16, np.float16):
        weight = base.astype(dtype)
        copy_mb_s = weight.nbytes / best_seconds(lambda: weight.copy()) / 1e6
        print(f"{np.dtype(dtype).name:<9} {'copy':<10} {copy_mb_s:>9.0f} MB/s")
        for scheme in SCHEMES:
            seconds = best_seconds(lambda: quantize(weight, scheme))
            print(f"{np.dtype(dtype).name:<9} {scheme:<10} {weight.nbytes / seconds / 1e6:>9.0f} MB/s  {seconds * 1e3:7.1f} ms")


if __name__ == "__main__":
    main()
