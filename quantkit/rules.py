"""Per-tensor rules: ``--rule 'REGEX=SCHEME'`` (repeatable, first match wins).

``SCHEME`` is any registered scheme or ``keep`` (written as stored). A rule with a quantizer
applies to the weights the default policy would quantize (2-D Linear weights); a cast
(``bf16`` / ``fp16``) or ``keep`` applies to any floating-point tensor. ``--skip`` and
``--only`` still come first. The regex is searched in the tensor's name (``re.search``), the
split is at the last ``=`` (names never contain one).

Rules are checked twice: their form and whether their schemes can share one checkpoint before
anything is read (``parse_rules``, ``check_mix``), and that each rule decides at least one
tensor once the names are known (``unused_rules``): an override that silently does nothing is
an error.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import UsageError

KEEP = "keep"


@dataclass(frozen=True)
class Rule:
    text: str  # as given, for messages
    pattern: re.Pattern
    scheme: str  # a registered scheme name or "keep"

    def matches(self, name: str) -> bool:
        return self.pattern.search(name) is not None


def parse_rule(text: str) -> Rule:
    """One ``REGEX=SCHEME`` rule; UsageError naming the rule when it cannot work.

    Example:
        >>> parse_rule(r"mlp\\.down_proj=w4a16").scheme
        'w4a16'
    """
    from .schemes.registry import SCHEMES

    if not isinstance(text, str) or "=" not in text:
        raise UsageError(f"rule {text!r}: write it as REGEX=SCHEME, e.g. 'self_attn=w8a16'")
    regex, _, scheme = text.rpartition("=")
    scheme = scheme.strip()
    if not regex:
        raise UsageError(f"rule {text!r}: the regex before '=' is empty; use '.*' to match every tensor")
    if scheme != KEEP and scheme not in SCHEMES:
        raise UsageError(f"rule {text!r}: unknown scheme {scheme!r}; choose keep or one of {', '.join(SCHEMES)}")
    try:
        pattern = re.compile(regex)
    except re.error as error:
        raise UsageError(f"rule {text!r}: bad regex ({error})") from None
    return Rule(text, pattern, scheme)


def parse_rules(texts: Iterable[str]) -> tuple[Rule, ...]:
    return tuple(parse_rule(t) for t in texts)


def check_mix(base: str, rules: Iterable[Rule]) -> None:
    """Refuse, before anything is read, quantizers one checkpoint cannot hold together: two
    families (one ``quantization_config`` per model), or two schemes of a family that mixes
    none (bitsandbytes: one load_in_8bit / load_in_4bit method per model)."""
    from .schemes.registry import SCHEMES

    names = [base, *(r.scheme for r in rules if r.scheme != KEEP)]
    used = list(dict.fromkeys(n for n in names if SCHEMES[n].quantizes))
    families = list(dict.fromkeys(SCHEMES[n].family for n in used))
    if len(families) > 1:
        raise UsageError(
            f"{' and '.join(used)} cannot share one checkpoint: config.json holds one quantization method "
            f"({' vs '.join(families)}); use schemes of one family"
        )
    for name in used:
        others = [o for o in used if o != name]
        if others and not SCHEMES[name].mixes_within_family:
            raise UsageError(
                f"{name} cannot be mixed with {', '.join(others)}: {SCHEMES[name].family} stores one method per model; "
                f"use one of them (or bf16 / fp16 / keep for the rest)"
            )


def first_match(rules: Iterable[Rule], name: str) -> Rule | None:
    return next((r for r in rules if r.matches(name)), None)
