"""Issue 11, item 14: verify covers every file quantkit wrote, and no damaged record passes.

Each shard quantkit writes carries its own record in its header (``quantkit.self_checksum_v2``:
the SHA-256 of the XXH3-128 of the header, that value read as 64 zeros, and of every 1 MiB slice
of every tensor), so a single shard whose quantkit.json was lost is still checked, header
included. Shards written with version 1 (``quantkit.self_sha256``: the SHA-256 of the whole
file with the value read as 64 zeros) are still checked."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import xxhash

from quantkit.layout import MANIFEST, SELF_SHA256_KEY, SELF_CHECKSUM_V2_KEY
from quantkit.reshard import reshard
from quantkit.safetensors_format import build_header, read_header
from quantkit.specs import TensorSpec
from quantkit.verify import verify_checkpoint

INDEX = "model.safetensors.index.json"


@pytest.fixture
def single(tmp_path, make_checkpoint):
    ckpt = make_checkpoint("hf-folder")
    (ckpt.path / "tokenizer.json").write_text('{"version": "1.0"}\n')
    reshard(ckpt.path, tmp_path / "out")
    return tmp_path / "out"


@pytest.fixture
def sharded(tmp_path, make_checkpoint):
    reshard(make_checkpoint("pth-zip").path, tmp_path / "sharded", max_shard_bytes=300)
    return tmp_path / "sharded"


def _flip(path, at):
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def _edit_json(path, edit):
    value = json.loads(path.read_text())
    edit(value)
    path.write_text(json.dumps(value))


def _tree_record(raw: bytes, recorded: str, leaf_bytes: int = 1 << 20) -> str:
    """Version 2, computed here from its definition (README, writing/selfsum.py)."""
    data_start = 8 + int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:data_start])
    digests = [xxhash.xxh3_128_digest(raw[:data_start].replace(recorded.encode(), b"0" * 64))]
    for _, entry in sorted((v["data_offsets"], k) for k, v in header.items() if k != "__metadata__"):
        begin, end = (data_start + o for o in header[entry]["data_offsets"])
        digests += [xxhash.xxh3_128_digest(raw[at : min(at + leaf_bytes, end)]) for at in range(begin, end, leaf_bytes)]
    return hashlib.sha256(b"".join(digests)).hexdigest()


def test_the_header_record_is_the_tree_of_header_and_slices(single):
    shard = single / "model.safetensors"
    metadata = read_header(shard).metadata
    assert SELF_SHA256_KEY not in metadata
    assert _tree_record(shard.read_bytes(), metadata[SELF_CHECKSUM_V2_KEY]) == metadata[SELF_CHECKSUM_V2_KEY]
    assert verify_checkpoint(single).checksums == "verified"


def _version_1_shard(path, tensors: dict[str, bytes]) -> None:
    """A shard as quantkit wrote it before version 2: SHA-256 of the file over 64 zeros."""
    entries, position = [], 0
    for name, data in tensors.items():
        entries.append((TensorSpec(name, __import__("torch").uint8, (len(data),)), position, position + len(data)))
        position += len(data)
    header = build_header(entries, {"format": "pt", SELF_SHA256_KEY: "0" * 64})
    raw = len(header).to_bytes(8, "little") + header + b"".join(tensors.values())
    path.write_bytes(raw.replace(b"0" * 64, hashlib.sha256(raw).hexdigest().encode(), 1))


def test_version_1_records_are_still_checked(tmp_path):
    shard = tmp_path / "model.safetensors"
    _version_1_shard(shard, {"a": bytes(range(200)), "b": b"\x07" * 3000})
    assert verify_checkpoint(shard).checksums == "verified"
    _flip(shard, shard.stat().st_size - 3)
    report = verify_checkpoint(shard)
    assert report.checksums == "mismatch"
    assert report.problems[0].endswith(f"its header records ({SELF_SHA256_KEY}) (file changed or damaged)")


def test_a_shard_with_both_records_fails(tmp_path):
    shard = tmp_path / "model.safetensors"
    header = build_header([(TensorSpec("a", __import__("torch").uint8, (4,)), 0, 4)], {SELF_SHA256_KEY: "1" * 64, SELF_CHECKSUM_V2_KEY: "2" * 64})
    shard.write_bytes(len(header).to_bytes(8, "little") + header + b"abcd")
    problems = verify_checkpoint(shard).problems
    assert problems == [f"{shard}: metadata holds both {SELF_CHECKSUM_V2_KEY!r} and {SELF_SHA256_KEY!r} (the record is damaged)"]


def test_a_flipped_data_byte_without_the_manifest_fails(cli, single):
    (single / MANIFEST).unlink()
    shard = single / "model.safetensors"
    _flip(shard, shard.stat().st_size - 3)
    result = cli("verify", single)
    assert result.exit_code == 6
    assert f"  - {shard}: SHA-256 " in result.stdout
    assert f"its header records ({SELF_CHECKSUM_V2_KEY}) (file changed or damaged)" in result.stdout


def test_a_changed_dtype_in_the_header_without_the_manifest_fails(single):
    (single / MANIFEST).unlink()
    shard = single / "model.safetensors"
    raw = shard.read_bytes()
    assert b'"dtype":"F32"' in raw
    shard.write_bytes(raw.replace(b'"dtype":"F32"', b'"dtype":"I32"', 1))  # same sizes: the structure still checks out
    report = verify_checkpoint(single)
    assert not report.ok and report.checksums == "mismatch"


def test_without_the_manifest_a_clean_shard_still_verifies(cli, single):
    (single / MANIFEST).unlink()
    result = cli("verify", single)
    assert result.exit_code == 0
    assert result.stdout.rstrip().endswith("checksums verified (SHA-256)")


def test_an_empty_weight_map_fails(cli, sharded):
    _edit_json(sharded / INDEX, lambda index: index.update(weight_map={}))
    result = cli("verify", sharded)
    assert result.exit_code == 6
    assert f"  - {sharded / INDEX}: the index maps no tensors (its weight_map is empty)" in result.stdout.splitlines()


def test_a_deleted_only_shard_is_a_verification_failure(cli, single):
    (single / "model.safetensors").unlink()
    result = cli("verify", single)
    assert result.exit_code == 6
    assert f"  - {single / 'model.safetensors'}: listed in quantkit.json but missing" in result.stdout.splitlines()


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda m: m.update(filez=m.pop("files")), "quantkit.json: 'files' must map file names to their bytes and sha256"),
        (lambda m: m["files"]["model.safetensors"].update(sha25X=m["files"]["model.safetensors"].pop("sha256")),
         "quantkit.json: the record of 'model.safetensors' has no valid 'bytes' and 'sha256' (the record is damaged)"),
        (lambda m: m["files"]["model.safetensors"].update(bytez=m["files"]["model.safetensors"].pop("bytes")),
         "quantkit.json: the record of 'model.safetensors' has no valid 'bytes' and 'sha256' (the record is damaged)"),
        (lambda m: m["files"].update({"../../etc/passwd": m["files"].pop("config.json")}),
         "quantkit.json: file name '../../etc/passwd' is not a path inside the folder (the record is damaged)"),
    ],
    ids=["files-key", "sha256-key", "bytes-key", "name-outside"],
)
def test_damaged_keys_of_the_manifest_fail(single, edit, fragment):
    _edit_json(single / MANIFEST, edit)
    problems = verify_checkpoint(single).problems
    assert any(p.endswith(fragment) for p in problems), problems


def test_damaged_keys_of_the_index_records_fail(sharded):
    first = sorted(p.name for p in sharded.glob("*.safetensors"))[0]

    def rename(index):
        sums = index["metadata"]["sha256"]
        sums[first.replace("model", "modem")] = sums.pop(first)

    _edit_json(sharded / INDEX, rename)
    problems = verify_checkpoint(sharded).problems
    assert f"{sharded / INDEX}: metadata.sha256 names {first.replace('model', 'modem')!r}, which is not a shard of this checkpoint (the record is damaged)" in problems
    assert f"{sharded / INDEX}: metadata.sha256 has no record for {first}" in problems
    _edit_json(sharded / INDEX, lambda index: index["metadata"].update(sha25X=index["metadata"].pop("sha256")))
    assert f"{sharded / INDEX}: written by quantkit but has no metadata.sha256 (the record is damaged)" in verify_checkpoint(sharded).problems


def test_a_damaged_key_of_the_header_record_fails(single):
    (single / MANIFEST).unlink()
    shard = single / "model.safetensors"
    raw = shard.read_bytes()
    shard.write_bytes(raw.replace(SELF_CHECKSUM_V2_KEY.encode(), SELF_CHECKSUM_V2_KEY.replace("self", "selg").encode(), 1))
    problems = verify_checkpoint(single).problems
    assert problems == [f"{shard}: metadata key 'quantkit.selg_checksum_v2' holds a SHA-256 but is not {SELF_CHECKSUM_V2_KEY!r} (the record is damaged)"]


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json"])
def test_copied_files_are_covered(cli, single, name):
    manifest = json.loads((single / MANIFEST).read_text())
    assert set(manifest["files"]) == {"model.safetensors", "config.json", "tokenizer.json"}
    (single / name).write_text((single / name).read_text().replace("1", "2").replace("{", "{ "))
    result = cli("verify", single)
    assert result.exit_code == 6
    assert f"  - {single / name}: SHA-256 " in result.stdout
    (single / name).unlink()
    assert f"{single / name}: listed in quantkit.json but missing" in verify_checkpoint(single).problems


def test_extra_files_are_noted(cli, tmp_path, single):
    copy = tmp_path / "copy"
    shutil.copytree(single, copy)
    (copy / "README.md").write_text("model card\n")
    result = cli("verify", copy)
    assert result.exit_code == 0
    assert f"note: {copy / 'README.md'}: not written by quantkit (not in quantkit.json)" in result.stdout.splitlines()


@pytest.mark.parametrize("scheme", ["bf16", "int8", "nf4"])  # nf4: variable-size tensors, the header written last
def test_convert_outputs_carry_the_header_checksum_too(tmp_path, scheme):
    import torch
    from safetensors.torch import save_file

    from quantkit.convert import ConvertOptions, convert

    gen = torch.Generator().manual_seed(0)
    weights = {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(64, 128, generator=gen) for i in range(3)}
    save_file({**weights, "lm_head.weight": torch.randn(8, 128, generator=gen)}, str(tmp_path / "m.safetensors"))
    result = convert(tmp_path / "m.safetensors", tmp_path / "out", options=ConvertOptions(scheme, device="cpu", max_shard_bytes=6_000))
    assert len(result.write.shards) > 1 and (scheme == "bf16" or result.quantized)
    for shard in result.write.shards:
        metadata = read_header(shard.path).metadata
        assert _tree_record(shard.path.read_bytes(), metadata[SELF_CHECKSUM_V2_KEY]) == metadata[SELF_CHECKSUM_V2_KEY]
        assert hashlib.sha256(shard.path.read_bytes()).hexdigest() == shard.sha256
    assert verify_checkpoint(tmp_path / "out").checksums == "verified"
    (tmp_path / "out" / MANIFEST).unlink()
    (tmp_path / "out" / INDEX).unlink()
    for shard in result.write.shards:  # each shard on its own
        assert verify_checkpoint(shard.path).checksums == "verified"
        _flip(shard.path, shard.path.stat().st_size - 1)
        assert verify_checkpoint(shard.path).checksums == "mismatch"
