"""plan_shards: the greedy rule, its edge cases, and its properties on random input."""

from __future__ import annotations

import doctest

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quantkit import planner
from quantkit.planner import ShardPlan, plan_shards


def test_docstring_example():
    assert doctest.testmod(planner).failed == 0


def test_fills_shards_greedily_in_order():
    plan = plan_shards([("a", 3), ("b", 3), ("c", 3), ("d", 1)], 7)
    assert plan.shards == (("a", "b"), ("c", "d"))
    assert plan.shard_bytes == (6, 4)
    assert plan.total_bytes == 10


def test_exactly_at_the_limit_stays_in_one_shard():
    assert plan_shards([("a", 4), ("b", 4)], 8).shards == (("a", "b"),)


def test_oversized_units_get_their_own_shard_in_place():
    plan = plan_shards([("a", 1), ("big", 20), ("b", 1), ("huge", 30)], 8)
    assert plan.shards == (("a",), ("big",), ("b",), ("huge",))
    assert plan.shard_bytes == (1, 20, 1, 30)


def test_empty_input_gives_one_empty_shard():
    plan = plan_shards([], 10)
    assert plan.shards == ((),)
    assert plan.file_names() == ["model.safetensors"]


def test_zero_byte_units_are_placed():
    assert plan_shards([("e", 0), ("a", 5), ("f", 0)], 5).shards == (("e", "a", "f"),)


@pytest.mark.parametrize("limit", [0, -1])
def test_limit_must_be_positive(limit):
    with pytest.raises(ValueError, match="max_shard_bytes must be positive"):
        plan_shards([("a", 1)], limit)


def test_file_names():
    assert ShardPlan((("a",),), (1,)).file_names() == ["model.safetensors"]
    three = ShardPlan((("a",), ("b",), ("c",)), (1, 1, 1))
    assert three.file_names() == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert three.file_names("pytorch_model", "bin")[0] == "pytorch_model-00001-of-00003.bin"


units_strategy = st.lists(st.integers(0, 120), max_size=40).map(lambda sizes: [(f"t{i}", n) for i, n in enumerate(sizes)])


@given(units=units_strategy, limit=st.integers(1, 100))
def test_properties(units, limit):
    plan = plan_shards(units, limit)
    sizes = dict(units)
    flat = [name for shard in plan.shards for name in shard]
    assert flat == [name for name, _ in units]  # every unit once, in the given order
    assert plan.shard_bytes == tuple(sum(sizes[n] for n in shard) for shard in plan.shards)
    for shard, nbytes in zip(plan.shards, plan.shard_bytes):
        assert nbytes <= limit or len(shard) == 1  # the limit holds unless one unit exceeds it
        assert shard or not units  # no empty shard unless nothing to place
    for shard, after in zip(plan.shards, plan.shards[1:]):
        # greedy: a shard was closed only because the next unit would not fit (or is oversized)
        first = sizes[after[0]]
        assert sum(sizes[n] for n in shard) + first > limit or first > limit or (len(shard) == 1 and sizes[shard[0]] > limit)
