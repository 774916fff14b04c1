"""quantkit's GPU path against its CPU path and against transformers + bitsandbytes on one GPU.

Run by ``benchmarks/gpu_check.sh`` on a machine with an NVIDIA GPU::

    python benchmarks/bench_gpu.py --size large --schemes int8,nf4 --repeat 2

For each scheme it converts the cached seeded GPT-2 folder (built by ``bench_convert.py``)
with ``quantkit convert --device cpu`` once (the reference bytes), then, alternating, with
``--device cuda`` and with transformers + bitsandbytes on the GPU (``from_pretrained`` with a
``BitsAndBytesConfig`` and ``device_map="cuda"``, then ``save_pretrained``). It reports wall time,
peak RSS, and how the GPU output's stored tensors compare with the CPU output's: the number of
tensors that are byte-identical, and for those that are not, the share of differing codes
(bitsandbytes' CUDA kernels may round a value on a boundary the other way) and the largest
scale difference.

``--device cpu`` runs every step on the CPU instead (transformers + bitsandbytes on the CPU):
that is how the script's steps are tested on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_convert import CACHE, build_checkpoint, folder_bytes, measure  # noqa: E402

CT_SCHEMES = ("fp8", "fp8-block", "w8a16", "w4a16")


def worker_transformers(src: str, out: str, scheme: str, device: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    configs = {
        "int8": BitsAndBytesConfig(load_in_8bit=True),
        "nf4": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4"),
        "fp4": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="fp4"),
    }
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32, quantization_config=configs[scheme], device_map=device)
    model.save_pretrained(out, max_shard_size="2GB")
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def compare_outputs(a: Path, b: Path) -> dict:
    """How the stored tensors of two output folders compare, tensor by tensor (one at a time)."""
    import torch
    from safetensors import safe_open

    def tensors(folder: Path) -> dict[str, Path]:
        found = {}
        for path in sorted(folder.glob("*.safetensors")):
            with safe_open(path, "pt") as f:
                found.update({k: path for k in f.keys()})
        return found

    left, right = tensors(a), tensors(b)
    result = {"tensors": len(left), "only_in_one": sorted(set(left) ^ set(right)), "identical": 0, "differing": {}}
    for name in sorted(set(left) & set(right)):
        with safe_open(left[name], "pt") as f:
            x = f.get_tensor(name)
        with safe_open(right[name], "pt") as f:
            y = f.get_tensor(name)
        if x.dtype == y.dtype and x.shape == y.shape and torch.equal(x.view(torch.uint8) if x.numel() else x, y.view(torch.uint8) if y.numel() else y):
            result["identical"] += 1
            continue
        entry = {"dtype": str(x.dtype), "shape": list(x.shape)}
        if x.shape == y.shape and x.dtype == y.dtype:
            if x.is_floating_point():
                entry["max_abs_diff"] = float((x.float() - y.float()).abs().max()) if x.numel() else 0.0
            else:
                entry["share_differing"] = float((x != y).float().mean())
        result["differing"][name] = entry
    return result


def quantkit_cmd(src: Path, out: Path, scheme: str, device: str) -> list[str]:
    return [sys.executable, "-m", "quantkit", "convert", str(src), "--to", scheme, "-o", str(out), "--device", device, "--quiet", "--force"]


def source_for(size: str, scheme: str) -> Path:
    """GPT-2's Conv1D weights are kept by the compressed-tensors schemes (their serving loaders
    expect Linear), so those schemes run on the Llama-shaped folder of the same size name."""
    if scheme in CT_SCHEMES and not size.startswith("llama-"):
        size = f"llama-{size}"
    return build_checkpoint(size)


def run(args) -> dict:
    work = CACHE / "gpu-out"
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"device": args.device, "size": args.size, "schemes": {}}
    for scheme in args.schemes:
        src = source_for(args.size, scheme)
        reference = work / f"cpu-{scheme}"
        shutil.rmtree(reference, ignore_errors=True)
        cpu = measure(quantkit_cmd(src, reference, scheme, "cpu"))
        tools = ["quantkit"] + (["transformers"] if scheme not in CT_SCHEMES else [])
        samples: dict[str, list] = {t: [] for t in tools}
        comparison = against_peer = None
        kept: dict[str, Path] = {}
        for rep in range(args.repeat):
            for tool in tools:
                out = work / f"{tool}-{scheme}"
                shutil.rmtree(out, ignore_errors=True)
                if tool == "quantkit":
                    cmd = quantkit_cmd(src, out, scheme, args.device)
                else:
                    cmd = [sys.executable, __file__, "_worker", str(src), str(out), scheme, args.device]
                m = measure(cmd)
                m["out_bytes"] = folder_bytes(out)
                samples[tool].append(m)
                if tool == "quantkit" and comparison is None:
                    comparison = compare_outputs(reference, out)
                if rep == 0 and len(tools) > 1:  # kept until both tools' first outputs are compared
                    kept[tool] = out.rename(out.with_name(out.name + "-first"))
                else:
                    shutil.rmtree(out, ignore_errors=True)
                print(f"  {scheme:9s} {tool:12s} run {rep + 1}/{args.repeat}: {m['wall_s']:7.2f}s  rss {m['peak_rss'] / 1e9:5.2f} GB", flush=True)
            if len(kept) == 2:
                against_peer = compare_outputs(kept["transformers"], kept["quantkit"])
                for folder in kept.values():
                    shutil.rmtree(folder, ignore_errors=True)
                kept.clear()
        shutil.rmtree(reference, ignore_errors=True)
        median = {t: {k: statistics.median(s[k] for s in v) for k in v[0]} for t, v in samples.items()}
        results["schemes"][scheme] = {"source": src.name, "input_bytes": folder_bytes(src), "cpu_reference": cpu,
                                      "median": median, "samples": samples, "cpu_vs_device": comparison,
                                      "peer_vs_device": against_peer}
        if args.json:  # after each scheme: a run cut short still leaves what it measured
            args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


def table(results: dict) -> str:
    lines = [f"{'scheme':9s} {'source':12s} {'qk cpu s':>9s} {'qk dev s':>9s} {'tf dev s':>9s} {'qk/tf':>6s} "
             f"{'=cpu':>10s} {'=tf dev':>10s}"]
    for scheme, r in results["schemes"].items():
        q, t = r["median"]["quantkit"], r["median"].get("transformers")
        c, p = r["cpu_vs_device"] or {}, r.get("peer_vs_device") or {}
        ratio = f"{q['wall_s'] / t['wall_s']:.2f}x" if t else "-"
        lines.append(
            f"{scheme:9s} {r['source']:12s} {r['cpu_reference']['wall_s']:9.2f} {q['wall_s']:9.2f} {t['wall_s'] if t else float('nan'):9.2f} {ratio:>6s} "
            f"{c.get('identical', 0):>5d}/{c.get('tensors', 0):<4d} "
            + (f"{p.get('identical', 0):>5d}/{p.get('tensors', 0):<4d}" if p else f"{'-':>10s}")
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_worker":
        worker_transformers(*argv[1:5])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="large", help="small, large or xl (default large)")
    parser.add_argument("--schemes", default="int8,nf4", help="comma-separated (default int8,nf4)")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu, to test the steps without a GPU")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="where to write the results as JSON")
    args = parser.parse_args(argv)
    args.schemes = [s for s in args.schemes.split(",") if s]
    started = time.perf_counter()
    results = run(args)
    print(table(results))
    print(f"total {time.perf_counter() - started:.0f}s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    for scheme, r in results["schemes"].items():
        c = r["cpu_vs_device"]
        if c and c["only_in_one"]:
            print(f"{scheme}: tensor names differ between CPU and device outputs: {c['only_in_one'][:5]}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
