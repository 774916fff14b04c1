"""`quantkit compare`: sizes, accuracy and memory of a converted checkpoint against its original."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from quantkit.errors import UsageError
from quantkit.sources import open_checkpoint
from quantkit.writing.target import check_report_path

from .common import GuardedCommand, byte_progress, source_options
from .main import AllowGlobal, Key, Quiet, StripPrefix, app

Original = Annotated[str, typer.Argument(metavar="ORIGINAL", help="The original checkpoint (file, index or Hugging Face folder, or its s3:// / https:// / hf:// URL).")]
Converted = Annotated[str, typer.Argument(metavar="CONVERTED", help="The converted checkpoint to judge against it (a path or a URL).")]


def model_shape(num_layers: int | None, hidden_size: int | None, num_heads: int | None) -> "ModelShape | None":  # noqa: F821
    """The --num-layers/--hidden-size/--num-heads triple, all or none."""
    given = [v for v in (num_layers, hidden_size, num_heads) if v is not None]
    if not given:
        return None
    if len(given) != 3:
        raise UsageError("--num-layers, --hidden-size and --num-heads go together: give all three (or none, to read config.json)")
    from quantkit.reports import ModelShape

    return ModelShape(num_layers, hidden_size, num_heads)


@app.command("compare", cls=GuardedCommand)
def compare_cmd(
    original: Original,
    converted: Converted,
    json_out: Annotated[bool, typer.Option("--json", help="Print every figure as JSON (keys in README.md).")] = False,
    markdown: Annotated[Optional[Path], typer.Option("--markdown", help="Also write a Markdown report (for a model card).")] = None,
    html: Annotated[Optional[Path], typer.Option("--html", help="Also write a self-contained HTML report with charts.")] = None,
    text: Annotated[Optional[Path], typer.Option("--text", help="Sample text for the model-output check (default: a built-in paragraph).")] = None,
    outputs: Annotated[bool, typer.Option("--outputs/--no-outputs", help="Run both models on sample inputs and compare outputs.")] = True,
    model: Annotated[Optional[str], typer.Option("--model", help="module:factory (or file.py:factory) building the nn.Module of a bare .pth.")] = None,
    inputs: Annotated[Optional[str], typer.Option("--inputs", help="module:function returning the sample inputs for --model.")] = None,
    device: Annotated[str, typer.Option("--device", help="Where the models run: auto (CUDA when present), cpu or cuda.")] = "auto",
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="Most tokens of sample text to run.")] = 1024,
    top: Annotated[int, typer.Option("--top", help="How many largest and worst tensors to list.")] = 10,
    gpu_gb: Annotated[Optional[float], typer.Option("--gpu-gb", help="Memory of one GPU in GiB: estimate how many are needed.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Batch size for the activation estimate.")] = 1,
    seq_len: Annotated[Optional[int], typer.Option("--seq-len", help="Sequence length for the activation estimate (default: the model's, at most 2048).")] = None,
    num_layers: Annotated[Optional[int], typer.Option("--num-layers", help="Layers, when there is no config.json (with --hidden-size, --num-heads).")] = None,
    hidden_size: Annotated[Optional[int], typer.Option("--hidden-size", help="Hidden size, when there is no config.json.")] = None,
    num_heads: Annotated[Optional[int], typer.Option("--num-heads", help="Attention heads, when there is no config.json.")] = None,
    quiet: Quiet = False,
    key: Key = None,
    strip_prefix: StripPrefix = None,
    allow_global: AllowGlobal = None,
) -> None:
    """Compare a converted checkpoint with its original: size, per-tensor error, output accuracy, memory.

    --key, --strip-prefix and --allow-global apply to ORIGINAL (a training checkpoint).
    """
    from quantkit.reports import ReportOptions, build_report, render_json, render_text, write_report  # imports torch: only when run
    if text is not None and not text.is_file():
        raise UsageError(f"--text {text}: no such file")
    if inputs is not None and model is None:
        raise UsageError("--inputs goes with --model module:factory")
    for path in (markdown, html):  # before any work, and never over either checkpoint
        if path is not None:
            check_report_path(path, src=original)
            check_report_path(path, src=converted)
    shape = model_shape(num_layers, hidden_size, num_heads)
    opening = source_options(key, strip_prefix, allow_global)
    with open_checkpoint(original, **opening) as probe:
        total = probe.total_bytes
    with byte_progress(total, "compare", quiet=quiet or json_out) as progress:
        options = ReportOptions(
            model_outputs=outputs, text=text, model=model, inputs=inputs, device=device,
            max_tokens=max_tokens, top=top, gpu_gb=gpu_gb, batch_size=batch_size, seq_len=seq_len, shape=shape, **opening,
        )
        report = build_report(original, converted, options, progress=progress)
    written = [write_report(report, path) for path in (markdown, html) if path is not None]
    if json_out:
        typer.echo(render_json(report))
        return
    typer.echo(render_text(report))
    for path in written:
        typer.echo(f"wrote {path}")
