"""A Hugging Face folder's ``config.json``: checked when the folder is opened."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from ..jsonio import read_json_object

# Sizes transformers builds a model from: each must be a count where present.
COUNT_KEYS = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "vocab_size", "max_position_embeddings", "n_embd", "n_layer", "n_head", "n_positions", "num_layers",
    "n_layers", "d_model", "encoder_layers", "decoder_layers", "head_dim",
)
LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers", "encoder_layers", "decoder_layers")
MAX_BUILD_LAYERS = 1024  # past this, building the model to look at its modules takes too long
MAX_BUILD_PARAMETERS = 2 * 10**12


def check_config(path: Path) -> dict:
    """The parsed config; InputError when it is not a JSON object or a size is not a count."""
    config = read_json_object(path, what="config.json")
    for section in (config, *(v for v in config.values() if isinstance(v, dict))):
        for key in COUNT_KEYS:
            value = section.get(key)
            if value is not None and (type(value) is not int or value < 0):
                raise InputError(f"{path}: {key} must be a non-negative integer, not {str(value)[:40]!r}: fix config.json")
    return config


def too_large_to_build(config: dict) -> str | None:
    """Why building this config's model (on the meta device, to introspect it) is refused, or None."""
    sections = (config, *(v for v in config.values() if isinstance(v, dict)))
    for section in sections:
        layers = max((section.get(k) or 0 for k in LAYER_KEYS if type(section.get(k)) is int), default=0)
        if layers > MAX_BUILD_LAYERS:
            return f"{layers} layers (more than {MAX_BUILD_LAYERS})"
        width = section.get("hidden_size") or section.get("n_embd") or section.get("d_model") or 0
        if type(width) is int and layers * 12 * width * width > MAX_BUILD_PARAMETERS:
            return f"about {layers * 12 * width * width:.1e} parameters"
    return None
