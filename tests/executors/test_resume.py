"""The resumable run's record (no Ray): a shard is kept only under the same plan digest and
with the recorded size and SHA-256; a record of another plan is refused."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from quantkit.errors import UsageError
from quantkit.executors.resume import PLAN_FILE, RunRecord, source_files
from quantkit.writing.shard import sha256_of
from quantkit.executors.resume import LocalShards


def _shard(folder, name="model-00001-of-00002.safetensors"):
    path = folder / name
    save_file({"a": torch.arange(6, dtype=torch.float32), "b": torch.ones(2, 3, dtype=torch.bfloat16)}, str(path))
    return path


def _finish(folder, path, digest="d1"):
    record, kept = RunRecord.start(folder, digest, resume=False)
    assert kept == {}
    shard = LocalShards(folder).still_valid(path.name, {"bytes": path.stat().st_size, "sha256": sha256_of(path)})
    record.finished(shard)
    return shard


def test_a_finished_shard_is_kept_with_its_tensors(tmp_path):
    path = _shard(tmp_path)
    shard = _finish(tmp_path, path)
    record, kept = RunRecord.start(tmp_path, "d1", resume=True)
    assert list(kept) == [path.name] and kept[path.name] == shard
    assert sorted(shard.names) == ["a", "b"] and shard.tensor_bytes == 6 * 4 + 6 * 2
    assert shard.file_bytes == path.stat().st_size and shard.sha256 == sha256_of(path)
    assert json.loads((tmp_path / PLAN_FILE).read_text())["done"] == {path.name: {"bytes": shard.file_bytes, "sha256": shard.sha256}}


@pytest.mark.parametrize("damage", ["flip", "truncate", "remove"])
def test_a_shard_changed_since_it_was_recorded_is_converted_again(tmp_path, damage):
    path = _shard(tmp_path)
    _finish(tmp_path, path)
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[-1] ^= 1
        path.write_bytes(data)
    elif damage == "truncate":
        path.write_bytes(data[:-2])
    else:
        path.unlink()
    record, kept = RunRecord.start(tmp_path, "d1", resume=True)
    assert kept == {} and record.done == {}
    assert json.loads((tmp_path / PLAN_FILE).read_text())["done"] == {}


def test_resume_under_another_plan_is_refused_and_a_fresh_run_ignores_the_record(tmp_path):
    path = _shard(tmp_path)
    _finish(tmp_path, path, digest="d1")
    with pytest.raises(UsageError, match="made by a different command.*rerun without --resume"):
        RunRecord.start(tmp_path, "d2", resume=True)
    record, kept = RunRecord.start(tmp_path, "d2", resume=False)
    assert kept == {} and json.loads((tmp_path / PLAN_FILE).read_text())["digest"] == "d2"


def test_a_damaged_record_keeps_nothing(tmp_path):
    path = _shard(tmp_path)
    _finish(tmp_path, path)
    (tmp_path / PLAN_FILE).write_text('{"format": 1, "digest": "d1", "done": {')
    assert RunRecord.start(tmp_path, "d1", resume=True)[1] == {}


@pytest.mark.parametrize("done", ['[]', '"x"', '{"../outside.safetensors": {}}', '{"sub/x.safetensors": {}}', '{"..": {}}'])
def test_a_record_naming_no_plain_shard_keeps_nothing(tmp_path, done):
    """``done`` that is not a mapping, or names a path rather than a shard's file name (one
    outside the partial folder, with the recorded size and SHA-256, included): nothing kept."""
    inner = tmp_path / "partial"
    inner.mkdir()
    outside = _shard(tmp_path, "outside.safetensors")
    (inner / "sub").mkdir()
    _shard(inner / "sub", "x.safetensors")
    records = {"../outside.safetensors": {"bytes": outside.stat().st_size, "sha256": sha256_of(outside)}}
    raw = json.dumps({"format": 1, "digest": "d1", "done": json.loads(done) if done != '{"../outside.safetensors": {}}' else records})
    (inner / PLAN_FILE).write_text(raw)
    assert RunRecord.start(inner, "d1", resume=True)[1] == {}


def test_source_files_change_with_the_file(tmp_path):
    path = _shard(tmp_path)
    before = source_files([path])
    path.write_bytes(path.read_bytes() + b" ")
    assert source_files([path]) != before
    assert source_files(["s3://bucket/model.safetensors"]) == [["s3://bucket/model.safetensors"]]
