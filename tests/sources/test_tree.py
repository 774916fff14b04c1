"""The walk of an unpickled checkpoint's dicts: shared sub-dicts are counted as the walk would
visit them, without being walked, so that a small DAG is refused at once."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bad_files import BAD_INPUTS, build
from quantkit.sources import tree
from quantkit.sources.lazy_pth import open_lazy_pth
from quantkit.sources.tree import StructureError, _expanded_entries, flatten_tensors


def test_a_dict_reached_twice_counts_twice_as_the_walk_visits_it():
    shared = {"b": torch.ones(1), "c": {"d": torch.ones(1)}}
    sd = {"a": shared, "e": shared, "f": torch.ones(1), "n": 3}
    assert _expanded_entries(sd) == 4 + 2 * (2 + 1)
    assert sorted(flatten_tensors(sd)) == ["a.b", "a.c.d", "e.b", "e.c.d", "f"]


def test_a_dag_past_the_bound_is_refused_before_any_walk(monkeypatch):
    node = {"w": torch.ones(1)}
    for _ in range(10):  # 2**10 paths to the tensor, 11 dicts
        node = {"a": node, "b": node}
    assert _expanded_entries(node) == 2 * (2**10 - 1) + 2**10
    monkeypatch.setattr(tree, "MAX_ENTRIES", 2000)
    visited = []
    monkeypatch.setattr(tree, "is_tensor", lambda v: visited.append(v) or isinstance(v, torch.Tensor))
    with pytest.raises(StructureError, match="more than 2,000 entries to walk"):
        flatten_tensors(node)
    assert len(visited) <= 11 * 2  # each distinct dict's values looked at once


def test_cycles_and_depth_are_left_to_the_walk():
    sd: dict = {"w": torch.ones(1)}
    sd["again"] = sd
    assert _expanded_entries(sd) == 2
    with pytest.raises(StructureError, match="contains itself"):
        flatten_tensors(sd)
    deep: dict = {"w": torch.ones(1)}
    for _ in range(tree.MAX_DEPTH + 5):
        deep = {"x": deep}
    with pytest.raises(StructureError, match="levels deep"):
        flatten_tensors(deep)


def test_the_torch_free_reader_refuses_a_dag_itself(tmp_path: Path):
    bad = next(b for b in BAD_INPUTS if b.id == "pth-dag-2-to-the-40-paths")
    path, _ = build(bad, tmp_path)
    with pytest.raises(StructureError, match=r"model\.pth: its dicts hold more than 1,000,000 entries"):
        open_lazy_pth(path)
