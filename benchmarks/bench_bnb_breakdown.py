"""Where an int8 / nf4 conversion spends its time: start-up, read, compute, write, hash.

    .venv/bin/python benchmarks/bench_bnb_breakdown.py [FOLDER] [--schemes int8,nf4] [--double-quant]

FOLDER defaults to the cached GPT-2-large folder (``bench_convert.py --sizes large``). For every
tensor, on one thread, it times: reading it into a reused buffer (page cache warm); quantizing
it as ``convert`` does (a GPT-2 Conv1D weight transposed, whole; a Linear weight a run of rows
at a time; every other tensor kept, so no compute); writing the stored bytes to a scratch
file; and hashing them as the writer does (XXH3-128 of the shard record, SHA-256 of the
manifest). Times are the thread's CPU seconds (``time.thread_time``), so that other processes
on a loaded machine do not inflate them. Start-up is measured in fresh interpreters (wall and
CPU): importing the CLI, and importing and first calling the cached numba kernels.
"""

from __future__ import annotations

import argparse
import hashlib
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import xxhash

from quantkit.schemes import SCHEMES, SchemeSettings
from quantkit.sources import opened

HERE = Path(__file__).resolve().parent
FIRST_CALLS = (
    "import numpy as np; from quantkit.kernels import quantize_int8, quantize_4bit_codes, double_quant;"
    "w = np.ones((256, 64), np.float32); quantize_int8(w, transpose=True); quantize_4bit_codes(w, blocksize=64, quant_type='nf4', transpose=True);"
    "double_quant(np.ones(300, np.float32))"
)


def _timed(fn):
    start = time.thread_time()
    result = fn()
    return result, time.thread_time() - start


def start_up(code: str) -> tuple[float, float]:
    """Wall and CPU seconds of ``python -c code`` in a fresh interpreter."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter() - start, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def breakdown(folder: Path, scheme_name: str, settings: SchemeSettings) -> dict[str, float]:
    scheme = SCHEMES[scheme_name]
    totals = dict.fromkeys(("read", "compute", "write", "hash", "in_bytes", "out_bytes"), 0.0)
    buffer = np.empty(0, dtype=np.uint8)
    with opened(folder) as source, tempfile.TemporaryFile() as scratch:
        for name, spec in source.specs.items():
            if buffer.size < spec.nbytes:
                buffer = np.empty(spec.nbytes, dtype=np.uint8)
            data = buffer[: spec.nbytes]
            _, seconds = _timed(lambda: source.read_into(name, 0, memoryview(data)))
            totals["read"] += seconds
            array = data.view(spec.dtype.numpy).reshape(spec.shape)
            conv1d = len(spec.shape) == 2 and name.endswith(".weight") and ".h." in name and "ln_" not in name
            if conv1d:
                stored, seconds = _timed(lambda: scheme.quantize_array(name, array, transpose=True, settings=settings))
                totals["compute"] += seconds
            else:
                stored = [(name, array)]
            blobs = [np.ascontiguousarray(a).reshape(-1).view(np.uint8) for _, a in stored]
            scratch.seek(0)
            _, seconds = _timed(lambda: [scratch.write(b.data) for b in blobs])
            totals["write"] += seconds
            _, seconds = _timed(lambda: [(xxhash.xxh3_128_digest(b.data), hashlib.sha256(b.data).digest()) for b in blobs])
            totals["hash"] += seconds
            totals["in_bytes"] += spec.nbytes
            totals["out_bytes"] += sum(b.nbytes for b in blobs)
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", default=str(HERE / "cache" / "gpt2-large"))
    parser.add_argument("--schemes", default="int8,nf4")
    parser.add_argument("--double-quant", action="store_true")
    args = parser.parse_args()
    for label, code in [("import quantkit_cli.main", "import quantkit_cli.main"), ("import + first kernel calls", FIRST_CALLS)]:
        wall, cpu = start_up(code)
        print(f"{label}: {wall:.2f} s wall, {cpu:.2f} s CPU")
    settings = SchemeSettings(double_quant=args.double_quant)
    exec(FIRST_CALLS)  # the kernels loaded here before timing
    print(f"{'scheme':<8} {'in GB':>6} {'out GB':>7} {'read s':>7} {'compute s':>10} {'write s':>8} {'hash s':>7}  compute GB/s (input)")
    for scheme in args.schemes.split(","):
        t = breakdown(Path(args.folder), scheme, settings)
        rate = t["in_bytes"] / t["compute"] / 1e9 if t["compute"] else float("inf")
        print(f"{scheme:<8} {t['in_bytes'] / 1e9:6.2f} {t['out_bytes'] / 1e9:7.2f} {t['read']:7.2f} {t['compute']:10.2f} {t['write']:8.2f} {t['hash']:7.2f}  {rate:.2f}")


if __name__ == "__main__":
    main()
