"""The dtypes torch and safetensors share, with their safetensors names."""

from __future__ import annotations

import torch

# In the order of safetensors' own dtype enum; the writer lays tensors out by this rank
# (largest first) so that every tensor's data stays aligned to its element size, exactly
# as safetensors' serializer does.
_ST_ORDER: list[tuple[str, torch.dtype]] = [
    ("BOOL", torch.bool),
    ("U8", torch.uint8),
    ("I8", torch.int8),
    ("F8_E5M2", torch.float8_e5m2),
    ("F8_E4M3", torch.float8_e4m3fn),
    ("I16", torch.int16),
    ("U16", torch.uint16),
    ("F16", torch.float16),
    ("BF16", torch.bfloat16),
    ("I32", torch.int32),
    ("U32", torch.uint32),
    ("F32", torch.float32),
    ("F64", torch.float64),
    ("I64", torch.int64),
    ("U64", torch.uint64),
]

TORCH_TO_ST: dict[torch.dtype, str] = {dt: name for name, dt in _ST_ORDER}
ST_TO_TORCH: dict[str, torch.dtype] = {name: dt for name, dt in _ST_ORDER}
LAYOUT_RANK: dict[torch.dtype, int] = {dt: i for i, (_, dt) in enumerate(_ST_ORDER)}


def st_name(dtype: torch.dtype) -> str:
    """The safetensors name of a torch dtype; ValueError if safetensors has none."""
    try:
        return TORCH_TO_ST[dtype]
    except KeyError:
        raise ValueError(f"dtype {dtype} has no safetensors equivalent") from None


def short_name(dtype: torch.dtype) -> str:
    """`torch.float32` -> `float32`."""
    return str(dtype).removeprefix("torch.")
