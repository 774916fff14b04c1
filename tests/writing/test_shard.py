"""ShardWriter: byte-identical to safetensors, checks what it is given, fails cleanly."""

from __future__ import annotations

import errno
import hashlib
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save, save_file

from conftest import ALL_DTYPES, assert_bit_equal, make_state_dict, random_tensor
from quantkit.writing import shard as writer_module
from quantkit.errors import OutputError, VerificationError
from quantkit.safetensors_format import read_header
from quantkit.specs import OutSpec
from quantkit.writing.shard import ShardWriter, sha256_of


def write_all(path, tensors, metadata, order=None):
    w = ShardWriter(path, [OutSpec(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()], metadata)
    for name in order or tensors:
        w.write(name, tensors[name])
    return w.finish()


def mixed_tensors() -> dict[str, torch.Tensor]:
    sd = {k: v.contiguous().clone() for k, v in make_state_dict(3).items()}
    sd["zz.u16"] = torch.arange(4, dtype=torch.int32).to(torch.uint16)
    return sd


def test_byte_identical_to_safetensors_save_file(tmp_path):
    tensors = mixed_tensors()
    save_file(tensors, str(tmp_path / "ref.safetensors"), metadata={"format": "pt"})
    shard = write_all(tmp_path / "q.safetensors", tensors, {"format": "pt"}, order=sorted(tensors, reverse=True))
    assert (tmp_path / "q.safetensors").read_bytes() == (tmp_path / "ref.safetensors").read_bytes()
    assert shard.sha256 == hashlib.sha256((tmp_path / "ref.safetensors").read_bytes()).hexdigest()
    assert shard.file_bytes == (tmp_path / "ref.safetensors").stat().st_size
    assert shard.tensor_bytes == sum(t.nbytes for t in tensors.values())


def test_non_contiguous_input_written_in_c_order(tmp_path):
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4).t()
    write_all(tmp_path / "q.safetensors", {"t": t}, {"format": "pt"})
    assert torch.equal(load_file(str(tmp_path / "q.safetensors"))["t"], t)


def test_variable_tensors_go_last_and_header_is_padded(tmp_path):
    specs = [OutSpec("w", torch.float32, (2, 2)), OutSpec("w.state", torch.uint8, (64,), variable=True)]
    w = ShardWriter(tmp_path / "v.safetensors", specs, {"format": "pt"})
    w.write("w.state", torch.frombuffer(bytearray(b'{"k": 1}'), dtype=torch.uint8))
    w.write("w", torch.ones(2, 2))
    shard = w.finish()
    header = read_header(tmp_path / "v.safetensors")
    assert header.entries["w.state"].spec.shape == (8,)
    assert (header.entries["w.state"].begin, header.entries["w.state"].end) == (16, 24)
    assert header.data_start % 8 == 0
    loaded = load_file(str(tmp_path / "v.safetensors"))
    assert bytes(loaded["w.state"].numpy()) == b'{"k": 1}'
    assert shard.names == ("w", "w.state")


@pytest.mark.parametrize(
    "name,tensor,fragment",
    [
        ("nope", torch.ones(2), "tensor 'nope' is not planned for this shard"),
        ("a", torch.ones(3), "tensor 'a' is torch.float32 [3], planned torch.float32 [2]"),
        ("a", torch.ones(2, dtype=torch.float16), "tensor 'a' is torch.float16 [2], planned torch.float32 [2]"),
    ],
)
def test_unplanned_tensors_are_refused(tmp_path, name, tensor, fragment):
    w = ShardWriter(tmp_path / "x.safetensors", [OutSpec("a", torch.float32, (2,))], {})
    with pytest.raises(VerificationError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        w.write(name, tensor)
    w.abort()


def test_written_twice_and_missing_are_refused(tmp_path):
    w = ShardWriter(tmp_path / "x.safetensors", [OutSpec("a", torch.float32, (2,)), OutSpec("b", torch.int8, (1,))], {})
    w.write("a", torch.ones(2))
    with pytest.raises(VerificationError, match="written twice"):
        w.write("a", torch.ones(2))
    with pytest.raises(VerificationError, match="1 planned tensors were never written, e.g. 'b'"):
        w.finish()
    w.abort()


def test_full_disk_is_an_output_error(tmp_path, monkeypatch):
    real_pwrite, left = os.pwrite, [10]

    def pwrite(fd, data, offset):
        left[0] -= len(data)
        if left[0] < 0:
            raise OSError(errno.ENOSPC)  # errno only, as some layers raise it
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(writer_module.os, "pwrite", pwrite)
    with pytest.raises(OutputError, match=r"x\.safetensors: write failed: No space left on device"):
        w = ShardWriter(tmp_path / "x.safetensors", [OutSpec("a", torch.float32, (64,))], {})
        w.write("a", torch.ones(64))
        w.abort()


def test_short_writes_are_completed(tmp_path, monkeypatch):
    real_pwrite = os.pwrite
    monkeypatch.setattr(writer_module.os, "pwrite", lambda fd, data, offset: real_pwrite(fd, data[:7], offset))
    tensors = {"a": torch.arange(100, dtype=torch.float32), "b": torch.ones(3, dtype=torch.int8)}
    w = ShardWriter(tmp_path / "x.safetensors", [OutSpec(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()], {"format": "pt"})
    for n, t in tensors.items():
        w.write(n, t)
    shard = w.finish()
    assert (tmp_path / "x.safetensors").read_bytes() == save(tensors, metadata={"format": "pt"})
    assert shard.sha256 == hashlib.sha256(save(tensors, metadata={"format": "pt"})).hexdigest()


def test_hash_covers_out_of_order_writes(tmp_path):
    tensors = {f"t{i}": torch.full((10 + i,), float(i)) for i in range(6)}
    w = ShardWriter(tmp_path / "x.safetensors", [OutSpec(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()], {"format": "pt"})
    for n in ["t3", "t0", "t5", "t1", "t4", "t2"]:
        w.write(n, tensors[n])
    shard = w.finish()
    assert shard.sha256 == hashlib.sha256((tmp_path / "x.safetensors").read_bytes()).hexdigest()


def test_cannot_create_file_is_an_output_error(tmp_path):
    with pytest.raises(OutputError, match="cannot create file: No such file or directory"):
        ShardWriter(tmp_path / "missing" / "x.safetensors", [], {})


def test_sha256_of_matches_hashlib(tmp_path):
    data = bytes(range(256)) * 1000
    (tmp_path / "f").write_bytes(data)
    assert sha256_of(tmp_path / "f", chunk_bytes=1000) == hashlib.sha256(data).hexdigest()


# --- property: random specs written in random order read back bit-exact, and as safetensors writes them ---

_shapes = st.lists(st.integers(0, 4), max_size=3).map(tuple)
_specs = st.dictionaries(
    st.text(alphabet="abcxyz._0123", min_size=1, max_size=6),
    st.tuples(st.sampled_from(ALL_DTYPES), _shapes),
    min_size=1,
    max_size=6,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(specs=_specs, seed=st.integers(0, 2**16), order_seed=st.randoms(use_true_random=False))
def test_writer_round_trip_on_random_specs(tmp_path, specs, seed, order_seed):
    gen = torch.Generator().manual_seed(seed)
    tensors = {name: random_tensor(gen, dtype, shape) for name, (dtype, shape) in specs.items()}
    order = list(tensors)
    order_seed.shuffle(order)
    write_all(tmp_path / "q.safetensors", tensors, {"format": "pt"}, order=order)
    loaded = load_file(str(tmp_path / "q.safetensors"))
    assert sorted(loaded) == sorted(tensors)
    for name, tensor in tensors.items():
        assert_bit_equal(loaded[name], tensor, name)
    save_file(tensors, str(tmp_path / "ref.safetensors"), metadata={"format": "pt"})
    assert (tmp_path / "q.safetensors").read_bytes() == (tmp_path / "ref.safetensors").read_bytes()
