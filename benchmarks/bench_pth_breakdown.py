"""Where the time of a conversion from a ``.pth`` goes: torch's import, the pickle's tensor
table, reading the bytes, and the rest (compute and write), against raw I/O of the same bytes;
the torch-free reader (``lazy_pth``) and the torch path (``QUANTKIT_PTH_READER=torch``) side by side.

    .venv/bin/python benchmarks/bench_pth_breakdown.py --size xl --schemes bf16,fp16,int8,nf4,fp4

Uses bench_convert's cached GPT-2 checkpoint of ``--size`` as one ``torch.save`` zip
(``benchmarks/cache/gpt2-<size>-pth/pytorch_model.bin``). In one fresh process it times
``import torch`` (torch path only), ``open_checkpoint`` (the tensor table: the restricted
unpickler, or ``torch.load(weights_only=True)`` on the meta device then a mapping), and reading
every tensor through ``read_into`` in 8 MB pieces (positioned reads or the copy out of the
mapping, and the zip CRC check of each record) with no compute, once per reader. Then, for
each scheme, in fresh processes one after the other: ``quantkit convert`` from the ``.pth``
with the torch path, with the torch-free reader, from the same tensors in safetensors when
that folder is cached, and raw I/O (read every input byte, write the output's byte count).
Prints one table; "compute + write" is the ``.pth`` time less import, table and read.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_convert import CACHE, ROOT, build_pth_checkpoint, command, folder_bytes, measure  # noqa: E402

PHASES = r"""
import json, os, sys, time
t0 = time.perf_counter()
import numpy as np
if os.environ.get("QUANTKIT_PTH_READER") == "torch":
    import torch
t1 = time.perf_counter()
from quantkit.sources import open_checkpoint
t2 = time.perf_counter()
src = open_checkpoint(sys.argv[1])
t3 = time.perf_counter()
buffer = np.empty(8 << 20, dtype=np.uint8)
for name, spec in src.specs.items():
    for start in range(0, spec.nbytes, buffer.size):
        n = min(buffer.size, spec.nbytes - start)
        src.read_into(name, start, memoryview(buffer[:n]))
t4 = time.perf_counter()
print(json.dumps({"import_torch_s": t1 - t0, "import_quantkit_s": t2 - t1, "table_s": t3 - t2, "read_s": t4 - t3,
                  "reader": type(src).__name__, "torch_imported": "torch" in sys.modules}))
"""


def build_pth_direct(size: str) -> Path:
    """The ``-pth`` folder built straight from the seeded generator, in the order and with the
    values ``build_checkpoint`` gives (no safetensors copy on disk: for a disk short of room)."""
    folder = CACHE / f"gpt2-{size}-pth"
    if (folder / "pytorch_model.bin").is_file():
        return folder
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    sys.path.insert(0, str(ROOT))
    from bench_convert import SEED, SHARD_BYTES, SIZES
    from quantkit.planner import plan_shards

    config = GPT2Config(**SIZES[size], architectures=["GPT2LMHeadModel"])
    with torch.device("meta"):
        state = GPT2LMHeadModel(config).state_dict()
    state.pop("lm_head.weight", None)
    shapes = {n: tuple(t.shape) for n, t in state.items() if t.is_floating_point()}
    plan = plan_shards([(n, 4 * torch.Size(s).numel()) for n, s in shapes.items()], SHARD_BYTES)
    gen = torch.Generator().manual_seed(SEED)
    tensors = {u: torch.empty(shapes[u], dtype=torch.float32).normal_(0.0, 0.02, generator=gen) for units in plan.shards for u in units}
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save({n: tensors[n] for n in shapes}, tmp / "pytorch_model.bin")
    config.save_pretrained(tmp)
    tmp.rename(folder)
    return folder


READERS = {"torch": {"QUANTKIT_PTH_READER": "torch"}, "lazy": {"QUANTKIT_PTH_READER": ""}}


def phases(pth: Path, reader: str) -> dict:
    env = {**os.environ, **READERS[reader]}
    out = subprocess.run([sys.executable, "-c", PHASES, str(pth)], cwd=ROOT, capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="xl")
    parser.add_argument("--schemes", default="bf16,fp16,int8,nf4,fp4")
    parser.add_argument("--direct", action="store_true", help="build the .pth straight from the generator (no safetensors copy)")
    args = parser.parse_args()
    cached = (CACHE / f"gpt2-{args.size}-pth" / "pytorch_model.bin").is_file()  # used as it is, safetensors folder or not
    folder = build_pth_direct(args.size) if args.direct or cached else build_pth_checkpoint(args.size)
    st_folder = CACHE / f"gpt2-{args.size}"
    gb = folder_bytes(folder) / 1e9
    p = {reader: phases(folder / "pytorch_model.bin", reader) for reader in READERS}
    for reader, q in p.items():
        print(f"{folder.name} ({gb:.2f} GB), {reader} reader ({q['reader']}, torch imported: {q['torch_imported']}): "
              f"import torch {q['import_torch_s']:.2f} s, import quantkit {q['import_quantkit_s']:.2f} s, "
              f"tensor table {q['table_s']:.2f} s, read every byte {q['read_s']:.2f} s", flush=True)
    print("| scheme | .pth, torch path | .pth, torch-free | from safetensors | raw I/O | torch path / raw | torch-free / raw "
          "| compute + write (torch-free) | peak RSS torch path | peak RSS torch-free |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|", flush=True)
    work = CACHE / "out"
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for scheme in [s for s in args.schemes.split(",") if s]:
        out = work / f"pth-{scheme}"
        m = {}
        for reader in READERS:
            shutil.rmtree(out, ignore_errors=True)
            m[reader] = measure(command("quantkit", scheme, folder, out, "2GB", 0), env={**os.environ, **READERS[reader]})
        out_bytes = sum(f.stat().st_size for f in out.glob("*.safetensors"))
        shutil.rmtree(out, ignore_errors=True)
        st = None
        if (st_folder / "model.safetensors.index.json").is_file():
            st = measure(command("quantkit", scheme, st_folder, out, "2GB", 0))["wall_s"]
            shutil.rmtree(out, ignore_errors=True)
        raw = measure(command("raw", scheme, folder, out, "2GB", out_bytes))["wall_s"]
        shutil.rmtree(out, ignore_errors=True)
        q = p["lazy"]
        rest = m["lazy"]["wall_s"] - q["import_torch_s"] - q["import_quantkit_s"] - q["table_s"] - q["read_s"]
        rows.append({"scheme": scheme, "torch_s": m["torch"]["wall_s"], "lazy_s": m["lazy"]["wall_s"], "safetensors_s": st, "raw_s": raw,
                     "peak_rss_torch": m["torch"]["peak_rss"], "peak_rss_lazy": m["lazy"]["peak_rss"], "phases": p})
        print(f"| {scheme} | {m['torch']['wall_s']:.1f} s | {m['lazy']['wall_s']:.1f} s | {f'{st:.1f} s' if st else '-'} | {raw:.1f} s | "
              f"{m['torch']['wall_s'] / raw:.2f}x | {m['lazy']['wall_s'] / raw:.2f}x | {rest:.1f} s | "
              f"{m['torch']['peak_rss'] / 1e9:.2f} GB | {m['lazy']['peak_rss'] / 1e9:.2f} GB |", flush=True)
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
