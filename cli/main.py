"""quantkit's typer app: each command parses its options and calls the library."""

from __future__ import annotations

import gc
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

import quantkit
from quantkit.anatomy import inspect_checkpoint
from quantkit.planner import DEFAULT_MAX_SHARD_BYTES
from quantkit.layout import default_output
from quantkit.reshard import reshard
from quantkit.writing.target import check_output
from quantkit.sizes import format_bytes, format_size_option, parse_size
from quantkit.sources import open_checkpoint

from .common import AppOptions, GuardedCommand, byte_progress, print_json, source_options
from .render import anatomy_text

COMMAND_ORDER = ("inspect", "convert", "reshard", "compare", "profile", "verify")  # the order a user needs them


class _Commands(TyperGroup):
    def list_commands(self, ctx) -> list[str]:
        names = super().list_commands(ctx)
        return sorted(names, key=lambda n: COMMAND_ORDER.index(n) if n in COMMAND_ORDER else len(COMMAND_ORDER))


app = typer.Typer(
    cls=_Commands,
    help="Convert, reshard and inspect PyTorch checkpoints (safetensors, .pth/.pt/.bin, Hugging Face folders).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

SIZE_HELP = "Largest shard: decimal units 500MB, 2GB (10**9 bytes) or binary 2GiB (2**30 bytes)."
DEFAULT_MAX_SIZE = format_size_option(DEFAULT_MAX_SHARD_BYTES)
# str, not Path: a Path would fold the "//" of s3://, https:// and hf:// URLs
Src = Annotated[str, typer.Argument(metavar="SRC", help="Checkpoint: .safetensors, .pth/.pt/.bin, an index .json, a Hugging Face folder, or the URL of a safetensors checkpoint (s3://, https://, hf://org/model[@revision]; needs quantkit[remote]).")]
Key = Annotated[Optional[str], typer.Option(
    "--key", metavar="NAME", help="Training checkpoint: the top-level entry holding the weights (e.g. state_dict), when it holds several.")]
StripPrefix = Annotated[Optional[str], typer.Option(
    "--strip-prefix", metavar="PREFIX", help="Remove PREFIX (module., _orig_mod., model.) from every tensor name that starts with it.")]
AllowGlobal = Annotated[Optional[list[str]], typer.Option(
    "--allow-global", metavar="NAME",
    help="Let a PyTorch pickle rebuild this plain-value global (pathlib.PosixPath, argparse.Namespace, ...); repeatable.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
Force = Annotated[bool, typer.Option("--force", help="Replace an existing output (only once the new one is complete).")]
Fsync = Annotated[bool, typer.Option("--fsync", help="Flush every shard to disk (fsync) before the output is renamed into place: survives a power loss, costs the disk's write time.")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"quantkit {quantkit.__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = None,
) -> None:
    ctx.obj = AppOptions(debug=debug)  # each command's context inherits it (GuardedCommand reads it)


@app.command("reshard", cls=GuardedCommand)
def reshard_cmd(
    src: Src,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Output folder (default: <src>-safetensors beside SRC). Its parent folder must exist; it may not be SRC, inside SRC or hold SRC.")] = None,
    max_size: Annotated[str, typer.Option("--max-size", metavar="SIZE", help=SIZE_HELP)] = DEFAULT_MAX_SIZE,
    force: Force = False,
    fsync: Fsync = False,
    quiet: Quiet = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    key: Key = None,
    strip_prefix: StripPrefix = None,
    allow_global: AllowGlobal = None,
) -> None:
    """Rewrite any checkpoint as safetensors shards plus index, bit-exact (the layout transformers loads)."""
    max_bytes = parse_size(max_size)
    check_output(src, output if output is not None else default_output(src, "safetensors"), force=force)  # before reading
    with open_checkpoint(src, **source_options(key, strip_prefix, allow_global)) as source, byte_progress(source.total_bytes, "reshard", quiet=quiet or json_out) as progress:
        result = reshard(source, output, max_shard_bytes=max_bytes, force=force, fsync=fsync, progress=progress)
    w = result.write
    if json_out:
        print_json({"output": str(w.folder), "files": w.manifest["files"], "total_size": w.total_bytes, "tied": result.aliases, "notes": result.notes})
        return
    for note in result.notes:
        typer.echo(f"note: {note}", err=True)
    typer.echo(f"wrote {w.folder}: {len(w.shards)} shard(s), {format_bytes(w.total_bytes)} of tensors (max shard {format_bytes(max_bytes)})")
    for shard in w.shards:
        typer.echo(f"  {shard.path.name}  {format_bytes(shard.file_bytes)}  sha256 {shard.sha256[:16]}")
    if result.aliases:
        typer.echo(f"tied tensors saved once: {len(result.aliases)} ({', '.join(result.aliases)})")


@app.command("inspect", cls=GuardedCommand)
def inspect_cmd(
    src: Src,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON (keys: num_parameters, num_tensors, total_bytes, groups, ...).")] = False,
    top: Annotated[int, typer.Option("--top", help="How many of the largest tensors to list.")] = 10,
    gpu_gb: Annotated[Optional[float], typer.Option("--gpu-gb", help="Memory of one GPU in GiB: estimate how many are needed.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Batch size for the activation estimate.")] = 1,
    seq_len: Annotated[Optional[int], typer.Option("--seq-len", help="Sequence length for the activation estimate (default: the model's, at most 2048).")] = None,
    key: Key = None,
    strip_prefix: StripPrefix = None,
    allow_global: AllowGlobal = None,
) -> None:
    """Show what is inside a checkpoint: parameters, dtypes, where the bytes go, what else was saved."""
    memory_options = {"gpu_gb": gpu_gb, "batch_size": batch_size, "seq_len": seq_len}
    with open_checkpoint(src, **source_options(key, strip_prefix, allow_global)) as source:
        anatomy = replace(inspect_checkpoint(source, top=top, memory_options=memory_options), path=str(src))
    if json_out:
        print_json(anatomy.to_dict())
    else:
        typer.echo(anatomy_text(anatomy))


def run() -> None:
    try:
        app(prog_name="quantkit")
    finally:
        # The process ends here. At shutdown the interpreter garbage-collects the objects of
        # every module as it clears them (numba's and llvmlite's some 120,000 among them),
        # measured at 0.3-0.4 s after a conversion's last byte; frozen, they are left to the OS.
        # Files and streams are closed by then (writers close explicitly; the standard
        # streams are flushed at exit as always), so nothing waits on a collection.
        gc.freeze()


# Each of these modules registers its command(s) on `app`.
from . import compare_cmd, convert_cmd, profile_cmd, verify_cmd  # noqa: E402,F401
