"""What profiling costs: ``quantkit profile`` against one ``quantkit convert`` on the same folder.

    .venv/bin/python benchmarks/profile_cost.py                      # GPT-2-large shape, nf4
    .venv/bin/python benchmarks/profile_cost.py --size small --scheme int8 --repeat 3

The folder is bench_convert's seeded GPT-2 checkpoint (built once into benchmarks/cache/).
Each run is a fresh subprocess, alternating profile and convert, and its wall time is taken;
the medians and their ratio are printed (the machine is shared, so only the ratio is worth
reading). The profile measures its defaults: every registered quantizer and bf16 on every
weight they can take (compressed-tensors keeps GPT-2's Conv1D weights, so on this folder
that is int8, nf4, fp4 and bf16).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_convert import build_checkpoint  # noqa: E402


def timed(args: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "quantkit", *args], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="large")
    parser.add_argument("--scheme", default="nf4")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    src = build_checkpoint(args.size)
    times: dict[str, list[float]] = {"profile": [], "convert": []}
    with tempfile.TemporaryDirectory(dir=HERE / "cache") as tmp:
        for _ in range(args.repeat):
            times["profile"].append(timed(["profile", str(src), "-o", f"{tmp}/p.json", "-q"]))
            times["convert"].append(timed(["convert", str(src), "--to", args.scheme, "-o", f"{tmp}/out", "-q", "--force", "--device", "cpu"]))
            print({k: round(v[-1], 1) for k, v in times.items()}, flush=True)
    profile, convert = (statistics.median(times[k]) for k in ("profile", "convert"))
    print(f"gpt2-{args.size}: profile {profile:.1f} s, convert --to {args.scheme} {convert:.1f} s, ratio {profile / convert:.2f}x")


if __name__ == "__main__":
    main()
