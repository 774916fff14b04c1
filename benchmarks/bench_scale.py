"""A checkpoint larger than the memory it is given converts: quantkit under a memory cap.

    .venv/bin/python benchmarks/bench_scale.py --size xl --limit 2GB --schemes bf16,nf4 [--with-transformers]

Builds (or reuses) the seeded GPT-2-shaped checkpoint of ``--size`` from bench_convert.py
(``xl``: 1.56B parameters, 6.2 GB FP32), puts each run in a memory cgroup capped at
``--limit`` (the kernel charges the process's anonymous memory *and* the page cache it
touches; anything above the cap is reclaimed, and if it cannot be, the process is killed),
and runs ``quantkit convert`` in it. Prints wall time, peak RSS / RssAnon and the cgroup's
own peak charge. ``--with-transformers`` also runs ``from_pretrained`` + ``save_pretrained``
under the same cap, to show what the cap means. Needs root and a cgroup v1 memory controller
(``/sys/fs/cgroup/memory``) or cgroup v2.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_convert import CACHE, build_checkpoint, command, measure  # noqa: E402

V1 = Path("/sys/fs/cgroup/memory")
V2 = Path("/sys/fs/cgroup/unified")


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

    def reset_peak(self) -> None:
        if self.v1:
            (self.path / "memory.max_usage_in_bytes").write_text("0")

    def close(self) -> None:
        try:
            self.path.rmdir()
        except OSError:
            pass


def _bytes(text: str) -> int:
    units = {"GB": 10**9, "GIB": 2**30, "MB": 10**6, "MIB": 2**20}
    for unit, factor in units.items():
        if text.upper().endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="xl", help="small, large or xl (default xl)")
    parser.add_argument("--limit", default="2GB", help="memory cap for each run (default 2GB)")
    parser.add_argument("--schemes", default="bf16,nf4")
    parser.add_argument("--with-transformers", action="store_true")
    args = parser.parse_args()
    src = build_checkpoint(args.size)
    model_bytes = sum(p.stat().st_size for p in src.glob("*.safetensors"))
    limit = _bytes(args.limit)
    cap = MemoryCap(limit)
    work = CACHE / "scale-out"
    work.mkdir(parents=True, exist_ok=True)
    print(f"checkpoint {src.name}: {model_bytes / 1e9:.2f} GB on disk; memory cap {limit / 1e9:.2f} GB ({model_bytes / limit:.1f}x smaller)")
    try:
        for scheme in [s for s in args.schemes.split(",") if s]:
            tools = ["quantkit", "transformers"] if args.with_transformers else ["quantkit"]
            for tool in tools:
                out = work / f"{tool}-{scheme}"
                shutil.rmtree(out, ignore_errors=True)
                cap.reset_peak()
                started = time.perf_counter()
                try:
                    m = measure(cap.wrap(command(tool, scheme, src, out, "2GB", 0)))
                    outcome = (
                        f"ok {m['wall_s']:6.1f}s  peak RSS {m['peak_rss'] / 1e9:.2f} GB  anon {m['peak_anon'] / 1e9:.2f} GB"
                    )
                except RuntimeError as exc:
                    code = str(exc).split("failed (", 1)[-1].split(")", 1)[0]
                    outcome = f"FAILED after {time.perf_counter() - started:.1f}s (exit {code}; -9/137 = killed at the cap)"
                peak = cap.peak_bytes()
                charged = f"  cgroup peak {peak / 1e9:.2f} GB" if peak else ""
                print(f"{args.size}/{scheme:5s} {tool:12s} {outcome}{charged}", flush=True)
                shutil.rmtree(out, ignore_errors=True)
    finally:
        cap.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
