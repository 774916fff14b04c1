"""``quantkit convert --dry-run``: the plan of a conversion, from specs alone; nothing written.

For every tensor: the scheme it goes through (``keep``: written as stored), why, and the
tensors it becomes; then the shards the writer would produce, with their sizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .layout import default_output
from .writing.target import output_target
from .planner import plan_shards
from .sources import CheckpointSource, opened


@dataclass(frozen=True)
class PlannedTensor:
    name: str
    scheme: str  # a registered scheme, or "keep"
    reason: str
    input_bytes: int
    output_bytes: int
    stored: tuple[str, ...]  # the names written for it


@dataclass(frozen=True)
class Plan:
    source: str
    output: str
    tensors: list[PlannedTensor]
    shards: list[tuple[str, int, int]]  # file name, tensor bytes, tensor count

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "output": self.output,
            "tensors": [t.__dict__ | {"stored": list(t.stored)} for t in self.tensors],
            "shards": [{"file": f, "bytes": b, "tensors": n} for f, b, n in self.shards],
            "input_bytes": sum(t.input_bytes for t in self.tensors),
            "output_bytes": sum(b for _, b, _ in self.shards),
        }


def plan_conversion(src: str | Path | CheckpointSource, output: str | Path | None = None, *, options) -> Plan:
    """What ``convert(src, output, options=options)`` would write, without writing anything.

    Raises the errors ``convert`` raises before writing (unknown scheme, a rule deciding no
    tensor, a group size that does not divide a weight's input dimension)."""
    from .assign import assign, check_convertible
    from .convert import _Converter

    src_path = src.path if isinstance(src, CheckpointSource) else Path(src)
    target = output_target(output, lambda: default_output(src_path, options.scheme))  # a folder, or an s3:// prefix
    with opened(src) as source:
        check_convertible(source)
        assignment = assign(source, options)
        converter = _Converter(source, assignment, options.settings, "cpu")
        outputs = {name: converter.outputs(name) for name in source.specs}
        tensors = [
            PlannedTensor(
                name, assignment.schemes.get(name, "keep"), assignment.reasons.get(name, ""), spec.nbytes,
                sum(o.nbytes for o in outputs[name]), tuple(o.name for o in outputs[name]),
            )
            for name, spec in source.specs.items()
        ]
        plan = plan_shards([(n, sum(o.nbytes for o in outs)) for n, outs in outputs.items()], options.max_shard_bytes)
        names = plan.file_names()
        shards = [(names[i], plan.shard_bytes[i], sum(len(outputs[u]) for u in units)) for i, units in enumerate(plan.shards)]
        return Plan(str(src_path), str(target), tensors, shards)


def plan_text(plan: Plan) -> str:
    from .sizes import format_bytes

    width = max((len(t.name) for t in plan.tensors), default=4)
    lines = [f"dry run: {plan.source} -> {plan.output} (nothing written)", f"{'tensor':<{width}}  {'scheme':<9}  {'size':>19}  reason"]
    for t in plan.tensors:
        size = f"{format_bytes(t.input_bytes)} -> {format_bytes(t.output_bytes)}"
        lines.append(f"{t.name:<{width}}  {t.scheme:<9}  {size:>19}  {t.reason}")
    lines.append(f"shards ({len(plan.shards)}):")
    lines += [f"  {f}  {format_bytes(b)}  {n} tensors" for f, b, n in plan.shards]
    d = plan.to_dict()
    lines.append(f"total: {format_bytes(d['input_bytes'])} -> {format_bytes(d['output_bytes'])} of tensors")
    return "\n".join(lines)
