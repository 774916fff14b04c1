"""Whether an array holds NaN or inf, from its bit patterns: one pass, no temporaries.

A value of an IEEE-style float format is NaN or inf exactly where its exponent bits are all
ones (FP8 E4M3FN has no inf, and is NaN only at S.1111.111: its "exponent" mask here covers
the mantissa too). numpy's ``isfinite`` builds a boolean array per call, and on ml_dtypes'
bfloat16 / float8 it runs an element loop through float32; this kernel reads the bits once
(a few GB/s on one core) and leaves the others to numpy.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

from ._jit import kernel

_SLICE = 1 << 14  # elements tested between checks for an early exit (the inner loop vectorises)

# dtype: (the unsigned view, the bits that are all ones exactly for NaN and inf)
_MASKS = {
    np.dtype(np.float64): (np.uint64, 0x7FF0000000000000),
    np.dtype(np.float32): (np.uint32, 0x7F800000),
    np.dtype(np.float16): (np.uint16, 0x7C00),
    np.dtype(ml_dtypes.bfloat16): (np.uint16, 0x7F80),
    np.dtype(ml_dtypes.float8_e4m3fn): (np.uint8, 0x7F),
    np.dtype(ml_dtypes.float8_e5m2): (np.uint8, 0x7C),
}


@kernel
def _any_full_exponent(bits, mask):
    n = bits.size
    for start in range(0, n, _SLICE):
        found = 0
        for i in range(start, min(n, start + _SLICE)):
            found |= np.int32((bits[i] & mask) == mask)
        if found:
            return True
    return False


def all_finite(array: np.ndarray) -> bool:
    """Whether every value of a float array is finite (any shape; a non-contiguous one or a
    float format not listed is checked by numpy)."""
    found = _MASKS.get(array.dtype)
    if found is None or not array.flags.c_contiguous:
        return bool(np.isfinite(array).all())
    unsigned, mask = found
    return not _any_full_exponent(array.reshape(-1).view(unsigned), unsigned(mask))
