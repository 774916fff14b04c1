"""reshard: every input kind comes back bit-exact; shards, index and names follow the convention."""

from __future__ import annotations

import json
import re

import pytest
from safetensors import safe_open

from conftest import HF_FILES, assert_bit_equal, assert_same_state, build_checkpoint
from quantkit.loading import load_state_dict
from quantkit.layout import MANIFEST
from quantkit.reshard import default_output, reshard
from quantkit.safetensors_format import read_header


def test_round_trip_is_bit_exact(checkpoint, tmp_path):
    out = tmp_path / "out"
    result = reshard(checkpoint.path, out, max_shard_bytes=200)
    assert len(result.write.shards) > 1
    assert result.aliases == checkpoint.tied
    assert_same_state(load_state_dict(out), checkpoint.expected)


def test_round_trip_single_shard_is_model_safetensors(checkpoint, tmp_path):
    out = tmp_path / "out"
    reshard(checkpoint.path, out)
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert shards == ["model.safetensors"]
    assert not (out / "model.safetensors.index.json").exists()
    assert_same_state(load_state_dict(out / "model.safetensors"), checkpoint.expected)


def test_safetensors_library_reads_every_output_tensor(make_checkpoint, tmp_path):
    ckpt = make_checkpoint("pth-zip")
    reshard(ckpt.path, tmp_path / "out")
    with safe_open(str(tmp_path / "out" / "model.safetensors"), framework="pt") as f:
        names = set(f.keys())
        assert f.metadata()["format"] == "pt"
        for name in names:
            assert_bit_equal(f.get_tensor(name), ckpt.expected[name], name)
    assert names == set(ckpt.expected) - {"lm_head.weight"}  # tied copy written once


def test_tied_weights_written_once_and_restored_as_one_object(make_checkpoint, tmp_path):
    ckpt = make_checkpoint("pth-zip")
    reshard(ckpt.path, tmp_path / "out", max_shard_bytes=100)
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert "lm_head.weight" not in index["weight_map"]
    assert "model.embed_tokens.weight" in index["weight_map"]
    state = load_state_dict(tmp_path / "out")
    assert state["lm_head.weight"] is state["model.embed_tokens.weight"]


def test_hf_folder_copies_non_weight_files(make_checkpoint, tmp_path):
    ckpt = make_checkpoint("hf-folder-bin")
    (ckpt.path / "tokenizer").mkdir()
    (ckpt.path / "tokenizer" / "vocab.txt").write_text("a\nb\n")
    result = reshard(ckpt.path, tmp_path / "out")
    for name, text in HF_FILES.items():
        assert (tmp_path / "out" / name).read_text() == text
    assert (tmp_path / "out" / "tokenizer" / "vocab.txt").read_text() == "a\nb\n"
    assert not list((tmp_path / "out").glob("*.bin"))
    assert set(result.copied_files) == {*HF_FILES, "tokenizer"}


def test_wrapped_training_checkpoint_describes_extras(make_checkpoint, tmp_path):
    from quantkit.sources import open_checkpoint

    ckpt = make_checkpoint("pth-wrapped")
    with open_checkpoint(ckpt.path) as source:
        extras = source.info.extras
    assert extras["weights found under"] == "'model_state_dict'"
    assert extras["epoch"] == "7"
    assert extras["optimizer_state_dict"].startswith("optimizer state for 1 parameters")
    assert "lr=0.001" in extras["optimizer_state_dict"]


def test_legacy_format_is_read_whole_with_a_note(make_checkpoint, tmp_path):
    ckpt = make_checkpoint("pth-legacy")
    result = reshard(ckpt.path, tmp_path / "out")
    assert result.source_format == "torch-legacy"
    assert any("legacy" in note and "read whole" in note for note in result.notes)


@pytest.mark.parametrize("limit", [1, 60, 200, 10**6])
def test_shards_respect_the_limit_and_the_index_covers_each_tensor_once(make_checkpoint, tmp_path, limit):
    ckpt = make_checkpoint("pth-zip")
    out = tmp_path / "out"
    result = reshard(ckpt.path, out, max_shard_bytes=limit)
    files = sorted(out.glob("*.safetensors"))
    count = len(files)
    if count == 1:
        assert [f.name for f in files] == ["model.safetensors"]
        assert not (out / "model.safetensors.index.json").exists()
        return
    assert [f.name for f in files] == [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]
    seen: dict[str, str] = {}
    for f in files:
        entries = read_header(f).entries
        data_bytes = sum(e.spec.nbytes for e in entries.values())
        assert data_bytes <= limit or len(entries) == 1, f.name
        for name in entries:
            assert name not in seen
            seen[name] = f.name
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == seen
    expected_total = sum(t.nbytes for n, t in ckpt.expected.items() if n != "lm_head.weight")
    assert index["metadata"]["total_size"] == expected_total == result.write.total_bytes
    assert set(index["metadata"]["sha256"]) == {f.name for f in files}


def test_shards_follow_key_order(make_checkpoint, tmp_path):
    ckpt = make_checkpoint("pth-zip")
    reshard(ckpt.path, tmp_path / "out", max_shard_bytes=100)
    files = sorted((tmp_path / "out").glob("*.safetensors"))
    assert len(files) > 3
    order = [name for f in files for name in sorted(read_header(f).entries, key=list(ckpt.expected).index)]
    assert order == [n for n in ckpt.expected if n != "lm_head.weight"]


def test_manifest_records_sizes_and_checksums(make_checkpoint, tmp_path):
    import hashlib

    ckpt = make_checkpoint("safetensors-sharded")
    reshard(ckpt.path, tmp_path / "out", max_shard_bytes=300)
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert manifest["operation"] == "reshard"
    assert manifest["source_format"] == "safetensors-sharded"
    for name, entry in manifest["files"].items():
        data = (tmp_path / "out" / name).read_bytes()
        assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_reshard_of_its_own_output_is_byte_identical(make_checkpoint, tmp_path):
    ckpt = make_checkpoint("pth-zip")
    reshard(ckpt.path, tmp_path / "a")
    reshard(tmp_path / "a", tmp_path / "b")
    first, second = tmp_path / "a" / "model.safetensors", tmp_path / "b" / "model.safetensors"
    # same tensors, same layout, same data; only the provenance in the header names another source
    a, b = read_header(first), read_header(second)
    assert [(n, e.begin, e.end) for n, e in a.entries.items()] == [(n, e.begin, e.end) for n, e in b.entries.items()]
    assert first.read_bytes()[a.data_start:] == second.read_bytes()[b.data_start:]
    assert b.metadata["quantkit.aliases"] == a.metadata["quantkit.aliases"]


def test_default_output_is_beside_the_source(tmp_path):
    assert default_output(tmp_path / "model.pth", "safetensors") == tmp_path / "model-safetensors"
    assert default_output(tmp_path / "m.safetensors.index.json", "x") == tmp_path / "m-x"
    assert default_output(tmp_path / "folder", "bf16") == tmp_path / "folder-bf16"


def test_provenance_metadata(make_checkpoint, tmp_path):
    ckpt = make_checkpoint("pth-zip")
    reshard(ckpt.path, tmp_path / "out")
    metadata = read_header(tmp_path / "out" / "model.safetensors").metadata
    assert metadata["format"] == "pt"
    assert metadata["quantkit.source"] == "model.pth"
    assert json.loads(metadata["quantkit.aliases"]) == {"lm_head.weight": "model.embed_tokens.weight"}


def test_seeded_fixtures_are_reproducible(tmp_path):
    a = build_checkpoint("pth-zip", tmp_path / "a")
    b = build_checkpoint("pth-zip", tmp_path / "b")
    assert_same_state(a.expected, b.expected)
    assert re.fullmatch(r"model\.pth", a.path.name)
