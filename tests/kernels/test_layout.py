"""quantkit.kernels._layout: the byte transpose the Conv1D kernels write their codes with."""

from __future__ import annotations

import numpy as np
import pytest

from quantkit.kernels._layout import transpose_bytes_into


@pytest.mark.parametrize(
    "rows,cols,offset,width",
    [(8, 8, 0, 8), (64, 5120, 64, 1280), (16, 24, 8, 40), (8, 16, 32, 40),  # 8x8 tiles
     (12, 5120, 0, 1280), (7, 9, 3, 20), (8, 8, 4, 16), (8, 12, 0, 8), (16, 8, 0, 20), (1, 1, 0, 1)],  # byte by byte
)
@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_transpose_bytes_into_writes_only_its_columns(rows, cols, offset, width, dtype):
    rng = np.random.default_rng(rows * cols + offset)
    src = rng.integers(0, 256, (rows, cols), dtype=np.uint8).view(dtype)
    dst = rng.integers(0, 256, (cols, width), dtype=np.uint8).view(dtype)
    want = dst.copy()
    want[:, offset : offset + rows] = src.T
    transpose_bytes_into(src, dst, offset)
    np.testing.assert_array_equal(dst, want)
