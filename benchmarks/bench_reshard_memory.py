"""Peak memory of `quantkit reshard` on a multi-GB checkpoint, against the largest tensor.

Builds (once, cached under benchmarks/cache/) a synthetic checkpoint of about 3 GB whose
largest tensor is about 200 MB, as one .safetensors file and as one zip-format .pth, then runs
`python -m quantkit reshard` on each in a subprocess and reports its peak resident memory
(the kernel's high-water mark for the child, from wait4, plus the peak anonymous and
file-backed parts sampled from /proc/<pid>/status). A naive peer (torch.load the whole file,
then safetensors.torch.save_file) is measured in the same run for comparison.

    .venv/bin/python benchmarks/bench_reshard_memory.py            # ~3 GB, with the peer
    .venv/bin/python benchmarks/bench_reshard_memory.py --scale 0.3 --no-peer

Not a test: it needs several GB of disk and a minute or more.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHE = HERE / "cache"
MB = 10**6


@dataclass
class Run:
    name: str
    input_format: str
    peak_rss_bytes: int  # VmHWM, sampled (the kernel's high-water mark for the process)
    ru_maxrss_bytes: int  # from wait4
    peak_anon_bytes: int
    peak_file_bytes: int
    seconds: float


def build_checkpoint(scale: float) -> tuple[Path, Path, int, int]:
    """(safetensors path, pth path, total bytes, largest tensor bytes), built once per scale."""
    import torch
    from safetensors.torch import save_file

    folder = CACHE / f"synthetic-{scale:g}"
    st_path, pth_path, meta_path = folder / "model.safetensors", folder / "model.pth", folder / "meta.json"
    if meta_path.is_file() and st_path.is_file() and pth_path.is_file():
        meta = json.loads(meta_path.read_text())
        return st_path, pth_path, meta["total_bytes"], meta["largest_bytes"]
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    vocab, hidden, ffn, layers = 50_000, 1024, 6144, max(1, round(24 * scale))
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "lm_head.weight": (vocab, hidden)}
    for i in range(layers):
        for name in ("mlp.gate_proj", "mlp.up_proj"):
            shapes[f"model.layers.{i}.{name}.weight"] = (ffn, hidden)
        shapes[f"model.layers.{i}.mlp.down_proj.weight"] = (hidden, ffn)
        shapes[f"model.layers.{i}.mlp.extra_proj.weight"] = (ffn, hidden)
        for name in ("self_attn.q_proj", "self_attn.o_proj"):
            shapes[f"model.layers.{i}.{name}.weight"] = (hidden, hidden)
    tensors = {name: torch.rand(shape, generator=gen) for name, shape in shapes.items()}
    save_file(tensors, str(st_path), metadata={"format": "pt"})
    torch.save(tensors, pth_path)
    total, largest = sum(t.nbytes for t in tensors.values()), max(t.nbytes for t in tensors.values())
    meta_path.write_text(json.dumps({"total_bytes": total, "largest_bytes": largest, "tensors": len(tensors)}))
    return st_path, pth_path, total, largest


def _status_bytes(pid: int) -> dict[str, int]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024
    return out


def measure(name: str, input_format: str, args: list[str]) -> Run:
    """Run a command; its peak RSS from wait4 (ru_maxrss) and sampled anon / file-backed peaks."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peaks = {"VmHWM": 0, "RssAnon": 0, "RssFile": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for key, value in _status_bytes(proc.pid).items():
                if key in peaks:
                    peaks[key] = max(peaks[key], value)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    done.set()
    sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed ({proc.returncode}):\n{stderr}")
    return Run(name, input_format, peaks["VmHWM"], usage.ru_maxrss * 1024, peaks["RssAnon"], peaks["RssFile"], time.perf_counter() - start)


def naive_peer(src: Path, out: Path) -> list[str]:
    code = (
        "import sys, torch; from safetensors.torch import load_file, save_file; p = sys.argv[1]; "
        "sd = load_file(p) if p.endswith('.safetensors') else torch.load(p, weights_only=True); "
        "save_file({k: v.contiguous() for k, v in sd.items()}, sys.argv[2], metadata={'format': 'pt'})"
    )
    return [sys.executable, "-c", code, str(src), str(out)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="model size factor (1.0: about 3 GB)")
    parser.add_argument("--max-size", default="500MB", help="shard limit passed to reshard")
    parser.add_argument("--no-peer", action="store_true", help="skip the naive load-then-save peer")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build_only:
        build_checkpoint(args.scale)
        return

    # built in a child process, so that this one stays small while it measures the others
    subprocess.run([sys.executable, __file__, "--build-only", "--scale", str(args.scale)], check=True)
    st_path, pth_path, total, largest = build_checkpoint(args.scale)
    out = CACHE / "bench-out"
    runs = [measure("python (import quantkit CLI only)", "-", [sys.executable, "-c", "import quantkit_cli.main"])]
    for fmt, src in (("safetensors", st_path), ("pth (zip)", pth_path)):
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, "-m", "quantkit", "reshard", str(src), "-o", str(out), "--max-size", args.max_size, "-q", "--force"]
        runs.append(measure("quantkit reshard", fmt, cmd))
        if not args.no_peer:
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            runs.append(measure("naive load + save_file", fmt, naive_peer(src, out / "model.safetensors")))
    shutil.rmtree(out, ignore_errors=True)

    baseline = runs[0].peak_rss_bytes
    print(f"checkpoint: {total / MB:,.0f} MB of tensors, largest tensor {largest / MB:,.0f} MB ({st_path.parent})")
    print(f"{'run':<36}{'input':<13}{'peak RSS':>10}{'- import':>10}{'maxrss':>10}{'anon':>9}{'file':>9}{'/largest':>10}{'/total':>8}{'time':>8}")
    for r in runs:
        above = r.peak_rss_bytes - baseline
        print(
            f"{r.name:<36}{r.input_format:<13}{r.peak_rss_bytes / MB:>8,.0f}MB{above / MB:>8,.0f}MB{r.ru_maxrss_bytes / MB:>8,.0f}MB"
            f"{r.peak_anon_bytes / MB:>7,.0f}MB{r.peak_file_bytes / MB:>7,.0f}MB"
            f"{above / largest:>9.2f}x{above / total:>7.2f}x{r.seconds:>7.1f}s"
        )
    if args.json:
        args.json.write_text(json.dumps({"total_bytes": total, "largest_bytes": largest, "runs": [asdict(r) for r in runs]}, indent=2))


if __name__ == "__main__":
    main()
