"""A stored weight's non-finite check widens float8 a slice at a time and still sees every value."""

from __future__ import annotations

import pytest
import torch

from quantkit.schemes import base


@pytest.mark.parametrize("where", [0, 4095, 4096, 10_000 - 1])
def test_float8_checked_in_slices_sees_a_nan_anywhere(monkeypatch, where):
    monkeypatch.setattr(base, "_WIDEN_ELEMENTS", 4096)  # 10,000 values: three slices, the last one partial
    values = torch.zeros(100, 100).to(torch.float8_e4m3fn)
    assert base._all_finite(values)
    values.view(-1)[where] = float("nan")
    assert not base._all_finite(values)


def test_wider_floats_are_checked_whole():
    values = torch.ones(3, 5)
    assert base._all_finite(values)
    values[2, 4] = float("inf")
    assert not base._all_finite(values)
