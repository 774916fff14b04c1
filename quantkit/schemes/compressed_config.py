"""The ``quantization_config`` block of ``config.json`` for compressed-tensors output.

Built without importing compressed-tensors, key for key as llm-compressor's ``model_free_ptq``
writes it (compressed-tensors 0.19: ``QuantizationConfig.model_dump()`` plus ``version``,
``quant_method`` and ``transform_config``, llmcompressor/entrypoints/model_free/save_utils.py).
The argument sets are those of the presets in compressed_tensors/quantization/quant_scheme.py
(FP8_DYNAMIC, FP8_BLOCK, and ``_int_wnam`` for W8A16 / W4A16).

The reference dumps the whole config.json with ``sort_keys=True`` (save_utils.py:67), so in its
file the config groups appear sorted by name, not in the order that decided overlapping
targets while quantizing; a writer that wants both to agree gives the groups disjoint targets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import UsageError
from .compressed import DEFAULT_GROUP_SIZE, FP8_BLOCK, PRESETS, SCHEMES

COMPRESSED_TENSORS_VERSION = "0.19.0"  # the version whose layout these kernels reproduce
_FORMATS = {"fp8": "float-quantized", "fp8-block": "float-quantized", "w8a16": "pack-quantized", "w4a16": "pack-quantized"}


@dataclass(frozen=True)
class ConfigGroup:
    """One config group: the modules ``targets`` names (``"Linear"``, names or ``re:`` patterns)
    quantized with ``scheme``."""

    scheme: str
    targets: Sequence[str] = ("Linear",)
    group_size: int = DEFAULT_GROUP_SIZE  # w8a16 / w4a16 only
    name: str | None = field(default=None)  # defaults to the preset's name, e.g. "W4A16"


def quantization_config(groups: Sequence[ConfigGroup], *, ignore: Sequence[str] = ()) -> dict:
    """The ``quantization_config`` dict for these groups, in their order (first match wins).

    Args:
        groups: one ``ConfigGroup`` per scheme used.
        ignore: module names or ``re:`` patterns left unquantized.

    Returns:
        A JSON-ready dict. ``format`` is the groups' common format, or ``"mixed-precision"``
        when they differ (``ModelFreePtqConverter.update_config``).

    Example:
        >>> cfg = quantization_config([ConfigGroup("fp8")], ignore=["lm_head"])
        >>> cfg["format"], list(cfg["config_groups"]), cfg["config_groups"]["FP8_DYNAMIC"]["weights"]["strategy"]
        ('float-quantized', ['FP8_DYNAMIC'], 'channel')
    """
    if not groups:
        raise UsageError("a compressed-tensors config needs at least one scheme group")
    config_groups: dict[str, dict] = {}
    for group in groups:
        if group.scheme not in SCHEMES:
            raise UsageError(f"unknown compressed-tensors scheme {group.scheme!r}; choose one of {', '.join(SCHEMES)}")
        name = _unique(group.name or PRESETS[group.scheme], config_groups)
        config_groups[name] = _group(group)
    formats = {g["format"] for g in config_groups.values()}
    return {
        "config_groups": config_groups,
        "format": formats.pop() if len(formats) == 1 else "mixed-precision",
        "global_compression_ratio": None,
        "ignore": list(ignore),
        "kv_cache_scheme": None,
        "quant_method": "compressed-tensors",
        "quantization_status": "compressed",
        "transform_config": {},
        "version": COMPRESSED_TENSORS_VERSION,
    }


def _group(group: ConfigGroup) -> dict:
    scheme = group.scheme
    if scheme == "fp8":
        weights = _args(num_bits=8, type="float", strategy="channel")
        inputs = _args(num_bits=8, type="float", strategy="token", dynamic=True)
    elif scheme == "fp8-block":
        weights = _args(num_bits=8, type="float", strategy="block", block_structure=[FP8_BLOCK, FP8_BLOCK])
        inputs = _args(num_bits=8, type="float", strategy="group", dynamic=True, group_size=FP8_BLOCK)
    else:
        bits = 8 if scheme == "w8a16" else 4
        weights = _args(num_bits=bits, type="int", strategy="group", group_size=group.group_size)
        inputs = None
    return {
        "format": _FORMATS[scheme],
        "input_activations": inputs,
        "output_activations": None,
        "targets": list(group.targets),
        "weights": weights,
    }


def _args(*, num_bits: int, type: str, strategy: str, dynamic: bool = False, group_size: int | None = None, block_structure: list[int] | None = None) -> dict:
    # Every QuantizationArgs field, as model_dump() writes it for a symmetric preset
    # (zp_dtype serializes to None when symmetric).
    return {
        "actorder": None,
        "block_structure": block_structure,
        "dynamic": dynamic,
        "group_size": group_size,
        "num_bits": num_bits,
        "observer": None,
        "observer_kwargs": {},
        "scale_dtype": None,
        "strategy": strategy,
        "symmetric": True,
        "type": type,
        "zp_dtype": None,
    }


def _unique(name: str, taken: dict) -> str:
    """``name``, or ``name_1``, ``name_2``, ... when taken (compressed-tensors' find_unique_name)."""
    if name not in taken:
        return name
    n = 1
    while f"{name}_{n}" in taken:
        n += 1
    return f"{name}_{n}"
