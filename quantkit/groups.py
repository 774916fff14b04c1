"""Which part of a model a tensor belongs to, from its name and shape."""

from __future__ import annotations

import re

GROUPS = ("embeddings", "attention", "mlp", "norms", "output_head", "convolution", "other")

_RULES: list[tuple[str, re.Pattern]] = [
    ("norms", re.compile(r"(norm|(^|\.)ln_?\w*(\.|$)|(^|\.)bn\d*(\.|$)|layer_?norm)", re.IGNORECASE)),
    ("embeddings", re.compile(r"(embed|(^|\.)emb(\.|$)|(^|\.)wte(\.|$)|(^|\.)wpe(\.|$)|(^|\.)shared(\.|$))", re.IGNORECASE)),
    ("output_head", re.compile(r"((^|\.)(lm_head|classifier|score|head|cls|output_layer|embed_out)(\.|$)|(^|\.)output\.(weight|bias)$)", re.IGNORECASE)),
    ("convolution", re.compile(r"conv(?!1d)", re.IGNORECASE)),
    ("attention", re.compile(r"(attn|attention|(^|\.)(q|k|v|o|qkv|query|key|value)(_proj)?(\.|$))", re.IGNORECASE)),
    ("mlp", re.compile(r"(mlp|ffn|feed_?forward|intermediate|(^|\.)fc\d*(\.|$)|(gate|up|down)_proj|c_fc|(^|\.)output\.dense)", re.IGNORECASE)),
]


def group_of(name: str, shape: tuple[int, ...] = ()) -> str:
    """The group of a tensor: embeddings, attention, mlp, norms, output_head, convolution or other.

    Example:
        >>> group_of("transformer.h.0.attn.c_attn.weight"), group_of("encoder.layer.0.output.LayerNorm.bias")
        ('attention', 'norms')
    """
    if len(shape) >= 3 and name.endswith("weight"):
        return "convolution"
    for group, pattern in _RULES:
        if pattern.search(name):
            return group
    return "other"
