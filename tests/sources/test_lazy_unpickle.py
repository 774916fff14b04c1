"""The torch-free tensor table (lazy_unpickle) against torch.load, and what it refuses to run."""

from __future__ import annotations

import copyreg
import io
import pickle
import zipfile
from collections import OrderedDict

import pytest
import torch

from conftest import ALL_DTYPES, make_state_dict
from quantkit.sources.lazy_unpickle import NotUnderstood, TensorRef, load_table
from quantkit.sources.weights import find_weights


def _pickle_of(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    with zipfile.ZipFile(buf) as archive:
        return archive.read(next(n for n in archive.namelist() if n.endswith("/data.pkl")))


def _assert_same_table(obj: object) -> None:
    """Every tensor of lazy_unpickle's table matches torch.load's: dtype, shape, stride, offset,
    storage size, and which tensors share a storage."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    expected = find_weights(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))[1]
    got = find_weights(load_table(_pickle_of(obj)))[1]
    assert list(got) == list(expected)
    storages: dict[str, int] = {}
    for name, tensor in expected.items():
        ref = got[name]
        assert isinstance(ref, TensorRef)
        assert (ref.dtype, ref.shape, ref.stride, ref.storage_offset) == (tensor.dtype, tuple(tensor.shape), tensor.stride(), tensor.storage_offset()), name
        assert ref.storage.nbytes == tensor.untyped_storage().nbytes(), name
        assert ref.is_contiguous() == tensor.is_contiguous(), name
        assert storages.setdefault(ref.storage.key, tensor.untyped_storage().data_ptr()) == tensor.untyped_storage().data_ptr(), name


@pytest.mark.parametrize("dtype", [*ALL_DTYPES, torch.uint16, torch.uint32, torch.uint64, torch.float64], ids=str)
def test_every_dtype_torch_save_writes(dtype):
    _assert_same_table({"x": torch.zeros(3, 5, dtype=dtype), "empty": torch.zeros(0, 2, dtype=dtype), "scalar": torch.zeros((), dtype=dtype)})


def test_mixed_state_dict_views_shared_storages_and_strides():
    _assert_same_table(make_state_dict(3))


def test_nested_containers_ordered_dict_metadata_and_parameters():
    base = torch.arange(12.0)
    sd = OrderedDict(w=torch.nn.Parameter(torch.ones(2, 3)), frozen=torch.nn.Parameter(torch.ones(2), requires_grad=False),
                     nested={"a": {"b": base[2:5]}, "c": base.view(3, 4)[:, 1]}, grad=torch.ones(2, requires_grad=True))
    sd._metadata = OrderedDict({"": {"version": 1}})
    _assert_same_table(sd)
    table = load_table(_pickle_of({"state_dict": sd, "epoch": 3, "lr": 0.5, "names": ["a", ("b", None)], "flag": True, "big": 2**80}))
    assert table["state_dict"]._metadata == {"": {"version": 1}}
    assert {k: table[k] for k in ("epoch", "lr", "names", "flag", "big")} == {"epoch": 3, "lr": 0.5, "names": ["a", ("b", None)], "flag": True, "big": 2**80}


def test_two_views_are_two_dict_keys_as_torch_tensors_are():
    t = torch.ones(2)
    table = load_table(_pickle_of({"keys": {t[:1]: 1, t[:1]: 2}}))
    assert len(table["keys"]) == 2


def _live(code: bytes, marker) -> None:
    """The pickle really runs code when unpickled without restriction (so refusing it means something)."""
    pickle.loads(code)
    assert marker.exists()
    marker.unlink()


def _touch(marker) -> bytes:
    return f"touch {marker}".encode()


def _unicode(text: bytes) -> bytes:
    return b"X" + len(text).to_bytes(4, "little") + text


@pytest.mark.parametrize("kind", ["global-reduce", "ext1", "inst", "obj", "newobj", "stack-global-protocol-4"])
def test_code_running_pickles_run_nothing(tmp_path, kind):
    marker = tmp_path / "PWNED"
    arg = _unicode(_touch(marker))
    if kind == "global-reduce":
        code = b"\x80\x02cos\nsystem\n" + arg + b"\x85R."
    elif kind == "ext1":
        copyreg.add_extension("os", "system", 0xF1)
        code = b"\x80\x02\x82\xf1" + arg + b"\x85R."
    elif kind == "inst":
        code = b"(" + b"S'" + _touch(marker) + b"'\nios\nsystem\n."
    elif kind == "obj":
        code = b"\x80\x02(cos\nsystem\n" + arg + b"o."
    elif kind == "newobj":  # os.system is not a class: NEWOBJ fails here, but the opcode is refused before
        code = pickle.dumps(OrderedDict(a=1), protocol=2).replace(b"R", b"\x81", 1)
    else:
        code = b"\x80\x04\x8c\x02os\x8c\x06system\x93" + arg + b"\x85R."
    try:
        if kind != "newobj":
            _live(code, marker)
        with pytest.raises(NotUnderstood):
            load_table(code)
        assert not marker.exists()
    finally:
        if kind == "ext1":
            copyreg.remove_extension("os", "system", 0xF1)


@pytest.mark.parametrize("code, plain", [
    (b"\x80\x02]K\x05aK\x00K\x07s.", [7]),  # SETITEM on a list: pickle does it, torch refuses
    (b"\x80\x02}K\x05a.", None),  # APPEND on a dict
    (b"\x80\x02}}b.", None),  # BUILD on a dict
    (b"\x80\x02ctorch\nFloatStorage\n)R.", None),  # REDUCE on a storage type
    (b"\x80\x02(K\x01K\x02t.", (1, 2)),  # fine for torch too: shows the reader is not refusing everything
])
def test_opcodes_are_checked_as_torch_checks_them(code, plain):
    if plain is not None and code.endswith(b"t."):
        assert load_table(code) == plain
        return
    if plain is not None:
        assert pickle.loads(code) == plain
    with pytest.raises(NotUnderstood):
        load_table(code)
    with pytest.raises(Exception):
        torch.load(_zip_with_pickle(code), weights_only=True)


def _zip_with_pickle(code: bytes) -> io.BytesIO:
    buf = io.BytesIO()
    torch.save({}, buf)
    out = io.BytesIO()
    with zipfile.ZipFile(buf) as old, zipfile.ZipFile(out, "w") as new:
        for info in old.infolist():
            new.writestr(info, code if info.filename.endswith("/data.pkl") else old.read(info.filename))
    out.seek(0)
    return out


@pytest.mark.parametrize("obj", [
    {"w": torch.ones(2), "size": torch.Size([2, 3])},  # a global torch allows, the reader does not
    {"w": torch.ones(2), "dev": torch.device("cpu")},
    {"w": torch.ones(2), "s": {1, 2}},
    {"w": torch.ones(2), "b": b"bytes"},
    {"w": torch.ones(2, 2).to_sparse()},
    {"w": torch.zeros(2, dtype=torch.complex64)},
    {"w": torch.zeros(2, dtype=torch.float8_e4m3fnuz)},
], ids=["torch.Size", "torch.device", "set", "bytes", "sparse", "complex", "e4m3fnuz"])
def test_what_torch_allows_but_the_reader_does_not_know_is_not_understood(obj):
    torch.load(io.BytesIO(_saved(obj)), weights_only=True)  # torch reads it
    with pytest.raises(NotUnderstood):
        load_table(_pickle_of(obj))


def _saved(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


class Sub(torch.Tensor):
    pass


def test_a_tensor_subclass_is_not_understood():
    with pytest.raises(NotUnderstood):
        load_table(_pickle_of({"w": torch.ones(2).as_subclass(Sub)}))


def test_damaged_pickles_are_not_understood():
    code = _pickle_of({"w": torch.ones(2)})
    for cut in (1, len(code) // 2, len(code) - 1):
        with pytest.raises(NotUnderstood):
            load_table(code[:cut])
    with pytest.raises(NotUnderstood):
        load_table(code.replace(b"\x80\x02", b"\x80\x04", 1))  # another protocol
