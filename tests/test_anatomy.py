"""inspect_checkpoint: counts, groups and extras, from headers alone."""

from __future__ import annotations

import doctest

from quantkit import groups
from quantkit.groups import group_of
from quantkit.anatomy import inspect_checkpoint


def test_counts_tied_tensors_once(make_checkpoint):
    ckpt = make_checkpoint("pth-zip")
    anatomy = inspect_checkpoint(ckpt.path)
    distinct = {n: t for n, t in ckpt.expected.items() if n != "lm_head.weight"}
    assert anatomy.num_tensors == len(distinct)
    assert anatomy.num_parameters == sum(t.numel() for t in distinct.values() if t.is_floating_point())
    assert anatomy.total_bytes == sum(t.nbytes for t in distinct.values())
    assert anatomy.tied == {"lm_head.weight": "model.embed_tokens.weight"}
    assert sum(g.num_tensors for g in anatomy.groups.values()) == anatomy.num_tensors
    assert sum(g.bytes for g in anatomy.groups.values()) == anatomy.total_bytes
    assert anatomy.groups["embeddings"].num_parameters == 40


def test_same_anatomy_for_every_kind(checkpoint):
    anatomy = inspect_checkpoint(checkpoint.path)
    stored = {n: t for n, t in checkpoint.expected.items() if n not in checkpoint.tied}
    assert anatomy.num_tensors == len(stored)
    assert anatomy.total_bytes == sum(t.nbytes for t in stored.values())


def test_extras_of_a_training_checkpoint(make_checkpoint):
    anatomy = inspect_checkpoint(make_checkpoint("pth-wrapped").path)
    assert anatomy.extras["epoch"] == "7"
    assert "optimizer state" in anatomy.extras["optimizer_state_dict"]
    assert anatomy.to_dict()["extras"] == anatomy.extras


def test_group_rules():
    assert doctest.testmod(groups).failed == 0
    assert group_of("model.layers.0.mlp.down_proj.weight") == "mlp"
    assert group_of("model.norm.weight") == "norms"
    assert group_of("lm_head.weight") == "output_head"
    assert group_of("features.0.weight", (8, 3, 3, 3)) == "convolution"
    assert group_of("something") == "other"


def test_top_limits_largest(make_checkpoint):
    anatomy = inspect_checkpoint(make_checkpoint("safetensors").path, top=3)
    assert len(anatomy.largest) == 3
    assert anatomy.largest[0].bytes >= anatomy.largest[1].bytes >= anatomy.largest[2].bytes
    assert {row.name for row in anatomy.largest[:2]} == {"lm_head.weight", "model.embed_tokens.weight"}  # 160 bytes each
