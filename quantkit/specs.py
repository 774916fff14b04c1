"""What is known of a tensor before its data is read."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .dtypes import DType, dtype_of


@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype and shape of one tensor; its byte size follows from them.

    ``dtype`` is a :class:`~quantkit.dtypes.DType` (a torch dtype given here is converted;
    the two compare equal)."""

    name: str
    dtype: DType
    shape: tuple[int, ...]

    def __post_init__(self):
        if not isinstance(self.dtype, DType):
            object.__setattr__(self, "dtype", dtype_of(self.dtype))

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    @classmethod
    def of(cls, name: str, tensor) -> "TensorSpec":
        """The spec of a torch tensor or numpy array."""
        return cls(name, dtype_of(tensor.dtype), tuple(tensor.shape))


@dataclass(frozen=True)
class OutSpec(TensorSpec):
    """A tensor to write. ``variable`` marks a small U8 tensor whose length is only known once
    computed (a 4-bit quant state's JSON); its ``shape`` is then an upper bound."""

    variable: bool = False
