"""Which scheme each tensor goes through, and why: the per-tensor ``Assignment`` built from specs alone."""

from __future__ import annotations

from .convert_options import ConvertOptions
from .errors import InputError, UsageError
from .rules import KEEP
from .schemes import SCHEMES, get_scheme
from .selection import Assignment, Kept, layout_for, select
from .sources import CheckpointSource


def check_convertible(source: CheckpointSource) -> None:
    if not source.specs:
        raise InputError(f"{source.path}: the checkpoint holds no tensors")
    if not any(s.dtype.is_floating_point for s in source.specs.values()):
        raise InputError(f"{source.path}: no floating-point tensors to convert (all {len(source.specs)} are integer or bool)")


def assign(source: CheckpointSource, options: ConvertOptions) -> Assignment:
    """Which scheme each tensor goes through, from specs alone, and why.

    A cast scheme takes every floating-point tensor not excluded by --skip / --only; a
    quantizer takes the linear weights ``select`` picks, and the rest are cast to
    ``--rest-dtype`` (except those --skip / --only exclude) or written as stored. Then the
    rules (``--rule``, first match wins) override: a quantizer rule applies to the weights the
    default policy picks, a cast or ``keep`` to any floating-point tensor. A rule that decides
    no tensor is a UsageError naming it. A scheme that does not ``quantizes_transposed``
    (compressed-tensors: Linear weights only) keeps Conv1D weights unquantized (``Kept.CONV1D``)."""
    scheme = get_scheme(options.scheme)
    rules = options.parsed_rules
    layout = layout_for(source.info.config_dir) if options.quantizing else None
    selection = select(source, skip=options.skip, only=options.only, layout=layout)
    reasons: dict[str, str] = {}
    if not scheme.quantizes:
        kept = {n: why for n, why in selection.kept.items() if why.by_user or why is Kept.NOT_FLOATING}
        schemes = {n: scheme.name for n in source.specs if n not in kept}
        reasons.update(dict.fromkeys(schemes, f"--to {scheme.name}"))
    else:
        kept = dict(selection.kept)
        schemes = dict.fromkeys(selection.quantize, scheme.name)
        reasons.update(dict.fromkeys(schemes, "linear weight (default policy)"))
        if options.rest_dtype != "keep":
            rest = {n: options.rest_dtype for n, why in selection.kept.items() if not why.by_user and source.specs[n].dtype.is_floating_point}
            schemes.update(rest)
            reasons.update(dict.fromkeys(rest, f"--rest-dtype {options.rest_dtype}"))
    used: set[str] = set()
    for name, spec in source.specs.items():
        why = selection.kept.get(name)
        if not spec.dtype.is_floating_point or (why is not None and why.by_user):
            continue
        for rule in rules:
            if not rule.matches(name):
                continue
            if rule.scheme != KEEP and get_scheme(rule.scheme).quantizes and name not in selection.quantize:
                continue  # a quantizer rule applies to linear weights only; a later rule may apply
            used.add(rule.text)
            if rule.scheme == KEEP:
                schemes.pop(name, None)
                kept[name] = Kept.RULE_KEEP
            else:
                schemes[name] = rule.scheme
                if get_scheme(rule.scheme).quantizes:
                    kept.pop(name, None)
            reasons[name] = f"rule '{rule.text}'"
            break
    unused = [r.text for r in rules if r.text not in used]
    if unused:
        raise UsageError(
            f"rule {unused[0]!r} decides no tensor of {source.path.name} (it matches no name, only tensors it cannot "
            f"apply to, or only tensors an earlier rule decided); fix its regex or drop it (see --dry-run)"
        )
    for name, target in list(schemes.items()):
        scheme_of = get_scheme(target)
        if scheme_of.quantizes and not scheme_of.quantizes_transposed and selection.quantize.get(name):
            del schemes[name]  # a Conv1D weight [in, out]: e.g. compressed-tensors loads Linear layers only
            kept[name] = Kept.CONV1D
    quantized = {n for n, s in schemes.items() if get_scheme(s).quantizes}
    for name, spec in source.specs.items():
        if name not in quantized and name not in kept and reasons.get(name, "").startswith("rule") and (options.quantizing or name not in schemes):
            kept[name] = Kept.RULE_KEEP  # a weight a rule cast or kept instead of quantizing, or kept instead of casting
        if kept.get(name) is Kept.CONV1D or name not in reasons:
            reasons[name] = kept[name].value if name in kept else ""
    ignore = tuple(
        n.removesuffix(".weight") for n, spec in source.specs.items()
        if n.endswith(".weight") and spec.dtype.is_floating_point and len(spec.shape) >= 1 and n not in quantized
    )
    transpose = frozenset(n for n in quantized if selection.quantize.get(n))
    for name in quantized:
        kept.pop(name, None)
    return Assignment(schemes, transpose, kept, selection.structure, reasons=reasons, ignore=ignore)


def check_assignment_mix(assignment: Assignment) -> None:
    """Refuse quantizers a stored format cannot mix (bitsandbytes: one method per model)."""
    used = [SCHEMES[s] for s in sorted(set(assignment.schemes.values())) if SCHEMES[s].quantizes]
    for scheme in used:
        others = [o.name for o in used if o.family == scheme.family and o is not scheme]
        if others and not scheme.mixes_within_family:
            raise UsageError(f"{scheme.name} cannot be mixed with {', '.join(others)} in one {scheme.family} checkpoint")


def check_quantizes_something(source: CheckpointSource, assignment: Assignment, options: ConvertOptions) -> None:
    """Refuse, before anything is read, a quantizing --to that would quantize no tensor of a
    model folder: its config.json's quantization_config would describe quantized layers that
    are not there (a compressed-tensors one cannot even be written). A bare ``.pth`` has no
    config to contradict: its tensors are written, none quantized, as the summary says."""
    if not options.quantizing or source.info.config_dir is None or any(SCHEMES[s].quantizes for s in assignment.schemes.values()):
        return
    counts: dict[str, int] = {}
    for reason in assignment.kept.values():
        counts[str(reason)] = counts.get(str(reason), 0) + 1
    kept = ", ".join(f"{n} {r}" for r, n in sorted(counts.items(), key=lambda kv: -kv[1])[:4]) or "no weight found"
    raise UsageError(f"--to {options.scheme} quantizes no tensor of this checkpoint (kept: {kept}); choose another scheme, or bf16 / fp16 to cast")
