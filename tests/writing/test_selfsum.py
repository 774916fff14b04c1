"""A shard's own record (version 2): XXH3-128 leaves hashed by the writing threads, in pieces of any
size, give the record of the whole; the same bytes whatever the chunks and threads."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
import xxhash
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from quantkit.convert import ConvertOptions, convert
from quantkit.errors import VerificationError
from quantkit.layout import MANIFEST, SELF_CHECKSUM_V2_KEY
from quantkit.safetensors_format import read_header
from quantkit.verify import verify_checkpoint
from quantkit.writing import chunks, pipeline
from quantkit.writing.selfsum import LEAF_BYTES, TensorLeaves, file_digests, piece_sums, sha256_of

DATA = np.random.default_rng(0).integers(0, 256, 2 * LEAF_BYTES + 12_345, dtype=np.uint8).tobytes()


def _leaves(data: bytes) -> list[bytes]:
    return [xxhash.xxh3_128_digest(data[at : at + LEAF_BYTES]) for at in range(0, len(data), LEAF_BYTES)]


def _tree_record(raw: bytes) -> str:
    """Version 2 from its definition: header over zeros, then each tensor's 1 MiB slices."""
    data_start = 8 + int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:data_start])
    recorded = header["__metadata__"][SELF_CHECKSUM_V2_KEY]
    digests = [xxhash.xxh3_128_digest(raw[:data_start].replace(recorded.encode(), b"0" * 64))]
    for begin, end in sorted(v["data_offsets"] for k, v in header.items() if k != "__metadata__"):
        digests += _leaves(raw[data_start + begin : data_start + end])
    return hashlib.sha256(b"".join(digests)).hexdigest()


@settings(max_examples=40, deadline=None)
@given(cuts=st.lists(st.integers(0, len(DATA)), max_size=12), on_worker=st.booleans())
def test_pieces_of_any_size_give_the_leaves_of_the_whole(cuts, on_worker):
    bounds = sorted({0, len(DATA), *cuts})
    leaves = TensorLeaves("w", len(DATA))
    for start, end in zip(bounds, bounds[1:]):
        sums = piece_sums(DATA[start:end], start, len(DATA)) if on_worker else None
        leaves.add(start, DATA[start:end], sums)
    assert leaves.complete
    assert leaves.digests == _leaves(DATA)


def test_aligned_pieces_are_hashed_wholly_on_the_worker():
    sums = piece_sums(DATA[LEAF_BYTES:], LEAF_BYTES, len(DATA))  # the last piece: its short leaf too
    assert (sums.head, sums.tail, list(sums.digests)) == (0, 0, _leaves(DATA)[1:])
    sums = piece_sums(DATA[:LEAF_BYTES + 5], 0, len(DATA))
    assert (sums.head, sums.tail, list(sums.digests)) == (0, 5, _leaves(DATA)[:1])


def test_pieces_out_of_order_are_a_bug_not_a_wrong_record():
    leaves = TensorLeaves("w", len(DATA))
    with pytest.raises(VerificationError, match="out of order"):
        leaves.add(100, DATA[100:200])


def _source(tmp_path):
    gen = torch.Generator().manual_seed(1)
    tensors = {
        "big.weight": torch.randn(700, 1000, generator=gen),  # 2.8 MB: three leaves as bf16 (1.4 MB)
        "odd.weight": torch.randn(333, 1001, generator=gen),
        "ids": torch.arange(300_000, dtype=torch.int64),  # kept: 2.4 MB, three leaves
        "empty": torch.zeros(0, 4),
    }
    save_file(tensors, str(tmp_path / "in.safetensors"))
    return tensors


@pytest.mark.parametrize("scheme", ["bf16", "int8"])
def test_the_record_is_the_same_whatever_the_chunks_and_threads(tmp_path, monkeypatch, scheme):
    tensors = _source(tmp_path)
    outputs, threaded = [], pipeline._pool
    for i, (chunk_bytes, threads) in enumerate([(4 << 20, True), (3_000, True), (1_000_003, False)]):
        monkeypatch.setattr(chunks, "CHUNK_BYTES", chunk_bytes)
        monkeypatch.setattr(pipeline, "_pool", threaded if threads else lambda workers, name="write": threaded(0, name))
        out = tmp_path / f"out{i}"
        convert(tmp_path / "in.safetensors", out, options=ConvertOptions(scheme, device="cpu"))
        outputs.append((out / "model.safetensors").read_bytes())
    assert outputs[0] == outputs[1] == outputs[2]
    raw = outputs[0]
    assert read_header(out / "model.safetensors").metadata[SELF_CHECKSUM_V2_KEY] == _tree_record(raw)
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["files"]["model.safetensors"]["sha256"] == hashlib.sha256(raw).hexdigest()
    assert torch.equal(load_file(str(out / "model.safetensors"))["ids"], tensors["ids"])


def test_a_flipped_byte_in_any_leaf_is_found_without_the_manifest(tmp_path):
    _source(tmp_path)
    convert(tmp_path / "in.safetensors", tmp_path / "out", options=ConvertOptions("bf16"))
    shard = tmp_path / "out" / "model.safetensors"
    (tmp_path / "out" / MANIFEST).unlink()
    header = read_header(shard)
    clean = shard.read_bytes()
    for entry in header.entries.values():
        for at in range(entry.begin, entry.end, LEAF_BYTES // 2):  # two places in each leaf
            damaged = bytearray(clean)
            damaged[header.data_start + at] ^= 0x10
            shard.write_bytes(bytes(damaged))
            assert file_digests(shard, header)[1] != header.metadata[SELF_CHECKSUM_V2_KEY], (entry.spec.name, at)
    shard.write_bytes(clean)
    assert verify_checkpoint(tmp_path / "out").checksums == "verified"
    damaged = bytearray(clean)
    damaged[header.data_start + LEAF_BYTES + 7] ^= 0x01
    shard.write_bytes(bytes(damaged))
    report = verify_checkpoint(tmp_path / "out")
    assert report.checksums == "mismatch"
    assert report.problems[0].endswith(f"its header records ({SELF_CHECKSUM_V2_KEY}) (file changed or damaged)")


@pytest.mark.parametrize("size", [0, 5, 16 << 20, (16 << 20) + 3])
def test_sha256_of_maps_the_file_and_skips_the_prefix_in_memory(tmp_path, size):
    data = os.urandom(size)
    (tmp_path / "f").write_bytes(data)
    assert sha256_of(tmp_path / "f") == hashlib.sha256(data).hexdigest()
    assert sha256_of(tmp_path / "f", skip=data[:3]) == hashlib.sha256(data).hexdigest()
    assert sha256_of(tmp_path / "f", chunk_bytes=1000) == hashlib.sha256(data).hexdigest()
