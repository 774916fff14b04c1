"""quantkit's fp8 output loaded by transformers on a GPU, compressed, against the CPU dequantized path.

Run by ``benchmarks/gpu_check.sh`` on a machine with an NVIDIA GPU::

    python benchmarks/gpu_ct_load.py --size llama-small --device cuda --json out.json

It converts the seeded Llama-shaped folder (built by ``bench_convert.py``) with
``quantkit convert --to fp8`` on the CPU, then computes the logits of one fixed batch of token ids
four ways:

- ``fp32``: the original FP32 folder, on the CPU (the reference);
- ``cpu-dequantized``: the fp8 folder with ``CompressedTensorsConfig(dequantize=True)`` on the CPU,
  in FP32 (weights dequantized at load, no activation quantization);
- ``device-fp8-kernel``: the fp8 folder with ``use_optimized_inference=True`` on the device in
  BF16: the weights stay FP8 and each Linear runs a row-wise FP8 matmul with activations
  quantized per token (needs compute capability 8.9 or newer; transformers falls back to the next
  route otherwise, and the JSON says which modules were loaded);
- ``device-compressed``: the fp8 folder with the default config on the device in BF16 (the
  compressed-tensors route: compressed weights, decompressed on the first forward).

For each it reports, against ``cpu-dequantized`` and against ``fp32``: the largest and mean
absolute logit difference, mean KL divergence per token, and the share of positions whose top-1
token agrees. The model is seeded synthetic (weights N(0, 0.02)): the figures show that the
stored bytes load and compute the same on the device, not a language model's accuracy.

``--device cpu`` runs the device steps on the CPU (the FP8 kernel route then falls back):
the way to test the script's steps on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_convert import CACHE, build_checkpoint  # noqa: E402


def logits_of(folder: Path, device: str, dtype, batch, **config) -> tuple:
    import torch
    import transformers

    kwargs = {"dtype": dtype, "device_map": device}
    if config:
        kwargs["quantization_config"] = transformers.CompressedTensorsConfig(**config)
    started = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    loaded = time.perf_counter() - started
    modules: dict[str, int] = {}
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            key = f"{type(module).__name__}:{str(module.weight.dtype).removeprefix('torch.')}"
            modules[key] = modules.get(key, 0) + 1
    with torch.no_grad():
        out = model(batch.to(model.device)).logits.float().cpu()
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return out, {"load_s": round(loaded, 2), "linear_modules": modules}


def agreement(x, ref) -> dict:
    import torch

    log_p, log_q = torch.log_softmax(ref, -1), torch.log_softmax(x, -1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1).mean()
    return {
        "ref_logit_std": float(ref.std()),
        "max_abs_diff": float((x - ref).abs().max()),
        "mean_abs_diff": float((x - ref).abs().mean()),
        "mean_kl": float(kl),
        "top1_agree": float((x.argmax(-1) == ref.argmax(-1)).float().mean()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="llama-small", help="a Llama-shaped size of bench_convert.py (default llama-small)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tokens", type=int, default=128, help="tokens per sequence (4 sequences)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    src = build_checkpoint(args.size)
    out = CACHE / f"ct-load-fp8-{args.size}"
    subprocess.run([sys.executable, "-m", "quantkit", "convert", str(src), "--to", "fp8", "-o", str(out), "--quiet", "--force", "--device", "cpu"], check=True)
    vocab = json.loads((src / "config.json").read_text())["vocab_size"]
    batch = torch.randint(0, vocab, (4, args.tokens), generator=torch.Generator().manual_seed(0))

    runs = {
        "fp32": (src, "cpu", torch.float32, {}),
        "cpu-dequantized": (out, "cpu", torch.float32, {"dequantize": True}),
        "device-fp8-kernel": (out, args.device, torch.bfloat16, {"use_optimized_inference": True}),
        "device-compressed": (out, args.device, torch.bfloat16, {}),
    }
    logits, results = {}, {"size": args.size, "device": args.device, "batch": list(batch.shape), "runs": {}}
    if args.device.startswith("cuda"):
        results["gpu"] = torch.cuda.get_device_name(0)
    for name, (folder, device, dtype, config) in runs.items():
        logits[name], results["runs"][name] = logits_of(folder, device, dtype, batch, **config)
    for name in runs:
        results["runs"][name]["vs_cpu_dequantized"] = agreement(logits[name], logits["cpu-dequantized"])
        results["runs"][name]["vs_fp32"] = agreement(logits[name], logits["fp32"])
    print(f"{'run':20s} {'load s':>7s} {'max|d| deq':>11s} {'KL deq':>9s} {'top1 deq':>9s} {'KL fp32':>9s} {'top1 fp32':>9s}  linear modules")
    for name, r in results["runs"].items():
        d, f = r["vs_cpu_dequantized"], r["vs_fp32"]
        print(f"{name:20s} {r['load_s']:7.2f} {d['max_abs_diff']:11.4g} {d['mean_kl']:9.2e} {d['top1_agree']:9.4f} {f['mean_kl']:9.2e} {f['top1_agree']:9.4f}  {r['linear_modules']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
