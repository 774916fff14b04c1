"""Where a compressed-tensors conversion spends its time: read, compute, write, start-up.

    .venv/bin/python benchmarks/bench_ct_breakdown.py [FOLDER] [--schemes fp8,w4a16] [--reference]

For every 2-D ``*proj.weight`` of FOLDER (default: the cached Llama-shaped folder that
``bench_convert.py --sizes llama-small`` builds) it times, on one thread: reading the tensor
into a reused buffer (page cache warm), quantizing it (the fused kernels, and with
``--reference`` the numpy reference), and writing the stored tensors to a scratch file.
Times are the thread's CPU seconds (``time.thread_time``), so that other processes on a
loaded machine do not inflate them; ``import`` is the wall time of ``python -c "import
quantkit.cli"`` (the converter's start-up before any tensor).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from quantkit.kernels import ct as ct_kernels
from quantkit.schemes import compressed
from quantkit.sources import opened

HERE = Path(__file__).resolve().parent


def _timed(fn):
    start = time.thread_time()
    result = fn()
    return result, time.thread_time() - start


def breakdown(folder: Path, scheme: str, *, reference: bool) -> dict[str, float]:
    totals = {"read": 0.0, "compute": 0.0, "reference": 0.0, "write": 0.0, "in_bytes": 0, "out_bytes": 0}
    buffer = np.empty(0, dtype=np.uint8)
    with opened(folder) as source, tempfile.TemporaryFile() as scratch:
        for name, spec in source.specs.items():
            if len(spec.shape) != 2 or not name.endswith("proj.weight"):
                continue
            if buffer.size < spec.nbytes:
                buffer = np.empty(spec.nbytes, dtype=np.uint8)
            data = buffer[: spec.nbytes]
            _, seconds = _timed(lambda: source.read_into(name, 0, memoryview(data)))
            totals["read"] += seconds
            weight = data.view(spec.dtype.numpy).reshape(spec.shape)
            stored, seconds = _timed(lambda: compressed.quantize(weight, scheme))
            totals["compute"] += seconds
            if reference and weight.dtype != np.float64:
                _, seconds = _timed(lambda: _reference(weight, scheme))
                totals["reference"] += seconds
            scratch.seek(0)
            _, seconds = _timed(lambda: [scratch.write(np.ascontiguousarray(a).reshape(-1).view(np.uint8).data) for a in stored.values()])
            totals["write"] += seconds
            totals["in_bytes"] += spec.nbytes
            totals["out_bytes"] += sum(a.nbytes for a in stored.values())
    return totals


def _reference(weight: np.ndarray, scheme: str) -> dict:
    if scheme == "fp8":
        return compressed.quantize_fp8_channel(weight)
    if scheme == "fp8-block":
        return compressed.quantize_fp8_block(weight)
    return compressed.quantize_int_group(weight, bits=8 if scheme == "w8a16" else 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", default=str(HERE / "cache" / "llama-small"))
    parser.add_argument("--schemes", default=",".join(compressed.SCHEMES))
    parser.add_argument("--reference", action="store_true", help="also time the numpy reference kernels")
    args = parser.parse_args()
    ct_kernels.quantize(np.zeros((1, 128), np.float32), "fp8", group_size=128)  # load the compiled kernels
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import quantkit_cli.main"], check=True)
    print(f"import quantkit_cli.main: {time.perf_counter() - start:.2f} s wall")
    print(f"{'scheme':<10} {'in GB':>6} {'read s':>7} {'kernel s':>9} {'numpy s':>8} {'write s':>8}  kernel GB/s")
    for scheme in args.schemes.split(","):
        t = breakdown(Path(args.folder), scheme, reference=args.reference)
        rate = t["in_bytes"] / t["compute"] / 1e9 if t["compute"] else float("inf")
        numpy_s = f"{t['reference']:8.2f}" if args.reference else f"{'-':>8}"
        print(f"{scheme:<10} {t['in_bytes'] / 1e9:6.2f} {t['read']:7.2f} {t['compute']:9.2f} {numpy_s} {t['write']:8.2f}  {rate:.2f}")


if __name__ == "__main__":
    main()
