"""The dtypes torch and safetensors share, described without importing torch.

Reading headers, planning shards, writing files, ``inspect``, ``verify`` and the BF16 / FP16
casts of safetensors checkpoints need no torch at all; importing it takes ~2 s on a small
machine, more than a whole conversion's reading and writing of a 3 GB model. So quantkit
names dtypes with its own small ``DType`` objects, which compare equal to the torch dtypes
they stand for (``DType("F32") == torch.float32``) and give the torch or numpy dtype on
demand.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass


@dataclass(frozen=True, eq=False)
class DType:
    """One tensor dtype: its safetensors name, its torch name, element size and kind."""

    st: str  # safetensors' name, e.g. "F32"
    name: str  # torch's name without "torch.", e.g. "float32"
    itemsize: int
    is_floating_point: bool
    rank: int  # position in safetensors' dtype enum (the writer lays tensors out by it)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, DType):
            return self.st == other.st
        if _is_torch_dtype(other):
            return str(other) == f"torch.{self.name}"
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.st)

    def __str__(self) -> str:  # prints as the torch dtype it stands for, so messages stay the same
        return f"torch.{self.name}"

    __repr__ = __str__

    @property
    def torch(self):
        """The torch dtype (imports torch)."""
        import torch

        return getattr(torch, self.name)

    @property
    def numpy(self):
        """The numpy dtype holding these elements (BF16 and FP8 from ml_dtypes)."""
        return _numpy_dtypes()[self.st]


# In the order of safetensors' own dtype enum; the writer lays tensors out by this rank
# (largest first) so that every tensor's data stays aligned to its element size, exactly
# as safetensors' serializer does.
_TABLE = [
    ("BOOL", "bool", 1, False),
    ("U8", "uint8", 1, False),
    ("I8", "int8", 1, False),
    ("F8_E5M2", "float8_e5m2", 1, True),
    ("F8_E4M3", "float8_e4m3fn", 1, True),
    ("I16", "int16", 2, False),
    ("U16", "uint16", 2, False),
    ("F16", "float16", 2, True),
    ("BF16", "bfloat16", 2, True),
    ("I32", "int32", 4, False),
    ("U32", "uint32", 4, False),
    ("F32", "float32", 4, True),
    ("F64", "float64", 8, True),
    ("I64", "int64", 8, False),
    ("U64", "uint64", 8, False),
]
BY_ST: dict[str, DType] = {st: DType(st, name, size, fp, rank) for rank, (st, name, size, fp) in enumerate(_TABLE)}
_BY_NAME: dict[str, DType] = {d.name: d for d in BY_ST.values()}

INT8, UINT8, FLOAT16, BFLOAT16, FLOAT32 = BY_ST["I8"], BY_ST["U8"], BY_ST["F16"], BY_ST["BF16"], BY_ST["F32"]


def _is_torch_dtype(value: object) -> bool:
    kind = type(value)
    return kind.__name__ == "dtype" and kind.__module__ == "torch"


def dtype_of(value: object) -> DType:
    """The DType of a DType, torch dtype, numpy dtype, tensor or array, or dtype name
    (``"F32"`` or ``"float32"``); ValueError if safetensors has no such dtype."""
    if isinstance(value, DType):
        return value
    if _is_torch_dtype(value):
        found = _BY_NAME.get(str(value).removeprefix("torch."))
    elif isinstance(value, str):
        found = BY_ST.get(value) or _BY_NAME.get(value.removeprefix("torch."))
    elif hasattr(value, "dtype") and not isinstance(value, type):  # a tensor or an array
        return dtype_of(value.dtype)
    else:  # a numpy dtype
        found = _from_numpy(value)
    if found is None:
        raise ValueError(f"dtype {value} has no safetensors equivalent")
    return found


def _from_numpy(value: object) -> DType | None:
    for st, np_dtype in _numpy_dtypes().items():
        if value == np_dtype:
            return BY_ST[st]
    return None


@functools.cache
def _numpy_dtypes() -> dict:
    import ml_dtypes
    import numpy as np

    table = {
        "BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "I16": np.int16, "U16": np.uint16,
        "F16": np.float16, "I32": np.int32, "U32": np.uint32, "F32": np.float32, "F64": np.float64,
        "I64": np.int64, "U64": np.uint64, "BF16": ml_dtypes.bfloat16,
        "F8_E5M2": ml_dtypes.float8_e5m2, "F8_E4M3": ml_dtypes.float8_e4m3fn,
    }
    return {st: np.dtype(t) for st, t in table.items()}


def st_name(dtype: object) -> str:
    """The safetensors name of a dtype; ValueError if safetensors has none."""
    return dtype_of(dtype).st


def short_name(dtype: object) -> str:
    """`torch.float32` (or its DType) -> `float32`."""
    if isinstance(dtype, DType):
        return dtype.name
    return str(dtype).removeprefix("torch.")
