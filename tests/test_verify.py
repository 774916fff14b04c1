"""verify_checkpoint: sound folders pass; every kind of damage is listed."""

from __future__ import annotations

import json
import shutil
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from bad_files import BAD_INPUTS, build
from quantkit.errors import InputError
from quantkit.reshard import reshard
from quantkit.verify import verify_checkpoint

INDEX = "model.safetensors.index.json"
SHARD1, SHARD2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"


@pytest.fixture
def written(tmp_path, make_checkpoint):
    """A folder quantkit wrote: several shards, index, quantkit.json."""
    ckpt = make_checkpoint("pth-zip")
    reshard(ckpt.path, tmp_path / "out", max_shard_bytes=300)
    return tmp_path / "out"


def _index(folder):
    return json.loads((folder / "model.safetensors.index.json").read_text())


def _save_index(folder, index):
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


def _hf_folder(folder, *, total_size=None):
    folder.mkdir()
    save_file({"a": torch.ones(4), "b": torch.zeros(2, dtype=torch.int8)}, str(folder / SHARD1), metadata={"format": "pt"})
    save_file({"c": torch.ones(3, dtype=torch.float16)}, str(folder / SHARD2), metadata={"format": "pt"})
    weight_map = {"a": SHARD1, "b": SHARD1, "c": SHARD2}
    total = 16 + 2 + 6 if total_size is None else total_size
    (folder / "config.json").write_text("{}")
    _save_index(folder, {"metadata": {"total_size": total}, "weight_map": weight_map})
    return folder


def test_written_folder_is_ok_and_checksums_verified(written):
    report = verify_checkpoint(written)
    assert report.ok, report.problems
    assert report.checksums == "verified"
    assert report.format == "safetensors-sharded"
    assert report.num_tensors == sum(len(v) for v in [_index(written)["weight_map"]])
    assert len(report.files) == len(list(written.glob("*.safetensors"))) > 1


def test_single_file_output_is_ok(tmp_path, small_pth):
    reshard(small_pth, tmp_path / "out")
    report = verify_checkpoint(tmp_path / "out")
    assert report.ok and report.checksums == "verified" and report.files == ["model.safetensors"]
    assert verify_checkpoint(tmp_path / "out" / "model.safetensors").ok


def test_plain_hf_folder_has_no_checksums(tmp_path):
    report = verify_checkpoint(_hf_folder(tmp_path / "hf"))
    assert report.ok, report.problems
    assert report.checksums == "not recorded"
    assert report.total_bytes == 24


def test_plain_hf_total_size_mismatch_is_only_a_note(tmp_path):
    report = verify_checkpoint(_hf_folder(tmp_path / "hf", total_size=23))
    assert report.ok
    assert report.notes == [f"{tmp_path / 'hf' / INDEX}: total_size is 23 but the tensors hold 24 bytes"]


def test_torch_checkpoint_is_checked_by_opening_it(small_pth):
    report = verify_checkpoint(small_pth)
    assert report.ok and report.format == "torch-zip" and report.checksums == "not recorded"


def test_changed_byte_breaks_both_checksums(written):
    shard = written / SHARD1.replace("00002", f"{len(list(written.glob('*.safetensors'))):05d}")
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    report = verify_checkpoint(written)
    assert not report.ok and report.checksums == "mismatch"
    assert len(report.problems) == 2
    assert all(p.startswith(f"{shard}: SHA-256 ") and "(file changed or damaged)" in p for p in report.problems)
    assert "quantkit.json's" in report.problems[0] and "the index's" in report.problems[1]


def test_truncated_shard(written):
    shard = sorted(written.glob("*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:-4])
    problems = verify_checkpoint(written).problems
    assert any("data truncated" in p for p in problems)
    assert any(f"{shard}: {shard.stat().st_size} bytes, quantkit.json records {shard.stat().st_size + 4}" == p for p in problems)
    assert any("SHA-256" in p for p in problems)


def test_missing_shard(written):
    shard = sorted(written.glob("*.safetensors"))[-1]
    shard.unlink()
    problems = verify_checkpoint(written).problems
    assert f"{shard}: shard named by the index is missing" in problems
    assert f"{shard}: listed in quantkit.json but missing" in problems


def test_index_missing_an_entry_and_pointing_elsewhere(tmp_path):
    folder = _hf_folder(tmp_path / "hf")
    index = _index(folder)
    del index["weight_map"]["b"]
    index["weight_map"]["a"] = SHARD2
    index["weight_map"]["z"] = SHARD1
    _save_index(folder, index)
    problems = verify_checkpoint(folder).problems
    assert problems == [
        f"{folder / SHARD1}: tensor 'a' is here but the index maps it to {SHARD2}",
        f"{folder / SHARD1}: tensor 'b' is not in the index",
        f"{folder / INDEX}: the index maps tensor 'a' to {SHARD2}, which does not hold it",
        f"{folder / INDEX}: the index maps tensor 'z' to {SHARD1}, which does not hold it",
    ]


def test_safetensors_file_the_index_does_not_name(tmp_path):
    folder = _hf_folder(tmp_path / "hf")
    save_file({"x": torch.ones(1)}, str(folder / "extra.safetensors"))
    report = verify_checkpoint(folder)
    assert report.ok
    assert report.notes == [f"{folder / 'extra.safetensors'}: not named by the index (its tensors are not part of this checkpoint)"]


def test_duplicate_tensor_in_two_shards(tmp_path):
    folder = _hf_folder(tmp_path / "hf")
    save_file({"c": torch.ones(3, dtype=torch.float16), "a": torch.ones(4)}, str(folder / SHARD2))
    assert verify_checkpoint(folder).problems == [f"{folder / INDEX}: tensor 'a' is stored twice, in {SHARD1} and {SHARD2}"]


def test_overlapping_offsets_found(tmp_path):
    folder = _hf_folder(tmp_path / "hf")
    raw = json.dumps({"c": {"dtype": "F16", "shape": [3], "data_offsets": [0, 6]}, "d": {"dtype": "F16", "shape": [1], "data_offsets": [4, 6]}}).encode()
    (folder / SHARD2).write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 6)
    problems = verify_checkpoint(folder).problems
    assert problems == [f"{folder / SHARD2}: tensor 'd' overlaps the tensor before it (offset 4 < 6)"]


def test_quantkit_total_size_must_match(written):
    index = _index(written)
    index["metadata"]["total_size"] += 1
    _save_index(written, index)
    problems = verify_checkpoint(written).problems
    assert problems == [f"{written / INDEX}: total_size is {index['metadata']['total_size']} but the tensors hold {index['metadata']['total_size'] - 1} bytes"]


def test_manifest_names_an_unlisted_shard(written):
    manifest = json.loads((written / "quantkit.json").read_text())
    first = sorted(manifest["files"])[0]
    del manifest["files"][first]
    (written / "quantkit.json").write_text(json.dumps(manifest))
    report = verify_checkpoint(written)
    assert report.problems == [f"{written / first}: shard not listed in quantkit.json"]


def test_aliases_to_a_missing_tensor(tmp_path):
    save_file({"a": torch.ones(2)}, str(tmp_path / "model.safetensors"), metadata={"format": "pt", "quantkit.aliases": '{"b": "zzz"}'})
    assert verify_checkpoint(tmp_path).problems == [f"{tmp_path / 'model.safetensors'}: tied name 'b' points to 'zzz', which no shard holds"]


def test_missing_path_and_empty_folder_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="no such file or folder"):
        verify_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no checkpoint found to verify"):
        verify_checkpoint(tmp_path / "empty")


@pytest.mark.parametrize("bad", [pytest.param(b, id=b.id) for b in BAD_INPUTS])
def test_bad_inputs_are_reported_not_crashed_on(tmp_path, bad):
    path, named = build(bad, tmp_path / "in")
    try:
        report = verify_checkpoint(path)
    except InputError as exc:
        assert bad.id in ("missing-path", "folder-without-weights"), exc
        return
    assert not report.ok
    assert all(p.startswith(str(tmp_path / "in")) for p in report.problems), report.problems


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.integers(0, 10**6), value=st.integers(1, 255))
def test_any_changed_byte_is_detected(tmp_path_factory, written, position, value):
    folder = tmp_path_factory.mktemp("copy") / "out"
    shutil.copytree(written, folder)
    shard = sorted(folder.glob("*.safetensors"))[position % 3]
    data = bytearray(shard.read_bytes())
    data[position % len(data)] ^= value
    shard.write_bytes(bytes(data))
    assert not verify_checkpoint(folder).ok
