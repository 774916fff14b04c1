"""Byte-level facts of bitsandbytes' stored layout that the schemes (``bnb``) and the kernels share; no torch."""

from __future__ import annotations

import json
import re

ROW_FORMAT = 0  # bitsandbytes' code for the row-major layout, the only one it still writes
NESTED_BLOCKSIZE = 256  # bitsandbytes quantizes the absmax values in blocks of 256
LONGEST_FLOAT = -2.2250738585072014e-308  # the longest repr a float can have
FOURBIT_STATE = re.compile(r"^(?P<weight>.+)\.quant_state\.bitsandbytes__(?P<type>nf4|fp4)$")
FOURBIT_PARTS = ("absmax", "quant_map", "nested_absmax", "nested_quant_map")


def state_json(quant_type: str, blocksize: int, dtype, shape, nested_offset: float | None) -> bytes:
    """The non-tensor quant state fields, as bitsandbytes' ``pack_dict_to_tensor`` writes them."""
    fields = {"quant_type": quant_type, "blocksize": blocksize, "dtype": str(dtype).removeprefix("torch."), "shape": list(shape)}
    if nested_offset is not None:
        fields.update({"nested_blocksize": NESTED_BLOCKSIZE, "nested_dtype": "float32", "nested_offset": nested_offset})
    return json.dumps(fields).encode()
