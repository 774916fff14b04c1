"""Mapped reads against positioned reads: ``quantkit convert`` with ``QUANTKIT_MAP_READS=1``
(the default: tensor bytes read in place from a private mapping of the file) and ``=0`` (every
byte copied into a buffer with ``preadv``), alternating (which goes first swaps each round; the
inputs are read once, untimed, first), with raw I/O of the same bytes after each pair; wall, CPU (user + system) and peak RSS, medians over ``--repeat`` runs.

    .venv/bin/python benchmarks/bench_read_paths.py --repeat 3 gpt2-xl-pth:nf4 gpt2-xl:nf4 gpt2-large:bf16

Each argument is ``<cached checkpoint folder>:<scheme>`` (folders under ``benchmarks/cache``,
built by bench_convert.py / bench_pth_breakdown.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_convert import CACHE, RESULTS, ROOT, command, compile_bytecode, folder_bytes, measure, read_every_byte  # noqa: E402

MODES = {"mapped": {"QUANTKIT_MAP_READS": "1"}, "read": {"QUANTKIT_MAP_READS": "0"}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("jobs", nargs="+", help="<folder>:<scheme>, e.g. gpt2-xl:nf4")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    jobs = [tuple(j.split(":", 1)) for j in args.jobs]
    out = CACHE / "out-read-paths"
    runs: dict[str, list[dict]] = {}
    compile_bytecode(ROOT)
    for folder, _ in jobs:
        read_every_byte(CACHE / folder)  # untimed: the page cache warm for every contender's first run
    for i in range(args.repeat):
        for folder, scheme in jobs:
            out_bytes = 0
            order = list(MODES.items()) if i % 2 == 0 else list(MODES.items())[::-1]  # neither always runs first
            for mode, env in order:
                shutil.rmtree(out, ignore_errors=True)
                runs.setdefault(f"{folder}:{scheme}:{mode}", []).append(measure(command("quantkit", scheme, CACHE / folder, out, "2GB", 0), env={**os.environ, **env}))
                out_bytes = folder_bytes(out)
            shutil.rmtree(out, ignore_errors=True)
            runs.setdefault(f"{folder}:{scheme}:raw", []).append(measure(command("raw", scheme, CACHE / folder, out, "2GB", out_bytes)))
            shutil.rmtree(out, ignore_errors=True)
            print(f"run {i + 1}: {folder} {scheme} " + ", ".join(f"{k.rsplit(':', 1)[1]} {v[-1]['wall_s']:.2f} s" for k, v in runs.items() if k.startswith(f"{folder}:{scheme}:")), flush=True)
    print("| input | scheme | mapped wall | read wall | raw wall | mapped / raw | read / raw | mapped CPU | read CPU | mapped RSS | read RSS |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    for folder, scheme in jobs:
        med = {m: {k: statistics.median(r[k] for r in runs[f"{folder}:{scheme}:{m}"]) for k in ("wall_s", "cpu_s")} for m in (*MODES, "raw")}
        rss = {m: max(r["peak_rss"] for r in runs[f"{folder}:{scheme}:{m}"]) / 1e9 for m in MODES}
        raw = med["raw"]["wall_s"]
        rows.append({"input": folder, "scheme": scheme, "median": med, "peak_rss_gb": rss, "runs": {m: runs[f"{folder}:{scheme}:{m}"] for m in (*MODES, "raw")}})
        print(f"| {folder} | {scheme} | {med['mapped']['wall_s']:.2f} s | {med['read']['wall_s']:.2f} s | {raw:.2f} s | {med['mapped']['wall_s'] / raw:.2f}x | "
              f"{med['read']['wall_s'] / raw:.2f}x | {med['mapped']['cpu_s']:.2f} s | {med['read']['cpu_s']:.2f} s | {rss['mapped']:.2f} GB | {rss['read']:.2f} GB |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"read-paths-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"repeat": args.repeat, "load_average": os.getloadavg(), "rows": rows}, indent=1))
    print(f"JSON: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
