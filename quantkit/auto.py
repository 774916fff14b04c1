"""``convert --to auto``: a target becomes a per-tensor plan (``plan_auto``), the plan becomes
``--rule`` lines, and the rules go through the ordinary conversion."""

from __future__ import annotations

import math
from dataclasses import asdict, replace
from pathlib import Path

from .convert_options import AUTO
from .errors import UsageError
from .plan import AutoPlan, Target, default_family, plan_auto
from .profile import CAST, KEEP, Profile, load_profile, profile_checkpoint
from .schemes import SCHEMES, SchemeSettings
from .sources import CheckpointSource, opened

def auto_record(plan: AutoPlan, target: Target) -> dict:
    """What ``quantkit.json`` (``auto``), the summary and the report say of the choice."""
    return {
        "target": {k: v for k, v in asdict(target).items() if v is not None},
        "family": plan.family,
        "rules": list(plan.rules),
        "predicted_bytes": plan.predicted_bytes,
        "predicted_bits": plan.predicted_bits,
        "predicted_sqnr_db": _finite(plan.predicted_sqnr_db),  # null: exact (every tensor kept)
        "predicted_min_sqnr_db": _finite(plan.predicted_min_sqnr_db),
        "method": plan.method,
        **({"predicted_kl": plan.predicted_kl} if plan.predicted_kl is not None else {}),
    }


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def family_scheme(plan: AutoPlan) -> str:
    """The ``--to`` of the equivalent hand-written command: the quantizer holding the most
    decided tensors (every decided tensor has its own rule, so it only names the format)."""
    counts: dict[str, int] = {}
    for scheme in plan.schemes.values():
        if scheme != KEEP and SCHEMES[scheme].quantizes:
            counts[scheme] = counts.get(scheme, 0) + 1
    if counts:
        return max(sorted(counts), key=lambda s: counts[s])
    members = [s.name for s in SCHEMES.values() if s.quantizes and s.family == plan.family]
    return members[0]


def auto_options(source: CheckpointSource, options, target: Target, *, family: str | None = None,
                 profile: str | Path | None = None, schemes: list[str] | None = None):
    """``options`` (a ``ConvertOptions`` with ``scheme="auto"``) made concrete for ``source``:
    the family's scheme, the plan's rules and the settings the profile measured with.

    Returns ``(ConvertOptions, AutoPlan)``. A saved ``profile`` that did not measure ``source``
    is refused (``check_profile_matches``); without one, ``source`` is profiled now with the
    family's quantizers (or ``schemes``)."""
    family = family or default_family()
    families = {s.family for s in SCHEMES.values() if s.quantizes}
    if family not in families:
        raise UsageError(f"unknown --family {family!r}: choose {', '.join(sorted(families))}")
    if options.rest_dtype != "keep":
        raise UsageError("--to auto writes the tensors it does not decide as stored (its size prediction counts them so): drop --rest-dtype")
    if options.rules:
        raise UsageError("--to auto writes its own rules: drop --rule (or convert with the rules it printed)")
    members = [s.name for s in SCHEMES.values() if s.quantizes and s.family == family]
    mixes = all(SCHEMES[s].mixes_within_family for s in members)
    if schemes:
        for name in schemes:
            if name not in members and not (name == CAST and mixes):
                raise UsageError(f"--schemes: {name!r} is not a {family} quantizer" + (f" nor {CAST}" if mixes else ""))
    settings = SchemeSettings(blocksize=options.blocksize, double_quant=options.double_quant, group_size=options.group_size)
    if target.max_kl is not None and profile is None:
        raise UsageError("--max-kl needs output figures: profile with --outputs (quantkit profile SRC --outputs -o FILE), then pass --profile FILE")
    if profile is not None:
        measured = load_profile(profile, source=source)  # refused when stale
        check_settings(measured, settings, profile)
        if schemes:
            missing = [s for s in schemes if s not in measured.schemes]
            if missing:
                raise UsageError(f"--schemes: the profile {profile} did not measure {', '.join(missing)}")
            measured = replace(measured, schemes=list(schemes))
    else:
        tried = schemes or members + ([CAST] if mixes else [])
        measured = profile_checkpoint(source, schemes=tried, settings=settings, skip=options.skip, only=options.only)
    plan = plan_auto(measured, target, family, source=source)
    concrete = replace(options, scheme=family_scheme(plan), rules=tuple(plan.rules), auto=auto_record(plan, target))
    return concrete, plan


_FLAGS = {"blocksize": "--blocksize", "double_quant": "--double-quant", "group_size": "--group-size"}


def check_settings(profile: Profile, settings: SchemeSettings, where: str | Path = "profile") -> None:
    """UsageError unless ``profile`` measured its schemes with ``settings`` (each setting that
    one of its schemes uses: the block size and double quantization of bitsandbytes 4-bit, the
    group size of w8a16 / w4a16 change the bytes and the error)."""
    used = set().union(*(SCHEMES[s].uses_settings for s in profile.schemes if s in SCHEMES))
    for key in (k for k in _FLAGS if k in used):
        measured, asked = profile.settings.get(key), getattr(settings, key)
        if measured != asked:
            raise UsageError(f"{where}: measured with {_FLAGS[key]} {measured}, this conversion uses {asked}: "
                             f"profile again with {_FLAGS[key]} {asked} (or convert with {measured})")


def convert_auto(src, output=None, *, options, target: Target, family: str | None = None,
                 profile: str | Path | None = None, schemes: list[str] | None = None, **kwargs):
    """``convert`` with ``--to auto``: plan for ``target``, then convert with the plan's rules.

    Example:
        >>> convert_auto("model", options=ConvertOptions("auto"), target=Target(bits=6))  # doctest: +SKIP
    """
    from .convert import convert
    from .layout import default_output

    from .writing.target import check_output

    src_path = src.path if isinstance(src, CheckpointSource) else src
    if output is None:
        output = default_output(src_path, AUTO)
    check_output(src_path, Path(output), force=kwargs.get("force", False))  # before profiling
    with opened(src) as source:
        concrete, _ = auto_options(source, options, target, family=family, profile=profile, schemes=schemes)
        return convert(source, output, options=concrete, **kwargs)
