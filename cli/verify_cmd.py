"""`quantkit verify`: check headers, offsets, index coverage, sizes and checksums."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from quantkit.errors import VerificationError
from quantkit.sizes import format_bytes
from quantkit.sources.remote import is_url
from quantkit.verify import VerifyReport, verify_checkpoint

from .common import GuardedCommand, print_json
from .main import app


@app.command("verify", cls=GuardedCommand)
def verify_cmd(
    src: Annotated[str, typer.Argument(metavar="SRC", help="Folder quantkit wrote, a Hugging Face folder, a .safetensors file or an index .json; or its URL (s3://bucket/prefix, hf://org/model, https://.../index.json).")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Check a checkpoint: headers, offsets, index coverage, sizes, and the SHA-256 recorded on writing.

    Exits 0 with one OK line, or 6 listing every problem found (an S3 prefix without its index
    or quantkit.json: "incomplete").
    """
    if is_url(src):
        from quantkit.verify_remote import verify_remote

        report = verify_remote(src)
    else:
        report = verify_checkpoint(Path(src))
    if json_out:
        print_json(report.to_dict())
    else:
        typer.echo(verify_text(report))
    if not report.ok:
        count = len(report.problems)
        raise VerificationError(f"{src}: {count} problem{'s' if count != 1 else ''} found")


def verify_text(report: VerifyReport) -> str:
    if report.ok:
        checksums = {"verified": "checksums verified (SHA-256)", "not recorded": "checksums not recorded"}[report.checksums]
        lines = [
            f"OK {report.path}: {report.num_tensors} tensors in {len(report.files)} file(s), "
            f"{format_bytes(report.total_bytes)} of tensor data, {checksums}"
        ]
    else:
        lines = [f"FAILED {report.path}:"] + [f"  - {problem}" for problem in report.problems]
    return "\n".join(lines + [f"note: {note}" for note in report.notes])
