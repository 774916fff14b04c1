"""From a profile and a target to a per-tensor choice, and that choice as ``--rule`` lines.

Definitions (the figures ``compare`` measures afterwards):

- decided tensors: the weights a quantizer takes (convert's selection) and, in a family that
  mixes (compressed-tensors) when bf16 was profiled, the kept floating-point tensors wider than
  bf16 (embeddings, norms, biases: ``Profile.castable``, choices keep or bf16); every other
  tensor is written as stored.
- error of a choice: the summed noise energy sum (x - y)^2 over the decided tensors.
- overall SQNR: 10 log10(S / N), S the signal energy sum x^2 of *every* floating-point tensor
  of the checkpoint, N the summed noise: exactly ``compare``'s overall SQNR of the result
  (kept tensors are exact, so they add signal and no noise).
- ``bits``: average stored bits per weight over the weights a quantizer takes, 8 * bytes / values;
  a castable tensor counts its bytes beyond bf16 against that budget (at bf16 it is free).
- ``size_bytes``: the whole checkpoint's tensor bytes, kept tensors included.
- ``min_sqnr_db``: a floor for every decided tensor's own SQNR.
- ``max_kl``: a ceiling for the model's mean KL divergence, estimated as the sum of each chosen
  tensor's KL measured alone (``profile --outputs``): additive to first order for small,
  independent perturbations; an estimate, measured afterwards with compare (README).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError
from .profile import CAST, KEEP, Profile, TensorProfile, check_profile_matches, load_profile, profile_checkpoint
from .schemes import SCHEMES, quantizers
from .solver import Item, Option, Solution, bounds, min_bytes, min_error
from .sources import CheckpointSource, opened


@dataclass(frozen=True)
class Target:
    """Exactly one of: ``bits``, ``size_bytes``, ``min_sqnr_db`` (per tensor), ``min_overall_sqnr_db``."""

    bits: float | None = None
    size_bytes: int | None = None
    min_sqnr_db: float | None = None
    min_overall_sqnr_db: float | None = None
    max_kl: float | None = None

    def __post_init__(self):
        given = [k for k, v in vars(self).items() if v is not None]
        if len(given) != 1:
            raise UsageError("give exactly one target: --target-bits, --target-size, --min-sqnr, --min-overall-sqnr or --max-kl")


@dataclass(frozen=True)
class AutoPlan:
    """What ``convert --to auto`` writes: the rules, and what the profile predicts of the result."""

    rules: list[str]
    schemes: dict[str, str]  # decided tensor -> scheme ("keep" for as stored)
    family: str
    predicted_bytes: int  # whole checkpoint's tensor bytes
    predicted_bits: float  # over the weights a quantizer takes
    predicted_sqnr_db: float  # overall, as compare computes it
    predicted_min_sqnr_db: float  # the worst decided tensor's
    method: str
    predicted_kl: float | None  # --max-kl: the sum of the chosen tensors' KL measured alone
    settings: dict  # the quantizers' settings the profile measured with (``profile.SETTINGS``): convert must use them


def default_family(profile: "Profile | None" = None) -> str:
    """compressed-tensors where its schemes are registered (and, for a profile, were
    measured), else bitsandbytes."""
    names = profile.schemes if profile is not None else list(SCHEMES)
    families = {SCHEMES[n].family for n in names if n in SCHEMES and SCHEMES[n].quantizes}
    return "compressed-tensors" if "compressed-tensors" in families else "bitsandbytes"


def family_groups(profile: Profile, family: str) -> list[list[str]]:
    """The scheme sets a choice may use: a mixing family's schemes together (with bf16 where it
    was profiled), or one scheme at a time for a family that allows one method per model;
    ``keep`` is always allowed."""
    members = [s for s in profile.schemes if s in SCHEMES and SCHEMES[s].quantizes and SCHEMES[s].family == family]
    if not members:
        known = sorted({SCHEMES[s].family for s in profile.schemes if s in SCHEMES and SCHEMES[s].quantizes})
        raise UsageError(f"the profile has no {family} scheme (it measured {', '.join(profile.schemes)}; families: {', '.join(known)})")
    if all(SCHEMES[s].mixes_within_family for s in members):
        return [[KEEP, *members, *([CAST] if CAST in profile.schemes else [])]]
    return [[KEEP, s] for s in members]


def decided(profile: Profile, allowed: list[str]) -> list[TensorProfile]:
    """The tensors a choice among ``allowed`` decides: the quantizable weights, then the
    castable tensors where bf16 is allowed."""
    return profile.tensors + (profile.castable if CAST in allowed else [])


def choose(profile: Profile, target: Target, *, family: str | None = None, method: str = "auto") -> Solution:
    """The least-size (or least-error) choice meeting ``target`` among the family's scheme sets."""
    family = family or default_family(profile)
    best: Solution | None = None
    errors = []
    kl = kl_figures(profile) if target.max_kl is not None else None
    for allowed in family_groups(profile, family):
        tensors = decided(profile, allowed)
        if kl is None:
            items = [Item(t.name, tuple(Option(s, t.candidates[s].stored_bytes, t.candidates[s].noise_energy)
                                        for s in allowed if s in t.candidates)) for t in tensors]
        else:  # the error is each tensor's KL measured alone; a candidate without a figure is not one
            items = [Item(t.name, tuple(Option(s, t.candidates[s].stored_bytes, 0.0 if s == KEEP else kl[t.name][s])
                                        for s in allowed if s in t.candidates and (s == KEEP or s in kl.get(t.name, {})))) for t in tensors]
        try:
            solution = _solve(profile, tensors, items, target, method)
        except UsageError as exc:  # this scheme set cannot: the message of the one closest to it is kept
            errors.append((bounds(items)[0], str(exc)))
            continue
        if best is None or _rank(solution, target) < _rank(best, target):
            best = solution
    if best is None:
        raise UsageError(min(errors)[1])
    return best


def kl_figures(profile: Profile) -> dict[str, dict[str, float]]:
    """Per tensor and scheme, the mean KL divergence measured with only that tensor changed
    (``profile --outputs``); UsageError when the profile has none."""
    outputs = profile.outputs
    if not outputs:
        raise UsageError("--max-kl needs output figures: profile with --outputs (quantkit profile SRC --outputs -o FILE), then pass --profile FILE")
    if outputs.get("metric") != "mean_kl_divergence":
        raise UsageError(f"--max-kl needs a causal LM's KL divergence; this profile's outputs are {outputs.get('kind')} figures ({outputs.get('metric')})")
    return {name: {s: max(0.0, f["mean_kl_divergence"]) for s, f in by.items()} for name, by in outputs["tensors"].items()}


def _rank(solution: Solution, target: Target) -> tuple:
    """Under a size target the least error wins; under an accuracy target the fewest bytes."""
    if target.bits is not None or target.size_bytes is not None:
        return solution.error, solution.stored_bytes
    return solution.stored_bytes, solution.error


def _solve(profile: Profile, tensors: list[TensorProfile], items: list[Item], target: Target, method: str) -> Solution:
    fixed_bytes = profile.kept_bytes - sum(t.original_bytes for t in tensors[len(profile.tensors):])
    if target.min_sqnr_db is not None:
        floor = target.min_sqnr_db
        picked = {}
        for t, item in zip(tensors, items):
            ok = [o for o in item.options if t.candidates[o.scheme].sqnr_db >= floor]
            picked[t.name] = min(ok, key=lambda o: (o.stored_bytes, o.error))  # keep is exact: never empty
        return Solution({n: o.scheme for n, o in picked.items()}, sum(o.stored_bytes for o in picked.values()),
                        math.fsum(o.error for o in picked.values()), "per tensor")
    if target.max_kl is not None:
        return min_bytes(items, target.max_kl, method=method)
    if target.min_overall_sqnr_db is not None:
        return min_bytes(items, profile.total_signal_energy / 10 ** (target.min_overall_sqnr_db / 10), method=method)
    if target.bits is not None:
        values = sum(t.numel for t in profile.tensors)
        free = sum(t.candidates[CAST].stored_bytes for t in tensors[len(profile.tensors):])  # castables at bf16
        budget = math.floor(target.bits * values / 8) + free
        low, high = bounds(items)
        if budget < low:
            raise UsageError(f"--target-bits {target.bits:g} is below the smallest achievable, {8 * (low - free) / values:.3f} bits per decided weight")
        return min_error(items, budget, method=method)
    budget = target.size_bytes - fixed_bytes
    low, _ = bounds(items)
    if budget < low:
        raise UsageError(f"--target-size {target.size_bytes:,} bytes is below the smallest achievable, {low + fixed_bytes:,} bytes")
    return min_error(items, budget, method=method)


def plan_auto(source_or_profile: str | Path | CheckpointSource | Profile, target: Target, family: str | None = None,
              *, method: str = "auto", source: CheckpointSource | None = None) -> AutoPlan:
    """Choose a scheme per tensor for ``target`` and express it as ``--rule`` lines.

    Args:
        source_or_profile: a ``Profile``, a profile JSON file (``*.json`` written by
            ``quantkit profile -o``), or a checkpoint to profile now with every registered quantizer.
        target: what to meet (see ``Target``).
        family: ``compressed-tensors`` or ``bitsandbytes`` (default: ``default_family()``).
        source: the checkpoint about to be converted; a profile that did not measure it is refused.

    Example:
        >>> plan = plan_auto("profile.json", Target(bits=4.5), "compressed-tensors", source=src)  # doctest: +SKIP
        >>> convert(src, options=ConvertOptions("w4a16", rules=tuple(plan.rules)))  # doctest: +SKIP
    """
    profile = _as_profile(source_or_profile, source)
    solution = choose(profile, target, family=family, method=method)
    names = [t.name for t in profile.tensors] + list(profile.kept)
    decided_values = sum(t.numel for t in profile.tensors)
    tensors = [t for t in profile.tensors + profile.castable if t.name in solution.schemes]
    per_tensor = [t.candidates[solution.schemes[t.name]].sqnr_db for t in tensors]
    fixed_bytes = profile.kept_bytes - sum(t.original_bytes for t in tensors[len(profile.tensors):])
    weight_bytes = sum(t.candidates[solution.schemes[t.name]].stored_bytes for t in profile.tensors)
    return AutoPlan(
        rules=choice_as_rules(solution.schemes, names),
        schemes=solution.schemes,
        family=family or default_family(profile),
        predicted_bytes=solution.stored_bytes + fixed_bytes,
        predicted_bits=8 * weight_bytes / decided_values if decided_values else 0.0,
        predicted_sqnr_db=_sqnr(profile.total_signal_energy, math.fsum(t.candidates[solution.schemes[t.name]].noise_energy for t in tensors)),
        predicted_min_sqnr_db=min(per_tensor, default=math.inf),
        method=solution.method,
        predicted_kl=solution.error if target.max_kl is not None else None,
        settings=dict(profile.settings),
    )


def _as_profile(value, source: CheckpointSource | None) -> Profile:
    if isinstance(value, Profile):
        profile = value
    elif isinstance(value, (str, Path)) and Path(value).is_file() and Path(value).suffix == ".json" and not _is_index(Path(value)):
        profile = load_profile(value)
    else:
        with opened(value) as opened_source:
            return profile_checkpoint(opened_source)
    if source is not None:
        check_profile_matches(profile, source)
    return profile


def _is_index(path: Path) -> bool:
    return path.name.endswith(".index.json")


def _sqnr(signal: float, noise: float) -> float:
    if noise == 0:
        return math.inf
    return 10 * math.log10(signal / noise) if signal > 0 else -math.inf


# A numbered block in a tensor name: ``model.layers.12.`` -> the class ``model.layers.\d+.``.
_INDEX = re.compile(r"(?<=\.)\d+(?=\.)")


def choice_as_rules(schemes: dict[str, str], names: list[str] | None = None) -> list[str]:
    """``--rule 'REGEX=SCHEME'`` lines that give every tensor of ``schemes`` its scheme, first
    match wins, each rule matched with ``re.search`` (anchored, so ``re.fullmatch`` agrees).

    Tensors of one class (the same name but for block numbers) that share a scheme become one
    pattern with ``\\d+``; the class's exceptions come first, their block numbers in one
    alternation per scheme. A class pattern is used only if it matches no tensor of ``names``
    (every tensor of the checkpoint) outside ``schemes``; otherwise the names are listed.
    """
    others = [n for n in (names or []) if n not in schemes]
    classes: dict[str, list[str]] = {}
    for name in schemes:
        classes.setdefault(_INDEX.sub("#", name), []).append(name)
    rules: list[str] = []
    for members in classes.values():
        rules += _class_rules(members, schemes, others)
    return rules


def _class_rules(members: list[str], schemes: dict[str, str], others: list[str]) -> list[str]:
    pattern = "^" + r"\d+".join(re.escape(p) for p in _INDEX.split(members[0])) + "$"
    counts: dict[str, int] = {}
    for name in members:
        counts[schemes[name]] = counts.get(schemes[name], 0) + 1
    majority = max(counts, key=lambda s: (counts[s], s))
    if len(members) == 1 or any(re.search(pattern, n) for n in others):
        return [f"^{re.escape(n)}$={schemes[n]}" for n in members]
    rules = []
    for scheme in sorted(counts):
        if scheme == majority:
            continue
        picked = [n for n in members if schemes[n] == scheme]
        rules.append(f"{_alternation(picked)}={scheme}")
    return rules + [f"{pattern}={majority}"]


def _alternation(names: list[str]) -> str:
    """One anchored pattern for names of one class: their block numbers in an alternation where
    the class has one numbered position (``^h\\.(?:0|11)\\.attn$``), else the names themselves."""
    if len(names) == 1:
        return f"^{re.escape(names[0])}$"
    pieces = _INDEX.split(names[0])
    if len(pieces) == 2:
        numbers = "|".join(_INDEX.search(n)[0] for n in names)
        return f"^{re.escape(pieces[0])}(?:{numbers}){re.escape(pieces[1])}$"
    return "^(?:" + "|".join(re.escape(n) for n in names) + ")$"


def apply_rules(rules: list[str], name: str) -> str | None:
    """The scheme the first matching rule gives ``name`` (``re.search``), or None."""
    for rule in rules:
        pattern, _, scheme = rule.rpartition("=")
        if re.search(pattern, name):
            return scheme
    return None
