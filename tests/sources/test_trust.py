"""Issue 11 (reader side): damaged or hostile inputs are read exactly or refused in one line."""

from __future__ import annotations

import json
import os
import random
import time
import zlib
from pathlib import Path

import pytest
import torch

from bad_files import BAD_DATA, build, flip_data_byte
from quantkit.errors import InputError, UsageError
from quantkit.selection import layout_for
from quantkit.sources import open_checkpoint
from quantkit.sources.ziprecords import check_all_crcs, crc32_combine


@pytest.mark.parametrize("command", ["convert", "reshard"])
@pytest.mark.parametrize("bad", BAD_DATA, ids=[b.id for b in BAD_DATA])
def test_damaged_data_is_refused_before_success(cli, tmp_path, bad, command):
    path, named = build(bad, tmp_path / "in")
    out = tmp_path / "out"
    args = ["convert", path, "--to", "bf16", "-o", out, "-q"] if command == "convert" else ["reshard", path, "-o", out, "-q"]
    result = cli(*args)
    assert result.exit_code == bad.exit_code, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("quantkit: error: ") and bad.fragment in lines[0] and str(named) in lines[0]
    assert not out.exists() and not [p for p in tmp_path.iterdir() if ".quantkit-" in p.name]


def test_verify_checks_the_crc_of_every_record(cli, small_pth):
    assert cli("verify", small_pth).exit_code == 0
    flip_data_byte(small_pth)
    result = cli("verify", small_pth)
    assert result.exit_code == 6
    assert "fails its CRC-32 check" in result.stdout + result.stderr
    assert check_all_crcs(small_pth) == [
        f"{small_pth}: zip member 'model/data/{_last_record(small_pth)}' fails its CRC-32 check: the file is damaged; re-download or re-save it"
    ]


def _last_record(path: Path) -> str:
    import zipfile

    with zipfile.ZipFile(path) as archive:
        return max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size).filename.rsplit("/", 1)[1]


def _chunks_in_random_order(source, name: str, chunk: int, seed: int) -> bytes:
    nbytes = source.specs[name].nbytes
    buffer = bytearray(nbytes)
    starts = list(range(0, nbytes, chunk))
    random.Random(seed).shuffle(starts)
    for start in starts:
        view = memoryview(buffer)[start : min(start + chunk, nbytes)]
        source.read_into(name, start, view)
    return bytes(buffer)


def test_chunked_reads_in_any_order_pass_the_crc_and_match(tmp_path):
    sd = {"a": torch.randn(1000), "b": torch.randn(33, 7), "row": None}
    base = torch.randn(10, 10)
    sd["row"] = base[3]  # a view of part of a record: the rest of the record is read for the CRC
    sd["base"] = base
    torch.save(sd, tmp_path / "m.pth")
    with open_checkpoint(tmp_path / "m.pth") as source:
        for seed, name in enumerate(source.specs):
            got = _chunks_in_random_order(source, name, 12, seed)
            assert got == sd[name].contiguous().view(torch.uint8).reshape(-1).numpy().tobytes()


def test_chunked_read_of_a_damaged_record_fails_on_the_read_completing_it(tmp_path):
    torch.save({"a": torch.randn(1000)}, tmp_path / "m.pth")
    flip_data_byte(tmp_path / "m.pth")
    with open_checkpoint(tmp_path / "m.pth") as source:
        with pytest.raises(InputError, match="'m/data/0' fails its CRC-32 check"):
            _chunks_in_random_order(source, "a", 400, 0)
        with pytest.raises(InputError, match="fails its CRC-32 check"):
            source.get_tensor("a")


def test_crc32_combine_matches_zlib():
    rng = random.Random(0)
    for _ in range(100):
        a, b = os.urandom(rng.randrange(3000)), os.urandom(rng.randrange(3000))
        assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


def test_json_extras_are_kept_and_the_rest_described(tmp_path):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.save({"state_dict": model.state_dict(), "char2idx": {"a": 1, "b": 2}, "epoch": 3, "metrics": [0.5, 0.25],
                "optimizer": optimizer.state_dict(), "best": torch.ones(1), "nan": float("nan")}, tmp_path / "m.pth")
    with open_checkpoint(tmp_path / "m.pth") as source:
        assert source.info.extras_json == {"char2idx": {"a": 1, "b": 2}, "epoch": 3, "metrics": [0.5, 0.25]}
        assert {"optimizer", "best", "nan"} <= set(source.info.extras)


def test_several_state_dicts_say_which_was_taken_and_key_chooses(tmp_path):
    torch.save({"state_dict": {"w": torch.ones(4), "v": torch.ones(1)}, "ema": {"w": torch.zeros(4)}}, tmp_path / "m.ckpt")
    with open_checkpoint(tmp_path / "m.ckpt") as source:
        assert torch.equal(source.get_tensor("w"), torch.ones(4))
        assert any("weights taken from 'state_dict' (2 tensors)" in n and "'ema' (1 tensors)" in n and "--key NAME" in n for n in source.info.notes)
    with open_checkpoint(tmp_path / "m.ckpt", key="ema") as source:
        assert sorted(source.specs) == ["w"] and torch.equal(source.get_tensor("w"), torch.zeros(4))
        assert "state_dict" in source.info.extras
    with pytest.raises(InputError, match="key='nope' is not in the checkpoint; entries holding tensors: 'state_dict', 'ema'"):
        open_checkpoint(tmp_path / "m.ckpt", key="nope")


def test_prefix_is_suggested_and_stripped(tmp_path):
    sd = {"module.a.weight": torch.ones(2), "module.b.bias": torch.zeros(2)}
    torch.save(sd, tmp_path / "m.pth")
    with open_checkpoint(tmp_path / "m.pth") as source:
        assert any("strip_prefix='module.'" in n for n in source.info.notes)
    with open_checkpoint(tmp_path / "m.pth", strip_prefix="module.") as source:
        assert sorted(source.specs) == ["a.weight", "b.bias"]
        assert torch.equal(source.get_tensor("a.weight"), torch.ones(2))
        view = bytearray(8)
        source.read_into("b.bias", 0, memoryview(view))
        assert bytes(view) == bytes(8)
    torch.save({"module.a": torch.ones(1), "a": torch.ones(1)}, tmp_path / "clash.pth")
    with pytest.raises(InputError, match="turns 'a' and 'module.a' into 'a'"):
        open_checkpoint(tmp_path / "clash.pth", strip_prefix="module.")


def test_allow_globals_opts_into_named_harmless_globals(tmp_path):
    import argparse
    import pathlib

    torch.save({"state_dict": {"w": torch.ones(2)}, "hyper_parameters": {"dir": pathlib.PosixPath("/d"), "args": argparse.Namespace(lr=1)}},
               tmp_path / "m.ckpt")
    with open_checkpoint(tmp_path / "m.ckpt", allow_globals=("pathlib.PosixPath", "argparse.Namespace")) as source:
        assert torch.equal(source.get_tensor("w"), torch.ones(2))
    with pytest.raises(UsageError, match="not in quantkit's list of harmless globals"):
        open_checkpoint(tmp_path / "m.ckpt", allow_globals=("os.system",))


def test_torch_options_on_safetensors_are_a_usage_error(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.ones(1)}, str(tmp_path / "m.safetensors"))
    with pytest.raises(UsageError, match="key apply to PyTorch pickles only"):
        open_checkpoint(tmp_path / "m.safetensors", key="x")


def test_huge_config_skips_the_model_build(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "custom-thing", "num_hidden_layers": 200_000, "hidden_size": 8}))
    start = time.monotonic()
    assert layout_for(tmp_path) is None
    assert time.monotonic() - start < 1


def test_huge_config_is_noted_on_the_source(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.ones(1)}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "custom-thing", "num_hidden_layers": 200_000}))
    with open_checkpoint(tmp_path) as source:
        assert any("200000 layers (more than 1024)" in n and "by name rules" in n for n in source.info.notes)


def test_an_empty_tensor_read_first_does_not_upset_the_mapping_check(tmp_path):
    torch.save({"a_empty": torch.empty(0), "b": torch.arange(6.0), "c": torch.ones(3)}, tmp_path / "m.pth")
    with open_checkpoint(tmp_path / "m.pth") as source:
        assert [source.get_tensor(n).tolist() for n in ("a_empty", "b", "c")] == [[], list(range(6)), [1.0] * 3]


@pytest.mark.parametrize("obj, fragment", [
    ({1: torch.ones(1), "1": torch.zeros(1)}, "entries [1] and ['1'] both give the tensor name '1'"),
    ({"w": torch.ones(1).expand(2**34)}, "tensor 'w' expands 4 stored bytes to"),
    ({"w": torch.ones(2, dtype=torch.complex64)}, "has dtype torch.complex64, which safetensors cannot hold"),
])
def test_legacy_format_gets_the_same_checks(tmp_path, obj, fragment):
    torch.save(obj, tmp_path / "m.pth", _use_new_zipfile_serialization=False)
    with pytest.raises(InputError, match=fragment.replace("[", r"\[").replace("(", r"\(")):
        open_checkpoint(tmp_path / "m.pth")
