"""Fused CPU kernels for quantkit's quantizing schemes, on numpy arrays.

Each kernel reads a weight as the bytes a checkpoint stores it in (float32, bfloat16 as
``ml_dtypes.bfloat16``, float16), e.g. a ``read_into`` buffer, and returns numpy arrays
ready to write; no torch is imported unless a weight holds NaN (see ``_reference``).
They are compiled by numba, release the GIL, and produce bitsandbytes' bytes exactly.
"""

from .fourbit import code_table, quantize_4bit_codes
from .int8 import dequantize_int8, quantize_int8
from .nested import double_quant

__all__ = ["code_table", "dequantize_int8", "double_quant", "quantize_4bit_codes", "quantize_int8"]
