"""Memory estimates from the parameter count (and, when known, the model's shape).

Standard formulas, all lower bounds (no framework overhead, no KV cache, no fragmentation):

- weights: N x bytes per weight at FP32 (4), BF16 / FP16 (2), INT8 (1), INT4 (0.5);
- training model states, mixed precision with Adam: (x + y + 12) x N bytes, x and y the
  bytes per weight and gradient (2 + 2 for BF16), 12 for the FP32 master weights and Adam's
  two moments: 16 bytes per parameter;
- activations of a transformer (Korthikanti et al. 2022, no recomputation, no parallelism):
  L * b * s * h * p * (16 + 2/p + (a*s/h) * (2 + 1/p)) bytes, with L layers, batch b,
  sequence s, hidden size h, a heads and p bytes per activation value (2: 34 + 5as/h per token);
- GPUs needed: ceil(bytes / GPU memory), GPU memory in GiB (2**30 bytes: a "24 GB" card
  reports about 24 GiB to CUDA).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

WEIGHT_BYTES_PER_PARAMETER = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "int8": 1.0, "int4": 0.5}
OPTIMIZER_BYTES_PER_PARAMETER = 12  # FP32 master weights (4) + Adam first and second moments (4 + 4)
DEFAULT_SEQ_LEN = 2048
GIB = 2**30

_CONFIG_KEYS = {
    "num_layers": ("num_hidden_layers", "n_layer", "num_layers", "n_layers"),
    "hidden_size": ("hidden_size", "n_embd", "d_model", "dim"),
    "num_heads": ("num_attention_heads", "n_head", "num_heads", "n_heads"),
    "max_positions": ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len"),
}


@dataclass(frozen=True)
class ModelShape:
    """What activation memory depends on besides batch and sequence length."""

    num_layers: int
    hidden_size: int
    num_heads: int
    max_positions: int | None = None

    @classmethod
    def from_config(cls, config: dict) -> "ModelShape | None":
        """Read layers, hidden size and heads from a config.json dict (or its ``text_config``)."""
        for section in (config, config.get("text_config") or {}):
            found = {key: _first_int(section, names) for key, names in _CONFIG_KEYS.items()}
            if found["num_layers"] and found["hidden_size"] and found["num_heads"]:
                return cls(**found)
        return None


@dataclass
class Activations:
    num_layers: int
    hidden_size: int
    num_heads: int
    batch_size: int
    seq_len: int
    bytes_per_value: int
    bytes: int


@dataclass
class MemoryEstimate:
    """Memory needed to hold and to train a model of ``num_parameters`` parameters."""

    num_parameters: int
    weights_bytes: dict[str, int]
    training: dict[str, int]
    activations: Activations | None
    training_total_bytes: int
    gpu_memory_bytes: int | None = None
    gpus_needed: dict[str, int] | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def activation_bytes(shape: ModelShape, *, batch_size: int, seq_len: int, bytes_per_value: int = 2) -> int:
    """L*b*s*h*p*(16 + 2/p + (a*s/h)(2 + 1/p)): with p = 2, (34 + 5as/h) bytes per token, layer and hidden unit.

    Example:
        >>> activation_bytes(ModelShape(1, 1024, 16), batch_size=1, seq_len=1024)
        119537664
    """
    L, h, a, p = shape.num_layers, shape.hidden_size, shape.num_heads, bytes_per_value
    per_unit = 16 + 2 / p + (a * seq_len / h) * (2 + 1 / p)
    return round(L * batch_size * seq_len * h * p * per_unit)


def estimate_memory(
    num_parameters: int,
    *,
    shape: ModelShape | None = None,
    batch_size: int = 1,
    seq_len: int | None = None,
    gpu_gb: float | None = None,
    weight_bytes: int = 2,
    gradient_bytes: int = 2,
    stored_bytes: int | None = None,
) -> MemoryEstimate:
    """Weights at each precision, training memory and, given ``gpu_gb`` (GiB), GPUs needed.

    Args:
        num_parameters: N, the model's parameter count.
        shape: layers, hidden size and heads, for activations (``ModelShape.from_config``).
        batch_size, seq_len: activation workload; ``seq_len`` defaults to the model's
            maximum positions, capped at 2048.
        gpu_gb: memory of one GPU in GiB.
        weight_bytes, gradient_bytes: x and y of the (x + y + 12) x N training formula.
        stored_bytes: the checkpoint's own tensor bytes, listed as weights ``"stored"``.
    """
    weights = {k: math.ceil(num_parameters * v) for k, v in WEIGHT_BYTES_PER_PARAMETER.items()}
    if stored_bytes is not None:
        weights["stored"] = stored_bytes
    per_param = weight_bytes + gradient_bytes + OPTIMIZER_BYTES_PER_PARAMETER
    training = {
        "weight_bytes_per_parameter": weight_bytes,
        "gradient_bytes_per_parameter": gradient_bytes,
        "optimizer_bytes_per_parameter": OPTIMIZER_BYTES_PER_PARAMETER,
        "bytes_per_parameter": per_param,
        "model_states_bytes": per_param * num_parameters,
    }
    activations = None
    if shape is not None:
        seq = seq_len or min(shape.max_positions or DEFAULT_SEQ_LEN, DEFAULT_SEQ_LEN)
        nbytes = activation_bytes(shape, batch_size=batch_size, seq_len=seq)
        activations = Activations(shape.num_layers, shape.hidden_size, shape.num_heads, batch_size, seq, 2, nbytes)
    total = training["model_states_bytes"] + (activations.bytes if activations else 0)
    estimate = MemoryEstimate(num_parameters, weights, training, activations, total)
    if activations is None:
        estimate.notes.append("activations not estimated: layers, hidden size and heads are unknown (no config.json)")
    if gpu_gb is not None:
        estimate.gpu_memory_bytes = round(gpu_gb * GIB)
        needs = {**weights, "training": total}
        estimate.gpus_needed = {k: max(1, math.ceil(v / estimate.gpu_memory_bytes)) for k, v in needs.items()}
    return estimate


def read_config(config_dir: str | Path | None) -> dict:
    """The folder's config.json as a dict; empty when there is none or it is unreadable."""
    if config_dir is None:
        return {}
    try:
        config = json.loads((Path(config_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def _first_int(section: dict, names: tuple[str, ...]) -> int | None:
    for name in names:
        value = section.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None
