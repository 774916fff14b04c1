"""A checkpoint larger than the memory it is given converts: quantkit under a memory cap, and
its time per GB from GPT-2-small to a 7B model.

    .venv/bin/python benchmarks/bench_scale.py --sizes 7b --limit 1GB --schemes nf4,fp8 --raw
    .venv/bin/python benchmarks/bench_scale.py --sizes small,large,xl,7b --schemes nf4,fp8 --raw
    .venv/bin/python benchmarks/bench_scale.py --sizes xl --limit 2GB --schemes bf16,nf4 --with-transformers

Builds (or reuses) the seeded checkpoint of each size from bench_convert.py: ``small``,
``large``, ``xl`` are GPT-2's shapes (0.5, 3.1, 6.2 GB FP32) for the casts and the
bitsandbytes schemes, and Llama-shaped folders of about the same bytes (``llama-small``,
``llama-large``, ``llama-xl``) for the compressed-tensors schemes, which quantize Linear
layers only (GPT-2's are Conv1D); ``7b`` is Llama-2-7B's shapes (6.74B parameters, 26.95 GB
FP32, 27 shards of 1 GB) for every scheme. Each run goes in a fresh memory cgroup capped at
``--limit`` (cgroup v1 ``memory.limit_in_bytes``, or v2 ``memory.max``: the kernel charges
the process's anonymous memory *and* the page cache it touches; what is above the cap is
reclaimed, and if it cannot be, the process is killed): the child shell writes its pid to
``cgroup.procs`` and execs ``quantkit convert``. Prints, per run, the input GB, wall time,
s/GB, the raw I/O time of the same bytes (``--raw``: read every input byte and write the
output's byte count, no compute, under the same cap) and the ratio, peak RSS / RssAnon of
the process tree, the cgroup's own peak charge (``memory.max_usage_in_bytes``, page cache
included) and its OOM kills; JSON to ``benchmarks/results/scale-<time>.json``. Needs root.

``--quantkit-from DIR`` runs ``python -m quantkit`` from another checkout (e.g. the code
before a change); ``--stop-after S`` stops a run after S seconds and reports the peaks so
far (a run that would take too long can still show its memory).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_convert import CACHE, CT_SCHEMES, RESULTS, ROOT, SIZES, _status, _tree, build_checkpoint, command, compile_bytecode, folder_bytes  # noqa: E402

V1 = Path("/sys/fs/cgroup/memory")
V2 = Path("/sys/fs/cgroup/unified")
# Llama-shaped, beside GPT-2-XL's 6.2 GB, for the compressed-tensors schemes at the XL size
SIZES.setdefault("llama-xl", {"hidden_size": 2560, "intermediate_size": 6912, "num_hidden_layers": 18,
                              "num_attention_heads": 20, "num_key_value_heads": 20, "vocab_size": 32000})  # ~6.4 GB FP32


def checkpoint_name(size: str, scheme: str) -> str:
    """The cached folder a size and scheme convert: Llama shapes for compressed-tensors."""
    if size == "7b":
        return "llama-7b"
    return f"llama-{size}" if scheme in CT_SCHEMES and f"llama-{size}" in SIZES else size


class MemoryCap:
    """A fresh memory cgroup with a limit; ``wrap(cmd)`` runs a command inside it."""

    def __init__(self, limit_bytes: int):
        name = f"quantkit-bench-{os.getpid()}"
        if (V1 / "memory.limit_in_bytes").exists():
            self.path, self.v1 = V1 / name, True
            self.path.mkdir()
            (self.path / "memory.limit_in_bytes").write_text(str(limit_bytes))
        else:
            self.path, self.v1 = V2 / name, False
            self.path.mkdir()
            (self.path / "memory.max").write_text(str(limit_bytes))
            (self.path / "memory.swap.max").write_text("0")

    def wrap(self, cmd: list[str]) -> list[str]:
        procs = self.path / "cgroup.procs"
        return ["sh", "-c", f'echo $$ > "{procs}" && exec "$@"', "sh", *cmd]

    def peak_bytes(self) -> int | None:
        name = "memory.max_usage_in_bytes" if self.v1 else "memory.peak"
        try:
            return int((self.path / name).read_text())
        except (OSError, ValueError):
            return None

    def oom_kills(self) -> int | None:
        try:
            text = (self.path / ("memory.oom_control" if self.v1 else "memory.events")).read_text()
        except OSError:
            return None
        fields = dict(line.split() for line in text.splitlines() if len(line.split()) == 2)
        return int(fields["oom_kill"]) if "oom_kill" in fields else None

    def reset_peak(self) -> None:
        if self.v1:
            (self.path / "memory.max_usage_in_bytes").write_text("0")

    def close(self) -> None:
        try:
            self.path.rmdir()
        except OSError:
            pass


def run_capped(cmd: list[str], cwd: Path, stop_after: float | None) -> dict:
    """Run ``cmd``: wall time, exit code, peak summed RSS / RssAnon of its tree (polled every
    20 ms) and the kernel's ru_maxrss; killed after ``stop_after`` seconds if given."""
    peak = {"rss": 0, "anon": 0, "hwm": 0}
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    done = threading.Event()
    stopped = threading.Event()

    def poll():
        while not done.is_set():
            rss = anon = 0
            for p in _tree(proc.pid):
                s = _status(p)
                rss, anon = rss + s.get("VmRSS", 0), anon + s.get("RssAnon", 0)
                peak["hwm"] = max(peak["hwm"], s.get("VmHWM", 0))
            peak["rss"], peak["anon"] = max(peak["rss"], rss), max(peak["anon"], anon)
            if stop_after is not None and time.perf_counter() - started > stop_after and not stopped.is_set():
                stopped.set()
                proc.kill()
            done.wait(0.02)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    done.set()
    thread.join()
    text = output.decode(errors="replace")
    own = re.search(r"^time: ([0-9.]+) s", text, re.MULTILINE)  # quantkit's summary: the conversion, after start-up
    return {"wall_s": wall, "convert_s": float(own.group(1)) if own else None, "exit": os.waitstatus_to_exitcode(status), "stopped": stopped.is_set(),
            "peak_rss": peak["rss"], "peak_anon": peak["anon"], "maxrss": max(usage.ru_maxrss * 1024, peak["hwm"]),
            "tail": text[-600:]}


def _bytes(text: str) -> int:
    units = {"GB": 10**9, "GIB": 2**30, "MB": 10**6, "MIB": 2**20}
    for unit, factor in units.items():
        if text.upper().endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)


def _outcome(m: dict) -> str:
    if m["exit"] == 0:
        return "ok"
    return f"stopped at {m['wall_s']:.0f}s" if m["stopped"] else f"FAILED (exit {m['exit']}; -9 = killed)"


def _one(cap: MemoryCap, tool: str, scheme: str, src: Path, out: Path, out_bytes: int, args) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cap.reset_peak()
    kills_before = cap.oom_kills() or 0
    cwd = Path(args.quantkit_from).resolve() if tool == "quantkit" and args.quantkit_from else ROOT
    cmd = command(tool, scheme.removesuffix("-dq"), src, out, "2GB", out_bytes)
    if scheme.endswith("-dq") and tool == "quantkit":  # nf4-dq, fp4-dq: with double quantization
        cmd.append("--double-quant")
    m = run_capped(cap.wrap(cmd), cwd, args.stop_after if tool != "raw" else None)
    m["cgroup_peak"] = cap.peak_bytes()
    m["oom_kills"] = (cap.oom_kills() or 0) - kills_before
    m["output_bytes"] = sum(p.stat().st_size for p in out.glob("*.safetensors")) if out.is_dir() else 0
    shutil.rmtree(out, ignore_errors=True)
    return m


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", "--size", default="7b", help="comma-separated: small, large, xl, 7b (default 7b)")
    parser.add_argument("--limit", default="1GB", help="memory cap for each run (default 1GB)")
    parser.add_argument("--schemes", default="nf4,fp8", help="comma-separated; nf4-dq / fp4-dq: with --double-quant")
    parser.add_argument("--raw", action="store_true", help="also time raw I/O of the same bytes, under the same cap")
    parser.add_argument("--with-transformers", action="store_true")
    parser.add_argument("--quantkit-from", default=None, help="run quantkit from this checkout (default: this one)")
    parser.add_argument("--stop-after", type=float, default=None, help="stop each quantkit run after this many seconds")
    args = parser.parse_args()
    compile_bytecode(ROOT, args.quantkit_from)
    limit = _bytes(args.limit)
    cap = MemoryCap(limit)
    work = CACHE / f"scale-out-{os.getpid()}"  # one per run: two runs side by side do not meet
    work.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    json_path = RESULTS / f"scale-{time.strftime('%Y%m%d-%H%M%S')}.json"
    print(f"memory cap {limit / 1e9:.2f} GB; load average {os.getloadavg()[0]:.1f}", flush=True)
    print("| size | checkpoint | input GB | scheme | tool | outcome | wall s | s/GB | start + exit s | s/GB in convert() | raw s | raw s/GB | / raw "
          "| peak RSS GB (anon) | cgroup peak GB | OOM kills |", flush=True)
    print("|---|---|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|", flush=True)
    try:
        for size in [s for s in args.sizes.split(",") if s]:
            for scheme in [s for s in args.schemes.split(",") if s]:
                name = checkpoint_name(size, scheme)
                src = build_checkpoint(name)
                gb = folder_bytes(src) / 1e9
                tools = ["quantkit"] + (["transformers"] if args.with_transformers else [])
                results = {tool: _one(cap, tool, scheme, src, work / f"{tool}-{scheme}", 0, args) for tool in tools}
                if args.raw:
                    results["raw"] = _one(cap, "raw", scheme, src, work / "raw", results["quantkit"]["output_bytes"], args)
                for tool in tools:
                    m = results[tool]
                    raw = results.get("raw", {}).get("wall_s")
                    row = {"size": size, "checkpoint": name, "input_gb": gb, "scheme": scheme, "tool": tool, "raw_s": raw,
                           "load_average": os.getloadavg()[0], **{k: v for k, v in m.items() if k != "tail"}}
                    rows.append(row)
                    ratio = f"{m['wall_s'] / raw:.2f}x" if raw and m["exit"] == 0 else ""
                    own = m.get("convert_s")  # the wall time outside quantkit's own clock (imports, CLI)
                    startup = f"{m['wall_s'] - own:.1f} | {own / gb:.2f}" if own is not None else " | "
                    print(f"| {size} | {name} | {gb:.2f} | {scheme} | {tool} | {_outcome(m)} | {m['wall_s']:.1f} | {m['wall_s'] / gb:.2f} | "
                          f"{startup} | {raw or 0:.1f} | {(raw or 0) / gb:.2f} | {ratio} | {m['peak_rss'] / 1e9:.2f} ({m['peak_anon'] / 1e9:.2f}) | "
                          f"{(m['cgroup_peak'] or 0) / 1e9:.2f} | {m['oom_kills']} |", flush=True)
                    if m["exit"] != 0 and not m["stopped"]:
                        print("    " + m["tail"].strip().replace("\n", "\n    "), flush=True)
                json_path.write_text(json.dumps({"limit_bytes": limit, "args": vars(args), "rows": rows}, indent=1))
    finally:
        cap.close()
        shutil.rmtree(work, ignore_errors=True)
    print(f"JSON: {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
