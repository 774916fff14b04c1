"""--executor ray with GPU tasks against a local ``--device cuda`` run: the same bytes, and the times.

On a machine with an NVIDIA GPU, bitsandbytes and Ray (``pip install 'quantkit[ray]'``); about
a minute on one H100 / H200 (it says so when it takes over 2)::

    python benchmarks/gpu_ray_check.py                     # GPT-2 small, int8 and nf4
    python benchmarks/gpu_ray_check.py --device cpu        # the same steps on the CPU: testing it without a GPU
    GPU_CHECK_RAY=1 bash benchmarks/gpu_check.sh           # as a last step of the GPU check

Steps: refuse (exit 2, one line) without CUDA (``--device cuda``) or without Ray; build once the
seeded GPT-2-small folder (``bench_convert.build_checkpoint``); start one local Ray cluster with
the GPUs torch sees (started once, so that each conversion does not pay for one); then for each
scheme convert with ``quantkit convert --device cuda`` (local executor) and with
``--executor ray --ray-gpus-per-task 1 --device cuda --ray-address <that cluster>``, and compare
every output file byte for byte. Exit 1 when a file differs or a task did not quantize on a
GPU Ray gave it. ``--json FILE`` keeps the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from bench_convert import CACHE, build_checkpoint  # noqa: E402

BUDGET_S = 120


def check_machine(device: str) -> str | None:
    """Why this machine cannot run the check, or None."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return "Ray is not installed here: pip install 'quantkit[ray]'"
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            return "CUDA is not usable here: run with --device cpu to test the steps on the CPU"
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            return "bitsandbytes is not installed here (--device cuda quantizes with its CUDA kernels)"
    return None


def start_cluster(device: str) -> str:
    """A local cluster for every conversion of the check; its address."""
    import logging

    import ray

    gpus = 0
    if device == "cuda":
        import torch

        gpus = torch.cuda.device_count()
    ray.init(num_gpus=gpus, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    return ray.get_runtime_context().gcs_address


def convert(src: Path, out: Path, scheme: str, device: str, max_size: str, ray_address: str | None) -> tuple[float, dict]:
    """Run ``quantkit convert`` in its own process; its wall time and --json summary."""
    cmd = [sys.executable, "-m", "quantkit", "convert", str(src), "--to", scheme, "-o", str(out), "--device", device,
           "--max-size", max_size, "--json", "-q"]
    if ray_address is not None:
        cmd += ["--executor", "ray", "--ray-address", ray_address, "--ray-gpus-per-task", "1" if device == "cuda" else "0"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), cli_shim(), os.environ.get("PYTHONPATH", "")])}
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[2:])}: exit {done.returncode}: {done.stderr.strip()}")
    return elapsed, json.loads(done.stdout)


def cli_shim() -> str:
    """A folder where ``quantkit_cli`` imports from this tree's ``cli/`` (pyproject maps it so
    when installed): the check runs from a bare checkout too."""
    import tempfile

    folder = Path(tempfile.gettempdir()) / "quantkit-cli-shim"
    folder.mkdir(exist_ok=True)
    link = folder / "quantkit_cli"
    if not link.exists():
        link.symlink_to(ROOT / "cli", target_is_directory=True)
    return str(folder)


def trim_wheels(folder: Path) -> None:
    """Make the wheels in ``folder`` fit a 64 MiB transfer: Ray's without its Java jars (32 MB;
    Python tasks never load them), bitsandbytes' with only the CUDA 13 and CPU libraries."""
    import zipfile

    keep = {"ray-": lambda n: not n.startswith("ray/jars/") and not n.endswith(".js.map"),
            "bitsandbytes-": lambda n: not n.startswith("bitsandbytes/libbitsandbytes_") or any(k in n for k in ("cuda13", "_cpu"))}
    for wheel in sorted(folder.glob("*.whl")):
        wanted = next((f for prefix, f in keep.items() if wheel.name.startswith(prefix)), None)
        if wanted is None:
            continue
        trimmed = wheel.with_suffix(".trimmed")
        with zipfile.ZipFile(wheel) as zin, zipfile.ZipFile(trimmed, "w", zipfile.ZIP_DEFLATED) as zout:
            for info in zin.infolist():
                if wanted(info.filename):
                    zout.writestr(info, zin.read(info.filename), compress_type=zipfile.ZIP_DEFLATED)
        before = wheel.stat().st_size
        os.replace(trimmed, wheel)
        print(f"{wheel.name}: {before / 1e6:.1f} -> {wheel.stat().st_size / 1e6:.1f} MB")


def differing_files(a: Path, b: Path) -> list[str]:
    """Names of the files that differ between two output folders (or are in one only)."""
    names = {p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file()} | {p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file()}
    return sorted(n for n in names if not (a / n).is_file() or not (b / n).is_file() or (a / n).read_bytes() != (b / n).read_bytes())


def check_scheme(src: Path, work: Path, scheme: str, device: str, max_size: str, address: str) -> dict:
    local_s, local = convert(src, work / f"local-{scheme}", scheme, device, max_size, None)
    ray_s, ran = convert(src, work / f"ray-{scheme}", scheme, device, max_size, address)
    differ = differing_files(work / f"local-{scheme}", work / f"ray-{scheme}")
    shards = ran["shards_converted"]
    on_gpu = device != "cuda" or all(ran["task_devices"][s] == "cuda" and ran["task_gpu_ids"][s] for s in shards)
    return {"scheme": scheme, "device": device, "local_s": round(local_s, 2), "ray_s": round(ray_s, 2), "shards": len(shards),
            "files": len(local["files"]), "differing_files": differ, "task_devices": sorted(set(ran["task_devices"].values())),
            "task_gpu_ids": sorted({g for ids in ran["task_gpu_ids"].values() for g in ids}), "tasks_on_gpu": on_gpu,
            "shard_seconds": ran["shard_seconds"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--size", default="small", help="bench_convert size of the seeded folder (default small: GPT-2 124M)")
    parser.add_argument("--schemes", default="int8,nf4")
    parser.add_argument("--max-size", default="60MB", help="shard size: several shards, so several tasks")
    parser.add_argument("--work", type=Path, default=CACHE / "out" / "gpu-ray-check")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--trim-wheels", type=Path, metavar="DIR", help="only trim the Ray and bitsandbytes wheels in DIR (gpu_check.sh --prepare)")
    args = parser.parse_args(argv)
    if args.trim_wheels is not None:
        trim_wheels(args.trim_wheels)
        return 0
    started = time.perf_counter()
    why = check_machine(args.device)
    if why is not None:
        print(f"gpu_ray_check: {why}", file=sys.stderr)
        return 2
    src = build_checkpoint(args.size)
    import shutil

    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    address = start_cluster(args.device)
    results = [check_scheme(src, args.work, s, args.device, args.max_size, address) for s in args.schemes.split(",")]
    total = time.perf_counter() - started
    for r in results:
        verdict = "same bytes" if not r["differing_files"] else f"DIFFERENT: {', '.join(r['differing_files'])}"
        print(f"{r['scheme']:>5} on {r['device']}: local {r['local_s']:.1f} s, ray {r['ray_s']:.1f} s ({r['shards']} tasks, "
              f"devices {r['task_devices']}, Ray GPU ids {r['task_gpu_ids']}): {r['files']} files, {verdict}")
    print(f"total {total:.1f} s" + (f" (over the {BUDGET_S} s budget)" if total > BUDGET_S else ""))
    if args.json:
        args.json.write_text(json.dumps({"total_s": round(total, 2), "results": results}, indent=2) + "\n")
    shutil.rmtree(args.work, ignore_errors=True)
    return 0 if all(not r["differing_files"] and r["tasks_on_gpu"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
