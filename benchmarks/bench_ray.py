"""The Ray executor against the local executor, on the same machine, in the same run.

    .venv/bin/python benchmarks/bench_ray.py                       # GPT-2 large, bf16 and int8
    .venv/bin/python benchmarks/bench_ray.py --schemes int8 --repeat 1 --src path/to/model

A 2-CPU Ray cluster is started once on 127.0.0.1 by this script (``ray.init(num_cpus=2)``;
its start-up time is reported apart) and shut down at the end. For each scheme, each repeat runs
``quantkit convert`` with the local executor and with ``--executor ray --ray-address`` that
cluster, one after the other, the same ``--max-size`` (so both write the same shards);
the median wall time of each and their ratio are reported. Each Ray task's own time
(``shard_seconds`` in ``--json``) gives the per-shard throughput the 405B estimate in
README.md starts from. Memory: the local run's peak RSS (its process tree), and the largest
peak RSS of one Ray worker process (sampled from /proc: the workers are children of the
raylet, not of the command).

``--s3``: both write to ``-o s3://bench/...`` on moto's S3 server on 127.0.0.1 (started by
this script before the cluster, so the workers inherit its endpoint and credentials; ranged
reads patched as in ``bench_remote.py``): each Ray task uploads its own shard. Both outputs are
compared object by object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench_convert import CACHE, ROOT, build_checkpoint, folder_bytes, measure


def _ray_worker_rss() -> int:
    """The largest RSS (bytes) of a process running a Ray task (``ray::`` in its name)."""
    largest = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if not f.read(5).startswith(b"ray::"):
                    continue
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        largest = max(largest, int(line.split()[1]) * 1024)
        except OSError:
            continue
    return largest


def _run_ray(cmd: list[str]) -> dict:
    peak = [0]
    done = threading.Event()

    def poll():
        while not done.is_set():
            peak[0] = max(peak[0], _ray_worker_rss())
            done.wait(0.05)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    done.set()
    thread.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    summary = json.loads(proc.stdout)
    return {"wall_s": wall, "worker_peak_rss": peak[0], "shard_seconds": summary["shard_seconds"], "files": summary["files"]}


def _convert(src: Path, out: Path, scheme: str, max_size: str) -> list[str]:
    return [sys.executable, "-m", "quantkit", "convert", str(src), "--to", scheme, "-o", str(out), "--max-size", max_size, "--quiet", "--force"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=Path, default=None, help="checkpoint to convert (default: GPT-2 large, built into benchmarks/cache)")
    parser.add_argument("--schemes", default="bf16,int8")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--max-size", default="200MB", help="shard size for both executors (default 200MB: several shards to run in parallel)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--s3", action="store_true", help="write both outputs to moto's S3 on 127.0.0.1 (-o s3://bench/...)")
    parser.add_argument("--estimate-from", type=Path, default=None, help="print the on-paper estimate from a results JSON (runs nothing)")
    parser.add_argument("--params", type=float, default=405e9)
    parser.add_argument("--node-cpus", type=int, default=32)
    parser.add_argument("--node-gbps", type=float, default=10.0, help="object-store bandwidth per node, Gbit/s (default 10)")
    parser.add_argument("--shard-gb", type=float, default=2.0, help="output shard size of the estimated run, GB (default 2, --max-size's default)")
    args = parser.parse_args(argv)
    if args.estimate_from is not None:
        for scheme in json.loads(args.estimate_from.read_text())["runs"]:
            if scheme != "bf16":
                print_estimate(args.estimate_from, scheme=scheme, params=args.params, node_cpus=args.node_cpus,
                               node_bytes_per_s=args.node_gbps * 1e9 / 8, max_shard_bytes=args.shard_gb * 1e9)
        return 0
    src = args.src or build_checkpoint("large")
    in_bytes = folder_bytes(src)
    work = CACHE / "out"
    work.mkdir(parents=True, exist_ok=True)
    import logging

    stop_s3, fs = None, None
    if args.s3:
        import tempfile

        from bench_remote import serve_s3

        _, _, _, stop_s3, fs = serve_s3(Path(tempfile.mkdtemp(prefix="bench-ray-s3-")))  # nothing to upload: an empty bucket
    import ray

    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level=logging.WARNING)
    address = ray.get_runtime_context().gcs_address
    cluster_start_s = time.perf_counter() - started
    results: dict = {"src": str(src), "s3": args.s3, "input_bytes": in_bytes, "cpus": os.cpu_count(), "cluster_start_s": cluster_start_s, "runs": {}}
    try:
        for scheme in args.schemes.split(","):
            local, runs = [], []
            for rep in range(args.repeat):
                out_local, out_ray = work / f"local-{scheme}", work / f"ray-{scheme}"
                if fs is not None:
                    out_local, out_ray = f"s3://bench/local-{scheme}", f"s3://bench/ray-{scheme}"
                local.append(measure(_convert(src, out_local, scheme, args.max_size)))
                runs.append(_run_ray(_convert(src, out_ray, scheme, args.max_size) + ["--json", "--executor", "ray", "--ray-address", address]))
                same = _same_files(out_local, out_ray) if fs is None else _same_objects(fs, out_local, out_ray)
                print(f"{scheme} run {rep + 1}: local {local[-1]['wall_s']:.2f}s  ray {runs[-1]['wall_s']:.2f}s  identical {same}", flush=True)
                for out in (out_local, out_ray):
                    fs.rm(str(out).removeprefix("s3://"), recursive=True) if fs is not None else shutil.rmtree(out, ignore_errors=True)
            seconds = [s for r in runs for s in r["shard_seconds"].values()]
            results["runs"][scheme] = {
                "local_wall_s": statistics.median(r["wall_s"] for r in local),
                "ray_wall_s": statistics.median(r["wall_s"] for r in runs),
                "local_peak_rss": max(r["peak_rss"] for r in local),
                "ray_worker_peak_rss": max(r["worker_peak_rss"] for r in runs),
                "shards": len(runs[0]["shard_seconds"]),
                "task_s_median": statistics.median(seconds),
                "task_input_bytes_per_s": in_bytes * len(runs) / sum(seconds),  # all tasks' input over all tasks' time
                "samples": {"local": local, "ray": [{k: v for k, v in r.items() if k != "files"} for r in runs]},
                "identical": same,
            }
            r = results["runs"][scheme]
            r["ratio"] = r["ray_wall_s"] / r["local_wall_s"]
            print(f"{scheme}: local {r['local_wall_s']:.2f}s, ray {r['ray_wall_s']:.2f}s (x{r['ratio']:.2f}), {r['shards']} shards, "
                  f"task median {r['task_s_median']:.2f}s = {r['task_input_bytes_per_s'] / 1e6:.0f} MB/s of input per task; "
                  f"peak RSS local {r['local_peak_rss'] / 1e9:.2f} GB, largest Ray worker {r['ray_worker_peak_rss'] / 1e9:.2f} GB", flush=True)
    finally:
        ray.shutdown()
        if stop_s3 is not None:
            stop_s3()
    print(f"cluster start: {cluster_start_s:.1f}s (not in the ray times)")
    target = args.json or ROOT / "benchmarks" / "results" / f"ray-{time.strftime('%Y%m%d-%H%M%S')}.json"
    target.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {target}")
    return 0


def estimate(results: dict, *, scheme: str, params: float, node_cpus: int, node_bytes_per_s: float, max_shard_bytes: float,
             out_per_in: float = 0.5, fixed_s: float | None = None) -> list[dict]:
    """Wall time of a BF16 checkpoint of ``params`` parameters converted with ``scheme`` on
    1, 8 and 32 nodes, on paper, from this run's per-task throughput.

    Per node: ``node_cpus`` tasks at once, each at the measured per-task rate in parameters
    per second (the benchmark's input is FP32: 4 bytes per parameter; a BF16 input is 2), and
    the node's object-store bandwidth shared by what it reads (the input) and writes
    (``out_per_in`` bytes per input byte). Shards: ``max_shard_bytes`` of output each, one task
    each, in waves over the cluster's task slots. ``fixed_s``: the driver's fixed cost (this
    run's Ray wall time less its tasks' time spread over 2 CPUs)."""
    run = results["runs"][scheme]
    params_per_s = run["task_input_bytes_per_s"] / 4  # the benchmark's input is FP32
    if fixed_s is None:
        fixed_s = max(run["ray_wall_s"] - run["task_s_median"] * run["shards"] / 2, 0.0)
    input_bytes = params * 2
    shards = max(1, round(input_bytes * out_per_in / max_shard_bytes))
    shard_params = params / shards
    rows = []
    for nodes in (1, 8, 32):
        running = min(nodes * node_cpus, shards)  # tasks at once
        per_node_running = -(-running // nodes)
        task_rate = min(params_per_s * 2, node_bytes_per_s / (1 + out_per_in) / per_node_running)  # input bytes/s per task
        waves = -(-shards // (nodes * node_cpus))
        wall = fixed_s + waves * shard_params * 2 / task_rate
        bound = "network" if task_rate < params_per_s * 2 else "CPU"
        rows.append({"nodes": nodes, "shards": shards, "waves": waves, "task_input_MBps": task_rate / 1e6, "bound": bound, "wall_s": wall})
    return rows


def print_estimate(path: Path, **kwargs) -> None:
    results = json.loads(path.read_text())
    rows = estimate(results, **kwargs)
    print(f"{kwargs['params'] / 1e9:.0f}B parameters, BF16 -> {kwargs['scheme']}: {kwargs['node_cpus']} tasks per node, "
          f"{kwargs['node_bytes_per_s'] / 1e9:.2f} GB/s object store per node, {kwargs['max_shard_bytes'] / 1e9:g} GB shards")
    print("| nodes | shards | waves | input per task | bound | wall time |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['nodes']} | {r['shards']} | {r['waves']} | {r['task_input_MBps']:.0f} MB/s | {r['bound']} | {r['wall_s'] / 60:.1f} min |")


def _same_files(a: Path, b: Path) -> bool:
    names = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    if names != sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file()):
        return False
    return all(_file_equal(a / n, b / n) for n in names)


def _same_objects(fs, a: str, b: str) -> bool:
    fs.invalidate_cache()
    keys = {url: sorted(k.split("/", 2)[2] for k in fs.find(url.removeprefix("s3://") + "/")) for url in (a, b)}
    if keys[a] != keys[b] or not keys[a]:
        return False
    return all(fs.cat_file(f"{a.removeprefix('s3://')}/{k}") == fs.cat_file(f"{b.removeprefix('s3://')}/{k}") for k in keys[a])


def _file_equal(x: Path, y: Path) -> bool:
    import filecmp

    return filecmp.cmp(x, y, shallow=False)


if __name__ == "__main__":
    sys.exit(main())
