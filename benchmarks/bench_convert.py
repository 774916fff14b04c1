"""Benchmark ``quantkit convert`` against transformers + bitsandbytes and against the I/O limit.

One command (``make bench`` runs ``python benchmarks/bench_convert.py $(BENCH_ARGS)``)::

    .venv/bin/python benchmarks/bench_convert.py --sizes large --schemes bf16,int8,nf4 --repeat 3
    .venv/bin/python benchmarks/bench_convert.py --sizes large --input pth  # from a torch.save checkpoint
    make bench BENCH_ARGS="--sizes small,large --repeat 3"

What it does:

1. Builds seeded synthetic GPT-2 checkpoints of real shapes (``small`` = GPT-2 124M,
   ``large`` = 774M / 3.1 GB FP32, ``xl`` = 1.5B) from transformers' ``GPT2Config``: the
   model is created on the meta device and each tensor is materialized on its own with a
   seeded ``torch.Generator`` (normal, std 0.02) and streamed to disk with quantkit's
   ``ShardWriter``, so building needs about one tensor of memory. The result is an HF folder
   (config.json + 1 GB safetensors shards + index) cached under ``benchmarks/cache/``.
   With ``--input pth`` the same tensors (same names and values) are also saved with
   ``torch.save(state_dict)`` (zip format) as ``pytorch_model.bin`` beside the same config.json
   in ``benchmarks/cache/gpt2-<size>-pth/``, built from the safetensors shards; that build holds
   the whole model in memory once (3.1 GB for large, 6.2 GB for xl), which the benchmark
   machine affords. Every contender then reads that folder.
2. For each scheme (``--schemes``, default bf16,int8,nf4) it runs, each in a fresh
   subprocess and alternating, ``--repeat`` times:

   * ``quantkit``: ``python -m quantkit convert SRC --to SCHEME -o OUT --max-size 2GB --quiet --force``;
   * ``transformers``: ``AutoModelForCausalLM.from_pretrained(SRC, dtype=torch.bfloat16)``
     (bf16) or with ``BitsAndBytesConfig(load_in_8bit=True)`` /
     ``BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")``, then
     ``save_pretrained(OUT, max_shard_size="2GB")``;
   * ``raw``: the I/O limit: read every input byte (the safetensors shards or
     ``pytorch_model.bin``) in 8 MB chunks and write a file of the quantkit output's byte
     count, with no compute (no fsync: neither quantkit, without ``--fsync``, nor
     save_pretrained flushes to disk).

3. Measures each process tree's wall time, peak RSS and peak RssAnon (the parent polls
   ``/proc/<pid>/status`` of the child and its descendants every ~20 ms and sums them) and
   the kernel's peak RSS of the largest process (``ru_maxrss`` from ``wait4``, i.e. VmHWM at
   exit), takes the median over the repeats, prints a table of ratios and writes JSON to
   ``benchmarks/results/``.

The input is read once, untimed, before the first run of each input (the machine's RAM is
expected to hold it); every contender sees the same warm cache. Outputs are deleted after each run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE = HERE / "cache"
RESULTS = HERE / "results"
SIZES = {
    "small": {},  # GPT-2 124M (GPT2Config defaults)
    "large": {"n_embd": 1280, "n_layer": 36, "n_head": 20},  # 774M
    "xl": {"n_embd": 1600, "n_layer": 48, "n_head": 25},  # 1.5B
    # Llama-shaped, for the compressed-tensors schemes (their reference quantizes Linear
    # layers, which GPT-2's Conv1D layers are not): about the bytes of the GPT-2 sizes.
    "llama-small": {"hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 12, "num_attention_heads": 12,
                    "num_key_value_heads": 4, "vocab_size": 32000},  # ~0.55 GB FP32
    "llama-large": {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 16, "num_attention_heads": 16,
                    "num_key_value_heads": 4, "vocab_size": 32000},  # ~3.4 GB FP32, beside GPT-2 large's 3.1 GB
    "llama-xl": {"hidden_size": 2560, "intermediate_size": 6912, "num_hidden_layers": 20, "num_attention_heads": 20,
                 "num_key_value_heads": 4, "vocab_size": 32000},  # ~6.2 GB FP32, beside GPT-2 XL's 6.23 GB
    # Llama-2-7B's shapes (6.74B parameters, 26.95 GB FP32; no grouped-query attention, untied lm_head)
    "llama-7b": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
                 "num_key_value_heads": 32, "vocab_size": 32000},
}
CT_SCHEMES = {"fp8": "FP8_DYNAMIC", "fp8-block": "FP8_BLOCK", "w8a16": "W8A16", "w4a16": "W4A16"}
CT_IGNORE = ["re:.*embed_tokens$", "lm_head"]  # norms are passed over by name (module names ending in "norm")
SEED = 0
SHARD_BYTES = 1 << 30
CHUNK = 8 << 20
TOOLS = ("quantkit", "transformers", "llmcompressor", "raw")
# "quantkit-before" runs the checkout given by --quantkit-from, side by side with this one;
# "quantkit-norecord" this checkout without each shard's in-header checksum record (issue 11),
# so that a before / after comparison can tell the cost of that record from the rest;
# "quantkit-jit" this checkout with its kernels run by numba's JIT (QUANTKIT_KERNELS=jit), not
# the ahead-of-time build
EXTRA_TOOLS = ("quantkit-before", "quantkit-norecord", "quantkit-jit")


def _parse_size(text: str) -> int:
    text = text.strip().upper()
    for suffix, mult in (("GIB", 1 << 30), ("MIB", 1 << 20), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3), ("B", 1)):
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * mult)
    return int(text)


# ---------------------------------------------------------------- building the checkpoints


def build_checkpoint(size: str) -> Path:
    """The cached HF folder for ``size``, built once (seeded, tensor by tensor)."""
    from transformers import GPT2Config, LlamaConfig

    llama = size.startswith("llama-")
    folder = CACHE / (size if llama else f"gpt2-{size}")
    # architectures names the model class: quantkit (like transformers) finds the linear layers through it
    if llama:
        config = LlamaConfig(**SIZES[size], architectures=["LlamaForCausalLM"], tie_word_embeddings=False)
    else:
        config = GPT2Config(**SIZES[size], architectures=["GPT2LMHeadModel"])
    if (folder / "model.safetensors.index.json").is_file() or (folder / "model.safetensors").is_file():
        config.save_pretrained(folder)  # cheap; keeps caches built by older versions of this script current
        return folder
    import torch
    from transformers import GPT2LMHeadModel, LlamaForCausalLM

    sys.path.insert(0, str(ROOT))
    from quantkit.planner import plan_shards
    from quantkit.specs import OutSpec
    from quantkit.writing import ShardWriter

    with torch.device("meta"):
        model = (LlamaForCausalLM if llama else GPT2LMHeadModel)(config)
    state = model.state_dict()
    if not llama:
        state.pop("lm_head.weight", None)  # tied to transformer.wte.weight, as save_pretrained drops it
    specs = {name: OutSpec(name, torch.float32, tuple(t.shape)) for name, t in state.items() if t.is_floating_point()}
    plan = plan_shards([(n, s.nbytes) for n, s in specs.items()], SHARD_BYTES)
    names = plan.file_names()
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    gen = torch.Generator().manual_seed(SEED)
    weight_map = {}
    started = time.perf_counter()
    for file_name, units in zip(names, plan.shards):
        writer = ShardWriter(tmp / file_name, [specs[u] for u in units], {"format": "pt"})
        for unit in units:
            tensor = torch.empty(specs[unit].shape, dtype=torch.float32).normal_(0.0, 0.02, generator=gen)
            writer.write(unit, tensor)
            weight_map[unit] = file_name
            del tensor
        writer.finish()
    if len(names) > 1:
        index = {"metadata": {"total_size": plan.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    config.save_pretrained(tmp)
    os.replace(tmp, folder)
    print(f"built {folder} ({plan.total_bytes / 1e9:.2f} GB, {len(names)} shards) in {time.perf_counter() - started:.1f}s", flush=True)
    return folder


def build_pth_checkpoint(size: str) -> Path:
    """The cached ``.pth`` form of ``size``: the same tensors in one ``torch.save`` zip, ``pytorch_model.bin``."""
    src = build_checkpoint(size)
    folder = CACHE / f"gpt2-{size}-pth"
    if (folder / "pytorch_model.bin").is_file():
        shutil.copy2(src / "config.json", folder / "config.json")  # kept current, as in build_checkpoint
        return folder
    import torch
    from safetensors.torch import load_file

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    started = time.perf_counter()
    state = {}
    for path in weight_files(src):  # the whole model in memory once
        state.update(load_file(path))
    torch.save(state, tmp / "pytorch_model.bin")
    del state
    shutil.copy2(src / "config.json", tmp / "config.json")
    os.replace(tmp, folder)
    print(f"built {folder} ({folder_bytes(folder) / 1e9:.2f} GB) in {time.perf_counter() - started:.1f}s", flush=True)
    return folder


def build_input(size: str, kind: str) -> Path:
    return build_pth_checkpoint(size) if kind == "pth" else build_checkpoint(size)


def weight_files(folder: Path) -> list[Path]:
    """A folder's safetensors files, or else its ``.bin`` (the ``-pth`` inputs)."""
    return sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in weight_files(folder))


# ---------------------------------------------------------------- the contenders (worker side)


def worker_transformers(src: str, out: str, scheme: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs: dict = {"dtype": torch.bfloat16}
    if scheme == "int8":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    elif scheme == "nf4":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")
    model = AutoModelForCausalLM.from_pretrained(src, **kwargs)
    model.save_pretrained(out, max_shard_size="2GB")


def worker_llmcompressor(src: str, out: str, scheme: str) -> None:
    """llm-compressor's streaming CPU path, the reference the compressed-tensors schemes match byte for byte."""
    import warnings

    from llmcompressor import model_free_ptq

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model_free_ptq(src, out, scheme=CT_SCHEMES[scheme], ignore=CT_IGNORE, device="cpu")


def worker_quantkit_norecord(src: str, out: str, scheme: str, max_size: str) -> None:
    """``quantkit convert`` with its shards written without the in-header checksum record:
    the manifest's SHA-256 is then hashed while the shard is written, as before that record
    existed. For measurement only; the CLI has no such option."""
    import importlib

    from quantkit_cli.main import run

    convert_module = importlib.import_module("quantkit.convert")  # the package exports a function of that name

    for name in ("write_cast_checkpoint", "write_checkpoint"):
        def without_record(*args, _write=getattr(convert_module, name), **kwargs):
            return _write(*args, **{**kwargs, "self_checksum": False})

        setattr(convert_module, name, without_record)
    sys.argv = ["quantkit", "convert", src, "--to", scheme, "-o", out, "--max-size", max_size, "--quiet", "--force"]
    run()


def worker_raw(src: str, out: str, out_bytes: int) -> None:
    read_every_byte(Path(src))
    os.makedirs(out, exist_ok=True)
    zeros = memoryview(bytes(CHUNK))
    with open(Path(out) / "model.safetensors", "wb", buffering=0) as f:
        left = out_bytes
        while left > 0:
            n = f.write(zeros[: min(CHUNK, left)])
            left -= n


# ---------------------------------------------------------------- measuring a process tree


def _status(pid: int) -> dict[str, int]:
    fields = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "RssAnon", "VmHWM"):
                    fields[key] = int(value.split()[0]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError, ValueError):
        pass
    return fields


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            pass
    return pids


def measure(cmd: list[str], interval: float = 0.02, cwd: Path | None = None, env: dict | None = None) -> dict:
    """Run ``cmd``; wall time, CPU time (user + system, from ``wait4``: less sensitive to a
    busy machine than wall time), peak summed RSS / RssAnon of its tree, and ru_maxrss."""
    peak = {"rss": 0, "anon": 0, "hwm": 0}
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd or ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    done = threading.Event()

    def poll():
        while not done.is_set():
            rss = anon = 0
            for p in _tree(proc.pid):
                s = _status(p)
                rss += s.get("VmRSS", 0)
                anon += s.get("RssAnon", 0)
                peak["hwm"] = max(peak["hwm"], s.get("VmHWM", 0))
            peak["rss"], peak["anon"] = max(peak["rss"], rss), max(peak["anon"], anon)
            done.wait(interval)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    done.set()
    thread.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{output.decode(errors='replace')[-4000:]}")
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss": peak["rss"],
        "peak_anon": peak["anon"],
        "maxrss": max(usage.ru_maxrss * 1024, peak["hwm"]),
    }


def command(tool: str, scheme: str, src: Path, out: Path, max_size: str, out_bytes: int) -> list[str]:
    py = sys.executable
    if tool in ("quantkit", "quantkit-before", "quantkit-jit"):
        return [py, "-m", "quantkit", "convert", str(src), "--to", scheme, "-o", str(out), "--max-size", max_size, "--quiet", "--force"]
    if tool in ("transformers", "llmcompressor"):
        return [py, __file__, "_worker", tool, str(src), str(out), scheme]
    if tool == "quantkit-norecord":
        return [py, __file__, "_worker", tool, str(src), str(out), scheme, max_size]
    return [py, __file__, "_worker", "raw", str(src), str(out), str(out_bytes)]


# ---------------------------------------------------------------- driver


def _checkout(args, tool: str) -> tuple[Path | None, dict | None]:
    """Where a quantkit tool runs from: ``quantkit-before`` from --quantkit-from (its own
    ``quantkit`` package from the working folder, its ``cli/`` as ``quantkit_cli`` through a
    PYTHONPATH link), plain ``quantkit`` from --quantkit-from only when no ``quantkit-before``
    runs beside it."""
    if tool == "quantkit-before":
        links = Path(tempfile.mkdtemp(prefix="quantkit-before-"))
        (links / "quantkit_cli").symlink_to(Path(args.quantkit_from).resolve() / "cli")
        return Path(args.quantkit_from), {**os.environ, "PYTHONPATH": str(links)}
    if tool == "quantkit" and "quantkit-before" not in args.tools:
        return args.quantkit_from, None
    if tool == "quantkit-jit":
        return None, {**os.environ, "QUANTKIT_KERNELS": "jit"}
    return None, None


def compile_bytecode(*checkouts: Path | None) -> None:
    """Byte-compile the ``quantkit`` and ``cli`` sources of each checkout a contender imports,
    as ``pip install`` does for an installed package. Where PYTHONDONTWRITEBYTECODE is set (it
    is on the development machine), an editable checkout would otherwise compile its ~65
    modules from source in every timed run: about 0.2 s that no installed copy pays."""
    import compileall

    for checkout in checkouts:
        for package in ("quantkit", "cli"):
            if checkout is not None and (Path(checkout) / package).is_dir():
                compileall.compile_dir(str(Path(checkout) / package), quiet=1)


def run(args) -> dict:
    compile_bytecode(ROOT, args.quantkit_from)
    results: dict = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "args": vars(args),
        "input": args.input,
        "runs": {},
    }
    work = CACHE / "out"
    work.mkdir(parents=True, exist_ok=True)
    for asked in args.sizes:
        for scheme in args.schemes:
            # compressed-tensors schemes run on the Llama-shaped size of about the same bytes:
            # quantkit keeps GPT-2's Conv1D weights unquantized in them, the reference quantizes
            # Linear layers only, so a GPT-2 comparison would quantize nothing
            size = f"llama-{asked}" if scheme in CT_SCHEMES and not asked.startswith("llama-") and f"llama-{asked}" in SIZES else asked
            src = build_input(size, args.input)
            in_bytes = folder_bytes(src)
            key = f"{size}{'-pth' if args.input == 'pth' else ''}/{scheme}"
            tools = [t for t in args.tools if (t != "transformers" or scheme not in CT_SCHEMES) and (t != "llmcompressor" or scheme in CT_SCHEMES)]
            samples = {t: [] for t in tools}
            out_bytes = 0
            read_every_byte(src)  # untimed: every contender finds the page cache warm
            for rep in range(args.repeat):
                for tool in tools:
                    out = work / f"{tool}-{scheme}"
                    shutil.rmtree(out, ignore_errors=True)
                    if tool == "raw" and not out_bytes:
                        out_bytes = _expected_bytes(src, scheme, work, args.max_size)
                    cwd, env = _checkout(args, tool)
                    m = measure(command(tool, scheme, src, out, args.max_size, out_bytes), cwd=cwd, env=env)
                    if tool == "quantkit":
                        out_bytes = folder_bytes(out)
                    m["out_bytes"] = folder_bytes(out)
                    samples[tool].append(m)
                    shutil.rmtree(out, ignore_errors=True)
                    print(
                        f"  {key:14s} {tool:12s} run {rep + 1}/{args.repeat}: {m['wall_s']:7.2f}s  cpu {m['cpu_s']:6.2f}s  "
                        f"rss {m['peak_rss'] / 1e9:5.2f} GB  anon {m['peak_anon'] / 1e9:5.2f} GB",
                        flush=True,
                    )
            median = {t: {k: statistics.median(s[k] for s in v) for k in v[0]} for t, v in samples.items()}
            results["runs"][key] = {"input": args.input, "input_bytes": in_bytes, "samples": samples, "median": median}
    return results


def read_every_byte(src: Path) -> None:
    """Read every weight file of ``src`` once, a chunk at a time: raw I/O's reading half, and,
    untimed before an input's first run, what warms the page cache for every contender (the
    input of the previous size may have pushed it out)."""
    buffer = memoryview(bytearray(CHUNK))
    for path in weight_files(src):
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buffer):
                pass


def _expected_bytes(src: Path, scheme: str, work: Path, max_size: str) -> int:
    out = work / f"size-probe-{scheme}"
    subprocess.run(
        [sys.executable, "-m", "quantkit", "convert", str(src), "--to", scheme, "-o", str(out), "--max-size", max_size, "--quiet", "--force"],
        cwd=ROOT, check=True,
    )
    n = folder_bytes(out)
    shutil.rmtree(out, ignore_errors=True)
    return n


def table(results: dict) -> str:
    head = (
        f"{'input/scheme':20s} {'quantkit s':>10s} {'tf|lc s':>10s} {'raw s':>8s} {'qk/ref':>7s} {'qk/raw':>7s} "
        f"{'qk cpu':>7s} {'tf|lc cpu':>9s} {'raw cpu':>7s} {'qk RSS':>8s} {'qk anon':>8s} {'ref RSS':>8s} {'ref anon':>8s} {'raw RSS':>8s} {'qk/refRSS':>9s} {'qk out':>7s} {'ref out':>7s}"
    )
    lines = [head, "-" * len(head)]
    gb = lambda b: f"{b / 1e9:.2f}G"  # noqa: E731
    cpu = lambda v: f"{v:.1f}"  # noqa: E731
    rows = [(key, run_["median"], tool) for key, run_ in results["runs"].items() for tool in ("quantkit", *EXTRA_TOOLS) if tool in run_["median"]]
    for key, m, tool in rows:
        key = key if tool == "quantkit" else f"{key} {tool.removeprefix('quantkit-')}"
        # the contender: transformers (bf16, bitsandbytes) or llm-compressor's model_free_ptq (compressed-tensors)
        q, t, r = m.get(tool), m.get("transformers") or m.get("llmcompressor"), m.get("raw")
        cell = lambda d, k, f: f(d[k]) if d else "-"  # noqa: E731
        ratio = lambda a, b, k: f"{a[k] / b[k]:.2f}x" if a and b and b[k] else "-"  # noqa: E731
        lines.append(
            f"{key:20s} {cell(q, 'wall_s', lambda v: f'{v:.2f}'):>10s} {cell(t, 'wall_s', lambda v: f'{v:.2f}'):>10s} "
            f"{cell(r, 'wall_s', lambda v: f'{v:.2f}'):>8s} {ratio(q, t, 'wall_s'):>7s} {ratio(q, r, 'wall_s'):>7s} "
            f"{cell(q, 'cpu_s', cpu):>7s} {cell(t, 'cpu_s', cpu):>9s} {cell(r, 'cpu_s', cpu):>7s} "
            f"{cell(q, 'peak_rss', gb):>8s} {cell(q, 'peak_anon', gb):>8s} {cell(t, 'peak_rss', gb):>8s} "
            f"{cell(t, 'peak_anon', gb):>8s} {cell(r, 'peak_rss', gb):>8s} {ratio(q, t, 'peak_rss'):>9s} "
            f"{cell(q, 'out_bytes', gb):>7s} {cell(t, 'out_bytes', gb):>7s}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_worker":
        kind, src, out, extra = argv[1:5]
        if kind == "transformers":
            worker_transformers(src, out, extra)
        elif kind == "llmcompressor":
            worker_llmcompressor(src, out, extra)
        elif kind == "quantkit-norecord":
            worker_quantkit_norecord(src, out, extra, argv[5])
        else:
            worker_raw(src, out, int(extra))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="large", help="comma-separated: small, large, xl, llama-small, llama-large, llama-xl, llama-7b (default large; compressed-tensors schemes run on llama-<size>)")
    parser.add_argument("--schemes", default="bf16,int8,nf4", help="comma-separated (default bf16,int8,nf4)")
    parser.add_argument("--tools", default=",".join(TOOLS), help="comma-separated subset of quantkit,transformers,llmcompressor,raw (transformers runs bf16 and bitsandbytes, llmcompressor the compressed-tensors schemes), and quantkit-before: the checkout given by --quantkit-from, alternating with this one; quantkit-norecord: this checkout without the shards' in-header checksum record; quantkit-jit: this checkout with numba's JIT instead of the kernels built ahead of time")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each contender; the median is reported (default 3)")
    parser.add_argument(
        "--input", choices=("safetensors", "pth"), default="safetensors",
        help="read the safetensors folder or its torch.save form, gpt2-<size>-pth/pytorch_model.bin (default safetensors)",
    )
    parser.add_argument("--max-size", default="2GB", help="quantkit's --max-size, e.g. 5GB for one large shard (default 2GB)")
    parser.add_argument(
        "--quantkit-from", type=Path, default=None,
        help="run `python -m quantkit` in this folder (holding another copy of the quantkit package) to compare versions",
    )
    parser.add_argument("--build-only", action="store_true", help="only build the cached checkpoints")
    parser.add_argument("--json", type=Path, default=None, help="where to write results (default benchmarks/results/<time>.json)")
    args = parser.parse_args(argv)
    args.sizes = [s for s in args.sizes.split(",") if s]
    args.schemes = [s for s in args.schemes.split(",") if s]
    args.tools = [t for t in args.tools.split(",") if t]
    for s in args.sizes:
        if s not in SIZES:
            parser.error(f"unknown size {s!r}: choose from {', '.join(SIZES)}")
    for t in args.tools:
        if t not in TOOLS + EXTRA_TOOLS:
            parser.error(f"unknown tool {t!r}: choose from {', '.join(TOOLS + EXTRA_TOOLS)}")
    if "quantkit-before" in args.tools and not args.quantkit_from:
        parser.error("the tool quantkit-before needs --quantkit-from (a checkout of the earlier code)")
    _parse_size(args.max_size)
    if args.build_only:
        for s in args.sizes:
            build_input(s, args.input)
        return 0
    results = run(args)
    text = table(results)
    results["table"] = text
    print()
    print(f"median of {args.repeat} run(s), {os.cpu_count()} CPUs, input {args.input}, quantkit --max-size {args.max_size}")
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = args.json or RESULTS / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    args.json = str(path)
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
