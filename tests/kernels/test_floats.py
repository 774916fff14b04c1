"""The kernels' float conversions, against numpy's own, on every float16 / bfloat16 value."""

from __future__ import annotations

import numpy as np

from quantkit.kernels import _floats
from quantkit.kernels._jit import kernel
from quantkit.kernels._layout import widen


@kernel
def _round_all(values, out, in_range):
    for i in range(values.shape[0]):
        out[i] = _floats.round_to_f16_in_range(values[i]) if in_range else _floats.round_to_f16(values[i])


def test_widening_every_half_and_bfloat16_is_exact():
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    for kind, numpy_type in ((1, None), (2, np.float16)):
        out = np.empty(bits.size, np.float32)
        widen(bits, kind, out)
        ref = (bits.astype(np.uint32) << 16).view(np.float32) if numpy_type is None else bits.view(np.float16).astype(np.float32)
        finite = ~np.isnan(ref)
        np.testing.assert_array_equal(out[finite].view(np.uint32), ref[finite].view(np.uint32))
        assert np.isnan(out[~finite]).all()


def test_rounding_to_half_matches_numpy():
    rng = np.random.default_rng(0)
    values = np.concatenate(
        [
            rng.integers(0, 1 << 32, 2_000_000, dtype=np.uint64).astype(np.uint32).view(np.float32),
            (rng.standard_normal(500_000) * 1e-5).astype(np.float32),  # float16 subnormals
            np.float32([65504, 65519.99, 65520, -65520, 2.0**-24, 2.0**-25, 3 * 2.0**-25, 2.0**-14, np.inf, -np.inf, -0.0]),
        ]
    )
    with np.errstate(over="ignore"):
        ref = values.astype(np.float16).astype(np.float32)
    out = np.empty_like(values)
    _round_all(values, out, False)
    finite = ~np.isnan(values)
    np.testing.assert_array_equal(out[finite].view(np.uint32), ref[finite].view(np.uint32))
    in_range = finite & (np.abs(values) < 65520)
    _round_all(values, out, True)
    np.testing.assert_array_equal(out[in_range].view(np.uint32), ref[in_range].view(np.uint32))
