"""What becomes of each tensor: which weights a quantizer takes, and why the others are kept.

The default is transformers' own: the 2-D weights of linear layers (GPT-2's ``Conv1D``
included, transposed to ``[out, in]``), never embeddings, norms, biases, the output head or
tied weights. For a Hugging Face folder, when transformers is installed, the model is built
on the meta device to learn exactly which modules are linear; otherwise (a bare ``.pth``)
the same rules are applied by shape and name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from .groups import group_of
from .errors import InputError, UsageError
from .jsonio import read_json_object
from .sources import CheckpointSource
from .sources.hfconfig import too_large_to_build

# GPT-2-style Conv1D modules store their weight [in, out].
_CONV1D_NAME = re.compile(r"(^|\.)c_(attn|proj|fc)\.weight$")


class Kept(StrEnum):
    """Why a tensor is not quantized (the value is what reports and ``--json`` show)."""

    NOT_FLOATING = "not floating point"
    SKIP = "--skip"
    NOT_ONLY = "not matched by --only"
    OTHER_SHAPE = "convolution kernel or other shape"
    BIAS_OR_NORM = "bias or norm"
    SCALAR = "scalar"
    NOT_LAYER_WEIGHT = "not a layer weight"
    TIED = "tied weights"
    NOT_LINEAR = "not a linear layer"
    EMBEDDINGS = "embeddings"
    NORMS = "norms"
    OUTPUT_HEAD = "output head"
    KEPT_BY_TRANSFORMERS = "output head / kept by transformers"
    CONV1D = "Conv1D weight (compressed-tensors quantizes Linear layers only)"
    RULE_KEEP = "kept by a --rule"

    @property
    def by_user(self) -> bool:
        """Excluded by --skip / --only: left exactly as stored, even by --rest-dtype."""
        return self in (Kept.SKIP, Kept.NOT_ONLY)

    @property
    def deliberate(self) -> bool:
        """A linear layer left unquantized on purpose (``llm_int8_skip_modules``)."""
        return self.by_user or self in (Kept.OUTPUT_HEAD, Kept.KEPT_BY_TRANSFORMERS, Kept.TIED, Kept.CONV1D, Kept.RULE_KEEP)

    @property
    def routine(self) -> bool:
        """Never a candidate for quantization: not worth listing in a summary."""
        return self in (Kept.BIAS_OR_NORM, Kept.SCALAR, Kept.NOT_FLOATING)


@dataclass
class Selection:
    quantize: dict[str, bool] = field(default_factory=dict)  # weight name -> transpose first
    kept: dict[str, Kept] = field(default_factory=dict)  # name -> why it stays unquantized
    structure: str = "names"  # "transformers" when the model was introspected

    def kept_modules(self) -> list[str]:
        """Linear layers deliberately left unquantized, for ``llm_int8_skip_modules``."""
        return sorted({n.removesuffix(".weight") for n, why in self.kept.items() if n.endswith(".weight") and why.deliberate})


@dataclass(frozen=True)
class Assignment:
    """Per tensor, the scheme it goes through (by registry name; absent: written as stored),
    whether a weight is transposed first, and why tensors are not quantized. ``reasons``: why
    each tensor got its scheme (for --dry-run); ``ignore``: the modules of the weights left
    unquantized, for a compressed-tensors ``ignore`` list."""

    schemes: dict[str, str]
    transpose: frozenset[str]
    kept: dict[str, Kept]
    structure: str = "names"
    reasons: dict[str, str] = field(default_factory=dict)
    ignore: tuple[str, ...] = ()

    def quantized(self, quantizing: set[str]) -> list[str]:
        """Names assigned to one of the ``quantizing`` schemes, sorted."""
        return sorted(n for n, s in self.schemes.items() if s in quantizing)

    def kept_modules(self) -> list[str]:
        return Selection(kept=self.kept).kept_modules()


@dataclass(frozen=True)
class LinearLayout:
    linear: frozenset[str]  # module names of nn.Linear
    conv1d: frozenset[str]  # module names of transformers' Conv1D
    not_convert: tuple[str, ...]  # transformers' get_keys_to_not_convert


# Model types whose name-and-shape rules select exactly what transformers quantizes
# (tests/test_selection.py checks each against transformers itself). For these the model need
# not be built: importing transformers' modeling code alone takes seconds.
NAME_RULES_MATCH_TRANSFORMERS = frozenset({
    "bert", "bloom", "distilbert", "gemma", "gpt2", "gpt_neox", "gptj", "llama", "mistral", "mpt", "opt", "phi", "qwen2", "roberta",
})


def layout_for(config_dir: Path | None) -> LinearLayout | None:
    """The introspected layout of a Hugging Face folder, or None where the name rules suffice."""
    if config_dir is None:
        return None
    try:
        config = read_json_object(config_dir / "config.json", what="config.json")
    except (OSError, InputError):
        return None
    if config.get("model_type") in NAME_RULES_MATCH_TRANSFORMERS or too_large_to_build(config):
        return None  # a model too large to build on the meta device quickly falls back to the name rules
    return hf_linear_layout(config_dir)


def hf_linear_layout(config_dir: Path | None) -> LinearLayout | None:
    """Introspect a Hugging Face model on the meta device (no weights), or None if impossible."""
    if config_dir is None:
        return None
    try:
        import torch
        import transformers
        from transformers.pytorch_utils import Conv1D
        from transformers.quantizers.base import get_keys_to_not_convert
    except ImportError:
        return None
    try:
        config = transformers.AutoConfig.from_pretrained(config_dir)
        arch = (getattr(config, "architectures", None) or [None])[0]
        model_cls = getattr(transformers, arch, None) if arch else None
        with torch.device("meta"):
            model = model_cls(config) if model_cls is not None else transformers.AutoModel.from_config(config)
        not_convert = tuple(get_keys_to_not_convert(model))
    except Exception:  # an unknown or custom architecture: fall back to names and shapes
        return None
    linear = frozenset(n for n, m in model.named_modules() if type(m) is torch.nn.Linear)
    conv1d = frozenset(n for n, m in model.named_modules() if isinstance(m, Conv1D))
    return LinearLayout(linear, conv1d, not_convert)


def _excluded_by_transformers(module: str, patterns: tuple[str, ...]) -> bool:
    """transformers' own matching of modules_to_not_convert (prefix at a boundary, regex, or suffix)."""
    boundary = r"(?:(?<=\.)|(?=\.|$))"
    return any(re.match(rf"(?:{key}){boundary}", module) or module.endswith(key) for key in patterns)


def check_patterns(flag: str, patterns: tuple[str, ...]) -> None:
    """UsageError naming the first of ``patterns`` that is not a regular expression."""
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise UsageError(f"{flag} {pattern!r} is not a regular expression ({exc}): escape special characters with a backslash") from None


def only_matches(name: str, only: tuple[str, ...]) -> bool:
    """Whether ``--only`` names ``name`` explicitly (quantized then even where the defaults keep it)."""
    return any(re.search(p, name) for p in only)


def select(
    source: CheckpointSource,
    *,
    skip: tuple[str, ...] = (),
    only: tuple[str, ...] = (),
    layout: LinearLayout | None = None,
) -> Selection:
    """Decide, from specs alone, which weights a 4/8-bit scheme quantizes.

    A 2-D ``.weight`` matched by ``only`` is quantized even where the defaults keep it (an
    output head, embeddings); tied weights and other shapes stay kept."""
    check_patterns("--skip", skip)
    check_patterns("--only", only)
    selection = Selection(structure="transformers" if layout else "names")
    tied_targets = set(source.aliases.values())
    for name, spec in source.specs.items():
        reason = _keep_reason(name, spec, skip, only, layout, tied_targets)
        if reason:
            selection.kept[name] = reason
            continue
        module = name.removesuffix(".weight")
        transpose = module in layout.conv1d if layout else bool(_CONV1D_NAME.search(name))
        selection.quantize[name] = transpose
    return selection


def _keep_reason(name, spec, skip, only, layout, tied_targets) -> Kept | None:
    if not spec.dtype.is_floating_point:
        return Kept.NOT_FLOATING
    if any(re.search(p, name) for p in skip):
        return Kept.SKIP
    if only and not only_matches(name, only):
        return Kept.NOT_ONLY
    if len(spec.shape) != 2:
        return Kept.OTHER_SHAPE if len(spec.shape) > 2 else (Kept.BIAS_OR_NORM if spec.shape else Kept.SCALAR)
    if not name.endswith(".weight"):
        return Kept.NOT_LAYER_WEIGHT
    if name in tied_targets:
        return Kept.TIED
    if only:  # named by --only: the user's choice overrides the defaults below
        return None
    module = name.removesuffix(".weight")
    part = group_of(name, spec.shape)
    if layout is not None:
        if module not in layout.linear and module not in layout.conv1d:
            return Kept(part) if part in ("embeddings", "norms") else Kept.NOT_LINEAR
        if _excluded_by_transformers(module, layout.not_convert):
            return Kept.KEPT_BY_TRANSFORMERS
        return None
    if part in ("embeddings", "norms"):
        return Kept(part)
    if part == "output_head":
        return Kept.OUTPUT_HEAD
    return None
