"""`quantkit convert`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from quantkit.convert import ConvertOptions, ConvertResult, convert
from quantkit.layout import default_output
from quantkit.writing.target import check_output, check_report_path
from quantkit.schemes import SchemeSettings
from quantkit.schemes.registry import SCHEMES, get_scheme, schemes_help
from quantkit.sizes import format_bytes, parse_size
from quantkit.sources import open_checkpoint

from quantkit.errors import UsageError

from .common import GuardedCommand, byte_progress, print_json, source_options, warn
from .main import DEFAULT_MAX_SIZE, SIZE_HELP, AllowGlobal, Force, Fsync, Key, Quiet, Src, StripPrefix, app
from .profile_cmd import FAMILY_HELP

DEFAULT_SETTINGS = SchemeSettings()


@app.command("convert", cls=GuardedCommand)
def convert_cmd(
    src: Src,
    to: Annotated[str, typer.Option("--to", metavar="SCHEME", help=f"Target (any case), one of {', '.join(SCHEMES)}, or auto (a scheme per tensor for one of --target-bits, --target-size, --min-sqnr, --min-overall-sqnr, --max-kl). {schemes_help()}.")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", metavar="DIR", help="Output folder (default: <src>-<to> beside SRC). Its parent folder must exist; it may not be SRC, inside SRC or hold SRC.")] = None,
    max_size: Annotated[str, typer.Option("--max-size", metavar="SIZE", help=SIZE_HELP)] = DEFAULT_MAX_SIZE,
    blocksize: Annotated[Optional[int], typer.Option(
        "--blocksize", metavar="N", help=f"4-bit block size (32..4096).  [default: {DEFAULT_SETTINGS.blocksize}]")] = None,
    double_quant: Annotated[bool, typer.Option("--double-quant", help="4-bit: quantize the block absmax values too.")] = False,
    rest_dtype: Annotated[Optional[str], typer.Option(
        "--rest-dtype", metavar="DTYPE", help="Quantizers: dtype of tensors left unquantized: keep, bf16 or fp16.  [default: keep]")] = None,
    skip: Annotated[Optional[list[str]], typer.Option("--skip", metavar="REGEX", help="Regex of tensor names to leave as they are (repeatable).")] = None,
    only: Annotated[Optional[list[str]], typer.Option(
        "--only", metavar="REGEX",
        help="Regex: convert only matching tensors (repeatable); a matched 2-D weight is quantized even where the defaults keep it.")] = None,
    device: Annotated[str, typer.Option("--device", help="Where int8 / nf4 / fp4 quantize: auto (the default) and cpu run quantkit's CPU kernels (the same bytes on every machine); cuda or cuda:N run bitsandbytes' CUDA kernels (the bytes transformers + bitsandbytes write on that GPU; a few values round the other way). Casts and compressed-tensors schemes always run on the CPU.")] = "auto",
    group_size: Annotated[int, typer.Option("--group-size", metavar="N", help="w8a16 / w4a16: weights per scale along the input dimension.")] = 128,
    rule: Annotated[Optional[list[str]], typer.Option("--rule", metavar="REGEX=SCHEME", help="'REGEX=SCHEME': scheme of the tensors REGEX finds (repeatable, first match wins; keep, bf16, fp16 or a quantizer).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print each tensor's scheme and why, and the planned shards; write nothing.")] = False,
    target_bits: Annotated[Optional[float], typer.Option("--target-bits", metavar="B", help="--to auto: average stored bits per weight of the weights it decides (the quantizable linear weights), at most.")] = None,
    target_size: Annotated[Optional[str], typer.Option("--target-size", metavar="SIZE", help="--to auto: the whole checkpoint's tensor bytes, at most (e.g. 12MB; --max-size stays the shard size).")] = None,
    min_sqnr: Annotated[Optional[float], typer.Option("--min-sqnr", metavar="DB", help="--to auto: SQNR floor in dB for every decided tensor.")] = None,
    min_overall_sqnr: Annotated[Optional[float], typer.Option("--min-overall-sqnr", metavar="DB", help="--to auto: SQNR floor in dB over the whole checkpoint (compare's overall SQNR).")] = None,
    max_kl: Annotated[Optional[float], typer.Option("--max-kl", metavar="K", help="--to auto: the model's mean KL divergence at most K, estimated as the sum of each tensor's KL measured alone (needs --profile from 'quantkit profile --outputs').")] = None,
    family: Annotated[Optional[str], typer.Option("--family", metavar="NAME", help="--to auto: " + FAMILY_HELP)] = None,
    profile: Annotated[Optional[Path], typer.Option("--profile", metavar="FILE", help="--to auto: reuse a profile written by 'quantkit profile -o' (refused if SRC changed).")] = None,
    schemes: Annotated[Optional[str], typer.Option("--schemes", metavar="A,B", help="--to auto: comma-separated quantizers it may choose (default: every one of the family).")] = None,
    report: Annotated[Optional[Path], typer.Option("--report", metavar="FILE", help="Also write a comparison report (.json, .md or .html).")] = None,
    force: Force = False,
    fsync: Fsync = False,
    quiet: Quiet = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    key: Key = None,
    strip_prefix: StripPrefix = None,
    allow_global: AllowGlobal = None,
    executor: Annotated[str, typer.Option("--executor", metavar="NAME", help="Where the shards are converted: local (this process) or ray (one Ray task per shard; pip install 'quantkit[ray]'; the output must be on a filesystem every node shares, or s3://bucket/prefix).")] = "local",
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", metavar="ADDR", help="--executor ray: the cluster to use (default: RAY_ADDRESS, else a new local one).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="--executor ray: keep the shards a failed or interrupted run of the same command finished (checked by size and SHA-256) and convert only the rest.")] = False,
    ray_gpus_per_task: Annotated[Optional[float], typer.Option("--ray-gpus-per-task", metavar="N", help="--executor ray: GPUs each task is given (a fraction up to 1, or a whole number; default 1 with --device cuda, else 0); with --device cuda or auto a task quantizes on the first GPU Ray gave it.")] = None,
) -> None:
    """Convert a checkpoint to safetensors shards (a cast or a quantization) that transformers loads unchanged.

    Linear-layer weights are quantized as transformers + bitsandbytes do; embeddings, norms,
    biases, the output head and tied weights stay as they are (see --skip/--only/--rest-dtype).
    """
    auto_given = [n for n, v in (("--target-bits", target_bits), ("--target-size", target_size), ("--min-sqnr", min_sqnr),
                                 ("--min-overall-sqnr", min_overall_sqnr), ("--max-kl", max_kl), ("--family", family), ("--profile", profile), ("--schemes", schemes)) if v is not None]
    if to.lower() != "auto" and auto_given:
        raise UsageError(f"{auto_given[0]} applies to --to auto only")
    check_executor(executor, ray_address=ray_address, resume=resume, gpus_per_task=ray_gpus_per_task, device=device)
    options = ConvertOptions(
        scheme=to, blocksize=DEFAULT_SETTINGS.blocksize if blocksize is None else blocksize, double_quant=double_quant,
        rest_dtype=rest_dtype or "keep", skip=tuple(skip or ()), only=tuple(only or ()), device=device, max_shard_bytes=parse_size(max_size),
        group_size=group_size, rules=tuple(rule or ()),
    )
    if options.is_auto:
        from quantkit.plan import Target

        target = Target(bits=target_bits, size_bytes=parse_size(target_size) if target_size is not None else None,
                        min_sqnr_db=min_sqnr, min_overall_sqnr_db=min_overall_sqnr, max_kl=max_kl)
        names = [s.strip() for s in schemes.split(",") if s.strip()] if schemes else None
        if output is None:
            output = default_output(src, "auto")
    else:
        for flag in unused_options(options.scheme, blocksize=blocksize, double_quant=double_quant, rest_dtype=rest_dtype):
            warn(f"{flag} does nothing for {options.scheme}")
    if dry_run:
        from quantkit.dryrun import plan_conversion, plan_text

        with open_checkpoint(src, **source_options(key, strip_prefix, allow_global)) as source:
            if options.is_auto:
                from quantkit.auto import auto_options

                options, _ = auto_options(source, options, target, family=family, profile=profile, schemes=names)
            plan = plan_conversion(source, output, options=options)
        if json_out:
            print_json({**plan.to_dict(), **({"auto": options.auto} if options.auto else {})})
        else:
            typer.echo(plan_text(plan))
            if options.auto:
                typer.echo(auto_text(options.auto))
        return
    check_output(src, output if output is not None else default_output(src, options.scheme), force=force, resume=resume)  # before reading
    if report is not None:
        check_report_path(report, src=src)
    opening = source_options(key, strip_prefix, allow_global)
    runner = None
    if executor == "ray":  # imports Ray (or says how to install it) before anything is read
        from quantkit.executors.ray import RayExecutor

        runner = RayExecutor(src, open_options=opening, address=ray_address, resume=resume, gpus_per_task=ray_gpus_per_task)
    with open_checkpoint(src, **opening) as source:
        if options.is_auto:
            from quantkit.auto import auto_options

            options, _ = auto_options(source, options, target, family=family, profile=profile, schemes=names)
        with byte_progress(source.total_bytes, f"convert to {to}", quiet=quiet or json_out) as progress:
            result = convert(source, output, options=options, force=force, fsync=fsync, progress=progress, executor=runner)
        fetched = source.bytes_fetched
        if fetched is not None and runner is not None:  # the tasks read the tensors; the driver, the headers
            fetched += runner.bytes_fetched
    if report is not None:
        from quantkit.reports import build_report, write_report

        write_report(build_report(src, result.write.folder, **opening), report)
    if json_out:
        ran = {"executor": "ray", "shards_kept": runner.kept, "shards_converted": sorted(runner.converted),
               "shard_seconds": dict(sorted(runner.task_seconds.items())), "task_devices": dict(sorted(runner.task_devices.items())),
               "task_gpu_ids": dict(sorted(runner.gpu_ids.items()))} if runner is not None else {}
        print_json({**summary(result), "bytes_fetched": fetched, **ran})
    else:
        typer.echo(summary_text(result))
        if fetched is not None:
            typer.echo(f"fetched: {fetched:,} bytes over the network ({format_bytes(result.input_bytes)} of tensors in the input)")
        if report is not None:
            typer.echo(f"report: {report}")
        if runner is not None and runner.kept:
            typer.echo(f"resumed: {len(runner.kept)} shard(s) kept from the earlier run, {len(runner.converted)} converted")


def check_executor(executor: str, *, ray_address: str | None, resume: bool, gpus_per_task: float | None = None,
                   device: str = "auto") -> None:
    """--executor and the options that go with --executor ray, before anything is read."""
    if executor not in ("local", "ray"):
        raise UsageError(f"unknown --executor {executor!r}: choose local or ray")
    if executor != "ray":
        given = [flag for flag, on in (("--ray-address", ray_address is not None), ("--resume", resume),
                                       ("--ray-gpus-per-task", gpus_per_task is not None)) if on]
        if given:
            raise UsageError(f"{given[0]} applies to --executor ray only")
        return
    from quantkit.executors.ray import task_resources  # the module imports Ray only when an executor is made

    task_resources(device, gpus_per_task)


def unused_options(scheme_name: str, *, blocksize: int | None, double_quant: bool, rest_dtype: str | None) -> list[str]:
    """The options given that the scheme does not read (each scheme declares the settings it uses)."""
    scheme = get_scheme(scheme_name)
    given = {"blocksize": ("--blocksize", blocksize is not None), "double_quant": ("--double-quant", double_quant)}
    unused = [flag for setting, (flag, on) in given.items() if on and setting not in scheme.uses_settings]
    if rest_dtype is not None and not scheme.quantizes:
        unused.append("--rest-dtype")
    return unused


def summary(r: ConvertResult) -> dict:
    return {
        "output": str(r.write.folder),
        "scheme": r.scheme,
        "device": r.device,
        "source_format": r.source_format,
        "input_bytes": r.input_bytes,
        "output_bytes": r.output_bytes,
        "output_file_bytes": r.write.file_bytes,
        "ratio": r.output_bytes / r.input_bytes if r.input_bytes else None,
        "num_parameters": r.num_parameters,
        "bits_per_weight": r.bits_per_weight,
        "input_bytes_by_dtype": r.input_bytes_by_dtype,
        "output_bytes_by_dtype": r.output_bytes_by_dtype,
        "num_quantized": len(r.quantized),
        "num_kept": len(r.kept),
        "kept": r.kept,
        "fp16_overflow": r.fp16_overflow,
        "nonfinite": r.nonfinite,
        "nonfinite_created": r.nonfinite_created,
        "source_extras": r.source_extras,
        "dropped_extras": r.dropped_extras,
        "files": r.write.manifest["files"],
        "elapsed_s": r.elapsed_s,
        "throughput_bytes_per_s": r.input_bytes / r.elapsed_s if r.elapsed_s else None,
        "notes": r.notes,
        **({"auto": r.auto} if r.auto else {}),
    }


def _db(value) -> str:
    return "inf" if value is None else f"{value:.2f}"


def auto_text(auto: dict) -> str:
    """The choice of --to auto as the equivalent command line and what the profile predicts."""
    target = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v:,}" for k, v in auto["target"].items())
    lines = [
        f"auto ({auto['family']}, target {target}): predicted {format_bytes(auto['predicted_bytes'])} of tensors, "
        f"{auto['predicted_bits']:.3f} bits per decided weight, overall SQNR {_db(auto['predicted_sqnr_db'])} dB, "
        f"worst tensor {_db(auto['predicted_min_sqnr_db'])} dB"
        + (f", KL {auto['predicted_kl']:.3g} (sum of each tensor's alone)" if "predicted_kl" in auto else ""),
        "equivalent rules:",
    ]
    lines += [f"  --rule '{r}'" for r in auto["rules"]]
    return "\n".join(lines)


def _dtypes(by_dtype: dict[str, int]) -> str:
    return ", ".join(f"{d} {format_bytes(b)}" for d, b in by_dtype.items())


def summary_text(r: ConvertResult) -> str:
    s = summary(r)
    reasons: dict[str, int] = {}
    for why in r.kept.values():
        reasons[why] = reasons.get(why, 0) + 1
    lines = [
        f"wrote {s['output']} ({r.scheme}, {len(r.write.shards)} shard(s), on {r.device})",
        f"size: {format_bytes(s['input_bytes'])} -> {format_bytes(s['output_bytes'])} of tensors "
        f"({s['ratio']:.1%}), {s['bits_per_weight']:.2f} bits per weight",
        "by dtype, before: " + _dtypes(r.input_bytes_by_dtype),
        "by dtype, after:  " + _dtypes(r.output_bytes_by_dtype),
        f"tensors: {len(r.quantized)} quantized, {len(r.kept)} kept"
        + (" (" + ", ".join(f"{n} {why}" for why, n in sorted(reasons.items(), key=lambda kv: -kv[1])) + ")" if reasons else ""),
        f"time: {r.elapsed_s:.2f} s ({format_bytes(s['throughput_bytes_per_s'] or 0)}/s of input)",
    ]
    weights_kept = [f"{n} ({why})" for n, why in r.kept.items() if not why.routine]
    if r.quantized and weights_kept:
        shown = ", ".join(weights_kept[:8]) + (f", ... ({len(weights_kept) - 8} more, see --json)" if len(weights_kept) > 8 else "")
        lines.append(f"weights kept unquantized: {shown}")
    if r.fp16_overflow:
        total = sum(r.fp16_overflow.values())
        lines.append(f"warning: {total} values beyond +-65504 became inf in FP16, in {len(r.fp16_overflow)} tensor(s): "
                     + ", ".join(list(r.fp16_overflow)[:5]))
    if r.nonfinite:
        total = sum(r.nonfinite.values())
        lines.append(f"warning: {total} NaN / inf weight values in {len(r.nonfinite)} tensor(s), stored as llm-compressor stores them "
                     "(their group's scale becomes NaN / inf): " + ", ".join(list(r.nonfinite)[:5]))
    quantized_bad = {n: c for n, c in r.nonfinite_created.items() if n not in r.fp16_overflow}
    if quantized_bad:
        shown = ", ".join(f"{n} ({c})" for n, c in list(quantized_bad.items())[:5]) + (", ..." if len(quantized_bad) > 5 else "")
        lines.append(f"warning: {sum(quantized_bad.values())} values became NaN or inf in {len(quantized_bad)} quantized tensor(s): {shown}; "
                     "a value beyond the scheme's range or a NaN in the source poisons its whole row or block (see nonfinite_created in --json)")
    if r.source_extras:
        lines.append("kept in quantkit.json (source_extras): " + ", ".join(r.source_extras))
    if r.dropped_extras:
        lines.append("not kept (not JSON): " + ", ".join(r.dropped_extras))
    lines += [f"note: {n}" for n in r.notes]
    if r.auto:
        lines.append(auto_text(r.auto))
    return "\n".join(lines)
