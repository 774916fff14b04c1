"""`quantkit profile`: every candidate scheme measured on every weight, and optionally the choice
for a target (what `convert --to auto` will write) with its `--rule` lines."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from quantkit.errors import UsageError
from quantkit.sizes import format_bytes, parse_size
from quantkit.sources import open_checkpoint

from .common import GuardedCommand, byte_progress
from .main import Quiet, Src, app

FAMILY_HELP = ("Which schemes the choice may mix: compressed-tensors (its schemes mix freely, with keep) or bitsandbytes "
               "(one method per model, plus kept tensors). Default: compressed-tensors once its schemes are registered, else bitsandbytes.")


@app.command("profile", cls=GuardedCommand)
def profile_cmd(
    src: Src,
    schemes: Annotated[Optional[str], typer.Option("--schemes", help="Comma-separated schemes to try: quantizers, and bf16 (the narrower keep of a wider source). Default: every registered quantizer and bf16.")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the profile (JSON, profile_version 2) for later use.")] = None,
    profile_in: Annotated[Optional[Path], typer.Option("--profile", help="Read a profile written by -o instead of measuring again (refused if SRC changed).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the profile as JSON (the same keys as -o; see README.md).")] = False,
    html: Annotated[Optional[Path], typer.Option("--html", help="Also write a self-contained HTML page with SQNR per layer for each scheme.")] = None,
    blocksize: Annotated[int, typer.Option("--blocksize", help="4-bit block size (32..4096), as convert's.")] = 64,
    double_quant: Annotated[bool, typer.Option("--double-quant", help="4-bit: measure with double quantization, as convert's.")] = False,
    group_size: Annotated[int, typer.Option("--group-size", help="w8a16 / w4a16: weights per scale, as convert's (recorded: convert --profile refuses another).")] = 128,
    skip: Annotated[Optional[list[str]], typer.Option("--skip", help="Regex of tensor names to leave out, as convert's (repeatable).")] = None,
    only: Annotated[Optional[list[str]], typer.Option("--only", help="Regex: measure only matching tensors, as convert's (repeatable).")] = None,
    target_bits: Annotated[Optional[float], typer.Option("--target-bits", help="Choose: least error at this average of stored bits per weight over the measured tensors.")] = None,
    target_size: Annotated[Optional[str], typer.Option("--target-size", help="Choose: least error within this total of tensor bytes, kept tensors included (500MB, 2GiB).")] = None,
    min_sqnr: Annotated[Optional[float], typer.Option("--min-sqnr", help="Choose: least size with every measured tensor at least this SQNR (dB).")] = None,
    min_overall_sqnr: Annotated[Optional[float], typer.Option("--min-overall-sqnr", help="Choose: least size with compare's overall SQNR (all floating-point tensors pooled) at least this (dB).")] = None,
    family: Annotated[Optional[str], typer.Option("--family", help=FAMILY_HELP)] = None,
    top: Annotated[Optional[int], typer.Option("--top", help="Tensors shown in the terminal table (default: all).")] = None,
    outputs: Annotated[bool, typer.Option("--outputs", help="Also run the model (an HF folder with transformers, or --model): each tensor quantized alone, KL divergence (causal LM) or embedding cosine (encoder) against the original, as compare reports it. Enables convert --max-kl.")] = False,
    model: Annotated[Optional[str], typer.Option("--model", metavar="MODULE:FACTORY", help="--outputs: build the module with this factory, as compare's --model.")] = None,
    inputs: Annotated[Optional[str], typer.Option("--inputs", metavar="MODULE:FUNCTION", help="--outputs with --model: the sample inputs, as compare's --inputs.")] = None,
    device: Annotated[str, typer.Option("--device", help="--outputs: where the model runs (auto, cpu, cuda, cuda:N).")] = "cpu",
    quiet: Quiet = False,
) -> None:
    """Measure, for every weight a quantizer takes, the error and stored size of each candidate scheme.

    One streamed pass: each weight is quantized and dequantized as convert and compare do them,
    so the figures are the ones compare reports after that conversion. With a target
    (--target-bits, --target-size, --min-sqnr or --min-overall-sqnr) also print the per-tensor
    choice, the predicted size and SQNR, and the equivalent --rule list.
    """
    from quantkit.plan import Target
    from quantkit.profile import load_profile, profile_checkpoint, save_profile
    from quantkit.reports.profile_render import render_profile_html, render_profile_json, render_profile_text
    from quantkit.schemes import SchemeSettings

    targets = dict(bits=target_bits, size_bytes=parse_size(target_size) if target_size else None,
                   min_sqnr_db=min_sqnr, min_overall_sqnr_db=min_overall_sqnr)
    target = Target(**targets) if any(v is not None for v in targets.values()) else None
    if family is not None and target is None:
        raise UsageError("--family goes with a target (--target-bits, --target-size, --min-sqnr or --min-overall-sqnr)")
    if (model or inputs) and not outputs:
        raise UsageError("--model and --inputs go with --outputs")
    names = [s.strip() for s in schemes.split(",") if s.strip()] if schemes else None
    with open_checkpoint(src) as source:
        if profile_in is not None:
            profile = load_profile(profile_in, source=source)
        else:
            with byte_progress(source.total_bytes, "profile", quiet=quiet or json_out) as progress:
                profile = profile_checkpoint(source, schemes=names, settings=SchemeSettings(blocksize, double_quant, group_size),
                                             skip=tuple(skip or ()), only=tuple(only or ()), progress=progress)
    if outputs:
        from quantkit.profile_outputs import profile_outputs

        total = sum(t.original_bytes for t in profile.tensors + profile.castable)
        with byte_progress(total, "outputs", quiet=quiet or json_out) as progress:
            profile_outputs(profile, src, device=device, factory=model, inputs=inputs, progress=progress)
    if output is not None:
        save_profile(profile, output)
    if html is not None:
        html.write_text(render_profile_html(profile))
    if json_out:
        typer.echo(render_profile_json(profile))
    else:
        typer.echo(render_profile_text(profile, top=top))
        for path in (output, html):
            if path is not None:
                typer.echo(f"wrote {path}")
    if target is not None:
        _print_choice(profile, target, family, err=json_out)


def _print_choice(profile, target, family, *, err: bool) -> None:
    from quantkit.plan import plan_auto
    from quantkit.reports.formatting import fmt_db

    plan = plan_auto(profile, target, family)
    used: dict[str, int] = {}
    for scheme in plan.schemes.values():
        used[scheme] = used.get(scheme, 0) + 1
    echo = lambda line: typer.echo(line, err=err)  # noqa: E731 -- with --json, stdout stays JSON
    echo("")
    echo(f"choice ({plan.family}, {plan.method}): " + ", ".join(f"{s} x{n}" for s, n in sorted(used.items())))
    echo(f"predicted: {format_bytes(plan.predicted_bytes)} of tensors, {plan.predicted_bits:.3f} bits per measured weight, "
         f"overall SQNR {fmt_db(plan.predicted_sqnr_db)} dB, worst tensor {fmt_db(plan.predicted_min_sqnr_db)} dB")
    echo("rules (first match wins):")
    for rule in plan.rules:
        echo(f"  --rule '{rule}'")
