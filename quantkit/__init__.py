"""quantkit: precision and quantization conversion for PyTorch checkpoints.

Importing it does not import torch (reading, inspecting, verifying and casting safetensors
checkpoints never need it); the loaders and quantizers import it when used.
"""

from __future__ import annotations

from .anatomy import inspect_checkpoint
from .convert import ConvertOptions, convert
from .errors import QuantkitError
from .reshard import reshard
from .sources import open_checkpoint
from .version import __version__


def __getattr__(name: str):
    # load_state_dict / load_into build torch tensors: torch is imported only when they are used
    if name in ("load_into", "load_state_dict"):
        from . import loading

        return getattr(loading, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "ConvertOptions",
    "QuantkitError",
    "convert",
    "inspect_checkpoint",
    "load_into",
    "load_state_dict",
    "open_checkpoint",
    "reshard",
    "__version__",
]
