"""WriteOptions.shard_done (how an S3 output uploads its shards): called once per shard, in
order, with the shard finished; and the writer waits for it, so shards do not pile up on disk."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from quantkit.planner import plan_shards
from quantkit.specs import OutSpec
from quantkit.writing import write_checkpoint


def _write(folder: Path, shard_done, *, workers: int):
    tensors = {f"t{i}": torch.full((64,), float(i)) for i in range(24)}
    outputs = {n: [OutSpec(n, t.dtype, tuple(t.shape))] for n, t in tensors.items()}
    plan = plan_shards([(n, t.numel() * t.element_size()) for n, t in tensors.items()], 600)  # 2 tensors a shard
    result = write_checkpoint(folder, plan, outputs, lambda n: [(n, tensors[n])], metadata={"format": "pt"}, manifest={},
                              workers=workers, window=1, shard_done=shard_done)
    return tensors, plan, result


@pytest.mark.parametrize("workers", [0, 2])
def test_each_finished_shard_is_handed_over_in_order_and_the_writer_waits_for_it(tmp_path, workers):
    folder = tmp_path / "out"
    folder.mkdir()
    calls = []

    def slow_upload(shard):
        on_disk = sorted(p.name for p in folder.glob("*.safetensors"))
        calls.append((shard.path.name, shard.path.read_bytes(), on_disk))
        time.sleep(0.05)  # an upload slower than writing: without waiting, every shard would pile up
        shard.path.unlink()

    tensors, plan, result = _write(folder, slow_upload, workers=workers)
    assert [name for name, _, _ in calls] == plan.file_names() and len(plan.shards) == 12
    for (name, data, on_disk), units in zip(calls, plan.shards):
        expected = tmp_path / f"expected-{name}"
        save_file({n: tensors[n] for n in units}, expected, metadata={"format": "pt"})
        assert data == expected.read_bytes()  # finished: every byte in place when handed over
        assert on_disk[0] == name and len(on_disk) <= 3  # this one, the next (finished), one task of the one after
    assert [s.path.name for s in result.shards] == plan.file_names()
