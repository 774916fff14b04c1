"""quantkit: precision and quantization conversion for PyTorch checkpoints."""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import QuantkitError  # noqa: E402
from .sources import open_checkpoint  # noqa: E402

__all__ = ["QuantkitError", "open_checkpoint", "__version__"]
