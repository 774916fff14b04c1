"""The safetensors layout: exact bytes of what quantkit writes; every damaged header refused cleanly."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from quantkit.errors import InputError
from quantkit.specs import TensorSpec
from quantkit.safetensors_format import build_header, layout_order, read_header, read_tensor, tensor_bytes
from quantkit.specs import OutSpec
from quantkit.writing import ShardWriter

# Written by hand from the format: u64 LE header length (0x90 = 144), the JSON header with
# __metadata__ first and tensors in data order (F32 before I8: wider dtypes first), padded
# with spaces to a multiple of 8, then 1.0f, 2.0f (little-endian) and int8 -1.
GOLDEN_TINY = (
    b"\x90\x00\x00\x00\x00\x00\x00\x00"
    b'{"__metadata__":{"format":"pt"},'
    b'"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
    b'"b":{"dtype":"I8","shape":[1],"data_offsets":[8,9]}}'
    b"       "
    b"\x00\x00\x80\x3f" b"\x00\x00\x00\x40" b"\xff"
)
TINY = {"b": torch.tensor([-1], dtype=torch.int8), "a": torch.tensor([1.0, 2.0])}


def write_with_quantkit(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    writer = ShardWriter(path, [OutSpec(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()], metadata)
    for name, tensor in reversed(list(tensors.items())):  # any order: each goes to its planned offset
        writer.write(name, tensor)
    writer.finish()


def test_tiny_file_matches_hand_written_bytes(tmp_path):
    write_with_quantkit(tmp_path / "q.safetensors", TINY, {"format": "pt"})
    assert (tmp_path / "q.safetensors").read_bytes() == GOLDEN_TINY


def test_hand_written_bytes_are_what_safetensors_writes(tmp_path):
    save_file(TINY, str(tmp_path / "s.safetensors"), metadata={"format": "pt"})
    assert (tmp_path / "s.safetensors").read_bytes() == GOLDEN_TINY


def test_read_header_of_golden_file(tmp_path):
    path = tmp_path / "g.safetensors"
    path.write_bytes(GOLDEN_TINY)
    header = read_header(path)
    assert header.header_bytes == 144
    assert header.data_start == 152
    assert header.metadata == {"format": "pt"}
    assert list(header.entries) == ["a", "b"]
    assert header.entries["a"].spec == TensorSpec("a", torch.float32, (2,))
    assert (header.entries["b"].begin, header.entries["b"].end) == (8, 9)
    with open(path, "rb") as f:
        assert torch.equal(read_tensor(f, header, "a"), TINY["a"])
        assert torch.equal(read_tensor(f, header, "b"), TINY["b"])


def test_layout_order_is_wider_dtypes_first_then_name():
    specs = [TensorSpec("z", torch.int8, (1,)), TensorSpec("b", torch.float32, (1,)), TensorSpec("a", torch.float32, (1,)),
             TensorSpec("c", torch.int64, (1,)), TensorSpec("d", torch.bool, (1,))]
    assert [s.name for s in layout_order(specs)] == ["c", "a", "b", "z", "d"]


def test_build_header_pads_to_eight_and_min_bytes():
    entries = [(TensorSpec("x", torch.float16, (3,)), 0, 6)]
    raw = build_header(entries, {})
    assert raw == b'{"x":{"dtype":"F16","shape":[3],"data_offsets":[0,6]}}' + b"  "  # 54 bytes + 2 spaces = 56
    assert len(build_header(entries, {}, min_bytes=100)) == 104


def test_tensor_bytes_of_non_contiguous_and_empty():
    t = torch.arange(6, dtype=torch.int16).reshape(2, 3).t()
    assert bytes(tensor_bytes(t)) == t.contiguous().numpy().tobytes()
    assert bytes(tensor_bytes(torch.empty(0, 3))) == b""
    assert bytes(tensor_bytes(torch.tensor(1.5, dtype=torch.float64))) == struct.pack("<d", 1.5)


# --- damaged headers: each one refused with InputError naming the file and the problem ---


def _file(tmp_path: Path, header: dict | bytes, data: bytes = b"", *, length: int | None = None) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


def _raw(tmp_path: Path, raw: bytes) -> Path:
    (tmp_path / "bad.safetensors").write_bytes(raw)
    return tmp_path / "bad.safetensors"


def _entry(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


BAD_HEADERS = [
    ("short", lambda p: _raw(p, b"\x10\x00"), "shorter than its 8-byte header length"),
    ("length past end", lambda p: _file(p, {"a": _entry()}, b"\0" * 8, length=10**6), "header length 1000000 runs past the end of the file"),
    ("not json", lambda p: _file(p, b"{not json at all}"), "header is not valid JSON"),
    ("not utf8", lambda p: _file(p, b"{\xff\xfe}"), "header is not valid JSON (UnicodeDecodeError)"),
    ("nested", lambda p: _file(p, b"[" * 100_000), "header is not valid JSON (RecursionError)"),
    ("array", lambda p: _file(p, b"[1, 2]"), "header is JSON but not an object"),
    ("unknown dtype", lambda p: _file(p, {"a": _entry(dtype="F128")}, b"\0" * 8), "tensor 'a' has unknown dtype 'F128'"),
    ("dtype list", lambda p: _file(p, {"a": _entry(dtype=["F32"])}, b"\0" * 8), "tensor 'a' has unknown dtype ['F32']"),
    ("negative shape", lambda p: _file(p, {"a": _entry(shape=(-2,))}, b"\0" * 8), "tensor 'a' has an invalid shape [-2]"),
    ("bool offsets", lambda p: _file(p, {"a": _entry(dtype="BOOL", shape=(1,), offsets=(False, True))}, b"\0"), "invalid data_offsets"),
    ("reversed offsets", lambda p: _file(p, {"a": _entry(offsets=(8, 0))}, b"\0" * 8), "tensor 'a' has invalid data_offsets [8, 0]"),
    ("size mismatch", lambda p: _file(p, {"a": _entry(offsets=(0, 4))}, b"\0" * 4), "tensor 'a' spans 4 bytes but its shape [2] and dtype F32 need 8"),
    ("overlap", lambda p: _file(p, {"a": _entry(), "b": _entry(offsets=(4, 12))}, b"\0" * 12), "tensor 'b' overlaps the tensor before it (offset 4 < 8)"),
    ("hole", lambda p: _file(p, {"a": _entry(), "b": _entry(offsets=(12, 20))}, b"\0" * 20), "hole in the data buffer before tensor 'b' (bytes 8..12 unused)"),
    ("data cut", lambda p: _file(p, {"a": _entry(), "b": _entry(offsets=(8, 16))}, b"\0" * 10), "data truncated: the header needs 16 bytes of tensor data, the file holds 10"),
    ("trailing", lambda p: _file(p, {"a": _entry()}, b"\0" * 11), "3 unexpected bytes after the last tensor"),
    ("metadata", lambda p: _file(p, {"__metadata__": {"format": 1}}), "__metadata__ must map strings to strings"),
    ("entry not object", lambda p: _file(p, {"a": 3}), "entry 'a' is not an object"),
]


@pytest.mark.parametrize("build,fragment", [b[1:] for b in BAD_HEADERS], ids=[b[0] for b in BAD_HEADERS])
def test_damaged_headers_are_refused_with_a_clear_message(tmp_path, build, fragment):
    path = build(tmp_path)
    with pytest.raises(InputError) as info:
        read_header(path)
    assert str(info.value).startswith(f"{path}: ")
    assert fragment in str(info.value)


def test_data_ending_during_read_is_an_input_error(tmp_path):
    path = _file(tmp_path, {"a": _entry()}, b"\0" * 8)
    header = read_header(path)
    with open(path, "rb") as f:
        path.write_bytes(path.read_bytes()[:-3])  # shrinks under the open file
        with pytest.raises(InputError, match="data ended early while reading tensor 'a'"):
            read_tensor(f, header, "a")


# --- property: random bytes and mutated valid files raise InputError or parse, never anything else ---


def _valid_file_bytes() -> bytes:
    tensors = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.tensor([1, 2], dtype=torch.int16),
               "s": torch.tensor(True), "e": torch.empty(0)}
    header = build_header([(TensorSpec.of(n, t), b, e) for n, t, b, e in
                           [("w", tensors["w"], 0, 24), ("b", tensors["b"], 24, 28), ("e", tensors["e"], 28, 28), ("s", tensors["s"], 28, 29)]],
                          {"format": "pt"})
    data = b"".join(bytes(tensor_bytes(tensors[n])) for n in ("w", "b", "e", "s"))
    return struct.pack("<Q", len(header)) + header + data


VALID = _valid_file_bytes()


def _parse_or_input_error(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(raw)
    try:
        header = read_header(path)
    except InputError as exc:
        assert str(exc).startswith(str(path))
        return
    with open(path, "rb") as f:  # a header that parses describes data that reads
        for name, entry in header.entries.items():
            assert read_tensor(f, header, name).numel() == entry.spec.numel


def test_valid_fuzz_seed_parses(tmp_path):
    _parse_or_input_error(tmp_path, VALID)
    (tmp_path / "v.safetensors").write_bytes(VALID)
    assert set(read_header(tmp_path / "v.safetensors").entries) == {"w", "b", "e", "s"}


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(raw=st.binary(max_size=300))
def test_random_bytes_never_crash(tmp_path, raw):
    _parse_or_input_error(tmp_path, raw)


@FUZZ
@given(raw=st.binary(max_size=200))
def test_random_header_after_a_plausible_length_never_crashes(tmp_path, raw):
    _parse_or_input_error(tmp_path, struct.pack("<Q", len(raw)) + raw)


@FUZZ
@given(data=st.data())
def test_mutated_valid_files_never_crash(tmp_path, data):
    raw = bytearray(VALID)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        position = data.draw(st.integers(0, max(len(raw) - 1, 0)))
        if op == "flip" and raw:
            raw[position] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del raw[position: position + data.draw(st.integers(1, 16))]
        else:
            raw[position:position] = data.draw(st.binary(min_size=1, max_size=8))
    _parse_or_input_error(tmp_path, bytes(raw))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 40) | st.floats(allow_nan=True) | st.text(max_size=6),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8,
)


@pytest.mark.slow  # the longest of the three fuzzers; random bytes and mutated valid files stay in the default run
@FUZZ
@given(header=st.dictionaries(st.sampled_from(["a", "b", "__metadata__"]),
                              st.fixed_dictionaries({}, optional={"dtype": st.sampled_from(["F32", "U8", "BOOL", "X"]) | json_values,
                                                                  "shape": st.lists(st.integers(-1, 4), max_size=2) | json_values,
                                                                  "data_offsets": st.lists(st.integers(-1, 20), max_size=3) | json_values})
                              | json_values, max_size=3),
       data_bytes=st.integers(0, 24))
def test_structured_random_headers_never_crash(tmp_path, header, data_bytes):
    raw = json.dumps(header).encode()
    _parse_or_input_error(tmp_path, struct.pack("<Q", len(raw)) + raw + b"\x01" * data_bytes)
