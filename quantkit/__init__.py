"""quantkit: precision and quantization conversion for PyTorch checkpoints."""

from __future__ import annotations

__version__ = "0.1.0"

from .convert import ConvertOptions, convert  # noqa: E402
from .errors import QuantkitError  # noqa: E402
from .inspect import inspect_checkpoint  # noqa: E402
from .loading import load_into, load_state_dict  # noqa: E402
from .reshard import reshard  # noqa: E402
from .sources import open_checkpoint  # noqa: E402

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
