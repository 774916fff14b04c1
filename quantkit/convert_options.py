"""What ``convert`` is asked to do: the scheme, its settings, the rules; checked before anything is read."""

from __future__ import annotations

from dataclasses import dataclass, field

from .devices import check_device
from .errors import UsageError
from .planner import DEFAULT_MAX_SHARD_BYTES
from .rules import KEEP, Rule, check_mix, parse_rules
from .schemes import SCHEMES, SchemeSettings, get_scheme
from .selection import check_patterns

AUTO = "auto"  # --to auto: not a scheme; quantkit.auto makes it a concrete one per tensor


@dataclass(frozen=True)
class ConvertOptions:
    """How to convert. ``scheme``: a registered scheme name (bf16, fp16, int8, nf4, fp4, ...)."""

    scheme: str
    blocksize: int = 64
    double_quant: bool = False
    rest_dtype: str = "keep"
    skip: tuple[str, ...] = ()
    only: tuple[str, ...] = ()
    device: str = "auto"
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES
    group_size: int = 128  # compressed-tensors w8a16 / w4a16
    rules: tuple[str, ...] = ()  # "REGEX=SCHEME", first match wins (quantkit.rules)
    auto: dict | None = field(default=None, compare=False)  # set by convert_auto: the target, rules and predictions

    def __post_init__(self):
        # names are case-insensitive (--to BF16): keep the registered spelling; "auto" is made
        # concrete by convert_auto (quantkit.auto)
        if self.scheme.lower() == AUTO:
            object.__setattr__(self, "scheme", AUTO)
        else:
            object.__setattr__(self, "scheme", get_scheme(self.scheme).name)  # UsageError naming the choices
        object.__setattr__(self, "rest_dtype", self.rest_dtype.lower())
        check_patterns("--skip", self.skip)
        check_patterns("--only", self.only)
        if isinstance(self.rules, str):
            object.__setattr__(self, "rules", (self.rules,))
        object.__setattr__(self, "rules", tuple(self.rules))
        if not self.is_auto:
            check_mix(self.scheme, self.parsed_rules)  # before anything is read
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or self.group_size <= 0:
            raise UsageError(f"--group-size must be a positive integer, not {self.group_size!r}")
        rest = rest_choices()
        if self.rest_dtype not in rest:
            raise UsageError(f"unknown --rest-dtype {self.rest_dtype!r}: choose {', '.join(rest[:-1])} or {rest[-1]}")
        if self.blocksize not in (32, 64, 128, 256, 512, 1024, 2048, 4096):
            raise UsageError(f"--blocksize {self.blocksize} is not one bitsandbytes supports (32, 64, ..., 4096)")
        check_device(self.device)

    @property
    def is_auto(self) -> bool:
        """``--to auto``: the scheme of each tensor is still to be chosen (``quantkit.auto``)."""
        return self.scheme == AUTO

    @property
    def parsed_rules(self) -> tuple[Rule, ...]:
        return parse_rules(self.rules)

    @property
    def quantizing(self) -> bool:
        """Whether any quantizer may be used (``--to`` or a rule)."""
        return get_scheme(self.scheme).quantizes or any(r.scheme != KEEP and get_scheme(r.scheme).quantizes for r in self.parsed_rules)

    @property
    def settings(self) -> SchemeSettings:
        return SchemeSettings(blocksize=self.blocksize, double_quant=self.double_quant, group_size=self.group_size)


def rest_choices() -> list[str]:
    """``--rest-dtype``: keep, or a registered cast scheme for the tensors a quantizer leaves."""
    return ["keep", *(s.name for s in SCHEMES.values() if not s.quantizes)]
