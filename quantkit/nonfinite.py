"""NaN and inf in quantized weights: those their source held, those the conversion made.

A cast's overflow is counted by the chunk kernel (``WriteResult.fp16_overflow``); a quantized
weight's by ``NonFiniteCounts.record``, on the worker thread that quantized it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class NonFiniteCounts:
    """NaN / inf values by weight name (each name is recorded by one thread only).

    ``in_source``: the source's, for the schemes that store them as given (compressed-tensors:
    their group's scale becomes NaN / inf, as the reference stores it). ``created``: values
    that dequantize to NaN or inf beyond the source's (an overflowed scale, a NaN spread to its
    row or block).
    """

    in_source: dict[str, int] = field(default_factory=dict)
    created: dict[str, int] = field(default_factory=dict)

    def record(self, name: str, scheme, source, stored: list, *, report_source: bool) -> None:
        """Count one weight: ``source`` (a torch tensor or numpy array) as read, ``stored`` as
        ``scheme`` quantized it. The source is only counted when reported or when the stored
        weight holds some NaN / inf (rare)."""
        in_source = count_nonfinite(source) if report_source else None
        converted = _dequantized_nonfinite(scheme, stored)
        if converted and in_source is None:
            in_source = count_nonfinite(source)
        self.add(name, in_source or 0, converted, report_source=report_source)

    def add(self, name: str, in_source: int, converted: int, *, report_source: bool) -> None:
        """Record counts already taken: ``in_source`` NaN / inf in the source, ``converted`` in
        what the stored weight dequantizes to."""
        if report_source and in_source:
            self.in_source[name] = in_source
        if converted - in_source > 0:
            self.created[name] = converted - in_source


def count_nonfinite(values) -> int:
    """How many values of a torch tensor or numpy array are NaN or inf."""
    if isinstance(values, np.ndarray):
        return int(np.count_nonzero(~np.isfinite(values)))
    import torch

    return int((~torch.isfinite(values)).sum())


def _dequantized_nonfinite(scheme, stored: list) -> int:
    """``scheme.nonfinite_values`` of ``stored``; numpy arrays (the CPU kernels') are checked
    without torch first (``scheme.arrays_finite``), and only handed to it when some are not."""
    if not any(isinstance(a, np.ndarray) for _, a in stored):
        return scheme.nonfinite_values(stored)
    if scheme.arrays_finite(stored):
        return 0
    from .schemes.ct import to_torch  # numpy -> torch of the same bytes, ml_dtypes' bfloat16 / float8 too

    return scheme.nonfinite_values([(n, to_torch(a)) for n, a in stored])
