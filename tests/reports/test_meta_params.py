"""Modules built for an output comparison get meta parameters and real buffers, with or without accelerate."""

from __future__ import annotations

import sys

import pytest
import torch

from quantkit.reports.outputs import params_on_meta


class WithBuffer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)
        self.register_buffer("position_ids", torch.arange(5), persistent=False)


@pytest.mark.parametrize("accelerate", [True, False])
def test_parameters_on_meta_buffers_real_and_the_patch_undone(monkeypatch, accelerate):
    if not accelerate:
        monkeypatch.setitem(sys.modules, "accelerate", None)  # import fails: the fallback
    register = torch.nn.Module.register_parameter
    with params_on_meta():
        module = WithBuffer()
    assert all(p.is_meta for p in module.parameters())
    assert torch.equal(module.position_ids, torch.arange(5))
    assert torch.nn.Module.register_parameter is register
    assert not torch.nn.Linear(2, 2).weight.is_meta
